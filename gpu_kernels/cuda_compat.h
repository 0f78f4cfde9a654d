// The CUDA toolkit, as the CUDA sources of gpu_kernels/ see it. Built by
// nvcc this is the toolkit itself. Built by a host compiler with
// TFMH_CUDA_EMULATION defined, it is gpu_kernels/emu/cuda_emu.h: a CPU
// emulation of the runtime calls, intrinsics and CUB calls used here, which
// runs every kernel's threads as cooperative fibers so that the standalone
// test checks the kernels' logic on machines without a GPU (timings there
// mean nothing).
//
// Kernels are launched with TFMH_LAUNCH(grid, block, shared_bytes, stream,
// kernel)(arguments...), which is kernel<<<grid, block, shared_bytes,
// stream>>>(arguments...) under nvcc. Inside a kernel,
// TFMH_DYNAMIC_SHARED(name); declares `char* name`, the block's dynamic
// shared memory (16-byte aligned, shared_bytes long); kernels declare no
// static __shared__ variables.
#ifndef TENSORFLOW_MULTIHASH_GPU_KERNELS_CUDA_COMPAT_H_
#define TENSORFLOW_MULTIHASH_GPU_KERNELS_CUDA_COMPAT_H_

#if defined(TFMH_CUDA_EMULATION)
#include "gpu_kernels/emu/cuda_emu.h"
#else
#include <cuda_runtime.h>

#include <cub/cub.cuh>
#define TFMH_LAUNCH(grid, block, shared_bytes, stream, ...) \
  __VA_ARGS__<<<(grid), (block), (shared_bytes), (stream)>>>
#define TFMH_DYNAMIC_SHARED(name)                                   \
  extern __shared__ __align__(16) unsigned char tfmh_dynamic_smem_[]; \
  char* name = reinterpret_cast<char*>(tfmh_dynamic_smem_)
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>

// Vector float atomics (atomicAdd on float2 / float4 in global memory) exist
// from compute capability 9.0; the emulation has them too.
#if defined(TFMH_CUDA_EMULATION) || \
    (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900)
#define TFMH_VECTOR_ATOMICS 1
#else
#define TFMH_VECTOR_ATOMICS 0
#endif

#endif  // TENSORFLOW_MULTIHASH_GPU_KERNELS_CUDA_COMPAT_H_
