// CPU emulation of the CUDA runtime API (see cuda_emu.h): memory, streams,
// events, errors and the device's properties. "Device" memory is host memory;
// every call runs synchronously. Kernel execution is in cuda_emu_kernels.cc.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <string>

#include "gpu_kernels/emu/cuda_emu.h"
#include "gpu_kernels/emu/cuda_emu_internal.h"

// The opaque handles of the runtime API.
struct CUstream_st {
  unsigned int flags;
};
struct CUevent_st {
  std::chrono::steady_clock::time_point time;
  bool recorded;
};

namespace tfmh_emu {
namespace internal {

std::string Format(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  return buf;
}

// ------------------------------------------------------------ last error
namespace {
thread_local cudaError_t tls_last_error = cudaSuccess;
}  // namespace

cudaError_t Record(cudaError_t e) {
  if (e != cudaSuccess) tls_last_error = e;
  return e;
}

namespace {

// Records and prints an API misuse that a real GPU would also refuse.
cudaError_t Refuse(cudaError_t e, const std::string& what) {
  std::fprintf(stderr, "tfmh CUDA emulation: %s (%s)\n", what.c_str(),
               cudaGetErrorName(e));
  return Record(e);
}

// Multiprocessors reported: 4 keeps grids sized by the SM count small; the
// environment variable TFMH_EMU_SMS (1 to 1024) overrides it. Fewer SMs mean
// smaller grids, so grid-stride loops make more passes over small inputs.
int NumSMs() {
  static const int sms = [] {
    const char* env = std::getenv("TFMH_EMU_SMS");
    const int v = env != nullptr ? std::atoi(env) : 0;
    return v >= 1 && v <= 1024 ? v : 4;
  }();
  return sms;
}

// ------------------------------------------------------------ memory
// Every cudaMalloc / cudaMallocHost allocation, to check the device side of
// copies and memsets and to refuse frees of anything else.
struct Allocation {
  size_t bytes;
  bool pinned_host;
};
std::mutex g_alloc_mu;
std::map<uintptr_t, Allocation> g_allocs;

void* AllocAligned(size_t bytes) {
  void* p = nullptr;
  if (posix_memalign(&p, 256, bytes) != 0) return nullptr;
  std::memset(p, kGarbage, bytes);
  return p;
}

cudaError_t Allocate(void** ptr, size_t bytes, bool pinned_host,
                     const char* call) {
  if (ptr == nullptr) {
    return Refuse(cudaErrorInvalidValue, Format("%s(nullptr)", call));
  }
  *ptr = nullptr;
  if (bytes == 0) return cudaSuccess;
  if (bytes > kTotalGlobalMem) return Record(cudaErrorMemoryAllocation);
  void* p = AllocAligned(bytes);
  if (p == nullptr) return Record(cudaErrorMemoryAllocation);
  std::lock_guard<std::mutex> lock(g_alloc_mu);
  g_allocs[reinterpret_cast<uintptr_t>(p)] = Allocation{bytes, pinned_host};
  *ptr = p;
  return cudaSuccess;
}

cudaError_t Free(void* p, bool pinned_host, const char* call) {
  if (p == nullptr) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(g_alloc_mu);
    auto it = g_allocs.find(reinterpret_cast<uintptr_t>(p));
    if (it == g_allocs.end() || it->second.pinned_host != pinned_host) {
      return Refuse(
          cudaErrorInvalidValue,
          Format("%s(%p): not the start of a live %s allocation", call, p,
                 pinned_host ? "cudaMallocHost" : "cudaMalloc"));
    }
    g_allocs.erase(it);
  }
  std::free(p);
  return cudaSuccess;
}

// Set by TreatAllHostMemoryAsDevice().
std::atomic<bool> g_all_host_memory_is_device{false};

// Whether [p, p + bytes) lies inside one cudaMalloc or cudaMallocHost
// allocation (pinned host memory is device-accessible).
bool DeviceAccessible(const void* p, size_t bytes) {
  if (g_all_host_memory_is_device.load(std::memory_order_relaxed)) return true;
  const uintptr_t x = reinterpret_cast<uintptr_t>(p);
  std::lock_guard<std::mutex> lock(g_alloc_mu);
  auto it = g_allocs.upper_bound(x);
  if (it == g_allocs.begin()) return false;
  --it;
  return x - it->first <= it->second.bytes &&
         bytes <= it->second.bytes - (x - it->first);
}

cudaError_t CheckDevice(const void* p, size_t bytes, const char* call,
                        const char* which) {
  if (DeviceAccessible(p, bytes)) return cudaSuccess;
  return Refuse(cudaErrorInvalidValue,
                Format("%s: %s [%p, +%zu bytes) is not inside memory from "
                       "cudaMalloc or cudaMallocHost",
                       call, which, p, bytes));
}

cudaError_t Copy(void* dst, const void* src, size_t count,
                 cudaMemcpyKind kind, const char* call) {
  if (count == 0) return cudaSuccess;
  if (dst == nullptr || src == nullptr) {
    return Refuse(cudaErrorInvalidValue, Format("%s: null pointer", call));
  }
  cudaError_t e = cudaSuccess;
  switch (kind) {
    case cudaMemcpyHostToHost:
    case cudaMemcpyDefault:
      break;
    case cudaMemcpyHostToDevice:
      e = CheckDevice(dst, count, call, "destination");
      break;
    case cudaMemcpyDeviceToHost:
      e = CheckDevice(src, count, call, "source");
      break;
    case cudaMemcpyDeviceToDevice:
      e = CheckDevice(dst, count, call, "destination");
      if (e == cudaSuccess) e = CheckDevice(src, count, call, "source");
      break;
    default:
      return Refuse(cudaErrorInvalidMemcpyDirection,
                    Format("%s: bad cudaMemcpyKind %d", call,
                           static_cast<int>(kind)));
  }
  if (e != cudaSuccess) return e;
  std::memmove(dst, src, count);
  return cudaSuccess;
}

cudaError_t Set(void* p, int value, size_t count, const char* call) {
  if (count == 0) return cudaSuccess;
  cudaError_t e = CheckDevice(p, count, call, "destination");
  if (e != cudaSuccess) return e;
  std::memset(p, value, count);
  return cudaSuccess;
}

// ------------------------------------------------------------ streams
std::mutex g_handle_mu;
std::set<const void*> g_streams;
std::set<const void*> g_events;

}  // namespace

bool StreamOk(cudaStream_t s) {
  if (s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread) {
    return true;
  }
  std::lock_guard<std::mutex> lock(g_handle_mu);
  return g_streams.count(s) != 0;
}

namespace {

cudaError_t CheckStream(cudaStream_t s, const char* call) {
  if (StreamOk(s)) return cudaSuccess;
  return Refuse(cudaErrorInvalidResourceHandle,
                Format("%s: unknown or destroyed stream %p", call,
                       static_cast<void*>(s)));
}

bool EventOk(cudaEvent_t e) {
  std::lock_guard<std::mutex> lock(g_handle_mu);
  return e != nullptr && g_events.count(e) != 0;
}

// ------------------------------------------------------------ functions
// cudaFuncAttributeMaxDynamicSharedMemorySize of every kernel that set it.
std::mutex g_func_mu;
std::map<const void*, size_t> g_func_shared_optin;

}  // namespace

size_t DynamicSharedLimit(const void* kernel) {
  std::lock_guard<std::mutex> lock(g_func_mu);
  auto it = g_func_shared_optin.find(kernel);
  return it == g_func_shared_optin.end()
             ? kSharedPerBlock
             : std::max(kSharedPerBlock, it->second);
}

}  // namespace internal

void TreatAllHostMemoryAsDevice() {
  internal::g_all_host_memory_is_device.store(true, std::memory_order_relaxed);
}

}  // namespace tfmh_emu

// ---------------------------------------------------------------- cub
namespace cub {
namespace emu_detail {
cudaError_t Refuse(const char* call, const char* what) {
  std::fprintf(stderr, "tfmh CUDA emulation: cub::%s: %s\n", call, what);
  return cudaErrorInvalidValue;
}
}  // namespace emu_detail
}  // namespace cub

// ---------------------------------------------------------------- runtime API
using tfmh_emu::internal::Allocate;
using tfmh_emu::internal::CheckStream;
using tfmh_emu::internal::Format;
using tfmh_emu::internal::Record;
using tfmh_emu::internal::Refuse;

extern "C" {

cudaError_t cudaMalloc(void** dev_ptr, size_t size) {
  return Allocate(dev_ptr, size, false, "cudaMalloc");
}

cudaError_t cudaFree(void* dev_ptr) {
  return tfmh_emu::internal::Free(dev_ptr, false, "cudaFree");
}

cudaError_t cudaMallocHost(void** ptr, size_t size) {
  return Allocate(ptr, size, true, "cudaMallocHost");
}

cudaError_t cudaHostAlloc(void** ptr, size_t size, unsigned int flags) {
  (void)flags;
  return Allocate(ptr, size, true, "cudaHostAlloc");
}

cudaError_t cudaFreeHost(void* ptr) {
  return tfmh_emu::internal::Free(ptr, true, "cudaFreeHost");
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count,
                       cudaMemcpyKind kind) {
  return tfmh_emu::internal::Copy(dst, src, count, kind, "cudaMemcpy");
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count,
                            cudaMemcpyKind kind, cudaStream_t stream) {
  cudaError_t e = CheckStream(stream, "cudaMemcpyAsync");
  if (e != cudaSuccess) return e;
  return tfmh_emu::internal::Copy(dst, src, count, kind, "cudaMemcpyAsync");
}

cudaError_t cudaMemset(void* dev_ptr, int value, size_t count) {
  return tfmh_emu::internal::Set(dev_ptr, value, count, "cudaMemset");
}

cudaError_t cudaMemsetAsync(void* dev_ptr, int value, size_t count,
                            cudaStream_t stream) {
  cudaError_t e = CheckStream(stream, "cudaMemsetAsync");
  if (e != cudaSuccess) return e;
  return tfmh_emu::internal::Set(dev_ptr, value, count, "cudaMemsetAsync");
}

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  if (free_bytes == nullptr || total_bytes == nullptr) {
    return Record(cudaErrorInvalidValue);
  }
  *total_bytes = tfmh_emu::internal::kTotalGlobalMem;
  *free_bytes = tfmh_emu::internal::kTotalGlobalMem;
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithPriority(cudaStream_t* stream,
                                         unsigned int flags, int priority) {
  (void)priority;
  if (stream == nullptr) return Record(cudaErrorInvalidValue);
  *stream = new CUstream_st{flags};
  std::lock_guard<std::mutex> lock(tfmh_emu::internal::g_handle_mu);
  tfmh_emu::internal::g_streams.insert(*stream);
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream,
                                      unsigned int flags) {
  return cudaStreamCreateWithPriority(stream, flags, 0);
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  return cudaStreamCreateWithPriority(stream, cudaStreamDefault, 0);
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  {
    std::lock_guard<std::mutex> lock(tfmh_emu::internal::g_handle_mu);
    if (stream == nullptr || tfmh_emu::internal::g_streams.erase(stream) == 0) {
      return Record(cudaErrorInvalidResourceHandle);
    }
  }
  delete stream;
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  return CheckStream(stream, "cudaStreamSynchronize");
}

cudaError_t cudaStreamQuery(cudaStream_t stream) {
  return CheckStream(stream, "cudaStreamQuery");
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event,
                                unsigned int flags) {
  (void)flags;
  cudaError_t e = CheckStream(stream, "cudaStreamWaitEvent");
  if (e != cudaSuccess) return e;
  if (!tfmh_emu::internal::EventOk(event)) {
    return Record(cudaErrorInvalidResourceHandle);
  }
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }

cudaError_t cudaDeviceReset(void) { return cudaSuccess; }

cudaError_t cudaGetDeviceCount(int* count) {
  if (count == nullptr) return Record(cudaErrorInvalidValue);
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  if (device == nullptr) return Record(cudaErrorInvalidValue);
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  return device == 0 ? cudaSuccess : Record(cudaErrorInvalidDevice);
}

cudaError_t cudaDriverGetVersion(int* version) {
  if (version == nullptr) return Record(cudaErrorInvalidValue);
  *version = CUDART_VERSION;
  return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int* version) {
  if (version == nullptr) return Record(cudaErrorInvalidValue);
  *version = CUDART_VERSION;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr,
                                   int device) {
  namespace emu = tfmh_emu::internal;
  if (value == nullptr) return Record(cudaErrorInvalidValue);
  if (device != 0) return Record(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = emu::NumSMs(); break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *value = static_cast<int>(emu::kSharedPerBlockOptin);
      break;
    case cudaDevAttrMaxSharedMemoryPerBlock:
      *value = static_cast<int>(emu::kSharedPerBlock);
      break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor:
      *value = static_cast<int>(emu::kSharedPerSM);
      break;
    case cudaDevAttrMaxThreadsPerBlock:
      *value = emu::kMaxThreadsPerBlock;
      break;
    case cudaDevAttrMaxBlockDimX: *value = 1024; break;
    case cudaDevAttrMaxBlockDimY: *value = 1024; break;
    case cudaDevAttrMaxBlockDimZ: *value = 64; break;
    case cudaDevAttrMaxGridDimX: *value = 0x7fffffff; break;
    case cudaDevAttrMaxGridDimY: *value = 65535; break;
    case cudaDevAttrMaxGridDimZ: *value = 65535; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrL2CacheSize: *value = emu::kL2Bytes; break;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = 2048; break;
    case cudaDevAttrMaxBlocksPerMultiprocessor: *value = 32; break;
    case cudaDevAttrMaxRegistersPerBlock: *value = 65536; break;
    case cudaDevAttrMaxRegistersPerMultiprocessor: *value = 65536; break;
    case cudaDevAttrTotalConstantMemory: *value = 65536; break;
    case cudaDevAttrGlobalMemoryBusWidth: *value = 5120; break;
    case cudaDevAttrClockRate: *value = 1980000; break;
    case cudaDevAttrMemoryClockRate: *value = 2619000; break;
    case cudaDevAttrConcurrentKernels: *value = 1; break;
    case cudaDevAttrUnifiedAddressing: *value = 1; break;
    case cudaDevAttrIntegrated: *value = 0; break;
    case cudaDevAttrAsyncEngineCount: *value = 2; break;
    default:
      return Refuse(
          cudaErrorInvalidValue,
          Format("cudaDeviceGetAttribute: attribute %d is not emulated",
                 static_cast<int>(attr)));
  }
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  namespace emu = tfmh_emu::internal;
  if (prop == nullptr) return Record(cudaErrorInvalidValue);
  if (device != 0) return Record(cudaErrorInvalidDevice);
  std::memset(prop, 0, sizeof(*prop));
  std::snprintf(prop->name, sizeof(prop->name), "%s", emu::kDeviceName);
  prop->totalGlobalMem = emu::kTotalGlobalMem;
  prop->sharedMemPerBlock = emu::kSharedPerBlock;
  prop->sharedMemPerBlockOptin = emu::kSharedPerBlockOptin;
  prop->sharedMemPerMultiprocessor = emu::kSharedPerSM;
  prop->regsPerBlock = 65536;
  prop->regsPerMultiprocessor = 65536;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = emu::kMaxThreadsPerBlock;
  prop->maxThreadsDim[0] = 1024;
  prop->maxThreadsDim[1] = 1024;
  prop->maxThreadsDim[2] = 64;
  prop->maxGridSize[0] = 0x7fffffff;
  prop->maxGridSize[1] = 65535;
  prop->maxGridSize[2] = 65535;
  prop->totalConstMem = 65536;
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = emu::NumSMs();
  prop->l2CacheSize = emu::kL2Bytes;
  prop->maxThreadsPerMultiProcessor = 2048;
  prop->maxBlocksPerMultiProcessor = 32;
  prop->memoryBusWidth = 5120;
  prop->concurrentKernels = 1;
  prop->unifiedAddressing = 1;
  prop->asyncEngineCount = 2;
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr,
                                 int value) {
  namespace emu = tfmh_emu::internal;
  if (func == nullptr) return Record(cudaErrorInvalidDeviceFunction);
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || static_cast<size_t>(value) > emu::kSharedPerBlockOptin) {
      return Refuse(cudaErrorInvalidValue,
                    Format("cudaFuncSetAttribute: %d bytes of dynamic shared "
                           "memory (at most %zu)",
                           value, emu::kSharedPerBlockOptin));
    }
    std::lock_guard<std::mutex> lock(emu::g_func_mu);
    emu::g_func_shared_optin[func] = static_cast<size_t>(value);
  }
  return cudaSuccess;
}

cudaError_t cudaGetLastError(void) {
  const cudaError_t e = tfmh_emu::internal::tls_last_error;
  tfmh_emu::internal::tls_last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError(void) {
  return tfmh_emu::internal::tls_last_error;
}

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
#define TFMH_EMU_ERROR_NAME(e) \
  case e:                      \
    return #e;
    TFMH_EMU_ERROR_NAME(cudaSuccess)
    TFMH_EMU_ERROR_NAME(cudaErrorInvalidValue)
    TFMH_EMU_ERROR_NAME(cudaErrorMemoryAllocation)
    TFMH_EMU_ERROR_NAME(cudaErrorInitializationError)
    TFMH_EMU_ERROR_NAME(cudaErrorLaunchFailure)
    TFMH_EMU_ERROR_NAME(cudaErrorLaunchOutOfResources)
    TFMH_EMU_ERROR_NAME(cudaErrorInvalidConfiguration)
    TFMH_EMU_ERROR_NAME(cudaErrorInvalidDevice)
    TFMH_EMU_ERROR_NAME(cudaErrorInvalidDeviceFunction)
    TFMH_EMU_ERROR_NAME(cudaErrorInvalidMemcpyDirection)
    TFMH_EMU_ERROR_NAME(cudaErrorInvalidResourceHandle)
    TFMH_EMU_ERROR_NAME(cudaErrorNotReady)
    TFMH_EMU_ERROR_NAME(cudaErrorNotSupported)
    TFMH_EMU_ERROR_NAME(cudaErrorIllegalAddress)
    TFMH_EMU_ERROR_NAME(cudaErrorNoDevice)
    TFMH_EMU_ERROR_NAME(cudaErrorUnknown)
#undef TFMH_EMU_ERROR_NAME
    default:
      return "cudaErrorUnrecognized";
  }
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInitializationError: return "initialization error";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorLaunchOutOfResources:
      return "too many resources requested for launch";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
    case cudaErrorInvalidMemcpyDirection:
      return "invalid copy direction for memcpy";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorNotSupported: return "operation not supported";
    case cudaErrorIllegalAddress:
      return "an illegal memory access was encountered";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorUnknown: return "unknown error";
    default: return "unrecognized error code";
  }
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int flags) {
  (void)flags;
  if (event == nullptr) return Record(cudaErrorInvalidValue);
  *event = new CUevent_st{{}, false};
  std::lock_guard<std::mutex> lock(tfmh_emu::internal::g_handle_mu);
  tfmh_emu::internal::g_events.insert(*event);
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  return cudaEventCreateWithFlags(event, cudaEventDefault);
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  {
    std::lock_guard<std::mutex> lock(tfmh_emu::internal::g_handle_mu);
    if (event == nullptr || tfmh_emu::internal::g_events.erase(event) == 0) {
      return Record(cudaErrorInvalidResourceHandle);
    }
  }
  delete event;
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  cudaError_t e = CheckStream(stream, "cudaEventRecord");
  if (e != cudaSuccess) return e;
  if (!tfmh_emu::internal::EventOk(event)) {
    return Record(cudaErrorInvalidResourceHandle);
  }
  event->time = std::chrono::steady_clock::now();
  event->recorded = true;
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  if (!tfmh_emu::internal::EventOk(event)) {
    return Record(cudaErrorInvalidResourceHandle);
  }
  return cudaSuccess;
}

cudaError_t cudaEventQuery(cudaEvent_t event) {
  return cudaEventSynchronize(event);
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start,
                                 cudaEvent_t end) {
  if (ms == nullptr) return Record(cudaErrorInvalidValue);
  if (!tfmh_emu::internal::EventOk(start) ||
      !tfmh_emu::internal::EventOk(end) || !start->recorded ||
      !end->recorded) {
    return Record(cudaErrorInvalidResourceHandle);
  }
  *ms = std::chrono::duration<float, std::milli>(end->time - start->time)
            .count();
  return cudaSuccess;
}

}  // extern "C"
