// Self-test of the CPU emulation of CUDA (gpu_kernels/emu): the semantics
// the kernels of gpu_kernels/ rely on, checked against values worked out by
// hand from the CUDA programming guide, plus the failures the emulation must
// report (deadlocks and collective misuse, run in child processes).
//
// Build: g++ -std=c++17 -DTFMH_CUDA_EMULATION -I. -I<cuda>/include
//        gpu_kernels/emu/cuda_emu_test.cc gpu_kernels/emu/cuda_emu_runtime.cc
//        gpu_kernels/emu/cuda_emu_kernels.cc
// Prints one line per check and "N passed, M failed"; exits 1 on a failure.
#include "gpu_kernels/cuda_compat.h"

#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

int g_passed = 0, g_failed = 0;

void Check(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "PASS" : "FAIL", what.c_str());
  std::fflush(stdout);
  ++(ok ? g_passed : g_failed);
}

template <typename T>
T* DeviceAlloc(size_t n) {
  T* p = nullptr;
  if (cudaMalloc(&p, n * sizeof(T)) != cudaSuccess) std::abort();
  return p;
}

// ------------------------------------------------------------ shuffles
constexpr int kShflOut = 10;

struct Wide {
  unsigned long long a, b;
};

__global__ void ShuffleKernel(int* out, unsigned long long* out64,
                              Wide* out_wide) {
  const int t = threadIdx.x;
  const int lane = t & 31;
  const int v = 100 * (t >> 5) + lane;
  const unsigned full = 0xffffffffu;
  int* o = out + t * kShflOut;
  o[0] = __shfl_sync(full, v, (lane + 5) & 31);
  o[1] = __shfl_sync(full, v, 11, 8);    // lane (lane & ~7) | 3
  o[2] = __shfl_up_sync(full, v, 3, 16);
  o[3] = __shfl_down_sync(full, v, 5, 16);
  o[4] = __shfl_xor_sync(full, v, 9);
  o[5] = __shfl_xor_sync(full, v, 4, 8);
  // Groups of 8 lanes with their own masks; only group 1 makes an extra
  // shuffle first, so matching must go per mask, not per warp.
  const unsigned group = 0xffu << (lane & ~7);
  int w = v;
  if ((lane >> 3) == 1) w = __shfl_sync(group, w, 7, 8);
  o[6] = __shfl_sync(group, w, 2, 8);
  // Full-mask shuffles in divergent branches pair with each other.
  if (lane < 16) {
    o[7] = __shfl_sync(full, v, 20);
  } else {
    o[7] = __shfl_sync(full, v, 3);
  }
  o[8] = static_cast<int>(__ballot_sync(full, lane % 3 == 0));
  o[9] = __any_sync(full, lane == 31) + 2 * __all_sync(full, lane < 31) +
         4 * __all_sync(group, lane >= 0);
  const unsigned long long v64 = static_cast<unsigned long long>(v);
  out64[t] = __shfl_sync(full, (1ull << 40) + v64, 31 - lane);
  out_wide[t] = __shfl_down_sync(full, Wide{v64, 7ull}, 1);
}

void TestShuffles() {
  const int n = 64;
  int* d = DeviceAlloc<int>(n * kShflOut);
  unsigned long long* d64 = DeviceAlloc<unsigned long long>(n);
  Wide* dw = DeviceAlloc<Wide>(n);
  TFMH_LAUNCH(1, n, 0, 0, ShuffleKernel)(d, d64, dw);
  Check(cudaGetLastError() == cudaSuccess, "shuffle kernel launches");
  std::vector<int> h(n * kShflOut);
  std::vector<unsigned long long> h64(n);
  std::vector<Wide> hw(n);
  cudaMemcpy(h.data(), d, h.size() * sizeof(int), cudaMemcpyDeviceToHost);
  cudaMemcpy(h64.data(), d64, n * 8, cudaMemcpyDeviceToHost);
  cudaMemcpy(hw.data(), dw, n * sizeof(Wide), cudaMemcpyDeviceToHost);
  bool ok[kShflOut + 2] = {};
  for (int k = 0; k < kShflOut + 2; ++k) ok[k] = true;
  for (int t = 0; t < n; ++t) {
    const int lane = t & 31, base = 100 * (t >> 5);
    auto val = [&](int l) { return base + l; };
    const int* o = &h[t * kShflOut];
    const int seg8 = lane & ~7, seg16 = lane & ~15;
    const int want[kShflOut] = {
        val((lane + 5) & 31),
        val(seg8 | 3),
        lane - 3 >= seg16 ? val(lane - 3) : val(lane),
        lane + 5 <= seg16 + 15 ? val(lane + 5) : val(lane),
        val(lane ^ 9),
        val(lane ^ 4),
        (lane >> 3) == 1 ? val(15) : val(seg8 + 2),
        lane < 16 ? val(20) : val(3),
        static_cast<int>(0x49249249u),  // lanes 0, 3, 6, ..., 30
        1 + 0 + 4,
    };
    for (int k = 0; k < kShflOut; ++k) ok[k] = ok[k] && o[k] == want[k];
    const unsigned long long want64 =
        (1ull << 40) + static_cast<unsigned long long>(val(31 - lane));
    ok[kShflOut] = ok[kShflOut] && h64[t] == want64;
    const int src = lane == 31 ? lane : lane + 1;
    ok[kShflOut + 1] = ok[kShflOut + 1] &&
                       hw[t].a == static_cast<unsigned long long>(val(src)) &&
                       hw[t].b == 7;
  }
  const char* names[kShflOut + 2] = {
      "__shfl_sync full width", "__shfl_sync width 8 (src 11 -> 3)",
      "__shfl_up_sync width 16", "__shfl_down_sync width 16",
      "__shfl_xor_sync", "__shfl_xor_sync width 8",
      "8-lane group masks pair per mask",
      "full-mask shuffles in divergent branches",
      "__ballot_sync", "__any_sync / __all_sync",
      "64-bit shuffle", "16-byte struct shuffle"};
  for (int k = 0; k < kShflOut + 2; ++k) Check(ok[k], names[k]);
  cudaFree(d);
  cudaFree(d64);
  cudaFree(dw);
}

// ------------------------------------------------------------ matches
__global__ void MatchKernel(unsigned* out) {
  const int lane = threadIdx.x & 31;
  // 64-bit keys shared by lanes {l : l % 5 == lane % 5}; the high word
  // differs only between warps, so it must take part in the comparison.
  const unsigned long long key =
      (static_cast<unsigned long long>(threadIdx.x >> 5) << 32) | (lane % 5);
  out[threadIdx.x] = __match_any_sync(0xffffffffu, key);
  int pred = -1;
  const unsigned group = 0xffu << (lane & ~7);
  const int value = (lane >> 3) == 2 ? 7 : lane;
  const unsigned all = __match_all_sync(group, value, &pred);
  out[64 + threadIdx.x] = all;
  out[128 + threadIdx.x] = static_cast<unsigned>(pred);
}

void TestMatches() {
  unsigned* d = DeviceAlloc<unsigned>(192);
  TFMH_LAUNCH(1, 64, 0, 0, MatchKernel)(d);
  std::vector<unsigned> h(192);
  cudaMemcpy(h.data(), d, h.size() * sizeof(unsigned), cudaMemcpyDeviceToHost);
  bool any = true, all = true;
  for (int t = 0; t < 64; ++t) {
    const int lane = t & 31;
    unsigned want = 0;
    for (int m = 0; m < 32; ++m) {
      if (m % 5 == lane % 5) want |= 1u << m;
    }
    any = any && h[t] == want;
    const bool same = (lane >> 3) == 2;  // only group 2 holds one value
    all = all && h[64 + t] == (same ? 0xffu << 16 : 0u) &&
          h[128 + t] == (same ? 1u : 0u);
  }
  Check(any, "__match_any_sync (64-bit keys)");
  Check(all, "__match_all_sync (8-lane groups)");
  cudaFree(d);
}

// ------------------------------------------------------------ barriers
__global__ void BarrierKernel(int* out, int live) {
  TFMH_DYNAMIC_SHARED(smem);
  int* s = reinterpret_cast<int*>(smem);
  const int t = threadIdx.x;
  const int n = blockDim.x;
  // The first word is garbage until written: the emulation's 0xA5 pattern.
  if (t == 0) out[4 * n] = s[0];
  __syncthreads();
  s[t] = 1000 * blockIdx.x + t;
  __syncthreads();
  out[t] = s[(t + 1) % n];  // a neighbour's write, visible after the barrier
  out[n + t] = __syncthreads_count(t % 3 == 0);
  out[2 * n + t] = __syncthreads_and(t < n) + 2 * __syncthreads_or(t == 5);
  if (t >= live) return;  // exited threads no longer hold barriers back
  __syncthreads();
  out[3 * n + t] = atomicAdd(reinterpret_cast<int*>(out + 4 * n + 1), 1) >= 0;
  if (t == 0) {
    out[4 * n + 2] = static_cast<int>(reinterpret_cast<uintptr_t>(smem) % 16);
  }
}

void TestBarriers() {
  const int n = 96;
  int* d = DeviceAlloc<int>(4 * n + 3);
  cudaMemset(d, 0, (4 * n + 3) * sizeof(int));
  TFMH_LAUNCH(2, n, n * sizeof(int), 0, BarrierKernel)(d, 40);
  std::vector<int> h(4 * n + 3);
  cudaMemcpy(h.data(), d, h.size() * sizeof(int), cudaMemcpyDeviceToHost);
  bool neighbour = true, count = true, and_or = true, after_exit = true;
  const int last = h[0] / 1000;  // the block that ran last wrote out[0..n)
  for (int t = 0; t < n; ++t) {
    neighbour = neighbour && h[t] == 1000 * last + (t + 1) % n;
    count = count && h[n + t] == 32;
    and_or = and_or && h[2 * n + t] == 3;
    after_exit = after_exit && h[3 * n + t] == (t < 40 ? 1 : 0);
  }
  Check(static_cast<unsigned>(h[4 * n]) == 0xA5A5A5A5u,
        "dynamic shared memory starts as 0xA5 garbage");
  Check(neighbour, "__syncthreads orders shared memory writes and reads");
  Check(count, "__syncthreads_count");
  Check(and_or, "__syncthreads_and / __syncthreads_or");
  Check(after_exit && h[4 * n + 1] == 80,
        "__syncthreads after some threads exited; atomicAdd");
  Check(h[4 * n + 2] == 0, "dynamic shared memory is 16-byte aligned");
  cudaFree(d);
}

// ------------------------------------------------------------ atomics etc.
__global__ void AtomicKernel(unsigned long long* u, float4* f4, int* i) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  atomicMin(u, static_cast<unsigned long long>(1000 - t));
  atomicMax(u + 1, static_cast<unsigned long long>(t));
  atomicAdd(u + 2, 1ull);
  atomicAdd(f4, make_float4(1.f, 2.f, 0.5f, -1.f));
  // Only the first thread's swap succeeds: thread 0 of the block that runs
  // first (blocks may run in any order).
  atomicCAS(i, 0, t + 1);
  atomicOr(reinterpret_cast<unsigned*>(i + 1), 1u << (t % 32));
  i[2 + t] = min(int64_t{t}, int64_t{100}) + max(t, 50) * 1000;
}

void TestAtomics() {
  const int n = 200;
  unsigned long long* u = DeviceAlloc<unsigned long long>(3);
  float4* f4 = DeviceAlloc<float4>(1);
  int* i = DeviceAlloc<int>(2 + n);
  const unsigned long long init[3] = {~0ull, 0, 0};
  cudaMemcpy(u, init, sizeof(init), cudaMemcpyHostToDevice);
  cudaMemset(f4, 0, sizeof(float4));
  cudaMemset(i, 0, 2 * sizeof(int));
  TFMH_LAUNCH(dim3(2), dim3(100), 0, 0, AtomicKernel)(u, f4, i);
  unsigned long long hu[3];
  float4 hf;
  std::vector<int> hi(2 + n);
  cudaMemcpy(hu, u, sizeof(hu), cudaMemcpyDeviceToHost);
  cudaMemcpy(&hf, f4, sizeof(hf), cudaMemcpyDeviceToHost);
  cudaMemcpy(hi.data(), i, hi.size() * sizeof(int), cudaMemcpyDeviceToHost);
  Check(hu[0] == 1000 - 199 && hu[1] == 199 && hu[2] == 200,
        "atomicMin / atomicMax / atomicAdd (unsigned long long)");
  Check(hf.x == 200.f && hf.y == 400.f && hf.z == 100.f && hf.w == -200.f,
        "atomicAdd (float4)");
  Check((hi[0] == 1 || hi[0] == 101) &&
            static_cast<unsigned>(hi[1]) == 0xffffffffu,
        "atomicCAS / atomicOr");
  bool mm = true;
  for (int t = 0; t < n; ++t) {
    mm = mm && hi[2 + t] == std::min(t, 100) + std::max(t, 50) * 1000;
  }
  Check(mm, "device min / max overloads");
  cudaFree(u);
  cudaFree(f4);
  cudaFree(i);
}

// ------------------------------------------------------------ launches
__global__ void WriteKernel(int* p) {
  p[blockIdx.x * blockDim.x + threadIdx.x] = 1;
}

void TestLaunchErrors() {
  int* d = DeviceAlloc<int>(2048);
  cudaGetLastError();
  TFMH_LAUNCH(1, 1025, 0, 0, WriteKernel)(d);
  Check(cudaPeekAtLastError() == cudaErrorInvalidConfiguration &&
            cudaGetLastError() == cudaErrorInvalidConfiguration &&
            cudaGetLastError() == cudaSuccess,
        "block of 1025 threads refused; cudaGetLastError clears the error");
  TFMH_LAUNCH(0, 32, 0, 0, WriteKernel)(d);
  Check(cudaGetLastError() == cudaErrorInvalidConfiguration,
        "grid of 0 refused");
  TFMH_LAUNCH(1, 32, 64 * 1024, 0, WriteKernel)(d);
  Check(cudaGetLastError() == cudaErrorInvalidValue,
        "64 KB of shared memory refused without the opt-in");
  Check(cudaFuncSetAttribute(WriteKernel,
                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                             100 * 1024) == cudaSuccess,
        "cudaFuncSetAttribute opt-in");
  cudaMemset(d, 0, 2048 * sizeof(int));
  TFMH_LAUNCH(2, 32, 64 * 1024, 0, WriteKernel)(d);
  int h[64];
  cudaMemcpy(h, d, sizeof(h), cudaMemcpyDeviceToHost);
  bool all = cudaGetLastError() == cudaSuccess;
  for (int k = 0; k < 64; ++k) all = all && h[k] == 1;
  Check(all, "64 KB of shared memory after the opt-in");
  TFMH_LAUNCH(1, 32, 228 * 1024, 0, WriteKernel)(d);
  Check(cudaGetLastError() == cudaErrorInvalidValue,
        "228 KB of shared memory refused");
  int sms = 0;
  const char* env_sms = std::getenv("TFMH_EMU_SMS");
  const int want_sms = env_sms != nullptr ? std::atoi(env_sms) : 4;
  Check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0) ==
                cudaSuccess &&
            sms == want_sms,
        "multiprocessor count (4, or TFMH_EMU_SMS)");
  Check(cudaMemcpy(h, d + 2040, 64 * sizeof(int), cudaMemcpyDeviceToHost) ==
            cudaErrorInvalidValue,
        "cudaMemcpy past the end of an allocation refused");
  cudaGetLastError();
  cudaFree(d);
}

// ------------------------------------------------------------ cub
void TestCub() {
  const int n = 1000;
  std::vector<uint32_t> keys(n), vals(n);
  for (int i = 0; i < n; ++i) {
    keys[i] = (static_cast<uint32_t>(i) * 2654435761u) & 0xffffu;
    vals[i] = static_cast<uint32_t>(i);
  }
  uint32_t* dk = DeviceAlloc<uint32_t>(n);
  uint32_t* dko = DeviceAlloc<uint32_t>(n);
  uint32_t* dv = DeviceAlloc<uint32_t>(n);
  uint32_t* dvo = DeviceAlloc<uint32_t>(n);
  cudaMemcpy(dk, keys.data(), n * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(dv, vals.data(), n * 4, cudaMemcpyHostToDevice);
  size_t bytes = 0;
  // Bits [4, 12) only: a stable sort by that field.
  cub::DeviceRadixSort::SortPairs(nullptr, bytes, dk, dko, dv, dvo, n, 4, 12);
  void* temp = nullptr;
  cudaMalloc(&temp, bytes);
  const cudaError_t e = cub::DeviceRadixSort::SortPairs(
      temp, bytes, dk, dko, dv, dvo, n, 4, 12);
  std::vector<uint32_t> ko(n), vo(n);
  cudaMemcpy(ko.data(), dko, n * 4, cudaMemcpyDeviceToHost);
  cudaMemcpy(vo.data(), dvo, n * 4, cudaMemcpyDeviceToHost);
  bool sorted = e == cudaSuccess;
  for (int i = 0; i < n; ++i) {
    sorted = sorted && ko[i] == keys[vo[i]];
    if (i > 0) {
      const uint32_t a = (ko[i - 1] >> 4) & 0xff, b = (ko[i] >> 4) & 0xff;
      sorted = sorted && (a < b || (a == b && vo[i - 1] < vo[i]));
    }
  }
  Check(sorted, "DeviceRadixSort::SortPairs: stable, bits [4, 12)");
  size_t small = bytes - 1;
  Check(cub::DeviceRadixSort::SortPairs(temp, small, dk, dko, dv, dvo, n, 4,
                                        12) == cudaErrorInvalidValue,
        "SortPairs refuses too little temporary storage (expect a message)");
  // In-place inclusive scan, then an exclusive one.
  cudaMemcpy(dk, vals.data(), n * 4, cudaMemcpyHostToDevice);
  size_t scan_bytes = 0;
  cub::DeviceScan::InclusiveSum(nullptr, scan_bytes, dk, dk, n);
  cub::DeviceScan::InclusiveSum(temp, scan_bytes, dk, dk, n);
  cub::DeviceScan::ExclusiveSum(temp, scan_bytes, dv, dvo, n);
  cudaMemcpy(ko.data(), dk, n * 4, cudaMemcpyDeviceToHost);
  cudaMemcpy(vo.data(), dvo, n * 4, cudaMemcpyDeviceToHost);
  bool scans = scan_bytes > 0;
  for (int i = 0; i < n; ++i) {
    scans = scans && ko[i] == static_cast<uint32_t>(i * (i + 1) / 2) &&
            vo[i] == static_cast<uint32_t>(i * (i - 1) / 2);
  }
  Check(scans, "DeviceScan::InclusiveSum in place, ExclusiveSum");
  Check(cub::DeviceScan::InclusiveSum(dv, scan_bytes, dv + 1, dk, n - 1) ==
            cudaErrorInvalidValue,
        "a scan refuses storage that overlaps its input (expect a message)");
  cudaFree(temp);
  cudaFree(dk);
  cudaFree(dko);
  cudaFree(dv);
  cudaFree(dvo);
}

// ------------------------------------------------------------ failures
// Runs fn in a child process; true if it aborted with `needle` on stderr.
bool AbortsWith(void (*fn)(), const char* needle) {
  std::fflush(stdout);
  int fds[2];
  if (pipe(fds) != 0) return false;
  const pid_t pid = fork();
  if (pid == 0) {
    const rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    close(fds[0]);
    dup2(fds[1], 2);
    fn();
    _exit(0);
  }
  close(fds[1]);
  std::string err;
  char buf[4096];
  ssize_t got;
  while ((got = read(fds[0], buf, sizeof(buf))) > 0) {
    err.append(buf, static_cast<size_t>(got));
  }
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  const bool ok = WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT &&
                  err.find(needle) != std::string::npos;
  if (!ok) std::printf("  child stderr:\n%s", err.c_str());
  return ok;
}

// Half of every warp waits at a barrier, the other half in a full-mask
// shuffle that needs the first half.
__global__ void DivergentBarrierKernel(int* out) {
  int v = threadIdx.x;
  if ((threadIdx.x & 31) < 16) __syncthreads();
  v = __shfl_sync(0xffffffffu, v, 0);
  out[threadIdx.x] = v;
}

__global__ void ExitedLaneKernel(int* out) {
  if (threadIdx.x == 5) return;
  out[threadIdx.x] = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x), 0);
}

__global__ void LaneOutsideMaskKernel(int* out) {
  out[threadIdx.x] = __shfl_sync(0xffffu, static_cast<int>(threadIdx.x), 0);
}

__global__ void SourceOutsideMaskKernel(int* out) {
  const unsigned group = 0xffu << (threadIdx.x & ~7u);
  out[threadIdx.x] = __shfl_sync(group, static_cast<int>(threadIdx.x), 9);
}

void RunDivergentBarrier() {
  int* d = DeviceAlloc<int>(64);
  TFMH_LAUNCH(1, 64, 0, 0, DivergentBarrierKernel)(d);
}
void RunExitedLane() {
  int* d = DeviceAlloc<int>(32);
  TFMH_LAUNCH(1, 32, 0, 0, ExitedLaneKernel)(d);
}
void RunLaneOutsideMask() {
  int* d = DeviceAlloc<int>(32);
  TFMH_LAUNCH(1, 32, 0, 0, LaneOutsideMaskKernel)(d);
}
void RunSourceOutsideMask() {
  int* d = DeviceAlloc<int>(32);
  TFMH_LAUNCH(1, 32, 0, 0, SourceOutsideMaskKernel)(d);
}

void TestFailures() {
  Check(AbortsWith(&RunDivergentBarrier, "DEADLOCK"),
        "deadlock reported: __syncthreads in divergent code");
  Check(AbortsWith(&RunExitedLane, "DEADLOCK"),
        "deadlock reported: full-mask shuffle after a lane exited");
  Check(AbortsWith(&RunLaneOutsideMask, "not in the mask"),
        "reported: shuffle from a lane outside its mask");
  Check(AbortsWith(&RunSourceOutsideMask, "which is not in the mask"),
        "reported: shuffle reading a lane outside the mask");
}

// Every block takes a ticket: order[ticket] = its index.
__global__ void BlockOrderKernel(unsigned* counter, unsigned* order) {
  if (threadIdx.x == 0) {
    const unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    order[atomicAdd(counter, 1u)] = b;
  }
  __syncthreads();
}

std::vector<unsigned> BlockOrder() {
  unsigned* d = DeviceAlloc<unsigned>(1 + 96);
  cudaMemset(d, 0, sizeof(unsigned) * 97);
  TFMH_LAUNCH(dim3(4, 3, 8), 64, 0, 0, BlockOrderKernel)(d, d + 1);
  std::vector<unsigned> order(96);
  cudaMemcpy(order.data(), d + 1, sizeof(unsigned) * 96, cudaMemcpyDeviceToHost);
  cudaFree(d);
  return order;
}

void TestBlockOrder() {
  const char* env = std::getenv("TFMH_EMU_SHUFFLE_BLOCKS");
  const bool shuffled_by_env = env != nullptr && std::strtoull(env, nullptr, 10) != 0;
  std::vector<unsigned> identity(96);
  for (unsigned i = 0; i < 96; ++i) identity[i] = i;
  if (!shuffled_by_env) {
    Check(BlockOrder() == identity, "blocks run in index order by default");
  }
  tfmh_emu::ShuffleBlocks(12345);
  const std::vector<unsigned> a = BlockOrder(), b = BlockOrder();
  std::vector<unsigned> sorted_a = a;
  std::sort(sorted_a.begin(), sorted_a.end());
  Check(sorted_a == identity && a != identity && a != b,
        "ShuffleBlocks: every block runs once, in a new order each launch");
  tfmh_emu::ShuffleBlocks(0);
  Check(BlockOrder() == identity, "ShuffleBlocks(0): index order again");
}

// Last, since it cannot be undone: after TreatAllHostMemoryAsDevice() a
// plain host buffer is accepted where device memory is expected.
void TestAllHostMemoryAsDevice() {
  std::vector<int> host(64, 7), back(64, 0);
  Check(cudaMemset(host.data(), 0, 64 * sizeof(int)) == cudaErrorInvalidValue,
        "cudaMemset of plain host memory refused by default");
  cudaGetLastError();
  tfmh_emu::TreatAllHostMemoryAsDevice();
  Check(cudaMemsetAsync(host.data(), 0, 64 * sizeof(int), 0) == cudaSuccess &&
            cudaMemcpy(back.data(), host.data(), 64 * sizeof(int),
                       cudaMemcpyDeviceToHost) == cudaSuccess &&
            back == std::vector<int>(64, 0),
        "plain host memory accepted after TreatAllHostMemoryAsDevice()");
}

}  // namespace

int main() {
  TestShuffles();
  TestMatches();
  TestBarriers();
  TestAtomics();
  std::printf(
      "(the next checks provoke refusals: their \"tfmh CUDA emulation:\" "
      "messages are expected)\n");
  std::fflush(stdout);
  TestLaunchErrors();
  TestCub();
  TestFailures();
  TestBlockOrder();
  TestAllHostMemoryAsDevice();
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
