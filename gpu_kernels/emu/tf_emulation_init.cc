// Part of the test-only library of build_tf_emulation.sh, in which the
// TensorFlow GPU kernels (cc/kernels/multihash_kernels_gpu.cc) run on the CPU
// device over the emulated CUDA runtime. Their "device" tensors are
// TensorFlow's CPU tensors, not cudaMalloc memory, so the emulated runtime is
// told to accept host memory when the library loads. Blocks run in a
// shuffled order (as a GPU promises none), so a result that depends on the
// order, such as float atomics from many blocks, can differ between two runs
// here as on a GPU, and the tests can tell the deterministic algorithm from
// the other.
#include "gpu_kernels/cuda_compat.h"

namespace {

const bool kEmulationSetUp = (tfmh_emu::TreatAllHostMemoryAsDevice(),
                              tfmh_emu::ShuffleBlocks(20261127), true);

}  // namespace
