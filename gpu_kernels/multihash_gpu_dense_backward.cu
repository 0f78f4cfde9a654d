// CUDA kernels of the multi-hash gradient's one-pass algorithm,
// GradAlgorithm::kDense (gpu_kernels/multihash_gpu.h), and their host side:
// the plan, phase 1 (Prepare) and phase 2 (Finish). The launchers in
// multihash_gpu_launch.cu call them.
//
// Dense, phase 1: marks[key] = 1 for every (table, row) key in use, an
// inclusive scan numbers the distinct rows, and each shard's count is a
// difference of two scan values. Phase 2: a zeroed float accumulator per
// table; one tile walk over the ids reads each gradient row once and adds
// it (for mul, times the other tables' rows) with float atomics, ids of a
// tile that share a row adding once; then every marked key's accumulator
// row is converted and written to its shard's rank in the scan.
#include "gpu_kernels/multihash_gpu_internal.cuh"

namespace tfmh {
namespace gpu {
namespace internal {
namespace {

template <typename Index>
__global__ void __launch_bounds__(kBlock)
    MarkKernel(const __grid_constant__ Layout layout,
               const __grid_constant__ KeyOffsets key_offsets,
               const Index* __restrict__ ids, int64_t n,
               uint32_t* __restrict__ marks) {
  const int k = layout.num_tables;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kBlock;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x;
       i < n; i += stride) {
    const Index raw = ids[i];
    if (!IdInRange(layout, raw)) continue;
    for (int j = 0; j < k; ++j) {
      uint32_t* m = marks + key_offsets.off[j] +
                    static_cast<unsigned long long>(
                        TableRow(layout, j, static_cast<int64_t>(raw)));
      // Marks only go from 0 to 1, so a stale read costs one more store at
      // worst; skipping the store keeps frequent rows from queueing
      // thousands of writes to one L2 line.
      if (*m == 0u) *m = 1u;
    }
  }
}

// One block: bounds[s] = distinct rows before shard s (bounds[S] = all of
// them) from the inclusive scan `incl` of the marks, and the shard counts.
__global__ void DenseBoundsKernel(const __grid_constant__ BoundTargets targets,
                                  int num_shards,
                                  const uint32_t* __restrict__ incl,
                                  int64_t* __restrict__ bounds,
                                  int64_t* __restrict__ counts) {
  const int b = threadIdx.x;
  if (b <= num_shards) {
    const unsigned long long key = targets.key[b];
    bounds[b] = key == 0 ? 0 : static_cast<int64_t>(incl[key - 1]);
  }
  __syncthreads();
  if (b < num_shards) counts[b] = bounds[b + 1] - bounds[b];
}

// N floats added atomically at dst (4 * N-byte aligned).
template <int N>
__device__ __forceinline__ void AtomicAddFloats(float* dst,
                                                const float (&vals)[N]) {
  constexpr bool kVector4 = TFMH_VECTOR_ATOMICS && N % 4 == 0;
  constexpr bool kVector2 = TFMH_VECTOR_ATOMICS && N == 2;
  if constexpr (kVector4) {
#if TFMH_VECTOR_ATOMICS
#pragma unroll
    for (int e = 0; e < N; e += 4) {
      atomicAdd(reinterpret_cast<float4*>(dst + e),
                make_float4(vals[e], vals[e + 1], vals[e + 2], vals[e + 3]));
    }
#endif
  } else if constexpr (kVector2) {
#if TFMH_VECTOR_ATOMICS
    atomicAdd(reinterpret_cast<float2*>(dst), make_float2(vals[0], vals[1]));
#endif
  } else {
#pragma unroll
    for (int e = 0; e < N; ++e) atomicAdd(dst + e, vals[e]);
  }
}

// The one pass over the gradient of kDense. Same walk as LookupKernel (a
// warp per tile of 32 ids, lane L computes id L's addresses once, a group of
// G lanes per id, U ids per batch): lane L computes the accumulator row of
// every table (and, for mul, the table rows), and the group loads its id's
// gradient vector once and adds it (for mul: times the other tables'
// elements) to every table's accumulator row (for concat: to the one table
// that owns the vector's columns).
//
// Frequent rows: ids of a tile that share a table's row are found with
// __match_any_sync, and only the first of them adds, once, the sum of all
// their contributions (reading the others' gradient vectors, and for mul
// their rows, again). So a row that a quarter of the ids hit takes about
// one atomic per tile instead of eight.
template <typename T, int V, int KMAX, int U>
__global__ void __launch_bounds__(kBlock, 1)
    DenseScatterKernel(const __grid_constant__ Layout layout,
                       const __grid_constant__ ShardPointers shards,
                       const __grid_constant__ AccOffsets acc_offsets,
                       const void* __restrict__ ids, int ids64, int64_t n,
                       const char* __restrict__ grad, float* __restrict__ acc,
                       int log2_group) {
  using P = Pack<T, V>;
  constexpr int N = P::N;
  constexpr unsigned kFull = 0xffffffffu;
  const TileLanes lanes = MakeTileLanes(log2_group);
  const int G = lanes.G, lane = lanes.lane, glane = lanes.glane,
            gid = lanes.gid, per_step = lanes.per_step;
  const int k = layout.num_tables;
  const Combine op = layout.combine;
  const int nv_out = layout.out_width / N;
  const int64_t grad_row_bytes =
      static_cast<int64_t>(layout.out_width) * sizeof(T);

  // Contribution of tile slot `slot` (another id with the same row of table j)
  // to output vector v of table j, added to c: its gradient vector at byte
  // offset `off` of its row, times (mul) its other tables' elements.
  auto add_peer = [&](int64_t base, int slot, int j, int64_t off,
                      float (&c)[N]) {
    const P grad_pack =
        LoadPack<T, V>(grad + (base + slot) * grad_row_bytes + off);
    float f[N];
#pragma unroll
    for (int e = 0; e < N; ++e) f[e] = Elem<T>::ToF(grad_pack.e[e]);
    if (op == Combine::kMul) {
      const int64_t id = IdAt(ids, ids64, base + slot);
#pragma unroll 1
      for (int t = 0; t < k; ++t) {
        if (t != j) {
          const P x = LoadPack<T, V>(
              reinterpret_cast<const char*>(RowAddr<T>(layout, shards, t, id)) +
              off);
#pragma unroll
          for (int e = 0; e < N; ++e) f[e] *= Elem<T>::ToF(x.e[e]);
        }
      }
    }
#pragma unroll
    for (int e = 0; e < N; ++e) c[e] += f[e];
  };
  // Adds c, plus the contributions of the other slots in `peers`, at dst;
  // nothing unless `slot` is the first of its peers.
  auto flush = [&](int64_t base, int slot, unsigned peers, int j, int64_t off,
                   float* dst, float (&c)[N]) {
    if ((peers & ((1u << slot) - 1u)) != 0u) return;  // an earlier slot adds
    unsigned rest = peers & ~(1u << slot);
    while (rest != 0u) {
      const int peer = __ffs(rest) - 1;
      rest &= rest - 1u;
      add_peer(base, peer, j, off, c);
    }
    AtomicAddFloats<N>(dst, c);
  };

  ForEachTile(lanes, ids, ids64 != 0, n, [&](int64_t base, int64_t i,
                                             int64_t id) {
    const bool ok = i < n && IdInRange(layout, id);
    unsigned long long mine[KMAX];      // table rows (mul only)
    unsigned long long mine_acc[KMAX];  // accumulator rows
    unsigned mine_peers[KMAX];          // tile slots with the same row
#pragma unroll
    for (int j = 0; j < KMAX; ++j) {
      mine[j] = 0ull;
      mine_acc[j] = 0ull;
      mine_peers[j] = 1u << lane;
      if (j < k) {
        if (ok) {
          const int64_t row = TableRow(layout, j, id);
          mine_acc[j] = reinterpret_cast<unsigned long long>(
              acc + acc_offsets.off[j] +
              static_cast<unsigned long long>(row) *
                  static_cast<unsigned long long>(layout.width[j]));
          if (op == Combine::kMul)
            mine[j] = TableRowAddr<T>(layout, shards, j, row);
        }
        // Lanes without an id get keys no accumulator address can equal.
        const unsigned long long key =
            ok ? mine_acc[j] : ~0ull - static_cast<unsigned long long>(lane);
        mine_peers[j] = __match_any_sync(kFull, key);
      }
    }
    const unsigned ok_mask = __ballot_sync(kFull, ok);
    const int cnt = static_cast<int>(min(int64_t{32}, n - base));

    for (int s0 = 0; s0 < G; s0 += U) {
      TileBatch<U, KMAX> rows, accs;
      ShareTileBatch<U, KMAX>(s0, per_step, gid, cnt, ok_mask, k, mine_acc,
                              &accs);
      if (op == Combine::kMul) {
        ShareTileBatch<U, KMAX>(s0, per_step, gid, cnt, ok_mask, k, mine,
                                &rows);
      }
      const auto& q = accs.q;
      const auto& good = accs.good;
      unsigned peers[U][KMAX];
#pragma unroll
      for (int u = 0; u < U; ++u) {
#pragma unroll
        for (int j = 0; j < KMAX; ++j) {
          peers[u][j] = 0u;
          if (j < k) peers[u][j] = __shfl_sync(kFull, mine_peers[j], q[u]);
        }
      }
      for (int v = glane; v < nv_out; v += G) {
        const int64_t off = static_cast<int64_t>(v) * V;
        P grad_vecs[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
          if (good[u])
            grad_vecs[u] =
                LoadPack<T, V>(grad + (base + q[u]) * grad_row_bytes + off);
        }
        if (op == Combine::kConcat) {
          // Vector v belongs to the last table whose columns start at or
          // before it (every width is a multiple of N).
          int v_table = 0;
#pragma unroll
          for (int j = 1; j < KMAX; ++j) {
            if (j < k && v >= layout.col_offset[j] / N) v_table = j;
          }
          const int v_in_table = v - layout.col_offset[v_table] / N;
#pragma unroll
          for (int u = 0; u < U; ++u) {
            if (!good[u]) continue;
            float c[N];
#pragma unroll
            for (int e = 0; e < N; ++e) c[e] = Elem<T>::ToF(grad_vecs[u].e[e]);
            unsigned long long dst = 0ull;
            unsigned peer_mask = 0u;
#pragma unroll
            for (int j = 0; j < KMAX; ++j) {
              if (j == v_table) {
                dst = accs.a[u][j];
                peer_mask = peers[u][j];
              }
            }
            flush(base, q[u], peer_mask, v_table, off,
                  reinterpret_cast<float*>(dst) + v_in_table * N, c);
          }
          continue;
        }
        P x[U][KMAX];
        if (op == Combine::kMul) {
#pragma unroll
          for (int u = 0; u < U; ++u) {
#pragma unroll
            for (int j = 0; j < KMAX; ++j) {
              if (good[u] && j < k) {
                x[u][j] = LoadPack<T, V>(
                    reinterpret_cast<const char*>(rows.a[u][j]) + off);
              }
            }
          }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
          if (!good[u]) continue;
#pragma unroll
          for (int j = 0; j < KMAX; ++j) {
            if (j < k) {
              float c[N];
#pragma unroll
              for (int e = 0; e < N; ++e) {
                c[e] = GradShare<T, V, KMAX>(op, k, j, grad_vecs[u], x[u], e);
              }
              flush(base, q[u], peers[u][j], j, off,
                    reinterpret_cast<float*>(accs.a[u][j]) + v * N, c);
            }
          }
        }
      }
    }
  });
}

// One group of G lanes per (key, column tile): a marked key's accumulator
// row goes, converted to T, to its shard's next distinct row (its rank in
// the scan), and its shard-local row to the indices.
template <typename T, int V>
__global__ void __launch_bounds__(kBlock)
    DenseCompactKernel(const __grid_constant__ Layout layout,
                       const __grid_constant__ ShardOutputs outputs,
                       const __grid_constant__ KeyOffsets key_offsets,
                       const __grid_constant__ AccOffsets acc_offsets,
                       const uint32_t* __restrict__ marks,
                       const uint32_t* __restrict__ incl,
                       const int64_t* __restrict__ bounds,
                       const float* __restrict__ acc, int64_t num_keys,
                       int64_t tiles, int ids64, int log2_group) {
  using P = Pack<T, V>;
  constexpr int N = P::N;
  const Group group = MakeGroup(log2_group);
  const int64_t groups = static_cast<int64_t>(gridDim.x) * (kBlock >> log2_group);
  const int64_t first =
      (static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x) >> log2_group;
  for (int64_t w = first; w < num_keys * tiles; w += groups) {
    const int64_t key = w / tiles;
    const int t = static_cast<int>(w - key * tiles);
    if (marks[key] == 0u) continue;
    const RunRef run_ref =
        DecodeKey(layout, key_offsets, static_cast<unsigned long long>(key));
    const int j = run_ref.table;
    const int64_t out_row =
        static_cast<int64_t>(incl[key]) - 1 - bounds[run_ref.shard];
    if (t == 0 && group.lane == 0)
      WriteGradIndex(outputs, run_ref, out_row, ids64 != 0);
    const int v = t * group.size + group.lane;
    if (v >= layout.width[j] / N) continue;
    const int64_t row = static_cast<int64_t>(key - key_offsets.off[j]);
    float sums[N];
    LoadFloats<N>(acc + acc_offsets.off[j] + row * layout.width[j] +
                      static_cast<int64_t>(v) * N,
                  sums);
    WriteGradValues<T, V>(layout, outputs, run_ref, out_row, v, sums);
  }
}

template <typename Index>
cudaError_t DensePrepareOfIndex(const Layout& layout, const DensePlan& plan,
                                const void* ids, char* workspace,
                                int64_t* h_counts, cudaStream_t s) {
  uint32_t* marks = reinterpret_cast<uint32_t*>(workspace + plan.marks);
  uint32_t* incl = reinterpret_cast<uint32_t*>(workspace + plan.incl);
  int64_t* bounds = reinterpret_cast<int64_t*>(workspace + plan.bounds);
  int64_t* counts = reinterpret_cast<int64_t*>(workspace + plan.counts);
  cudaError_t e =
      cudaMemsetAsync(marks, 0, sizeof(uint32_t) * plan.num_keys, s);
  if (e != cudaSuccess) return e;
  if (plan.n > 0) {
    TFMH_LAUNCH(GridFor(plan.n, 0), kBlock, 0, s, MarkKernel<Index>)(
        layout, plan.key_offsets, static_cast<const Index*>(ids), plan.n,
        marks);
  }
  size_t cub_bytes = plan.cub_bytes;
  e = cub::DeviceScan::InclusiveSum(workspace + plan.cub, cub_bytes, marks,
                                    incl, static_cast<int>(plan.num_keys), s);
  if (e != cudaSuccess) return e;
  TFMH_LAUNCH(1, 128, 0, s, DenseBoundsKernel)(
      ShardTargets(layout, plan.key_offsets), plan.num_shards, incl, bounds,
      counts);
  e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  return cudaMemcpyAsync(h_counts, counts, sizeof(int64_t) * plan.num_shards,
                         cudaMemcpyDeviceToHost, s);
}

template <typename T, int V>
void DenseFinishOfType(const Layout& layout, const ShardPointers& shards,
                       const ShardOutputs& outputs, const DensePlan& plan,
                       const char* workspace, const void* ids, bool ids64,
                       const char* grad, cudaStream_t s) {
  constexpr int N = V / static_cast<int>(sizeof(T));
  float* acc =
      reinterpret_cast<float*>(const_cast<char*>(workspace) + plan.acc);
  if (plan.n > 0) {
    const int log2_group = GroupLog2(layout.out_width / N);
    const unsigned grid = GridFor((plan.n + 31) / 32, 5);  // a warp per 32 ids
    if (layout.num_tables <= 2) {
      TFMH_LAUNCH(grid, kBlock, 0, s, DenseScatterKernel<T, V, 2, 2>)(
          layout, shards, plan.acc_offsets, ids, ids64 ? 1 : 0, plan.n, grad,
          acc, log2_group);
    } else {
      TFMH_LAUNCH(grid, kBlock, 0, s, DenseScatterKernel<T, V, kMaxTables, 1>)(
          layout, shards, plan.acc_offsets, ids, ids64 ? 1 : 0, plan.n, grad,
          acc, log2_group);
    }
  }
  int wmax = 0;
  for (int j = 0; j < layout.num_tables; ++j)
    wmax = std::max(wmax, layout.width[j]);
  const int64_t nv = wmax / N;  // every width is a multiple of N
  const int log2_group = GroupLog2(nv);
  const int64_t tiles = (nv + (1 << log2_group) - 1) >> log2_group;
  TFMH_LAUNCH(GridFor(plan.num_keys * tiles, log2_group), kBlock, 0, s,
              DenseCompactKernel<T, V>)(
      layout, outputs, plan.key_offsets, plan.acc_offsets,
      reinterpret_cast<const uint32_t*>(workspace + plan.marks),
      reinterpret_cast<const uint32_t*>(workspace + plan.incl),
      reinterpret_cast<const int64_t*>(workspace + plan.bounds), acc,
      plan.num_keys, tiles, ids64 ? 1 : 0, log2_group);
}

}  // namespace

// Sum of rows and of accumulator floats (each table's rounded up to 4);
// false if the keys do not fit CUB's int item count.
bool DenseSizes(const Layout& layout, KeyOffsets* key_offsets,
                AccOffsets* acc_offsets, unsigned long long* keys,
                unsigned long long* floats) {
  unsigned long long r = 0, a = 0;
  for (int j = 0; j < layout.num_tables; ++j) {
    key_offsets->off[j] = r;
    acc_offsets->off[j] = a;
    r += static_cast<unsigned long long>(layout.rows[j]);
    if (r > static_cast<unsigned long long>(INT_MAX)) return false;
    a += (static_cast<unsigned long long>(layout.rows[j]) *
              static_cast<unsigned long long>(layout.width[j]) +
          3ull) /
         4ull * 4ull;
  }
  for (int j = layout.num_tables; j <= kMaxTables; ++j) key_offsets->off[j] = r;
  *keys = r;
  *floats = a;
  return true;
}

cudaError_t MakeDensePlan(const Layout& layout, int64_t n, DensePlan* plan) {
  if (!LayoutOk(layout) || n < 0) return cudaErrorInvalidValue;
  *plan = DensePlan();
  plan->n = n;
  plan->num_shards = layout.shard_begin[layout.num_tables];
  unsigned long long keys = 0;
  if (!DenseSizes(layout, &plan->key_offsets, &plan->acc_offsets, &keys,
                  &plan->acc_floats)) {
    return cudaErrorInvalidValue;
  }
  if (plan->acc_floats >
      (static_cast<unsigned long long>(SIZE_MAX) / 8) / sizeof(float)) {
    return cudaErrorInvalidValue;
  }
  plan->num_keys = static_cast<int64_t>(keys);
  const size_t r = static_cast<size_t>(keys);
  size_t off = 0;
  plan->counts = off; off += AlignUp(sizeof(int64_t) * kMaxShards);
  plan->bounds = off; off += AlignUp(sizeof(int64_t) * (kMaxShards + 1));
  plan->marks = off; off += AlignUp(4 * r);
  plan->incl = off; off += AlignUp(4 * r);
  cudaError_t e = cub::DeviceScan::InclusiveSum(
      nullptr, plan->cub_bytes, static_cast<const uint32_t*>(nullptr),
      static_cast<uint32_t*>(nullptr), static_cast<int>(keys));
  if (e != cudaSuccess) return e;
  plan->cub = off; off += AlignUp(std::max<size_t>(plan->cub_bytes, 1));
  plan->acc = off;
  off += AlignUp(sizeof(float) * static_cast<size_t>(plan->acc_floats));
  plan->total = off + kAlign;
  return cudaSuccess;
}

cudaError_t DensePrepare(const Layout& layout, IdType id_type,
                         const DensePlan& plan, const void* ids,
                         char* workspace, int64_t* h_counts,
                         cudaStream_t stream) {
  return id_type == IdType::kInt32
             ? DensePrepareOfIndex<int32_t>(layout, plan, ids, workspace,
                                            h_counts, stream)
             : DensePrepareOfIndex<int64_t>(layout, plan, ids, workspace,
                                            h_counts, stream);
}

cudaError_t DenseFinish(DType dtype, int vector_bytes, const Layout& layout,
                        const ShardPointers& shards,
                        const ShardOutputs& outputs, const DensePlan& plan,
                        char* workspace, const void* ids, bool ids64,
                        const char* grad, cudaStream_t stream) {
  cudaError_t err = cudaMemsetAsync(workspace + plan.acc, 0,
                                    sizeof(float) * plan.acc_floats, stream);
  if (err != cudaSuccess) return err;
  WithTypeAndVector(dtype, vector_bytes, [&](auto type, auto vector) {
    DenseFinishOfType<typename decltype(type)::type, decltype(vector)::value>(
        layout, shards, outputs, plan, workspace, ids, ids64, grad, stream);
  });
  return cudaSuccess;
}

}  // namespace internal
}  // namespace gpu
}  // namespace tfmh
