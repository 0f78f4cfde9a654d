// What cuda_emu_runtime.cc (the runtime API) and cuda_emu_kernels.cc (kernel
// execution) share: the emulated device's limits and a few helpers. Internal
// to the emulation; kernels and tests include cuda_emu.h only.
#ifndef TENSORFLOW_MULTIHASH_GPU_KERNELS_EMU_CUDA_EMU_INTERNAL_H_
#define TENSORFLOW_MULTIHASH_GPU_KERNELS_EMU_CUDA_EMU_INTERNAL_H_

#include <cstddef>
#include <string>

#include "gpu_kernels/emu/cuda_emu.h"

namespace tfmh_emu {
namespace internal {

// What the emulated device reports.
constexpr char kDeviceName[] = "CPU emulation (gpu_kernels/emu)";
constexpr int kMaxThreadsPerBlock = 1024;
constexpr size_t kSharedPerBlock = 48 * 1024;          // without opt-in
constexpr size_t kSharedPerBlockOptin = 227 * 1024;    // as on H100
constexpr size_t kSharedPerSM = 228 * 1024;
constexpr size_t kTotalGlobalMem = size_t{16} << 30;
constexpr int kL2Bytes = 50 * 1024 * 1024;
constexpr unsigned char kGarbage = 0xA5;  // fresh memory and shared memory

// printf into a std::string (at most 1023 characters).
std::string Format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// Records a runtime error for cudaGetLastError; returns it.
cudaError_t Record(cudaError_t e);

// Whether `s` is the default stream, a per-thread or legacy stream, or a
// live one from cudaStreamCreate*.
bool StreamOk(cudaStream_t s);

// The most dynamic shared memory a launch of `kernel` may ask for: 48 KiB,
// or what cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize)
// set for it.
size_t DynamicSharedLimit(const void* kernel);

}  // namespace internal
}  // namespace tfmh_emu

#endif  // TENSORFLOW_MULTIHASH_GPU_KERNELS_EMU_CUDA_EMU_INTERNAL_H_
