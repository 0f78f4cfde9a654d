// CPU emulation of the part of the CUDA toolkit that gpu_kernels/ uses, for
// builds by a host compiler (g++) with TFMH_CUDA_EMULATION defined; see
// gpu_kernels/cuda_compat.h. It lets the standalone test run the kernels'
// logic on machines without a GPU. Timings mean nothing.
//
// What it provides:
//   * The toolkit's host headers for the types (uint4, float4, dim3,
//     cudaError_t, cudaDeviceProp, ...) and the runtime API declarations;
//     cuda_emu_runtime.cc defines those functions over ordinary host memory
//     ("device" pointers are host pointers). Every call runs synchronously.
//   * Kernel qualifiers, threadIdx / blockIdx / blockDim / gridDim, warp
//     collectives (__shfl*_sync, __ballot_sync, __any_sync, __all_sync,
//     __match_any_sync, __match_all_sync, __syncwarp), __syncthreads,
//     atomics, load/store hints and bit intrinsics.
//   * TFMH_LAUNCH (cuda_emu_kernels.cc): runs the blocks of a grid one after
//     another (in index order, or shuffled: ShuffleBlocks /
//     TFMH_EMU_SHUFFLE_BLOCKS); within a block every thread is a cooperative
//     fiber that gives up the CPU only at a synchronization point
//     (__syncthreads, a warp collective), so atomics are plain
//     read-modify-writes. A block that can make no progress (a
//     __syncthreads in divergent code, a collective whose mask names a lane
//     that exited or waits elsewhere) is reported with the launch's name and
//     the process aborts.
//   * A CUB subset (cub_emu.h): DeviceRadixSort, DeviceScan, DeviceReduce,
//     DeviceRunLengthEncode.
//
// The emulated device has 4 multiprocessors (grids sized by SM count stay
// small); the environment variable TFMH_EMU_SMS=<1..1024> changes that.
//
// Built with -fsanitize=address, the fibers tell AddressSanitizer about
// their stacks, so an out-of-bounds access of a "device" buffer by a kernel
// is reported like any heap overflow: the emulation's memcheck.
//
// cuda_emu_test.cc checks these semantics (device_check.sh --emulate runs
// it before the kernels' test).
//
// Not emulated: concurrency between threads (one fiber runs at a time and
// switches only at synchronization points, so data races and missing memory
// fences go unseen), static __shared__ variables (a compile error; kernels
// use TFMH_DYNAMIC_SHARED), dynamic parallelism, textures, cooperative
// groups.
#ifndef TENSORFLOW_MULTIHASH_GPU_KERNELS_EMU_CUDA_EMU_H_
#define TENSORFLOW_MULTIHASH_GPU_KERNELS_EMU_CUDA_EMU_H_

#if defined(__CUDACC__)
#error "gpu_kernels/emu/cuda_emu.h is for host compilers; nvcc uses the toolkit"
#endif

// The toolkit's host headers. cuda_fp16.h and cuda_bf16.h include
// cuda_runtime_api.h (and with it vector_types.h and driver_types.h) anyway,
// so the emulation reuses those types and declarations and defines the
// functions in cuda_emu_runtime.cc. They are included before the macros
// below, which must not reach the toolkit's own code.
#include <cuda_runtime_api.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

// ------------------------------------------------------------ qualifiers
// crt/host_defines.h defines most of them as nothing for host compilers.
#ifndef __global__
#define __global__
#endif
#ifndef __device__
#define __device__
#endif
#ifndef __host__
#define __host__
#endif
#ifndef __forceinline__
#define __forceinline__ inline __attribute__((always_inline))
#endif
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#ifndef __grid_constant__
#define __grid_constant__
#endif
#ifndef __align__
#define __align__(n) __attribute__((aligned(n)))
#endif
#ifndef __constant__
#define __constant__
#endif
// A static __shared__ variable would silently become one variable per
// emulated thread; make it a compile error instead (use TFMH_DYNAMIC_SHARED).
#undef __shared__
#define __shared__ \
  TFMH_EMULATION_HAS_NO_STATIC_SHARED_MEMORY_use_TFMH_DYNAMIC_SHARED

constexpr int warpSize = 32;

namespace tfmh_emu {

// From this call on, the emulated runtime's copies and memsets accept any
// host address as device memory (by default only memory from cudaMalloc or
// cudaMallocHost). For callers whose buffers come from another allocator:
// the test build of the TensorFlow kernels, whose "device" tensors are
// TensorFlow's CPU tensors (gpu_kernels/emu/build_tf_emulation.sh).
void TreatAllHostMemoryAsDevice();

// Nonzero: every later launch runs its blocks in a fresh pseudo-random order
// (drawn from the seed and a count of launches); 0: in index order, the
// default unless the environment sets TFMH_EMU_SHUFFLE_BLOCKS=<seed>. A GPU
// promises no order, so results must not depend on it.
void ShuffleBlocks(uint64_t seed);

namespace internal {

// ------------------------------------------------------------ threads
// threadIdx, blockIdx, blockDim and gridDim of one emulated thread.
struct Coords {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};

// The running emulated thread's coordinates; null outside kernels.
extern thread_local const Coords* tls_coords;

// Reports a device-only facility used outside a kernel and aborts.
[[noreturn]] void NotInKernel(const char* what);

inline const Coords& CurrentCoords(const char* what) {
  const Coords* c = tls_coords;
  if (c == nullptr) NotInKernel(what);
  return *c;
}

// Reports a fatal misuse inside a kernel (with the launch, block and thread)
// and aborts.
[[noreturn]] void KernelFatal(const char* what);

// ------------------------------------------------------------ collectives
enum class WarpOp : int {
  kSyncWarp,
  kShflIdx,
  kShflUp,
  kShflDown,
  kShflXor,
  kBallot,
  kAny,
  kAll,
  kMatchAny,
  kMatchAll,
};

// One warp collective of the calling thread. It waits until every lane of
// `mask` has reached its matching collective (the n-th collective of each
// lane with this mask value), then every lane reads what the others
// deposited. Shuffles: `in` and `out` are `size` bytes (at most 16), `arg`
// the source lane / delta / lane mask and `width` the segment width. Votes:
// `in` is an int predicate and `out` an unsigned result. Matches: `in` is
// `size` bytes (4 or 8) and `out` an unsigned result.
void WarpCollective(WarpOp op, unsigned mask, const void* in, void* out,
                    int size, int arg, int width);

// __syncthreads and its reductions: kind 0 plain, 1 count, 2 and, 3 or.
int SyncThreads(int kind, int predicate);

// Lanes of the calling thread's warp that have not exited.
unsigned ActiveMask();

// The current block's dynamic shared memory (16-byte aligned).
char* DynamicShared();

// ------------------------------------------------------------ launches
// Where a kernel is launched: the kernel expression, file, line and the
// launching function, for messages.
struct LaunchSite {
  const char* kernel;
  const char* file;
  int line;
  const char* caller;
};

using ThreadMain = void (*)(const void* bound);

// Checks the configuration (an invalid one is recorded for cudaGetLastError
// and nothing runs), then runs every block of the grid in turn, calling
// thread_main(bound) on every emulated thread of the block.
void RunKernel(const LaunchSite& site, const void* kernel, dim3 grid,
               dim3 block, size_t shared_bytes, cudaStream_t stream,
               ThreadMain thread_main, const void* bound);

// The object that TFMH_LAUNCH(...) makes; calling it with the kernel's
// arguments converts them to the parameter types (as a <<<...>>> launch
// does) and runs the grid. Every emulated thread gets its own copy.
template <typename... P>
class Launch {
 public:
  using Kernel = void (*)(P...);

  Launch(const LaunchSite& site, dim3 grid, dim3 block, size_t shared_bytes,
         cudaStream_t stream, Kernel kernel)
      : site_(site),
        grid_(grid),
        block_(block),
        shared_bytes_(shared_bytes),
        stream_(stream),
        kernel_(kernel) {}

  template <typename... A>
  void operator()(A&&... args) const {
    static_assert(sizeof...(A) == sizeof...(P),
                  "TFMH_LAUNCH: wrong number of kernel arguments");
    const Bound bound{kernel_, Args(std::forward<A>(args)...)};
    RunKernel(site_, reinterpret_cast<const void*>(kernel_), grid_, block_,
              shared_bytes_, stream_, &RunThread, &bound);
  }

 private:
  using Args = std::tuple<std::decay_t<P>...>;
  struct Bound {
    Kernel kernel;
    Args args;
  };

  static void RunThread(const void* p) {
    const Bound& b = *static_cast<const Bound*>(p);
    Args copy = b.args;
    std::apply(b.kernel, std::move(copy));
  }

  LaunchSite site_;
  dim3 grid_, block_;
  size_t shared_bytes_;
  cudaStream_t stream_;
  Kernel kernel_;
};

template <typename... P>
Launch<P...> MakeLaunch(const LaunchSite& site, dim3 grid, dim3 block,
                        size_t shared_bytes, cudaStream_t stream,
                        void (*kernel)(P...)) {
  return Launch<P...>(site, grid, block, shared_bytes, stream, kernel);
}

template <typename T>
T BitCast(const void* p) {
  T r;
  std::memcpy(&r, p, sizeof(T));
  return r;
}

}  // namespace internal
}  // namespace tfmh_emu

#define threadIdx (::tfmh_emu::internal::CurrentCoords("threadIdx").thread_idx)
#define blockIdx (::tfmh_emu::internal::CurrentCoords("blockIdx").block_idx)
#define blockDim (::tfmh_emu::internal::CurrentCoords("blockDim").block_dim)
#define gridDim (::tfmh_emu::internal::CurrentCoords("gridDim").grid_dim)

// kernel<<<grid, block, shared_bytes, stream>>>(arguments...).
#define TFMH_LAUNCH(grid, block, shared_bytes, stream, ...)                \
  ::tfmh_emu::internal::MakeLaunch(                                        \
      ::tfmh_emu::internal::LaunchSite{#__VA_ARGS__, __FILE__, __LINE__,   \
                                       __PRETTY_FUNCTION__},               \
      (grid), (block), (shared_bytes), (stream), __VA_ARGS__)

// The block's dynamic shared memory as `char* name`; filled with a garbage
// byte pattern before every block.
#define TFMH_DYNAMIC_SHARED(name) \
  char* name = ::tfmh_emu::internal::DynamicShared()

// ------------------------------------------------------------ runtime C++
// The C++ overloads that cuda_runtime.h adds to the C API.
template <typename T>
inline cudaError_t cudaMalloc(T** dev_ptr, size_t size) {
  return ::cudaMalloc(reinterpret_cast<void**>(dev_ptr), size);
}
inline cudaError_t cudaMallocHost(void** ptr, size_t size,
                                  unsigned int flags) {
  return ::cudaHostAlloc(ptr, size, flags);
}
template <typename T>
inline cudaError_t cudaMallocHost(T** ptr, size_t size,
                                  unsigned int flags = 0) {
  return ::cudaHostAlloc(reinterpret_cast<void**>(ptr), size, flags);
}
template <typename T>
inline cudaError_t cudaHostAlloc(T** ptr, size_t size, unsigned int flags) {
  return ::cudaHostAlloc(reinterpret_cast<void**>(ptr), size, flags);
}
inline cudaError_t cudaEventCreate(cudaEvent_t* event, unsigned int flags) {
  return ::cudaEventCreateWithFlags(event, flags);
}
template <typename T>
inline cudaError_t cudaFuncSetAttribute(T* entry, cudaFuncAttribute attr,
                                        int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(entry), attr,
                                value);
}

// ------------------------------------------------------------ barriers
inline void __syncthreads() { ::tfmh_emu::internal::SyncThreads(0, 1); }
inline int __syncthreads_count(int predicate) {
  return ::tfmh_emu::internal::SyncThreads(1, predicate);
}
inline int __syncthreads_and(int predicate) {
  return ::tfmh_emu::internal::SyncThreads(2, predicate);
}
inline int __syncthreads_or(int predicate) {
  return ::tfmh_emu::internal::SyncThreads(3, predicate);
}
// Only one emulated thread runs at a time: fences only stop the compiler.
inline void __threadfence() { __asm__ __volatile__("" ::: "memory"); }
inline void __threadfence_block() { __asm__ __volatile__("" ::: "memory"); }
inline void __threadfence_system() { __asm__ __volatile__("" ::: "memory"); }
inline void __nanosleep(unsigned int) {}
[[noreturn]] inline void __trap() {
  ::tfmh_emu::internal::KernelFatal("__trap() called");
}

// ------------------------------------------------------------ warps
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::tfmh_emu::internal::WarpCollective(
      ::tfmh_emu::internal::WarpOp::kSyncWarp, mask, nullptr, nullptr, 0, 0,
      32);
}

inline unsigned __activemask() { return ::tfmh_emu::internal::ActiveMask(); }

namespace tfmh_emu {
namespace internal {
template <typename T>
T Shuffle(WarpOp op, unsigned mask, const T& var, int arg, int width) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 16,
                "shuffled values must be trivially copyable, at most 16 bytes");
  T out = var;
  WarpCollective(op, mask, &var, &out, static_cast<int>(sizeof(T)), arg,
                 width);
  return out;
}
inline unsigned Vote(WarpOp op, unsigned mask, int predicate) {
  unsigned out = 0;
  WarpCollective(op, mask, &predicate, &out, 0, 0, 32);
  return out;
}
template <typename T>
unsigned Match(WarpOp op, unsigned mask, const T& value) {
  static_assert(std::is_arithmetic<T>::value &&
                    (sizeof(T) == 4 || sizeof(T) == 8),
                "__match_*_sync takes 32- or 64-bit values");
  unsigned out = 0;
  WarpCollective(op, mask, &value, &out, static_cast<int>(sizeof(T)), 0, 32);
  return out;
}
}  // namespace internal
}  // namespace tfmh_emu

template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
  return ::tfmh_emu::internal::Shuffle(
      ::tfmh_emu::internal::WarpOp::kShflIdx, mask, var, src_lane, width);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned int delta,
                        int width = 32) {
  return ::tfmh_emu::internal::Shuffle(::tfmh_emu::internal::WarpOp::kShflUp,
                                       mask, var, static_cast<int>(delta),
                                       width);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned int delta,
                          int width = 32) {
  return ::tfmh_emu::internal::Shuffle(
      ::tfmh_emu::internal::WarpOp::kShflDown, mask, var,
      static_cast<int>(delta), width);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask,
                         int width = 32) {
  return ::tfmh_emu::internal::Shuffle(
      ::tfmh_emu::internal::WarpOp::kShflXor, mask, var, lane_mask, width);
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  return ::tfmh_emu::internal::Vote(::tfmh_emu::internal::WarpOp::kBallot,
                                    mask, predicate);
}
inline int __any_sync(unsigned mask, int predicate) {
  return static_cast<int>(::tfmh_emu::internal::Vote(
      ::tfmh_emu::internal::WarpOp::kAny, mask, predicate));
}
inline int __all_sync(unsigned mask, int predicate) {
  return static_cast<int>(::tfmh_emu::internal::Vote(
      ::tfmh_emu::internal::WarpOp::kAll, mask, predicate));
}
// The lanes of `mask` whose value equals the caller's (bitwise).
template <typename T>
inline unsigned __match_any_sync(unsigned mask, T value) {
  return ::tfmh_emu::internal::Match(::tfmh_emu::internal::WarpOp::kMatchAny,
                                     mask, value);
}
// `mask` if every lane of it has the same value (*pred = 1), else 0.
template <typename T>
inline unsigned __match_all_sync(unsigned mask, T value, int* pred) {
  const unsigned r = ::tfmh_emu::internal::Match(
      ::tfmh_emu::internal::WarpOp::kMatchAll, mask, value);
  *pred = r != 0 ? 1 : 0;
  return r;
}

// ------------------------------------------------------------ atomics
// One emulated thread runs at a time and switches only at synchronization
// points, so an atomic is a plain read-modify-write returning the old value.
#define TFMH_EMU_ATOMIC(name, type, expr) \
  inline type name(type* address, type val) { \
    const type old = *address;                \
    *address = (expr);                        \
    return old;                               \
  }
TFMH_EMU_ATOMIC(atomicAdd, int, old + val)
TFMH_EMU_ATOMIC(atomicAdd, unsigned int, old + val)
TFMH_EMU_ATOMIC(atomicAdd, unsigned long long, old + val)
TFMH_EMU_ATOMIC(atomicAdd, float, old + val)
TFMH_EMU_ATOMIC(atomicAdd, double, old + val)
TFMH_EMU_ATOMIC(atomicSub, int, old - val)
TFMH_EMU_ATOMIC(atomicSub, unsigned int, old - val)
TFMH_EMU_ATOMIC(atomicExch, int, val)
TFMH_EMU_ATOMIC(atomicExch, unsigned int, val)
TFMH_EMU_ATOMIC(atomicExch, unsigned long long, val)
TFMH_EMU_ATOMIC(atomicExch, float, val)
TFMH_EMU_ATOMIC(atomicMin, int, val < old ? val : old)
TFMH_EMU_ATOMIC(atomicMin, unsigned int, val < old ? val : old)
TFMH_EMU_ATOMIC(atomicMin, long long, val < old ? val : old)
TFMH_EMU_ATOMIC(atomicMin, unsigned long long, val < old ? val : old)
TFMH_EMU_ATOMIC(atomicMax, int, val > old ? val : old)
TFMH_EMU_ATOMIC(atomicMax, unsigned int, val > old ? val : old)
TFMH_EMU_ATOMIC(atomicMax, long long, val > old ? val : old)
TFMH_EMU_ATOMIC(atomicMax, unsigned long long, val > old ? val : old)
TFMH_EMU_ATOMIC(atomicAnd, int, old & val)
TFMH_EMU_ATOMIC(atomicAnd, unsigned int, old & val)
TFMH_EMU_ATOMIC(atomicAnd, unsigned long long, old & val)
TFMH_EMU_ATOMIC(atomicOr, int, old | val)
TFMH_EMU_ATOMIC(atomicOr, unsigned int, old | val)
TFMH_EMU_ATOMIC(atomicOr, unsigned long long, old | val)
TFMH_EMU_ATOMIC(atomicXor, int, old ^ val)
TFMH_EMU_ATOMIC(atomicXor, unsigned int, old ^ val)
TFMH_EMU_ATOMIC(atomicXor, unsigned long long, old ^ val)
TFMH_EMU_ATOMIC(atomicInc, unsigned int, old >= val ? 0u : old + 1u)
TFMH_EMU_ATOMIC(atomicDec, unsigned int,
                (old == 0u || old > val) ? val : old - 1u)
#undef TFMH_EMU_ATOMIC

// Vector float adds (sm_90): element-wise, returning the old vector.
inline float2 atomicAdd(float2* address, float2 val) {
  const float2 old = *address;
  *address = make_float2(old.x + val.x, old.y + val.y);
  return old;
}
inline float4 atomicAdd(float4* address, float4 val) {
  const float4 old = *address;
  *address = make_float4(old.x + val.x, old.y + val.y, old.z + val.z,
                         old.w + val.w);
  return old;
}

#define TFMH_EMU_ATOMIC_CAS(type)                                   \
  inline type atomicCAS(type* address, type compare, type val) {    \
    const type old = *address;                                      \
    if (old == compare) *address = val;                             \
    return old;                                                     \
  }
TFMH_EMU_ATOMIC_CAS(int)
TFMH_EMU_ATOMIC_CAS(unsigned int)
TFMH_EMU_ATOMIC_CAS(unsigned long long)
TFMH_EMU_ATOMIC_CAS(unsigned short)
#undef TFMH_EMU_ATOMIC_CAS

// ------------------------------------------------------------ loads, stores
// Cache hints mean nothing on the CPU.
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
template <typename T>
inline T __ldcg(const T* p) {
  return *p;
}
template <typename T>
inline T __ldca(const T* p) {
  return *p;
}
template <typename T>
inline T __ldcs(const T* p) {
  return *p;
}
template <typename T>
inline T __ldlu(const T* p) {
  return *p;
}
template <typename T>
inline T __ldcv(const T* p) {
  return *p;
}
template <typename T>
inline void __stwb(T* p, T v) {
  *p = v;
}
template <typename T>
inline void __stcg(T* p, T v) {
  *p = v;
}
template <typename T>
inline void __stcs(T* p, T v) {
  *p = v;
}
template <typename T>
inline void __stwt(T* p, T v) {
  *p = v;
}

// ------------------------------------------------------------ bits
inline float __uint_as_float(unsigned int x) {
  return ::tfmh_emu::internal::BitCast<float>(&x);
}
inline unsigned int __float_as_uint(float x) {
  return ::tfmh_emu::internal::BitCast<unsigned int>(&x);
}
inline float __int_as_float(int x) {
  return ::tfmh_emu::internal::BitCast<float>(&x);
}
inline int __float_as_int(float x) {
  return ::tfmh_emu::internal::BitCast<int>(&x);
}
inline double __longlong_as_double(long long x) {
  return ::tfmh_emu::internal::BitCast<double>(&x);
}
inline long long __double_as_longlong(double x) {
  return ::tfmh_emu::internal::BitCast<long long>(&x);
}
inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) {
  return x == 0 ? 32 : __builtin_clz(static_cast<unsigned int>(x));
}
inline int __clzll(long long x) {
  return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x));
}
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned int __brev(unsigned int x) {
  unsigned int r = 0;
  for (int i = 0; i < 32; ++i, x >>= 1) r = (r << 1) | (x & 1u);
  return r;
}
inline unsigned long long __brevll(unsigned long long x) {
  unsigned long long r = 0;
  for (int i = 0; i < 64; ++i, x >>= 1) r = (r << 1) | (x & 1ull);
  return r;
}
inline unsigned int __umulhi(unsigned int a, unsigned int b) {
  return static_cast<unsigned int>((static_cast<unsigned long long>(a) * b) >>
                                   32);
}
inline unsigned long long __umul64hi(unsigned long long a,
                                     unsigned long long b) {
  return static_cast<unsigned long long>(
      (static_cast<unsigned __int128>(a) * b) >> 64);
}

// ------------------------------------------------------------ min, max
// The overloads CUDA's math headers declare, so that an unqualified
// min(a, b) resolves (or is ambiguous) as it does under nvcc. Mixed signed
// and unsigned arguments compare as unsigned; floating point ones follow
// fmin / fmax (a NaN loses to a number).
#define TFMH_EMU_MINMAX(a_type, b_type, r_type)            \
  inline r_type min(a_type a, b_type b) {                  \
    const r_type x = static_cast<r_type>(a);               \
    const r_type y = static_cast<r_type>(b);               \
    return y < x ? y : x;                                  \
  }                                                        \
  inline r_type max(a_type a, b_type b) {                  \
    const r_type x = static_cast<r_type>(a);               \
    const r_type y = static_cast<r_type>(b);               \
    return y > x ? y : x;                                  \
  }
TFMH_EMU_MINMAX(int, int, int)
TFMH_EMU_MINMAX(unsigned int, unsigned int, unsigned int)
TFMH_EMU_MINMAX(int, unsigned int, unsigned int)
TFMH_EMU_MINMAX(unsigned int, int, unsigned int)
TFMH_EMU_MINMAX(long, long, long)
TFMH_EMU_MINMAX(unsigned long, unsigned long, unsigned long)
TFMH_EMU_MINMAX(long, unsigned long, unsigned long)
TFMH_EMU_MINMAX(unsigned long, long, unsigned long)
TFMH_EMU_MINMAX(long long, long long, long long)
TFMH_EMU_MINMAX(unsigned long long, unsigned long long, unsigned long long)
TFMH_EMU_MINMAX(long long, unsigned long long, unsigned long long)
TFMH_EMU_MINMAX(unsigned long long, long long, unsigned long long)
#undef TFMH_EMU_MINMAX
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
inline double min(float a, double b) { return std::fmin(a, b); }
inline double max(float a, double b) { return std::fmax(a, b); }
inline double min(double a, float b) { return std::fmin(a, b); }
inline double max(double a, float b) { return std::fmax(a, b); }

#include "gpu_kernels/emu/cub_emu.h"

#endif  // TENSORFLOW_MULTIHASH_GPU_KERNELS_EMU_CUDA_EMU_H_
