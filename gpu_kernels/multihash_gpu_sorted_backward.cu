// CUDA kernels of the multi-hash gradient's deterministic algorithm,
// GradAlgorithm::kSorted (gpu_kernels/multihash_gpu.h), and their host
// side: the plan of one sort, phase 1 (Prepare) and phase 2 (Finish). The
// launchers in multihash_gpu_launch.cu call them.
//
// Sorted, phase 1 (Prepare): keys = table key offset + table row for every
// (table, id) pair, values = positions; one radix sort over the key bits in
// use (stable: positions of a key stay ascending, so sums are deterministic);
// head flags + inclusive scan give a 1-based run (= unique row) id per sorted
// item; a one-block kernel binary-searches the shard boundaries to get every
// shard's first run and count; the counts are copied to the host.
// Sorted, phase 2 (Finish): for mul, a first pass over the ids in their original
// order (coalesced id and gradient reads, table rows from L2) writes, for
// every table j, P_j[i] = grad[i] * prod_{q != j} row_q(id_i) as float into
// the workspace; the sum then reads P_j exactly like add reads the gradient,
// with no random id gathers. The sorted items are cut into fixed chunks of C
// items; one group per (chunk, column tile) walks its chunk, summing the
// gradient vectors (P_j for mul) of each run segment in float. Runs that lie inside one chunk are written directly; a run crossing
// chunk borders leaves one float partial per chunk, and a fix-up kernel (one
// group per run owner) adds them in chunk order; a run over more than 64
// chunks (a frequent row) is left to a second fix-up kernel, where a whole
// block adds its partials in a fixed order (strided per thread, then the
// thread sums in thread order). Everything is deterministic.
// Sorted, ids merged first (add and mul, when the ids must repeat; see
// MergedPlan): the same two phases run twice, first on a one-table
// layout whose rows are the ids (summing each distinct id's gradient rows,
// one read of the gradient), then on the real tables with the distinct ids
// and their sums as the input.
#include "gpu_kernels/multihash_gpu_internal.cuh"

namespace tfmh {
namespace gpu {
namespace internal {
namespace {

template <typename Index, typename Key>
__global__ void __launch_bounds__(kBlock)
    BuildKeysKernel(const __grid_constant__ Layout layout,
                    const __grid_constant__ KeyOffsets key_offsets,
                    const Index* __restrict__ ids, int64_t n,
                    Key* __restrict__ keys, uint32_t* __restrict__ pos) {
  const int k = layout.num_tables;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kBlock;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x;
       i < n; i += stride) {
    const Index raw = ids[i];
    const bool ok = IdInRange(layout, raw);
    for (int j = 0; j < k; ++j) {
      const unsigned long long key =
          ok ? key_offsets.off[j] + static_cast<unsigned long long>(
                               TableRow(layout, j, static_cast<int64_t>(raw)))
             : key_offsets.off[k];
      keys[j * n + i] = static_cast<Key>(key);
      pos[j * n + i] = static_cast<uint32_t>(i);
    }
  }
}

template <typename Key>
__global__ void __launch_bounds__(kBlock)
    HeadFlagsKernel(const Key* __restrict__ keys, int64_t m,
                    uint32_t* __restrict__ flags) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kBlock;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x;
       i < m; i += stride) {
    flags[i] = (i == 0 || keys[i] != keys[i - 1]) ? 1u : 0u;
  }
}

// One block: first run of every shard (binary search for its first key),
// the number of valid runs, and the per-shard counts.
template <typename Key>
__global__ void ShardBoundsKernel(const __grid_constant__ BoundTargets targets,
                                  int num_shards,
                                  const Key* __restrict__ keys, int64_t m,
                                  const uint32_t* __restrict__ run_id,
                                  int64_t* __restrict__ bounds,
                                  int64_t* __restrict__ counts) {
  const int b = threadIdx.x;
  if (b <= num_shards) {
    const unsigned long long target = targets.key[b];
    int64_t lo = 0, hi = m;  // first index with key >= target
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (static_cast<unsigned long long>(keys[mid]) < target) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    bounds[b] = lo == m ? static_cast<int64_t>(run_id[m - 1])
                        : static_cast<int64_t>(run_id[lo]) - 1;
  }
  __syncthreads();
  if (b < num_shards) counts[b] = bounds[b + 1] - bounds[b];
}

// Merged path (see MergedPlan), after stage 1's sort, whose keys are the
// ids themselves: uid[run - 1] = the id of every run of in-range ids, so
// uid lists the distinct ids in ascending order.
template <typename Index>
__global__ void __launch_bounds__(kBlock)
    DistinctIdsKernel(const void* __restrict__ keys, int key64,
                      const uint32_t* __restrict__ run_id, int64_t m,
                      int64_t capacity, Index* __restrict__ uid) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kBlock;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x;
       i < m; i += stride) {
    const unsigned long long key = KeyAt(keys, key64 != 0, i);
    if (key >= static_cast<unsigned long long>(capacity)) continue;  // sentinel
    if (i == 0 || run_id[i] != run_id[i - 1]) {
      uid[run_id[i] - 1] = static_cast<Index>(key);
    }
  }
}

// Mul, before the sum: for every in-range position i (original order) and
// every table j, P_j[i] = grad[i] * (product of the other tables' rows of
// id i), in float, at prod + (j * n + i) * out_width; out-of-range ids get
// zero rows (their items are never summed). Same walk as LookupKernel: a
// warp takes a tile of 32 ids, lane L loads id L (prefetched a tile ahead)
// and computes its k row addresses; one group of G lanes per id takes them
// by shuffle and moves V-byte vectors; U ids per batch keep the gradient and
// row loads of U ids in flight. KMAX: an upper bound of num_tables.
// kFloatGrad: the gradient rows are floats (the merged path's sums), not T.
template <typename T, int V, int KMAX, int U, bool kFloatGrad = false>
__global__ void __launch_bounds__(kBlock)
    MulPartialKernel(const __grid_constant__ Layout layout,
                     const __grid_constant__ ShardPointers shards,
                     const void* __restrict__ ids, int ids64, int64_t n,
                     const char* __restrict__ grad, float* __restrict__ prod,
                     int log2_group) {
  using P = Pack<T, V>;
  constexpr int N = P::N;
  constexpr unsigned kFull = 0xffffffffu;
  const TileLanes lanes = MakeTileLanes(log2_group);
  const int G = lanes.G, glane = lanes.glane, gid = lanes.gid,
            per_step = lanes.per_step;
  const int k = layout.num_tables;
  const Combine op = layout.combine;
  const int64_t W = layout.out_width;  // = width of every table (mul)
  const int nv = static_cast<int>(W / N);
  const int64_t row_bytes = W * static_cast<int64_t>(sizeof(T));
  const int64_t table_stride = n * W;  // floats of one P_j

  ForEachTile(lanes, ids, ids64 != 0, n, [&](int64_t base, int64_t i,
                                             int64_t id) {
    unsigned long long mine[KMAX];
    const bool ok = LaneRowAddrs<T, KMAX>(layout, shards, i, n, id, mine);
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
      for (int v = glane; v < nv; v += G) {
        const int64_t off = static_cast<int64_t>(v) * V;
        float grad_vals[U][N];
        P x[U][KMAX];
#pragma unroll
        for (int u = 0; u < U; ++u) {
          if (good[u]) {
            if constexpr (kFloatGrad) {
              LoadFloats<N>(reinterpret_cast<const float*>(grad) +
                                (base + q[u]) * W + static_cast<int64_t>(v) * N,
                            grad_vals[u]);
            } else {
              const P g = LoadPack<T, V>(grad + (base + q[u]) * row_bytes + off);
#pragma unroll
              for (int e = 0; e < N; ++e)
                grad_vals[u][e] = Elem<T>::ToF(g.e[e]);
            }
#pragma unroll
            for (int j = 0; j < KMAX; ++j) {
              if (j < k) {
                x[u][j] = LoadPack<T, V>(
                    reinterpret_cast<const char*>(addrs[u][j]) + off);
              }
            }
          }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
          if (!valid[u]) continue;
          float* dst = prod + (base + q[u]) * W + static_cast<int64_t>(v) * N;
#pragma unroll
          for (int j = 0; j < KMAX; ++j) {
            if (j < k) {
              float o[N];
#pragma unroll
              for (int e = 0; e < N; ++e) {
                o[e] = good[u] ? GradShareF<T, V, KMAX>(
                                     op, k, j, grad_vals[u][e], x[u], e)
                               : 0.f;
              }
              StoreFloats<N>(dst + j * table_stride, o);
            }
          }
        }
      }
    }
  });
}

// One group per (chunk, column tile). See the file comment. kProd: the
// gradient of every item is P_j (mul, float, written by MulPartialKernel);
// else the table's columns of the incoming gradient (add and concat).
template <typename T, int V, bool kProd>
__global__ void __launch_bounds__(kBlock)
    GradReduceKernel(const __grid_constant__ Layout layout,
                     const __grid_constant__ ShardOutputs outputs,
                     const __grid_constant__ GradArgs args, int log2_group) {
  using P = Pack<T, V>;
  constexpr int N = P::N;
  const Group group = MakeGroup(log2_group);
  const int64_t groups = static_cast<int64_t>(gridDim.x) * (kBlock >> log2_group);
  const int64_t first =
      (static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x) >> log2_group;
  const int k = layout.num_tables;
  constexpr int kB = kBatch;
  const int num_shards = layout.shard_begin[k];
  const uint32_t valid_runs = static_cast<uint32_t>(args.bounds[num_shards]);
  const int64_t grad_row_bytes =
      static_cast<int64_t>(layout.out_width) * sizeof(T);
  const int64_t prod_w = layout.out_width;
  const uint32_t* __restrict__ run_id = args.run_id;
  const uint32_t* __restrict__ pos = args.pos;

  for (int64_t w = first; w < args.chunks * args.tiles; w += groups) {
    const int64_t c = w / args.tiles;
    const int t = static_cast<int>(w - c * args.tiles);
    const int64_t base = c * args.chunk;
    const int64_t end = min(base + args.chunk, args.m);
    const int v =
        t * group.size + group.lane;  // vector index within a table row
    uint32_t r = run_id[base];
    if (r > valid_runs) continue;  // only out-of-range ids from here on
    const bool head_before = base > 0 && run_id[base - 1] == r;
    int64_t i = base;
    while (true) {
      const RunRef run_ref =
          DecodeKey(layout, args.key_offsets, KeyAt(args.keys, args.key64, i));
      const int j = run_ref.table;
      const bool active = v < layout.width[j] / N;
      const int64_t col_bytes =
          static_cast<int64_t>(layout.col_offset[j]) * sizeof(T) +
          static_cast<int64_t>(v) * V;
      // P_j of position p, this lane's N columns.
      const float* prod_j =
          kProd ? args.prod + static_cast<int64_t>(j) * args.prod_stride +
                      layout.col_offset[j] + static_cast<int64_t>(v) * N
                : nullptr;
      float acc[N];
#pragma unroll
      for (int e = 0; e < N; ++e) acc[e] = 0.f;
      const int64_t seg_start = i;
      while (i < end) {
        uint32_t rid[kB], item_pos[kB];
#pragma unroll
        for (int u = 0; u < kB; ++u) {
          const bool in = i + u < end;
          rid[u] = in ? run_id[i + u] : 0u;
          item_pos[u] = in ? pos[i + u] : 0u;
        }
        int taken = 0;
        if constexpr (kProd) {
          float pv[kB][N];
#pragma unroll
          for (int u = 0; u < kB; ++u) {
            if (active && rid[u] == r) {
              LoadFloats<N>(prod_j + static_cast<int64_t>(item_pos[u]) * prod_w,
                            pv[u]);
            }
          }
#pragma unroll
          for (int u = 0; u < kB; ++u) {
            if (rid[u] == r) {  // a prefix of the batch (run ids ascend)
              ++taken;
              if (active) {
#pragma unroll
                for (int e = 0; e < N; ++e) acc[e] += pv[u][e];
              }
            }
          }
        } else {
          P grad_vecs[kB];
#pragma unroll
          for (int u = 0; u < kB; ++u) {
            if (active && rid[u] == r) {
              grad_vecs[u] = LoadPack<T, V>(args.grad +
                                            static_cast<int64_t>(item_pos[u]) *
                                                grad_row_bytes +
                                            col_bytes);
            }
          }
#pragma unroll
          for (int u = 0; u < kB; ++u) {
            if (rid[u] == r) {  // a prefix of the batch (run ids ascend)
              ++taken;
              if (active) {
#pragma unroll
                for (int e = 0; e < N; ++e)
                  acc[e] += Elem<T>::ToF(grad_vecs[u].e[e]);
              }
            }
          }
        }
        i += taken;
        if (taken < kB) break;
      }
      // Flush the segment [seg_start, i) of run r.
      const bool starts_before = seg_start == base && head_before;
      const bool continues = i == end && end < args.m && run_id[end] == r;
      const int64_t out_row =
          static_cast<int64_t>(r - 1) - args.bounds[run_ref.shard];
      if (!starts_before && t == 0 && group.lane == 0) {
        WriteGradIndex(outputs, run_ref, out_row, args.ids64 != 0);
      }
      if (active) {
        if (!starts_before && !continues) {
          WriteGradValues<T, V>(layout, outputs, run_ref, out_row, v, acc);
        } else {
          const int64_t slot = 2 * c + (starts_before ? 0 : 1);
          StoreFloats<N>(
              args.partials + slot * args.wstride + static_cast<int64_t>(v) * N,
              acc);
        }
      }
      if (i >= end) break;
      r = run_id[i];
      if (r > valid_runs) break;
    }
  }
}

// The fix-up work of chunk c: 0 if c owns no run that crosses its end,
// else that run r (a valid run whose last item in c continues into c + 1
// and which starts in c). `long_run`: does r also hold the first item of
// chunk c + 1 + kLongRunChunks? Such long runs (a frequent row) have too
// many partials for one group to add one after another; GradFixupKernel
// takes the others and GradLongFixupKernel, with a block each, the long ones.
constexpr int64_t kLongRunChunks = 64;
__device__ __forceinline__ uint32_t OwnedCrossingRun(const GradArgs& args,
                                                     uint32_t valid_runs,
                                                     int64_t c, bool* long_run) {
  const int64_t base = c * args.chunk;
  const int64_t end = min(base + args.chunk, args.m);
  if (end >= args.m) return 0;
  const uint32_t r = args.run_id[end - 1];
  if (r > valid_runs || args.run_id[end] != r) return 0;
  if (base > 0 && args.run_id[base - 1] == r) return 0;  // not the run's owner
  const int64_t probe = c + 1 + kLongRunChunks;
  *long_run = probe < args.chunks && args.run_id[probe * args.chunk] == r;
  return r;
}

// One group per (chunk, tile) whose last run starts in the chunk and goes
// on past it, unless the run is long: adds the chunk's tail partial and the
// following chunks' head partials in order and writes the run's values.
template <typename T, int V>
__global__ void __launch_bounds__(kBlock)
    GradFixupKernel(const __grid_constant__ Layout layout,
                    const __grid_constant__ ShardOutputs outputs,
                    const __grid_constant__ GradArgs args, int log2_group) {
  using P = Pack<T, V>;
  constexpr int N = P::N;
  const Group group = MakeGroup(log2_group);
  const int64_t groups = static_cast<int64_t>(gridDim.x) * (kBlock >> log2_group);
  const int64_t first =
      (static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x) >> log2_group;
  const int num_shards = layout.shard_begin[layout.num_tables];
  const uint32_t valid_runs = static_cast<uint32_t>(args.bounds[num_shards]);
  const uint32_t* __restrict__ run_id = args.run_id;

  for (int64_t w = first; w < args.chunks * args.tiles; w += groups) {
    const int64_t c = w / args.tiles;
    const int t = static_cast<int>(w - c * args.tiles);
    bool long_run = false;
    const uint32_t r = OwnedCrossingRun(args, valid_runs, c, &long_run);
    if (r == 0 || long_run) continue;
    const int64_t end = (c + 1) * args.chunk;  // < m: the run goes on
    const RunRef run_ref = DecodeKey(layout, args.key_offsets,
                                     KeyAt(args.keys, args.key64, end - 1));
    const int j = run_ref.table;
    const int v = t * group.size + group.lane;
    if (v >= layout.width[j] / N) continue;
    const int64_t col = static_cast<int64_t>(v) * N;
    float acc[N];
    LoadFloats<N>(args.partials + (2 * c + 1) * args.wstride + col, acc);
    for (int64_t c2 = c + 1;; ++c2) {
      float h[N];
      LoadFloats<N>(args.partials + (2 * c2) * args.wstride + col, h);
#pragma unroll
      for (int e = 0; e < N; ++e) acc[e] += h[e];
      const int64_t e2 = min((c2 + 1) * args.chunk, args.m);
      if (e2 >= args.m || run_id[e2] != r) break;
    }
    const int64_t out_row =
        static_cast<int64_t>(r - 1) - args.bounds[run_ref.shard];
    WriteGradValues<T, V>(layout, outputs, run_ref, out_row, v, acc);
  }
}

// The long runs of GradFixupKernel. Blocks stride over batches of kBlock
// chunks; thread t checks whether chunk (batch + t) owns a long run, and the
// block then takes its batch's owners one by one: it counts the chunks whose
// first item is in the run (the heads are ascending, so they are the next
// `span` chunks), lays its threads out as CL chunk lanes x VT vector lanes,
// has chunk lane cl add the head partials of chunks c + 1 + cl, + CL, ...
// in order, and thread (0, vt) adds the owner's tail partial and the CL lane
// sums in lane order. The order of the additions depends only on the run's
// position, so results stay deterministic.
// Shared memory: kBlock * N floats, kBlock ints (the owners), one int (their
// count).
template <typename T, int V>
__global__ void __launch_bounds__(kBlock)
    GradLongFixupKernel(const __grid_constant__ Layout layout,
                        const __grid_constant__ ShardOutputs outputs,
                        const __grid_constant__ GradArgs args) {
  constexpr int N = Pack<T, V>::N;
  TFMH_DYNAMIC_SHARED(smem);
  float* lane_sum = reinterpret_cast<float*>(smem);
  int* owners = reinterpret_cast<int*>(smem + kBlock * N * sizeof(float));
  int* num_owners = owners + kBlock;
  const int tid = threadIdx.x;
  const int num_shards = layout.shard_begin[layout.num_tables];
  const uint32_t valid_runs = static_cast<uint32_t>(args.bounds[num_shards]);
  const uint32_t* __restrict__ run_id = args.run_id;
  for (int64_t batch = static_cast<int64_t>(blockIdx.x) * kBlock;
       batch < args.chunks; batch += static_cast<int64_t>(gridDim.x) * kBlock) {
    if (tid == 0) *num_owners = 0;
    __syncthreads();
    const int64_t c = batch + tid;
    bool long_run = false;
    if (c < args.chunks &&
        OwnedCrossingRun(args, valid_runs, c, &long_run) != 0 && long_run) {
      owners[atomicAdd(num_owners, 1)] = tid;  // any order: owners are independent
    }
    __syncthreads();
    const int total = *num_owners;
    for (int o = 0; o < total; ++o) {
      const int64_t oc = batch + owners[o];
      const int64_t end = (oc + 1) * args.chunk;  // < m: the run goes on
      const uint32_t r = run_id[end - 1];
      // span = chunks after oc whose first item is in run r (at least
      // kLongRunChunks + 1), found kBlock chunks at a time.
      int64_t span = 0;
      while (true) {
        const int64_t h = oc + 1 + span + tid;
        const int in = h < args.chunks && run_id[h * args.chunk] == r;
        const int got = __syncthreads_count(in);
        span += got;
        if (got < kBlock) break;
      }
      const RunRef run_ref = DecodeKey(layout, args.key_offsets,
                                       KeyAt(args.keys, args.key64, end - 1));
      const int nv = layout.width[run_ref.table] / N;
      int lgv = 0;
      while (lgv < 5 && (1 << lgv) < nv) ++lgv;
      const int VT = 1 << lgv, CL = kBlock / VT;
      const int vt = tid & (VT - 1), cl = tid >> lgv;
      const int64_t out_row =
          static_cast<int64_t>(r - 1) - args.bounds[run_ref.shard];
      for (int v0 = 0; v0 < nv; v0 += VT) {
        const int v = v0 + vt;
        const int64_t col = static_cast<int64_t>(v) * N;
        float s[N];
#pragma unroll
        for (int e = 0; e < N; ++e) s[e] = 0.f;
        if (v < nv) {
          for (int64_t h = oc + 1 + cl; h <= oc + span; h += CL) {
            float x[N];
            LoadFloats<N>(args.partials + (2 * h) * args.wstride + col, x);
#pragma unroll
            for (int e = 0; e < N; ++e) s[e] += x[e];
          }
        }
        StoreFloats<N>(lane_sum + static_cast<int64_t>(tid) * N, s);
        __syncthreads();
        if (cl == 0 && v < nv) {
          float acc[N];
          LoadFloats<N>(args.partials + (2 * oc + 1) * args.wstride + col, acc);
          for (int q = 0; q < CL; ++q) {
            float x[N];
            LoadFloats<N>(lane_sum + static_cast<int64_t>(q * VT + vt) * N, x);
#pragma unroll
            for (int e = 0; e < N; ++e) acc[e] += x[e];
          }
          WriteGradValues<T, V>(layout, outputs, run_ref, out_row, v, acc);
        }
        __syncthreads();
      }
    }
    __syncthreads();
  }
}

// Items per chunk: about 64K chunks, 32..1024 items each.
int64_t ChunkFor(int64_t m) {
  int64_t c = 32;
  while (c < 1024 && c * 65536 < m) c *= 2;
  return c;
}

}  // namespace

cudaError_t MakeGradPlan(const Layout& layout, int64_t n, bool force_key64,
                         GradPlan* plan) {
  if (!LayoutOk(layout) || n < 0) return cudaErrorInvalidValue;
  // Positions are uint32 and CUB item counts int.
  if (n > static_cast<int64_t>(UINT32_MAX) ||
      static_cast<int64_t>(layout.num_tables) * n >
          static_cast<int64_t>(INT_MAX)) {
    return cudaErrorInvalidValue;
  }
  *plan = GradPlan();
  plan->n = n;
  plan->m = static_cast<int64_t>(layout.num_tables) * n;
  plan->num_shards = layout.shard_begin[layout.num_tables];
  unsigned long long r = 0;
  for (int j = 0; j < layout.num_tables; ++j) {
    plan->key_offsets.off[j] = r;
    r += static_cast<unsigned long long>(layout.rows[j]);
  }
  for (int j = layout.num_tables; j <= kMaxTables; ++j)
    plan->key_offsets.off[j] = r;
  // Sum of table rows above 2^32 - 1 needs 64-bit sort keys;
  // LaunchOptions::force_key64 forces them (for the standalone test).
  plan->key64 = r > 0xffffffffull || force_key64;
  plan->key_bits = 1;
  while (plan->key_bits < 64 && (r >> plan->key_bits) != 0) ++plan->key_bits;
  int wmax = 0;
  for (int j = 0; j < layout.num_tables; ++j)
    wmax = std::max(wmax, layout.width[j]);
  plan->wstride = (wmax + 7) / 8 * 8;
  plan->chunk = ChunkFor(plan->m);
  plan->chunks = (plan->m + plan->chunk - 1) / plan->chunk;

  const size_t m = static_cast<size_t>(plan->m);
  const size_t ksz = plan->key64 ? 8 : 4;
  size_t off = 0;
  plan->counts = off; off += AlignUp(sizeof(int64_t) * kMaxShards);
  plan->bounds = off; off += AlignUp(sizeof(int64_t) * (kMaxShards + 1));
  plan->pos = off; off += AlignUp(4 * m);
  plan->run_id = off; off += AlignUp(4 * m);
  plan->keys = off; off += AlignUp(ksz * m);
  plan->temp = off;
  size_t t = off;
  plan->keys_in = t; t += AlignUp(ksz * m);  // the head flags after the sort
  plan->pos_in = t; t += AlignUp(4 * m);
  plan->cub = t;
  if (plan->m > 0) {
    const int items = static_cast<int>(plan->m);
    size_t sort_bytes = 0, scan_bytes = 0;
    cudaError_t e;
    if (plan->key64) {
      e = cub::DeviceRadixSort::SortPairs(
          nullptr, sort_bytes, static_cast<const unsigned long long*>(nullptr),
          static_cast<unsigned long long*>(nullptr),
          static_cast<const uint32_t*>(nullptr), static_cast<uint32_t*>(nullptr),
          items, 0, plan->key_bits);
    } else {
      e = cub::DeviceRadixSort::SortPairs(
          nullptr, sort_bytes, static_cast<const uint32_t*>(nullptr),
          static_cast<uint32_t*>(nullptr), static_cast<const uint32_t*>(nullptr),
          static_cast<uint32_t*>(nullptr), items, 0, plan->key_bits);
    }
    if (e != cudaSuccess) return e;
    e = cub::DeviceScan::InclusiveSum(nullptr, scan_bytes,
                                      static_cast<const uint32_t*>(nullptr),
                                      static_cast<uint32_t*>(nullptr), items);
    if (e != cudaSuccess) return e;
    plan->cub_bytes = std::max(sort_bytes, scan_bytes);
  }
  t += AlignUp(std::max<size_t>(plan->cub_bytes, 1));
  plan->partials = off;
  const size_t partial_bytes =
      AlignUp(sizeof(float) * 2 * static_cast<size_t>(plan->chunks) *
              static_cast<size_t>(plan->wstride));
  // Mul: P_j[i] for every table j and position i, out_width floats each
  // (k * n * out_width floats), after the partials. Like the partials it
  // only lives in phase 2, so it reuses the phase 1 temporaries.
  size_t prod_bytes = 0;
  if (layout.combine == Combine::kMul) {
    const uint64_t w = static_cast<uint64_t>(layout.out_width);
    if (plan->m > 0 &&
        w > (static_cast<uint64_t>(SIZE_MAX) / 8) / sizeof(float) / m) {
      return cudaErrorInvalidValue;  // the workspace size would overflow
    }
    prod_bytes = AlignUp(sizeof(float) * m * static_cast<size_t>(w));
  }
  plan->prod = off + partial_bytes;
  plan->total = std::max(t, off + partial_bytes + prod_bytes) + kAlign;
  return cudaSuccess;
}

namespace {

template <typename Index, typename Key>
cudaError_t SortedPrepareWithKeys(const Layout& layout, const GradPlan& plan,
                                  const void* ids, char* workspace,
                                  int64_t* h_counts, cudaStream_t s) {
  Key* keys_in = reinterpret_cast<Key*>(workspace + plan.keys_in);
  Key* keys = reinterpret_cast<Key*>(workspace + plan.keys);
  uint32_t* pos_in = reinterpret_cast<uint32_t*>(workspace + plan.pos_in);
  uint32_t* pos = reinterpret_cast<uint32_t*>(workspace + plan.pos);
  uint32_t* flags = reinterpret_cast<uint32_t*>(workspace + plan.keys_in);
  uint32_t* run_id = reinterpret_cast<uint32_t*>(workspace + plan.run_id);
  int64_t* bounds = reinterpret_cast<int64_t*>(workspace + plan.bounds);
  int64_t* counts = reinterpret_cast<int64_t*>(workspace + plan.counts);
  const int items = static_cast<int>(plan.m);
  const unsigned grid_n = GridFor(plan.n, 0);
  TFMH_LAUNCH(grid_n, kBlock, 0, s, BuildKeysKernel<Index, Key>)(
      layout, plan.key_offsets, static_cast<const Index*>(ids), plan.n, keys_in,
      pos_in);
  size_t cub_bytes = plan.cub_bytes;
  cudaError_t e = cub::DeviceRadixSort::SortPairs(
      workspace + plan.cub, cub_bytes, keys_in, keys, pos_in, pos, items, 0,
      plan.key_bits, s);
  if (e != cudaSuccess) return e;
  TFMH_LAUNCH(GridFor(plan.m, 0), kBlock, 0, s, HeadFlagsKernel<Key>)(
      keys, plan.m, flags);
  cub_bytes = plan.cub_bytes;
  e = cub::DeviceScan::InclusiveSum(workspace + plan.cub, cub_bytes, flags,
                                    run_id, items, s);
  if (e != cudaSuccess) return e;
  TFMH_LAUNCH(1, 128, 0, s, ShardBoundsKernel<Key>)(
      ShardTargets(layout, plan.key_offsets), plan.num_shards, keys, plan.m,
      run_id, bounds, counts);
  e = cudaGetLastError();
  if (e != cudaSuccess || h_counts == nullptr) return e;
  return cudaMemcpyAsync(h_counts, counts, sizeof(int64_t) * plan.num_shards,
                         cudaMemcpyDeviceToHost, s);
}

// SortedPrepareWithKeys for either key width; the m == 0 case only writes
// zero counts.
template <typename Index>
cudaError_t SortedPrepareOfIndex(const Layout& layout, const GradPlan& plan,
                                 const void* ids, char* workspace,
                                 int64_t* h_counts, cudaStream_t s) {
  if (plan.m == 0) {
    int64_t* counts = reinterpret_cast<int64_t*>(workspace + plan.counts);
    cudaError_t e =
        cudaMemsetAsync(counts, 0, sizeof(int64_t) * plan.num_shards, s);
    if (e != cudaSuccess || h_counts == nullptr) return e;
    return cudaMemcpyAsync(h_counts, counts, sizeof(int64_t) * plan.num_shards,
                           cudaMemcpyDeviceToHost, s);
  }
  return plan.key64 ? SortedPrepareWithKeys<Index, unsigned long long>(
                       layout, plan, ids, workspace, h_counts, s)
                 : SortedPrepareWithKeys<Index, uint32_t>(
                       layout, plan, ids, workspace, h_counts, s);
}

// MulPartialKernel; float_grad: args.grad holds float rows. Only 2-byte tables
// need a second kernel for that (for float tables it is the same kernel).
template <typename T, int V, int KMAX, int U>
void LaunchMulPartial(unsigned grid, cudaStream_t s, bool float_grad,
                      const Layout& layout, const ShardPointers& shards,
                      const GradArgs& args, float* prod, int log2_group) {
  constexpr bool kHalf = sizeof(T) == 2;
  if (kHalf && float_grad) {
    TFMH_LAUNCH(grid, kBlock, 0, s, MulPartialKernel<T, V, KMAX, U, kHalf>)(
        layout, shards, args.ids, args.ids64, args.n, args.grad, prod,
        log2_group);
  } else {
    TFMH_LAUNCH(grid, kBlock, 0, s, MulPartialKernel<T, V, KMAX, U>)(
        layout, shards, args.ids, args.ids64, args.n, args.grad, prod,
        log2_group);
  }
}

// float_grad: args.grad holds float rows of out_width (the merged path's
// stage 2), read through the kProd path whatever T is.
template <typename T, int V>
void SortedFinishOfType(const Layout& layout, const ShardPointers& shards,
                        const ShardOutputs& outputs, GradArgs args, float* prod,
                        bool float_grad, cudaStream_t s) {
  constexpr int N = V / static_cast<int>(sizeof(T));
  int wmax = 0;
  for (int j = 0; j < layout.num_tables; ++j)
    wmax = std::max(wmax, layout.width[j]);
  const int64_t nv = wmax / N;  // every width is a multiple of N
  const int log2_group = GroupLog2(nv);
  args.tiles = (nv + (1 << log2_group) - 1) >> log2_group;
  const unsigned grid = GridFor(args.chunks * args.tiles, log2_group);
  if (layout.combine == Combine::kMul) {
    const int lgp = GroupLog2(layout.out_width / N);
    const unsigned grid_p =
        GridFor((args.n + 31) / 32, 5);  // a warp per 32 ids
    if (layout.num_tables <= 2) {
      LaunchMulPartial<T, V, 2, 4>(grid_p, s, float_grad, layout, shards, args,
                                   prod, lgp);
    } else {
      LaunchMulPartial<T, V, kMaxTables, 1>(grid_p, s, float_grad, layout,
                                            shards, args, prod, lgp);
    }
    args.prod = prod;
    args.prod_stride = args.n * layout.out_width;
    TFMH_LAUNCH(grid, kBlock, 0, s, GradReduceKernel<T, V, true>)(
        layout, outputs, args, log2_group);
  } else if (float_grad) {
    args.prod = reinterpret_cast<const float*>(args.grad);
    args.prod_stride = 0;
    TFMH_LAUNCH(grid, kBlock, 0, s, GradReduceKernel<T, V, true>)(
        layout, outputs, args, log2_group);
  } else {
    TFMH_LAUNCH(grid, kBlock, 0, s, GradReduceKernel<T, V, false>)(
        layout, outputs, args, log2_group);
  }
  TFMH_LAUNCH(grid, kBlock, 0, s, GradFixupKernel<T, V>)(layout, outputs, args,
                                                         log2_group);
  const int64_t batches = (args.chunks + kBlock - 1) / kBlock;
  const unsigned grid_long = static_cast<unsigned>(
      std::max<int64_t>(1, std::min<int64_t>(batches, NumSMs() * 4)));
  TFMH_LAUNCH(grid_long, kBlock, kBlock * (N * sizeof(float) + sizeof(int)) + sizeof(int),
              s, GradLongFixupKernel<T, V>)(layout, outputs, args);
}

// Phase 2 arguments of a (stage's) plan whose workspace starts at
// `workspace`.
GradArgs SortedGradArgs(const GradPlan& plan, char* workspace, const void* ids,
                        bool ids64, const char* grad) {
  GradArgs args = {};
  args.ids = ids;
  args.ids64 = ids64 ? 1 : 0;
  args.grad = grad;
  args.n = plan.n;
  args.m = plan.m;
  args.chunk = plan.chunk;
  args.chunks = plan.chunks;
  args.keys = workspace + plan.keys;
  args.key64 = plan.key64 ? 1 : 0;
  args.pos = reinterpret_cast<const uint32_t*>(workspace + plan.pos);
  args.run_id = reinterpret_cast<const uint32_t*>(workspace + plan.run_id);
  args.bounds = reinterpret_cast<const int64_t*>(workspace + plan.bounds);
  args.partials = reinterpret_cast<float*>(workspace + plan.partials);
  args.wstride = plan.wstride;
  args.key_offsets = plan.key_offsets;
  args.prod = nullptr;  // SortedFinishOfType sets it (mul, or a float gradient)
  args.prod_stride = 0;
  return args;
}

// ------------------------------------------------- sorted, ids merged first
// The direct sorted path sums every table's rows from the gradient rows of
// its items, so add reads the gradient once per table, and mul writes and
// reads one product row per table and id. When ids repeat a lot, merging
// equal ids first moves fewer bytes:
//   stage 1 runs the same sorted machinery on a one-table layout whose rows
//     are the ids themselves (row = id, width = out_width): it reads the
//     gradient once and sums the rows of every distinct id into `usum`, in
//     ascending position order; DistinctIdsKernel lists the distinct ids,
//     ascending, in `uid`;
//   stage 2 runs it on the real layout with uid as the ids and usum as the
//     gradient (sum_i g_i * x(id) = (sum_i g_i) * x(id) for mul).
// Both stages are stable sorts and fixed-order sums, so every run gives the
// same bits (other bits than the direct path's: the additions are grouped
// differently). usum holds float sums whatever the table type (stage 1
// writes float values, stage 2 reads its gradient as float through the
// kProd path). Stage 2's sizes are needed before the ids are seen, so it
// takes u = min(n, capacity) items; those past the distinct ids are -1,
// out of range, never summed.
// Bytes moved (n ids, k tables, gradient rows of G bytes, float rows of F):
//   add:    direct k * n * G;       merged n * G + (k + 1) * u * F
//   mul:    direct n * G + 2k * n * F (the products, written and read);
//           merged n * G + (2k + 2) * u * F
//   concat: direct n * G (each table reads only its columns): not merged.

template <typename Index>
cudaError_t MergedPrepareOfIndex(const Layout& layout, const MergedPlan& plan,
                                 const void* ids, char* workspace,
                                 int64_t* h_counts, cudaStream_t s) {
  char* stage1_ws = workspace + plan.s1_base;
  cudaError_t e = SortedPrepareOfIndex<Index>(plan.ids_layout, plan.stage1, ids,
                                              stage1_ws, nullptr, s);
  if (e != cudaSuccess) return e;
  Index* distinct_ids = reinterpret_cast<Index*>(workspace + plan.uid);
  e = cudaMemsetAsync(distinct_ids, 0xff,
                      sizeof(Index) * static_cast<size_t>(plan.uniq), s);
  if (e != cudaSuccess) return e;  // all bits set: -1, out of range
  TFMH_LAUNCH(GridFor(plan.stage1.m, 0), kBlock, 0, s,
              DistinctIdsKernel<Index>)(
      stage1_ws + plan.stage1.keys, plan.stage1.key64 ? 1 : 0,
      reinterpret_cast<const uint32_t*>(stage1_ws + plan.stage1.run_id),
      plan.stage1.m, layout.capacity, distinct_ids);
  e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  return SortedPrepareOfIndex<Index>(layout, plan.stage2, distinct_ids,
                                     workspace + plan.s2_base, h_counts, s);
}

}  // namespace

cudaError_t SortedPrepare(const Layout& layout, IdType id_type,
                          const GradPlan& plan, const void* ids,
                          char* workspace, int64_t* h_counts,
                          cudaStream_t stream) {
  return id_type == IdType::kInt32
             ? SortedPrepareOfIndex<int32_t>(layout, plan, ids, workspace,
                                             h_counts, stream)
             : SortedPrepareOfIndex<int64_t>(layout, plan, ids, workspace,
                                             h_counts, stream);
}

cudaError_t MergedPrepare(const Layout& layout, IdType id_type,
                          const MergedPlan& plan, const void* ids,
                          char* workspace, int64_t* h_counts,
                          cudaStream_t stream) {
  return id_type == IdType::kInt32
             ? MergedPrepareOfIndex<int32_t>(layout, plan, ids, workspace,
                                             h_counts, stream)
             : MergedPrepareOfIndex<int64_t>(layout, plan, ids, workspace,
                                             h_counts, stream);
}

void SortedFinish(DType dtype, int vector_bytes, const Layout& layout,
                  const ShardPointers& shards, const ShardOutputs& outputs,
                  const GradPlan& plan, char* plan_workspace, const void* ids,
                  bool ids64, const char* grad, bool float_grad,
                  cudaStream_t stream) {
  WithTypeAndVector(dtype, vector_bytes, [&](auto type, auto vector) {
    SortedFinishOfType<typename decltype(type)::type, decltype(vector)::value>(
        layout, shards, outputs,
        SortedGradArgs(plan, plan_workspace, ids, ids64, grad),
        reinterpret_cast<float*>(plan_workspace + plan.prod), float_grad,
        stream);
  });
}

}  // namespace internal
}  // namespace gpu
}  // namespace tfmh
