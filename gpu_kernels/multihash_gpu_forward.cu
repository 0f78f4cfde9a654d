// CUDA kernels of the multi-hash lookup (forward) and of the id check; the
// launchers LaunchLookup and LaunchCheckIds of gpu_kernels/multihash_gpu.h.
//
// Forward: warps grid-stride over tiles of 32 ids. Lane L loads id L of the
// tile (coalesced, prefetched a tile ahead) and computes its k row
// addresses; then one sub-warp "group" of G lanes (G = vectors per output
// row, rounded up to a power of two, at most 32) per id takes the addresses
// by shuffle, and every lane moves 16/8/4/2-byte vectors of the k rows,
// combines them in float and writes one vector of the output row, several
// ids per batch so that many row loads are in flight.
#include "gpu_kernels/multihash_gpu_internal.cuh"

namespace tfmh {
namespace gpu {
namespace internal {
namespace {

// Forward. A warp takes a tile of 32 consecutive ids: lane L loads id
// base + L (one coalesced load, prefetched one tile ahead) and computes the
// k row addresses of that id alone, so the id -> row arithmetic runs once per
// id on one lane (not once per id on every lane of a group). The warp then
// walks the tile in G steps of 32/G ids, one id per group of G lanes (G =
// vectors per output row rounded up to a power of two, at most 32); a group
// takes its id's addresses from the owning lane with shuffles. U steps form
// a batch whose row loads are all issued before any combine or store, so
// U * k independent row loads per lane are in flight.
// KMAX: an upper bound of num_tables (2 or kMaxTables); a smaller bound keeps
// the per-lane addresses and row vectors in fewer registers.
template <typename T, int V, int KMAX, int U>
__global__ void __launch_bounds__(kBlock)
    LookupKernel(const __grid_constant__ Layout layout,
                 const __grid_constant__ ShardPointers shards,
                 const void* __restrict__ ids, int ids64, int64_t n,
                 char* __restrict__ out, int64_t* __restrict__ first_bad,
                 int log2_group) {
  using P = Pack<T, V>;
  constexpr int N = P::N;
  constexpr unsigned kFull = 0xffffffffu;
  const TileLanes lanes = MakeTileLanes(log2_group);
  const int G = lanes.G, glane = lanes.glane, gid = lanes.gid,
            per_step = lanes.per_step;
  const int k = layout.num_tables;
  const Combine op = layout.combine;
  const int nv_out = layout.out_width / N;
  const int64_t row_bytes = static_cast<int64_t>(layout.out_width) * sizeof(T);

  ForEachTile(lanes, ids, ids64 != 0, n, [&](int64_t base, int64_t i,
                                             int64_t id) {
    unsigned long long mine[KMAX];
    const bool ok = LaneRowAddrs<T, KMAX>(layout, shards, i, n, id, mine);
    if (!ok && i < n && first_bad != nullptr) {
      atomicMin(reinterpret_cast<unsigned long long*>(first_bad),
                static_cast<unsigned long long>(i));
    }
    const unsigned ok_mask = __ballot_sync(kFull, ok);
    const int cnt = static_cast<int>(min(int64_t{32}, n - base));

    for (int s0 = 0; s0 < G; s0 += U) {
      TileBatch<U, KMAX> batch;
      ShareTileBatch<U, KMAX>(s0, per_step, gid, cnt, ok_mask, k, mine,
                              &batch);
      const auto& addrs = batch.a;
      const auto& q = batch.q;
      const auto& valid = batch.valid;
      const auto& good = batch.good;
      if (op != Combine::kConcat) {
        for (int v = glane; v < nv_out; v += G) {
          const int64_t off = static_cast<int64_t>(v) * V;
          P x[U][KMAX];
#pragma unroll
          for (int u = 0; u < U; ++u) {
#pragma unroll
            for (int j = 0; j < KMAX; ++j) {
              if (good[u] && j < k) {
                x[u][j] = LoadPack<T, V>(
                    reinterpret_cast<const char*>(addrs[u][j]) + off);
              }
            }
          }
#pragma unroll
          for (int u = 0; u < U; ++u) {
            if (!valid[u]) continue;
            P o;
#pragma unroll
            for (int e = 0; e < N; ++e) o.e[e] = 0;
            if (good[u]) {
#pragma unroll
              for (int e = 0; e < N; ++e) {
                float acc = CombineIdentity<float>(op);
#pragma unroll
                for (int j = 0; j < KMAX; ++j) {
                  if (j < k) {
                    acc = CombineStep<float>(op, acc, Elem<T>::ToF(x[u][j].e[e]));
                  }
                }
                o.e[e] = Elem<T>::FromF(acc);
              }
            }
            StorePack<T, V>(out + (base + q[u]) * row_bytes + off, o);
          }
        }
      } else {
        // Output vector v comes from the last table whose columns start at
        // or before it (col_offset is increasing, every width is a multiple
        // of N).
        for (int v = glane; v < nv_out; v += G) {
          const int64_t off = static_cast<int64_t>(v) * V;
          P x[U];
#pragma unroll
          for (int u = 0; u < U; ++u) {
            if (good[u]) {
              unsigned long long src =
                  addrs[u][0] + static_cast<unsigned long long>(off);
#pragma unroll
              for (int j = 1; j < KMAX; ++j) {
                const int c0 = layout.col_offset[j] / N;
                if (j < k && v >= c0) {
                  src =
                      addrs[u][j] + static_cast<unsigned long long>(v - c0) * V;
                }
              }
              x[u] = LoadPack<T, V>(reinterpret_cast<const char*>(src));
            }
          }
#pragma unroll
          for (int u = 0; u < U; ++u) {
            if (!valid[u]) continue;
            if (!good[u]) {
#pragma unroll
              for (int e = 0; e < N; ++e) x[u].e[e] = 0;
            }
            StorePack<T, V>(out + (base + q[u]) * row_bytes + off, x[u]);
          }
        }
      }
    }
  });
}

__global__ void InitFirstBadKernel(int64_t* first_bad) {
  *first_bad = INT64_MAX;
}

// The smallest position of an out-of-range id into *first_bad (atomicMin;
// InitFirstBadKernel runs first).
template <typename Index>
__global__ void __launch_bounds__(kBlock)
    CheckIdsKernel(const __grid_constant__ Layout layout,
                   const Index* __restrict__ ids, int64_t n,
                   int64_t* __restrict__ first_bad) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kBlock;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x;
       i < n; i += stride) {
    if (!IdInRange(layout, ids[i])) {
      atomicMin(reinterpret_cast<unsigned long long*>(first_bad),
                static_cast<unsigned long long>(i));
    }
  }
}

template <typename T, int V>
void LaunchLookupOfType(const Layout& layout, const ShardPointers& shards,
                        const void* ids, bool ids64, int64_t n, void* out,
                        int64_t* first_bad, int batch, cudaStream_t s) {
  const int n_vec =
      static_cast<int>(static_cast<int64_t>(layout.out_width) * sizeof(T) / V);
  const int log2_group = GroupLog2(n_vec);
  const unsigned grid = GridFor((n + 31) / 32, 5);  // one warp per 32 ids
  if (layout.num_tables <= 2) {
    switch (batch) {
#if defined(TFMH_GPU_TUNING_VARIANTS)
      case 2:
        TFMH_LAUNCH(grid, kBlock, 0, s, LookupKernel<T, V, 2, 2>)(
            layout, shards, ids, ids64, n, static_cast<char*>(out), first_bad,
            log2_group);
        break;
      case 8:
        TFMH_LAUNCH(grid, kBlock, 0, s, LookupKernel<T, V, 2, 8>)(
            layout, shards, ids, ids64, n, static_cast<char*>(out), first_bad,
            log2_group);
        break;
#endif
      default:
        TFMH_LAUNCH(grid, kBlock, 0, s, LookupKernel<T, V, 2, 4>)(
            layout, shards, ids, ids64, n, static_cast<char*>(out), first_bad,
            log2_group);
        break;
    }
  } else {
    TFMH_LAUNCH(grid, kBlock, 0, s, LookupKernel<T, V, kMaxTables, 2>)(
        layout, shards, ids, ids64, n, static_cast<char*>(out), first_bad,
        log2_group);
  }
}

}  // namespace
}  // namespace internal

using namespace internal;

// Ids per batch (U) of the forward for k <= 2. 4, the default, keeps 8 row
// loads in flight per lane at 114 registers (f32 on sm_90: two 256-thread
// blocks per SM, 25% occupancy; ncu on an H200 found DRAM at 72% and L2 at
// 81% of peak there, neither saturated). 2 needs 64 registers (four blocks
// per SM) and 8 keeps twice the loads in flight. They are compiled only with
// TFMH_GPU_TUNING_VARIANTS (the standalone test checks them, the benchmark
// times them), so that the library carries no kernel no GPU run has shown
// to pay; the default stays until one does.
int ForwardBatchUsed(const LaunchOptions& options) {
#if defined(TFMH_GPU_TUNING_VARIANTS)
  if (options.forward_batch == 2) return 2;
  if (options.forward_batch == 8) return 8;
#endif
  return 4;
}

Status LaunchLookup(const Layout& layout, DType dtype, IdType id_type,
                    const ShardPointers& shards, const void* d_ids, int64_t n,
                    void* d_out, int64_t* d_first_bad, void* stream,
                    const LaunchOptions& options) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (!LayoutOk(layout) || !KnownDType(dtype) || n < 0) return cudaErrorInvalidValue;
  if (d_first_bad != nullptr) TFMH_LAUNCH(1, 1, 0, s, InitFirstBadKernel)(d_first_bad);
  if (n == 0) return cudaGetLastError();
  const size_t esz = ElemSize(dtype);
  const void* ptrs[kMaxShards + 1];
  int num_ptrs = 0;
  ptrs[num_ptrs++] = d_out;
  for (int q = 0; q < layout.shard_begin[layout.num_tables]; ++q) {
    ptrs[num_ptrs++] = shards.data[q];
  }
  const int vector_bytes = ChooseVector(layout, esz, ptrs, num_ptrs);
  const bool ids64 = id_type == IdType::kInt64;
  WithTypeAndVector(dtype, vector_bytes, [&](auto t, auto vec) {
    LaunchLookupOfType<typename decltype(t)::type, decltype(vec)::value>(
        layout, shards, d_ids, ids64, n, d_out, d_first_bad,
        ForwardBatchUsed(options), s);
  });
  return cudaGetLastError();
}

Status LaunchCheckIds(const Layout& layout, IdType id_type, const void* d_ids,
                      int64_t n, int64_t* d_first_bad, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (!LayoutOk(layout) || n < 0 || d_first_bad == nullptr) {
    return cudaErrorInvalidValue;
  }
  TFMH_LAUNCH(1, 1, 0, s, InitFirstBadKernel)(d_first_bad);
  if (n == 0) return cudaGetLastError();
  const unsigned grid = GridFor(n, 0);
  if (id_type == IdType::kInt64) {
    TFMH_LAUNCH(grid, kBlock, 0, s, CheckIdsKernel<int64_t>)(
        layout, static_cast<const int64_t*>(d_ids), n, d_first_bad);
  } else {
    TFMH_LAUNCH(grid, kBlock, 0, s, CheckIdsKernel<int32_t>)(
        layout, static_cast<const int32_t*>(d_ids), n, d_first_bad);
  }
  return cudaGetLastError();
}

}  // namespace gpu
}  // namespace tfmh
