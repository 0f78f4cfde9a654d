// Standalone benchmark of the multi-hash CUDA kernels (no TensorFlow).
//
// Q-R layout, k = 2, float32, int64 ids, one shard per table. With tables of
// 1000 x 1000 rows (capacity 1e6): uniform ids with B in {64Ki, 1Mi, 8Mi}
// and D in {16, 64, 128}, and skewed ids (a quarter on one Q row) with
// B in {1Mi, 8Mi}, D = 64; with tables of 10000 x 10000 rows (capacity
// 1e8): uniform ids, B in {1Mi, 8Mi}, D = 64. For add/mul/concat (concat: widths D/2 + D/2) it
// times, as the median of 20 reps with CUDA events:
//   fwd   - LaunchLookup, with the default batch of 4 ids per step of the
//           k <= 2 kernel and with 2 and 8 (LaunchOptions::forward_batch);
//   naive - what stock TensorFlow launches for the same forward: one
//           elementwise kernel for q = id / rows_R and r = id % rows_R, two
//           gathers into temporaries, one elementwise combine;
//   bwd   - LaunchLookupGradPrepare + host stream sync + LaunchLookupGradFinish,
//           once with the sorted and once with the dense algorithm ("prep":
//           prepare + sync alone; "auto": what kAuto picks for that shape);
//           the sorted one with equal ids merged first ("merged",
//           LaunchOptions::sorted_merge = kAlways) and not ("unmerged",
//           kNever); "sorted" is
//           the one the launcher picks by byte counts ("sorted path").
// Byte model (what the op must move at least; the small tables stay in L2):
//   fwd: B * 8 (ids) + B * D * 4 (output written);
//   bwd: B * 8 (ids) + B * D * 4 (grad read once) + unique rows written
//        (8-byte index + width * 4 bytes each).
// "% copy" relates that to the measured device-to-device cudaMemcpyAsync
// bandwidth (bytes read + written). "max |fwd-naive|" checks that both
// forwards agree.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "gpu_kernels/multihash_gpu.h"

#define CUDA_OK(x)                                                        \
  do {                                                                    \
    cudaError_t e_ = (x);                                                 \
    if (e_ != cudaSuccess) {                                              \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x,     \
                   cudaGetErrorString(e_));                               \
      std::exit(2);                                                       \
    }                                                                     \
  } while (0)

#define API_OK(x)                                                         \
  do {                                                                    \
    int s_ = (x);                                                         \
    if (s_ != 0) {                                                        \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x,     \
                   tfmh::gpu::ErrorString(s_));                           \
      std::exit(2);                                                       \
    }                                                                     \
  } while (0)

namespace {

constexpr int kReps = 20;
constexpr int kWarmup = 3;
constexpr int64_t kMaxRows = 10000;  // rows of each table, at most

__device__ __forceinline__ uint64_t SplitMix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Uniform ids in [0, cap), or skewed ones: floor(u^5 * cap) for uniform u,
// so that a quarter of the ids fall on Q row 0 of a 1000 x 1000 layout.
__global__ void FillIds(int64_t* ids, int64_t n, int64_t cap, uint64_t seed, int skewed) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const uint64_t x = SplitMix(seed + i);
    if (skewed) {
      const double u = (x >> 11) * (1.0 / 9007199254740992.0);
      ids[i] = min(cap - 1, static_cast<int64_t>(u * u * u * u * u * cap));
    } else {
      ids[i] = static_cast<int64_t>(x % static_cast<uint64_t>(cap));
    }
  }
}

__global__ void FillFloats(float* x, int64_t n, uint64_t seed, float lo, float hi) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const float u = (SplitMix(seed + i) >> 40) * (1.0f / 16777216.0f);
    x[i] = lo + (hi - lo) * u;
  }
}

// ---- naive baseline: the kernels stock TensorFlow would launch
__global__ void NaiveQR(const int64_t* ids, int64_t n, int64_t rows_r, int64_t* q,
                        int64_t* r) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t id = ids[i];
    q[i] = id / rows_r;
    r[i] = id % rows_r;
  }
}

__global__ void NaiveGather(const float* table, const int64_t* idx, int64_t n, int w,
                            float* out) {
  const int64_t total = n * w;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t i = e / w;
    const int c = static_cast<int>(e - i * w);
    out[e] = table[idx[i] * w + c];
  }
}

__global__ void NaiveCombine(const float* a, const float* b, int64_t n, int wa, int wb,
                             int op, float* out) {
  const int wo = op == 2 ? wa + wb : wa;
  const int64_t total = n * wo;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x) {
    if (op == 0) {
      out[e] = a[e] + b[e];
    } else if (op == 1) {
      out[e] = a[e] * b[e];
    } else {
      const int64_t i = e / wo;
      const int c = static_cast<int>(e - i * wo);
      out[e] = c < wa ? a[i * wa + c] : b[i * wb + (c - wa)];
    }
  }
}

__global__ void MaxAbsDiff(const float* a, const float* b, int64_t n, unsigned int* out) {
  float m = 0.f;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const float d = fabsf(a[i] - b[i]);
    m = (d > m || d != d) ? (d != d ? INFINITY : d) : m;
  }
  atomicMax(out, __float_as_uint(m));  // non-negative floats order as uints
}

unsigned Grid(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 132 * 16));
}

template <typename F>
double MedianMs(cudaStream_t s, F&& f) {
  cudaEvent_t a, b;
  CUDA_OK(cudaEventCreate(&a));
  CUDA_OK(cudaEventCreate(&b));
  for (int w = 0; w < kWarmup; ++w) f();
  CUDA_OK(cudaStreamSynchronize(s));
  std::vector<float> t;
  for (int r = 0; r < kReps; ++r) {
    CUDA_OK(cudaEventRecord(a, s));
    f();
    CUDA_OK(cudaEventRecord(b, s));
    CUDA_OK(cudaEventSynchronize(b));
    float ms = 0;
    CUDA_OK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  CUDA_OK(cudaEventDestroy(a));
  CUDA_OK(cudaEventDestroy(b));
  std::sort(t.begin(), t.end());
  return 0.5 * (t[(t.size() - 1) / 2] + t[t.size() / 2]);
}

}  // namespace

int main() {
  // The forward-batch columns time the variants 2 and 8, which only a build
  // with TFMH_GPU_TUNING_VARIANTS has (else they would time 4 again).
  for (int batch : {2, 8}) {
    tfmh::gpu::LaunchOptions options;
    options.forward_batch = batch;
    if (tfmh::gpu::ForwardBatchUsed(options) != batch) {
      std::fprintf(stderr,
                   "forward_batch %d is not compiled in: build with "
                   "-DTFMH_GPU_TUNING_VARIANTS (device_check.sh does)\n",
                   batch);
      return 2;
    }
  }
  int dev = 0;
  CUDA_OK(cudaGetDevice(&dev));
  cudaDeviceProp prop;
  CUDA_OK(cudaGetDeviceProperties(&prop, dev));
  cudaStream_t s;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));

  // Device-to-device copy bandwidth.
  const size_t copy_bytes = size_t{1} << 30;
  void *c0, *c1;
  CUDA_OK(cudaMalloc(&c0, copy_bytes));
  CUDA_OK(cudaMalloc(&c1, copy_bytes));
  CUDA_OK(cudaMemsetAsync(c0, 1, copy_bytes, s));
  const double copy_ms = MedianMs(s, [&] {
    CUDA_OK(cudaMemcpyAsync(c1, c0, copy_bytes, cudaMemcpyDeviceToDevice, s));
  });
  const double copy_gbs = 2.0 * copy_bytes / (copy_ms * 1e6);
  // Write-only bandwidth (the forward mostly writes): a memset.
  const double set_ms = MedianMs(s, [&] {
    CUDA_OK(cudaMemsetAsync(c1, 0, copy_bytes, s));
  });
  const double set_gbs = copy_bytes / (set_ms * 1e6);
  CUDA_OK(cudaFree(c0));
  CUDA_OK(cudaFree(c1));
  std::printf("device: %s (sm_%d%d, %d SMs)\n", prop.name, prop.major, prop.minor,
              prop.multiProcessorCount);
  std::printf("device-to-device cudaMemcpyAsync of %zu MiB: %.3f ms, %.1f GB/s "
              "(read + write)\n",
              copy_bytes >> 20, copy_ms, copy_gbs);
  std::printf("cudaMemsetAsync of %zu MiB: %.3f ms, %.1f GB/s (write only, %.1f%% of the "
              "copy)\n\n",
              copy_bytes >> 20, set_ms, set_gbs, 100.0 * set_gbs / copy_gbs);
  std::printf("Byte model: fwd = B*8 (ids) + B*D*4 (out); bwd = B*8 (ids) + B*D*4 "
              "(grad, read once) + unique rows * (8 + width*4) (indices + values). "
              "GB/s = bytes / median time; %% copy = of the memcpy bandwidth above.\n\n");
  std::printf("| op | ids | tables | B | D | fwd ms | fwd GB/s | fwd %% copy | fwd U=2 ms | "
              "fwd U=8 ms | "
              "naive fwd ms | speedup | "
              "sorted bwd ms | sorted prep ms | sorted %% copy | sorted path | merged ms | "
              "unmerged ms | "
              "dense bwd ms | dense prep ms | "
              "dense GB/s | dense %% copy | auto | max abs(fwd-naive) |\n");
  std::printf("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---:|\n");

  int64_t* h_counts = nullptr;
  CUDA_OK(cudaMallocHost(&h_counts, sizeof(int64_t) * tfmh::kMaxShards));
  unsigned int* d_diff = nullptr;
  CUDA_OK(cudaMalloc(&d_diff, sizeof(unsigned int)));
  int64_t* d_first_bad = nullptr;
  CUDA_OK(cudaMalloc(&d_first_bad, sizeof(int64_t)));

  struct IdSet {
    int64_t batch;
    bool skewed;
    int64_t rows;  // of each table
  };
  const IdSet sets[] = {{65536, false, 1000},   {1048576, false, 1000},
                        {8388608, false, 1000}, {1048576, true, 1000},
                        {8388608, true, 1000},  {1048576, false, 10000},
                        {8388608, false, 10000}};
  const int all_dims[] = {16, 64, 128};
  const int one_dim[] = {64};
  const tfmh::Combine ops[] = {tfmh::Combine::kAdd, tfmh::Combine::kMul,
                               tfmh::Combine::kConcat};
  const int64_t dmax = 128;
  // Tables sized for the widest case (width <= dmax); indices/values per shard.
  float *tq, *tr;
  CUDA_OK(cudaMalloc(&tq, kMaxRows * dmax * sizeof(float)));
  CUDA_OK(cudaMalloc(&tr, kMaxRows * dmax * sizeof(float)));
  void *idx_q, *idx_r, *val_q, *val_r;
  CUDA_OK(cudaMalloc(&idx_q, kMaxRows * 8));
  CUDA_OK(cudaMalloc(&idx_r, kMaxRows * 8));
  CUDA_OK(cudaMalloc(&val_q, kMaxRows * dmax * sizeof(float)));
  CUDA_OK(cudaMalloc(&val_r, kMaxRows * dmax * sizeof(float)));

  for (const IdSet& set : sets) {
    const int64_t B = set.batch;
    const int64_t nrows = set.rows;
    const bool few_dims = set.skewed || set.rows != 1000;
    const std::vector<int> dims = few_dims ? std::vector<int>(std::begin(one_dim), std::end(one_dim))
                                             : std::vector<int>(std::begin(all_dims), std::end(all_dims));
    int64_t *ids, *q, *r;
    float *out, *grad, *gq, *gr, *naive_out;
    CUDA_OK(cudaMalloc(&ids, B * 8));
    CUDA_OK(cudaMalloc(&q, B * 8));
    CUDA_OK(cudaMalloc(&r, B * 8));
    CUDA_OK(cudaMalloc(&out, B * dmax * sizeof(float)));
    CUDA_OK(cudaMalloc(&naive_out, B * dmax * sizeof(float)));
    CUDA_OK(cudaMalloc(&grad, B * dmax * sizeof(float)));
    CUDA_OK(cudaMalloc(&gq, B * dmax * sizeof(float)));
    CUDA_OK(cudaMalloc(&gr, B * dmax * sizeof(float)));
    FillIds<<<Grid(B), 256, 0, s>>>(ids, B, nrows * nrows, 42 + B, set.skewed ? 1 : 0);
    FillFloats<<<Grid(B * dmax), 256, 0, s>>>(grad, B * dmax, 7, -1.f, 1.f);
    CUDA_OK(cudaGetLastError());
    for (int D : dims) {
      for (tfmh::Combine op : ops) {
        const bool concat = op == tfmh::Combine::kConcat;
        const int w = concat ? D / 2 : D;
        const int64_t rows[2] = {nrows, nrows};
        const int32_t widths[2] = {w, w};
        const int32_t spt[2] = {1, 1};
        const int64_t shard_rows[2] = {nrows, nrows};
        tfmh::Layout l;
        const std::string err = tfmh::InitLayout(tfmh::Strategy::kQR, op, 2, rows, widths,
                                                 spt, shard_rows, &l);
        if (!err.empty()) {
          std::fprintf(stderr, "InitLayout: %s\n", err.c_str());
          return 2;
        }
        FillFloats<<<Grid(nrows * w), 256, 0, s>>>(tq, nrows * w, 11 + D, 0.5f, 1.5f);
        FillFloats<<<Grid(nrows * w), 256, 0, s>>>(tr, nrows * w, 13 + D, 0.5f, 1.5f);
        tfmh::gpu::ShardPointers sp = {};
        sp.data[0] = tq;
        sp.data[1] = tr;
        const auto dt = tfmh::gpu::DType::kFloat32;
        const auto it = tfmh::gpu::IdType::kInt64;

        // The forward with `batch` ids per step of the k <= 2 kernel.
        auto lookup_with = [&](int batch) {
          return [&, batch] {
            tfmh::gpu::LaunchOptions options;
            options.forward_batch = batch;
            API_OK(tfmh::gpu::LaunchLookup(l, dt, it, sp, ids, B, out, d_first_bad, s,
                                           options));
          };
        };
        const double fwd_ms = MedianMs(s, lookup_with(4));
        const double fwd2_ms = MedianMs(s, lookup_with(2));
        const double fwd8_ms = MedianMs(s, lookup_with(8));
        lookup_with(4)();  // the default kernel's output, for the comparison below
        const int opi = static_cast<int>(op);
        const double naive_ms = MedianMs(s, [&] {
          NaiveQR<<<Grid(B), 256, 0, s>>>(ids, B, nrows, q, r);
          NaiveGather<<<Grid(B * w), 256, 0, s>>>(tq, q, B, w, gq);
          NaiveGather<<<Grid(B * w), 256, 0, s>>>(tr, r, B, w, gr);
          NaiveCombine<<<Grid(B * D), 256, 0, s>>>(gq, gr, B, w, w, opi, naive_out);
        });
        CUDA_OK(cudaGetLastError());
        CUDA_OK(cudaMemsetAsync(d_diff, 0, sizeof(unsigned int), s));
        MaxAbsDiff<<<Grid(B * D), 256, 0, s>>>(out, naive_out, B * D, d_diff);
        unsigned int diff_bits = 0;
        CUDA_OK(cudaMemcpyAsync(&diff_bits, d_diff, 4, cudaMemcpyDeviceToHost, s));
        int64_t first_bad = 0;
        CUDA_OK(cudaMemcpyAsync(&first_bad, d_first_bad, 8, cudaMemcpyDeviceToHost, s));
        CUDA_OK(cudaStreamSynchronize(s));
        float diff;
        std::memcpy(&diff, &diff_bits, 4);
        if (first_bad != INT64_MAX) std::fprintf(stderr, "unexpected bad id at %lld\n",
                                                 static_cast<long long>(first_bad));

        void* idx_ptrs[2] = {idx_q, idx_r};
        void* val_ptrs[2] = {val_q, val_r};
        int64_t uniq = 0;
        // Median ms of the whole backward (prepare + host sync + finish),
        // and of prepare + sync alone.
        auto time_bwd = [&](tfmh::gpu::GradAlgorithm algo, tfmh::gpu::SortedMerge merge,
                            double* prep_ms) {
          tfmh::gpu::LaunchOptions options;
          options.sorted_merge = merge;
          const size_t ws_bytes =
              tfmh::gpu::LookupGradWorkspaceBytes(l, dt, it, B, algo, options);
          if (ws_bytes == 0) {
            std::fprintf(stderr, "LookupGradWorkspaceBytes returned 0\n");
            std::exit(2);
          }
          void* ws;
          CUDA_OK(cudaMalloc(&ws, ws_bytes));
          auto prepare = [&] {
            API_OK(tfmh::gpu::LaunchLookupGradPrepare(l, dt, it, ids, B, ws, ws_bytes,
                                                      h_counts, s, algo, options));
            CUDA_OK(cudaStreamSynchronize(s));
            uniq = h_counts[0] + h_counts[1];
          };
          *prep_ms = MedianMs(s, prepare);
          const double ms = MedianMs(s, [&] {
            prepare();
            API_OK(tfmh::gpu::LaunchLookupGradFinish(l, dt, it, sp, ids, grad, B, ws,
                                                     ws_bytes, idx_ptrs, val_ptrs, s, algo,
                                                     options));
          });
          CUDA_OK(cudaFree(ws));
          return ms;
        };
        // kSorted both ways; "sorted" is the one the launcher picks.
        double merged_prep = 0, direct_prep = 0, dense_prep = 0;
        const double merged_ms = time_bwd(tfmh::gpu::GradAlgorithm::kSorted,
                                          tfmh::gpu::SortedMerge::kAlways, &merged_prep);
        const double direct_ms = time_bwd(tfmh::gpu::GradAlgorithm::kSorted,
                                          tfmh::gpu::SortedMerge::kNever, &direct_prep);
        const bool merges = tfmh::gpu::SortedMergesIds(l, dt, B, tfmh::gpu::LaunchOptions());
        const double sorted_ms = merges ? merged_ms : direct_ms;
        const double sorted_prep = merges ? merged_prep : direct_prep;
        const double dense_ms = time_bwd(tfmh::gpu::GradAlgorithm::kDense,
                                         tfmh::gpu::SortedMerge::kAuto, &dense_prep);
        const bool auto_dense = tfmh::gpu::ChosenGradAlgorithm(
                                    l, B, tfmh::gpu::GradAlgorithm::kAuto) ==
                                tfmh::gpu::GradAlgorithm::kDense;

        const double fwd_bytes = B * 8.0 + B * (double)D * 4.0;
        const double bwd_bytes = B * 8.0 + B * (double)D * 4.0 + uniq * (8.0 + w * 4.0);
        const double fwd_gbs = fwd_bytes / (fwd_ms * 1e6);
        const double sorted_gbs = bwd_bytes / (sorted_ms * 1e6);
        const double dense_gbs = bwd_bytes / (dense_ms * 1e6);
        std::printf("| %s | %s | %lldx%lld | %lld | %d | %.4f | %.1f | %.1f%% | %.4f | %.4f | %.4f | %.2fx | %.4f | %.4f | "
                    "%.1f%% | %s | %.4f | %.4f | %.4f | %.4f | %.1f | %.1f%% | %s | %.3g |\n",
                    concat ? "concat" : (op == tfmh::Combine::kAdd ? "add" : "mul"),
                    set.skewed ? "skewed" : "uniform", static_cast<long long>(nrows),
                    static_cast<long long>(nrows), static_cast<long long>(B), D, fwd_ms, fwd_gbs, 100.0 * fwd_gbs / copy_gbs,
                    fwd2_ms, fwd8_ms, naive_ms, naive_ms / fwd_ms, sorted_ms, sorted_prep,
                    100.0 * sorted_gbs / copy_gbs, merges ? "merged" : "direct", merged_ms,
                    direct_ms, dense_ms, dense_prep, dense_gbs,
                    100.0 * dense_gbs / copy_gbs, auto_dense ? "dense" : "sorted", diff);
        std::fflush(stdout);
      }
    }
    CUDA_OK(cudaFree(ids));
    CUDA_OK(cudaFree(q));
    CUDA_OK(cudaFree(r));
    CUDA_OK(cudaFree(out));
    CUDA_OK(cudaFree(naive_out));
    CUDA_OK(cudaFree(grad));
    CUDA_OK(cudaFree(gq));
    CUDA_OK(cudaFree(gr));
  }
  return 0;
}
