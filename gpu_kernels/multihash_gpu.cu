// CUDA kernels of the multi-hash embedding lookup and its gradient.
// Implements gpu_kernels/multihash_gpu.h; all id -> (table, shard, row)
// arithmetic and the combine step come from cc/kernels/multihash_mapping.h.
//
// Forward: warps grid-stride over tiles of 32 ids. Lane L loads id L of the
// tile (coalesced, prefetched a tile ahead) and computes its k row
// addresses; then one sub-warp "group" of G lanes (G = vectors per output
// row, rounded up to a power of two, at most 32) per id takes the addresses
// by shuffle, and every lane moves 16/8/4/2-byte vectors of the k rows,
// combines them in float and writes one vector of the output row, several
// ids per batch so that many row loads are in flight.
//
// Backward, two algorithms (GradAlgorithm in multihash_gpu.h).
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
//
// Dense, phase 1: marks[key] = 1 for every (table, row) key in use, an
// inclusive scan numbers the distinct rows, and each shard's count is a
// difference of two scan values. Phase 2: a zeroed float accumulator per
// table; one tile walk over the ids reads each gradient row once and adds
// it (for mul, times the other tables' rows) with float atomics, ids of a
// tile that share a row adding once; then every marked key's accumulator
// row is converted and written to its shard's rank in the scan.
#include "gpu_kernels/multihash_gpu.h"

#include "gpu_kernels/cuda_compat.h"

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

namespace tfmh {
namespace gpu {
namespace {

constexpr int kBlock = 256;
constexpr int kBatch = 4;  // gradient rows in flight per lane (phase 2)

// ------------------------------------------------------------ element types
template <typename T>
struct Elem;
template <>
struct Elem<float> {
  using Bits = uint32_t;
  static __device__ __forceinline__ float ToF(Bits b) {
    return __uint_as_float(b);
  }
  static __device__ __forceinline__ Bits FromF(float f) {
    return __float_as_uint(f);
  }
};
template <>
struct Elem<__half> {
  using Bits = uint16_t;
  static __device__ __forceinline__ float ToF(Bits b) {
    return __half2float(__ushort_as_half(b));
  }
  static __device__ __forceinline__ Bits FromF(float f) {
    return __half_as_ushort(__float2half_rn(f));
  }
};
template <>
struct Elem<__nv_bfloat16> {
  using Bits = uint16_t;
  static __device__ __forceinline__ float ToF(Bits b) {
    return __bfloat162float(__ushort_as_bfloat16(b));
  }
  static __device__ __forceinline__ Bits FromF(float f) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(f));
  }
};

// A V-byte vector of T elements, moved as one load/store.
template <int V>
struct Word;
template <>
struct Word<16> {
  using type = uint4;
};
template <>
struct Word<8> {
  using type = uint2;
};
template <>
struct Word<4> {
  using type = unsigned int;
};
template <>
struct Word<2> {
  using type = unsigned short;
};

template <typename T, int V>
struct Pack {
  static constexpr int N = V / static_cast<int>(sizeof(T));
  static_assert(N >= 1, "vector smaller than one element");
  typename Elem<T>::Bits e[N];
};

template <typename T, int V>
__device__ __forceinline__ Pack<T, V> LoadPack(const char* p) {
  using W = typename Word<V>::type;
  const W w = __ldg(reinterpret_cast<const W*>(p));
  Pack<T, V> r;
  memcpy(&r, &w, V);
  return r;
}

// Streaming store (output rows are written once; keeps the tables in L2).
template <typename T, int V>
__device__ __forceinline__ void StorePack(char* p, const Pack<T, V>& v) {
  using W = typename Word<V>::type;
  W w;
  memcpy(&w, &v, V);
  __stcs(reinterpret_cast<W*>(p), w);
}

// N floats (N = 1, 2, 4 or 8), 4*N-byte aligned.
template <int N>
__device__ __forceinline__ void LoadFloats(const float* p, float (&a)[N]) {
  if constexpr (N % 4 == 0) {
#pragma unroll
    for (int e = 0; e < N; e += 4) {
      const float4 v = *reinterpret_cast<const float4*>(p + e);
      a[e] = v.x;
      a[e + 1] = v.y;
      a[e + 2] = v.z;
      a[e + 3] = v.w;
    }
  } else if constexpr (N == 2) {
    const float2 v = *reinterpret_cast<const float2*>(p);
    a[0] = v.x;
    a[1] = v.y;
  } else {
#pragma unroll
    for (int e = 0; e < N; ++e) a[e] = p[e];
  }
}

template <int N>
__device__ __forceinline__ void StoreFloats(float* p, const float (&a)[N]) {
  if constexpr (N % 4 == 0) {
#pragma unroll
    for (int e = 0; e < N; e += 4) {
      *reinterpret_cast<float4*>(p + e) =
          make_float4(a[e], a[e + 1], a[e + 2], a[e + 3]);
    }
  } else if constexpr (N == 2) {
    *reinterpret_cast<float2*>(p) = make_float2(a[0], a[1]);
  } else {
#pragma unroll
    for (int e = 0; e < N; ++e) p[e] = a[e];
  }
}

// ------------------------------------------------------------ lane groups
struct Group {
  int size;      // power of two, 1..32
  int lane;      // lane within the group
  unsigned mask; // the group's lanes within the warp
};

__device__ __forceinline__ Group MakeGroup(int log2_size) {
  Group g;
  g.size = 1 << log2_size;
  const int warp_lane = threadIdx.x & 31;
  g.lane = warp_lane & (g.size - 1);
  g.mask = g.size == 32
               ? 0xffffffffu
               : (((1u << g.size) - 1u) << (warp_lane & ~(g.size - 1)));
  return g;
}

// Byte address of table j's row `row` (a table row, not shard-local).
template <typename T>
__device__ __forceinline__ unsigned long long TableRowAddr(
    const Layout& l, const ShardPointers& sp, int j, int64_t row) {
  const RowRef r = LocateRow(l, j, row);
  return reinterpret_cast<unsigned long long>(sp.data[r.shard]) +
         static_cast<unsigned long long>(r.local_row) *
             (static_cast<unsigned long long>(l.width[j]) * sizeof(T));
}

// Byte address of table j's row of an in-range id.
template <typename T>
__device__ __forceinline__ unsigned long long RowAddr(const Layout& l,
                                                      const ShardPointers& sp,
                                                      int j, int64_t id) {
  return TableRowAddr<T>(l, sp, j, TableRow(l, j, id));
}

// addr[j] = RowAddr(j, id) for j < num_tables on every lane of the group.
// Lane t computes table (batch + t); all lanes of the group must call this.
template <typename T, int KMAX>
__device__ __forceinline__ void GatherRowAddrs(
    const Layout& l, const ShardPointers& sp, int64_t id, const Group& g,
    unsigned long long (&addr)[KMAX]) {
  const int k = l.num_tables;
  unsigned long long mine = 0;
#pragma unroll
  for (int j = 0; j < KMAX; ++j) {
    if (j < k) {
      const int src = j & (g.size - 1);
      if (src == 0) {
        const int jj = j + g.lane;
        mine = jj < k ? RowAddr<T>(l, sp, jj, id) : 0ull;
      }
      addr[j] = __shfl_sync(g.mask, mine, src, g.size);
    }
  }
}

// ------------------------------------------------------------ forward
// Id i as int64 (ids are int32 or int64; a uniform branch).
__device__ __forceinline__ int64_t IdAt(const void* ids, bool ids64,
                                        int64_t i) {
  return ids64 ? __ldg(static_cast<const long long*>(ids) + i)
               : static_cast<int64_t>(__ldg(static_cast<const int*>(ids) + i));
}

// The tile walk shared by LookupKernel and MulPartialKernel. Each lane owns
// one id of the warp's 32-id tile: LaneRowAddrs computes that id's k row
// addresses (zeros when the id is out of range or past n) and says whether
// it is in range.
template <typename T, int KMAX>
__device__ __forceinline__ bool LaneRowAddrs(const Layout& l,
                                             const ShardPointers& sp,
                                             int64_t i, int64_t n, int64_t id,
                                             unsigned long long (&mine)[KMAX]) {
  const bool ok = i < n && IdInRange(l, id);
#pragma unroll
  for (int j = 0; j < KMAX; ++j) {
    mine[j] = (ok && j < l.num_tables) ? RowAddr<T>(l, sp, j, id) : 0ull;
  }
  return ok;
}

// Steps s0 .. s0 + U - 1 of a group's walk over the tile: the tile slot of
// each step's id, whether the slot holds an id (< n), whether that id is in
// range, and its row addresses, taken by shuffle from the owning lane. All
// lanes of the warp must call it.
template <int U, int KMAX>
struct TileBatch {
  unsigned long long a[U][KMAX];
  int q[U];
  bool valid[U];
  bool good[U];
};

template <int U, int KMAX>
__device__ __forceinline__ void ShareTileBatch(
    int s0, int per_step, int gid, int cnt, unsigned ok_mask, int k,
    const unsigned long long (&mine)[KMAX], TileBatch<U, KMAX>* b) {
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int slot = (s0 + u) * per_step + gid;  // >= 32 iff s0 + u >= G
    b->q[u] = slot & 31;
    b->valid[u] = slot < cnt;
    b->good[u] = b->valid[u] && ((ok_mask >> b->q[u]) & 1u) != 0;
#pragma unroll
    for (int j = 0; j < KMAX; ++j) {
      b->a[u][j] = 0ull;
      if (j < k) b->a[u][j] = __shfl_sync(0xffffffffu, mine[j], b->q[u]);
    }
  }
}

// The lane layout of the tile walk that LookupKernel describes: groups of
// G = 2^log2_group lanes, one id per group in each step.
struct TileLanes {
  int G, lane, glane, gid, per_step;
  int64_t stride;     // threads in the grid: from one of a warp's tiles to the next
  int64_t warp_base;  // first position of the warp's first tile
};

__device__ __forceinline__ TileLanes MakeTileLanes(int log2_group) {
  TileLanes t;
  t.G = 1 << log2_group;
  t.lane = threadIdx.x & 31;
  t.glane = t.lane & (t.G - 1);
  t.gid = t.lane >> log2_group;
  t.per_step = 32 >> log2_group;
  t.stride = static_cast<int64_t>(gridDim.x) * kBlock;
  t.warp_base =
      static_cast<int64_t>(blockIdx.x) * kBlock + (threadIdx.x & ~31u);
  return t;
}

// Calls body(base, i, id) for each of the warp's tiles [base, base + 32):
// lane L gets position i = base + L and the id there, loaded a tile ahead
// (meaningless when i >= n). Warp-uniform: every lane makes every call.
template <typename Body>
__device__ __forceinline__ void ForEachTile(const TileLanes& t,
                                            const void* ids, bool ids64,
                                            int64_t n, Body&& body) {
  int64_t next_id = t.warp_base + t.lane < n
                        ? IdAt(ids, ids64, t.warp_base + t.lane)
                        : int64_t{0};
  for (int64_t base = t.warp_base; base < n; base += t.stride) {
    const int64_t i = base + t.lane;
    const int64_t id = next_id;
    if (i + t.stride < n) next_id = IdAt(ids, ids64, i + t.stride);  // prefetch
    body(base, i, id);
  }
}

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
    LookupKernel(const __grid_constant__ Layout l,
                 const __grid_constant__ ShardPointers sp,
                 const void* __restrict__ ids, int ids64, int64_t n,
                 char* __restrict__ out, int64_t* __restrict__ first_bad,
                 int log2_group) {
  using P = Pack<T, V>;
  constexpr int N = P::N;
  constexpr unsigned kFull = 0xffffffffu;
  const TileLanes tl = MakeTileLanes(log2_group);
  const int G = tl.G, glane = tl.glane, gid = tl.gid, per_step = tl.per_step;
  const int k = l.num_tables;
  const Combine op = l.combine;
  const int nv_out = l.out_width / N;
  const int64_t row_bytes = static_cast<int64_t>(l.out_width) * sizeof(T);

  ForEachTile(tl, ids, ids64 != 0, n, [&](int64_t base, int64_t i,
                                          int64_t id) {
    unsigned long long mine[KMAX];
    const bool ok = LaneRowAddrs<T, KMAX>(l, sp, i, n, id, mine);
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
      const auto& a = batch.a;
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
                    reinterpret_cast<const char*>(a[u][j]) + off);
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
              unsigned long long src = a[u][0] + static_cast<unsigned long long>(off);
#pragma unroll
              for (int j = 1; j < KMAX; ++j) {
                const int c0 = l.col_offset[j] / N;
                if (j < k && v >= c0) {
                  src = a[u][j] + static_cast<unsigned long long>(v - c0) * V;
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
    CheckIdsKernel(const __grid_constant__ Layout l,
                   const Index* __restrict__ ids, int64_t n,
                   int64_t* __restrict__ first_bad) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kBlock;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x;
       i < n; i += stride) {
    if (!IdInRange(l, ids[i])) {
      atomicMin(reinterpret_cast<unsigned long long*>(first_bad),
                static_cast<unsigned long long>(i));
    }
  }
}

// ------------------------------------------------------------ backward
// Per-shard output pointers, by value.
struct ShardOutputs {
  void* indices[kMaxShards];
  void* values[kMaxShards];
  int float_values;  // 1: the values are float sums whatever T is
};

struct KeyOffsets {
  // key_off[j] = rows[0] + ... + rows[j - 1]; key_off[num_tables] = R, the
  // sentinel key of out-of-range ids (sorts last, never summed).
  unsigned long long off[kMaxTables + 1];
};

struct BoundTargets {
  unsigned long long key[kMaxShards + 1];  // first key of shard s; [S] = R
};

// Everything phase 2 needs besides the layout and the pointers.
struct GradArgs {
  const void* ids;
  int ids64;
  const char* grad;
  int64_t n;
  int64_t m;           // num_tables * n sorted items
  int64_t chunk;       // C
  int64_t chunks;
  int64_t tiles;       // column tiles of G vectors
  const void* keys;    // sorted keys, uint32 or uint64
  int key64;
  const uint32_t* pos;     // sorted positions
  const uint32_t* run_id;  // 1-based run of every sorted item
  const int64_t* bounds;   // first run of every shard; [S] = valid runs
  float* partials;         // 2 slots of wstride floats per chunk
  int64_t wstride;
  // kProd: item i's float gradient for table j at prod + j * prod_stride +
  // i * out_width + col_offset[j] (mul: P_j, prod_stride = n * out_width;
  // the merged path's stage 2: the distinct ids' sums, prod_stride = 0).
  const float* prod;
  int64_t prod_stride;
  KeyOffsets ko;
};

__device__ __forceinline__ unsigned long long KeyAt(const void* keys,
                                                    bool key64, int64_t i) {
  return key64 ? static_cast<const unsigned long long*>(keys)[i]
               : static_cast<unsigned long long>(
                     static_cast<const uint32_t*>(keys)[i]);
}

// Table, shard and shard-local row of a (non-sentinel) key.
struct RunRef {
  int table;
  int shard;
  int64_t local_row;
};

__device__ __forceinline__ RunRef DecodeKey(const Layout& l,
                                            const KeyOffsets& ko,
                                            unsigned long long key) {
  int j = 0;
#pragma unroll
  for (int jj = 1; jj < kMaxTables; ++jj) {
    if (jj < l.num_tables && key >= ko.off[jj]) j = jj;
  }
  const RowRef ref = LocateRow(l, j, static_cast<int64_t>(key - ko.off[j]));
  return RunRef{j, ref.shard, ref.local_row};
}

// The gradient outputs of one distinct row: its shard-local row in the
// shard's indices, and (per lane) N summed floats, as T (as float where
// so.float_values is set), at vector v of its values row.
__device__ __forceinline__ void WriteGradIndex(const ShardOutputs& so,
                                               const RunRef& rr,
                                               int64_t out_row, bool ids64) {
  if (ids64) {
    static_cast<int64_t*>(so.indices[rr.shard])[out_row] = rr.local_row;
  } else {
    static_cast<int32_t*>(so.indices[rr.shard])[out_row] =
        static_cast<int32_t>(rr.local_row);
  }
}

template <typename T, int V>
__device__ __forceinline__ void WriteGradValues(
    const Layout& l, const ShardOutputs& so, const RunRef& rr,
    int64_t out_row, int v, const float (&acc)[Pack<T, V>::N]) {
  if (so.float_values) {
    StoreFloats<Pack<T, V>::N>(
        static_cast<float*>(so.values[rr.shard]) +
            out_row * static_cast<int64_t>(l.width[rr.table]) +
            static_cast<int64_t>(v) * Pack<T, V>::N,
        acc);
    return;
  }
  Pack<T, V> o;
#pragma unroll
  for (int e = 0; e < Pack<T, V>::N; ++e) o.e[e] = Elem<T>::FromF(acc[e]);
  StorePack<T, V>(static_cast<char*>(so.values[rr.shard]) +
                      out_row * static_cast<int64_t>(l.width[rr.table]) * sizeof(T) +
                      static_cast<int64_t>(v) * V,
                  o);
}

template <typename Index, typename Key>
__global__ void __launch_bounds__(kBlock)
    BuildKeysKernel(const __grid_constant__ Layout l,
                    const __grid_constant__ KeyOffsets ko,
                    const Index* __restrict__ ids, int64_t n,
                    Key* __restrict__ keys, uint32_t* __restrict__ pos) {
  const int k = l.num_tables;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kBlock;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x;
       i < n; i += stride) {
    const Index raw = ids[i];
    const bool ok = IdInRange(l, raw);
    for (int j = 0; j < k; ++j) {
      const unsigned long long key =
          ok ? ko.off[j] + static_cast<unsigned long long>(
                               TableRow(l, j, static_cast<int64_t>(raw)))
             : ko.off[k];
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

// Element e of table j's share of one id's gradient vector g: g times the
// other tables' elements for mul (x[t] holds table t's row vector), g
// itself for add.
template <typename T, int V, int KMAX>
__device__ __forceinline__ float GradShareF(Combine op, int k, int j, float g,
                                            const Pack<T, V> (&x)[KMAX],
                                            int e) {
  const float f = CombinePartial<float>(op, k, j, [&](int t) {
    float xv = 0.f;
#pragma unroll
    for (int tt = 0; tt < KMAX; ++tt) {
      if (tt == t) xv = Elem<T>::ToF(x[tt].e[e]);
    }
    return xv;
  });
  return g * f;
}
template <typename T, int V, int KMAX>
__device__ __forceinline__ float GradShare(Combine op, int k, int j,
                                           const Pack<T, V>& g,
                                           const Pack<T, V> (&x)[KMAX],
                                           int e) {
  return GradShareF<T, V, KMAX>(op, k, j, Elem<T>::ToF(g.e[e]), x, e);
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
    MulPartialKernel(const __grid_constant__ Layout l,
                     const __grid_constant__ ShardPointers sp,
                     const void* __restrict__ ids, int ids64, int64_t n,
                     const char* __restrict__ grad, float* __restrict__ prod,
                     int log2_group) {
  using P = Pack<T, V>;
  constexpr int N = P::N;
  constexpr unsigned kFull = 0xffffffffu;
  const TileLanes tl = MakeTileLanes(log2_group);
  const int G = tl.G, glane = tl.glane, gid = tl.gid, per_step = tl.per_step;
  const int k = l.num_tables;
  const Combine op = l.combine;
  const int64_t W = l.out_width;  // = width of every table (mul)
  const int nv = static_cast<int>(W / N);
  const int64_t row_bytes = W * static_cast<int64_t>(sizeof(T));
  const int64_t table_stride = n * W;  // floats of one P_j

  ForEachTile(tl, ids, ids64 != 0, n, [&](int64_t base, int64_t i,
                                          int64_t id) {
    unsigned long long mine[KMAX];
    const bool ok = LaneRowAddrs<T, KMAX>(l, sp, i, n, id, mine);
    const unsigned ok_mask = __ballot_sync(kFull, ok);
    const int cnt = static_cast<int>(min(int64_t{32}, n - base));

    for (int s0 = 0; s0 < G; s0 += U) {
      TileBatch<U, KMAX> batch;
      ShareTileBatch<U, KMAX>(s0, per_step, gid, cnt, ok_mask, k, mine,
                              &batch);
      const auto& a = batch.a;
      const auto& q = batch.q;
      const auto& valid = batch.valid;
      const auto& good = batch.good;
      for (int v = glane; v < nv; v += G) {
        const int64_t off = static_cast<int64_t>(v) * V;
        float gv[U][N];
        P x[U][KMAX];
#pragma unroll
        for (int u = 0; u < U; ++u) {
          if (good[u]) {
            if constexpr (kFloatGrad) {
              LoadFloats<N>(reinterpret_cast<const float*>(grad) +
                                (base + q[u]) * W + static_cast<int64_t>(v) * N,
                            gv[u]);
            } else {
              const P g = LoadPack<T, V>(grad + (base + q[u]) * row_bytes + off);
#pragma unroll
              for (int e = 0; e < N; ++e) gv[u][e] = Elem<T>::ToF(g.e[e]);
            }
#pragma unroll
            for (int j = 0; j < KMAX; ++j) {
              if (j < k) {
                x[u][j] = LoadPack<T, V>(
                    reinterpret_cast<const char*>(a[u][j]) + off);
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
                o[e] = good[u] ? GradShareF<T, V, KMAX>(op, k, j, gv[u][e], x[u], e)
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
    GradReduceKernel(const __grid_constant__ Layout l,
                     const __grid_constant__ ShardOutputs so,
                     const __grid_constant__ GradArgs a, int log2_group) {
  using P = Pack<T, V>;
  constexpr int N = P::N;
  const Group g = MakeGroup(log2_group);
  const int64_t groups = static_cast<int64_t>(gridDim.x) * (kBlock >> log2_group);
  const int64_t first =
      (static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x) >> log2_group;
  const int k = l.num_tables;
  constexpr int kB = kBatch;
  const int num_shards = l.shard_begin[k];
  const uint32_t valid_runs = static_cast<uint32_t>(a.bounds[num_shards]);
  const int64_t grad_row_bytes = static_cast<int64_t>(l.out_width) * sizeof(T);
  const int64_t prod_w = l.out_width;
  const uint32_t* __restrict__ run_id = a.run_id;
  const uint32_t* __restrict__ pos = a.pos;

  for (int64_t w = first; w < a.chunks * a.tiles; w += groups) {
    const int64_t c = w / a.tiles;
    const int t = static_cast<int>(w - c * a.tiles);
    const int64_t base = c * a.chunk;
    const int64_t end = min(base + a.chunk, a.m);
    const int v = t * g.size + g.lane;  // vector index within a table row
    uint32_t r = run_id[base];
    if (r > valid_runs) continue;  // only out-of-range ids from here on
    const bool head_before = base > 0 && run_id[base - 1] == r;
    int64_t i = base;
    while (true) {
      const RunRef rr = DecodeKey(l, a.ko, KeyAt(a.keys, a.key64, i));
      const int j = rr.table;
      const bool active = v < l.width[j] / N;
      const int64_t col_bytes =
          static_cast<int64_t>(l.col_offset[j]) * sizeof(T) +
          static_cast<int64_t>(v) * V;
      // P_j of position p, this lane's N columns.
      const float* prod_j =
          kProd ? a.prod + static_cast<int64_t>(j) * a.prod_stride +
                      l.col_offset[j] + static_cast<int64_t>(v) * N
                : nullptr;
      float acc[N];
#pragma unroll
      for (int e = 0; e < N; ++e) acc[e] = 0.f;
      const int64_t seg_start = i;
      while (i < end) {
        uint32_t rid[kB], p[kB];
#pragma unroll
        for (int u = 0; u < kB; ++u) {
          const bool in = i + u < end;
          rid[u] = in ? run_id[i + u] : 0u;
          p[u] = in ? pos[i + u] : 0u;
        }
        int taken = 0;
        if constexpr (kProd) {
          float pv[kB][N];
#pragma unroll
          for (int u = 0; u < kB; ++u) {
            if (active && rid[u] == r) {
              LoadFloats<N>(prod_j + static_cast<int64_t>(p[u]) * prod_w, pv[u]);
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
          P gv[kB];
#pragma unroll
          for (int u = 0; u < kB; ++u) {
            if (active && rid[u] == r) {
              gv[u] = LoadPack<T, V>(a.grad + static_cast<int64_t>(p[u]) * grad_row_bytes +
                                     col_bytes);
            }
          }
#pragma unroll
          for (int u = 0; u < kB; ++u) {
            if (rid[u] == r) {  // a prefix of the batch (run ids ascend)
              ++taken;
              if (active) {
#pragma unroll
                for (int e = 0; e < N; ++e) acc[e] += Elem<T>::ToF(gv[u].e[e]);
              }
            }
          }
        }
        i += taken;
        if (taken < kB) break;
      }
      // Flush the segment [seg_start, i) of run r.
      const bool starts_before = seg_start == base && head_before;
      const bool continues = i == end && end < a.m && run_id[end] == r;
      const int64_t out_row = static_cast<int64_t>(r - 1) - a.bounds[rr.shard];
      if (!starts_before && t == 0 && g.lane == 0) {
        WriteGradIndex(so, rr, out_row, a.ids64 != 0);
      }
      if (active) {
        if (!starts_before && !continues) {
          WriteGradValues<T, V>(l, so, rr, out_row, v, acc);
        } else {
          const int64_t slot = 2 * c + (starts_before ? 0 : 1);
          StoreFloats<N>(a.partials + slot * a.wstride + static_cast<int64_t>(v) * N,
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
__device__ __forceinline__ uint32_t OwnedCrossingRun(const GradArgs& a,
                                                     uint32_t valid_runs,
                                                     int64_t c, bool* long_run) {
  const int64_t base = c * a.chunk;
  const int64_t end = min(base + a.chunk, a.m);
  if (end >= a.m) return 0;
  const uint32_t r = a.run_id[end - 1];
  if (r > valid_runs || a.run_id[end] != r) return 0;
  if (base > 0 && a.run_id[base - 1] == r) return 0;  // not the run's owner
  const int64_t probe = c + 1 + kLongRunChunks;
  *long_run = probe < a.chunks && a.run_id[probe * a.chunk] == r;
  return r;
}

// One group per (chunk, tile) whose last run starts in the chunk and goes
// on past it, unless the run is long: adds the chunk's tail partial and the
// following chunks' head partials in order and writes the run's values.
template <typename T, int V>
__global__ void __launch_bounds__(kBlock)
    GradFixupKernel(const __grid_constant__ Layout l,
                    const __grid_constant__ ShardOutputs so,
                    const __grid_constant__ GradArgs a, int log2_group) {
  using P = Pack<T, V>;
  constexpr int N = P::N;
  const Group g = MakeGroup(log2_group);
  const int64_t groups = static_cast<int64_t>(gridDim.x) * (kBlock >> log2_group);
  const int64_t first =
      (static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x) >> log2_group;
  const int num_shards = l.shard_begin[l.num_tables];
  const uint32_t valid_runs = static_cast<uint32_t>(a.bounds[num_shards]);
  const uint32_t* __restrict__ run_id = a.run_id;

  for (int64_t w = first; w < a.chunks * a.tiles; w += groups) {
    const int64_t c = w / a.tiles;
    const int t = static_cast<int>(w - c * a.tiles);
    bool long_run = false;
    const uint32_t r = OwnedCrossingRun(a, valid_runs, c, &long_run);
    if (r == 0 || long_run) continue;
    const int64_t end = (c + 1) * a.chunk;  // < m: the run goes on
    const RunRef rr = DecodeKey(l, a.ko, KeyAt(a.keys, a.key64, end - 1));
    const int j = rr.table;
    const int v = t * g.size + g.lane;
    if (v >= l.width[j] / N) continue;
    const int64_t col = static_cast<int64_t>(v) * N;
    float acc[N];
    LoadFloats<N>(a.partials + (2 * c + 1) * a.wstride + col, acc);
    for (int64_t c2 = c + 1;; ++c2) {
      float h[N];
      LoadFloats<N>(a.partials + (2 * c2) * a.wstride + col, h);
#pragma unroll
      for (int e = 0; e < N; ++e) acc[e] += h[e];
      const int64_t e2 = min((c2 + 1) * a.chunk, a.m);
      if (e2 >= a.m || run_id[e2] != r) break;
    }
    const int64_t out_row = static_cast<int64_t>(r - 1) - a.bounds[rr.shard];
    WriteGradValues<T, V>(l, so, rr, out_row, v, acc);
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
    GradLongFixupKernel(const __grid_constant__ Layout l,
                        const __grid_constant__ ShardOutputs so,
                        const __grid_constant__ GradArgs a) {
  constexpr int N = Pack<T, V>::N;
  TFMH_DYNAMIC_SHARED(smem);
  float* lane_sum = reinterpret_cast<float*>(smem);
  int* owners = reinterpret_cast<int*>(smem + kBlock * N * sizeof(float));
  int* num_owners = owners + kBlock;
  const int tid = threadIdx.x;
  const int num_shards = l.shard_begin[l.num_tables];
  const uint32_t valid_runs = static_cast<uint32_t>(a.bounds[num_shards]);
  const uint32_t* __restrict__ run_id = a.run_id;
  for (int64_t batch = static_cast<int64_t>(blockIdx.x) * kBlock;
       batch < a.chunks; batch += static_cast<int64_t>(gridDim.x) * kBlock) {
    if (tid == 0) *num_owners = 0;
    __syncthreads();
    const int64_t c = batch + tid;
    bool long_run = false;
    if (c < a.chunks && OwnedCrossingRun(a, valid_runs, c, &long_run) != 0 &&
        long_run) {
      owners[atomicAdd(num_owners, 1)] = tid;  // any order: owners are independent
    }
    __syncthreads();
    const int total = *num_owners;
    for (int o = 0; o < total; ++o) {
      const int64_t oc = batch + owners[o];
      const int64_t end = (oc + 1) * a.chunk;  // < m: the run goes on
      const uint32_t r = run_id[end - 1];
      // span = chunks after oc whose first item is in run r (at least
      // kLongRunChunks + 1), found kBlock chunks at a time.
      int64_t span = 0;
      while (true) {
        const int64_t h = oc + 1 + span + tid;
        const int in = h < a.chunks && run_id[h * a.chunk] == r;
        const int got = __syncthreads_count(in);
        span += got;
        if (got < kBlock) break;
      }
      const RunRef rr = DecodeKey(l, a.ko, KeyAt(a.keys, a.key64, end - 1));
      const int nv = l.width[rr.table] / N;
      int lgv = 0;
      while (lgv < 5 && (1 << lgv) < nv) ++lgv;
      const int VT = 1 << lgv, CL = kBlock / VT;
      const int vt = tid & (VT - 1), cl = tid >> lgv;
      const int64_t out_row = static_cast<int64_t>(r - 1) - a.bounds[rr.shard];
      for (int v0 = 0; v0 < nv; v0 += VT) {
        const int v = v0 + vt;
        const int64_t col = static_cast<int64_t>(v) * N;
        float s[N];
#pragma unroll
        for (int e = 0; e < N; ++e) s[e] = 0.f;
        if (v < nv) {
          for (int64_t h = oc + 1 + cl; h <= oc + span; h += CL) {
            float x[N];
            LoadFloats<N>(a.partials + (2 * h) * a.wstride + col, x);
#pragma unroll
            for (int e = 0; e < N; ++e) s[e] += x[e];
          }
        }
        StoreFloats<N>(lane_sum + static_cast<int64_t>(tid) * N, s);
        __syncthreads();
        if (cl == 0 && v < nv) {
          float acc[N];
          LoadFloats<N>(a.partials + (2 * oc + 1) * a.wstride + col, acc);
          for (int q = 0; q < CL; ++q) {
            float x[N];
            LoadFloats<N>(lane_sum + static_cast<int64_t>(q * VT + vt) * N, x);
#pragma unroll
            for (int e = 0; e < N; ++e) acc[e] += x[e];
          }
          WriteGradValues<T, V>(l, so, rr, out_row, v, acc);
        }
        __syncthreads();
      }
    }
    __syncthreads();
  }
}

// ------------------------------------------------------------ dense backward
// kDense: every (table, row) pair has a key, key = ko.off[j] + row, as in
// the sorted path; marks[key] = 1 for the keys of in-range ids, their
// inclusive scan numbers the distinct rows, and the gradient is summed into
// a dense float accumulator: table j's row r at floats
// acc + acc_off[j] + r * width[j].
struct AccOffsets {
  unsigned long long off[kMaxTables];  // multiples of 4 floats
};

template <typename Index>
__global__ void __launch_bounds__(kBlock)
    MarkKernel(const __grid_constant__ Layout l,
               const __grid_constant__ KeyOffsets ko,
               const Index* __restrict__ ids, int64_t n,
               uint32_t* __restrict__ marks) {
  const int k = l.num_tables;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kBlock;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x;
       i < n; i += stride) {
    const Index raw = ids[i];
    if (!IdInRange(l, raw)) continue;
    for (int j = 0; j < k; ++j) {
      uint32_t* m = marks + ko.off[j] +
                    static_cast<unsigned long long>(
                        TableRow(l, j, static_cast<int64_t>(raw)));
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

// N floats added atomically at p (4 * N-byte aligned).
template <int N>
__device__ __forceinline__ void AtomicAddFloats(float* p, const float (&a)[N]) {
  constexpr bool kVector4 = TFMH_VECTOR_ATOMICS && N % 4 == 0;
  constexpr bool kVector2 = TFMH_VECTOR_ATOMICS && N == 2;
  if constexpr (kVector4) {
#if TFMH_VECTOR_ATOMICS
#pragma unroll
    for (int e = 0; e < N; e += 4) {
      atomicAdd(reinterpret_cast<float4*>(p + e),
                make_float4(a[e], a[e + 1], a[e + 2], a[e + 3]));
    }
#endif
  } else if constexpr (kVector2) {
#if TFMH_VECTOR_ATOMICS
    atomicAdd(reinterpret_cast<float2*>(p), make_float2(a[0], a[1]));
#endif
  } else {
#pragma unroll
    for (int e = 0; e < N; ++e) atomicAdd(p + e, a[e]);
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
    DenseScatterKernel(const __grid_constant__ Layout l,
                       const __grid_constant__ ShardPointers sp,
                       const __grid_constant__ AccOffsets ao,
                       const void* __restrict__ ids, int ids64, int64_t n,
                       const char* __restrict__ grad, float* __restrict__ acc,
                       int log2_group) {
  using P = Pack<T, V>;
  constexpr int N = P::N;
  constexpr unsigned kFull = 0xffffffffu;
  const TileLanes tl = MakeTileLanes(log2_group);
  const int G = tl.G, lane = tl.lane, glane = tl.glane, gid = tl.gid,
            per_step = tl.per_step;
  const int k = l.num_tables;
  const Combine op = l.combine;
  const int nv_out = l.out_width / N;
  const int64_t grad_row_bytes = static_cast<int64_t>(l.out_width) * sizeof(T);

  // Contribution of tile slot p (another id with the same row of table j)
  // to output vector v of table j, added to c: its gradient vector at byte
  // offset `off` of its row, times (mul) its other tables' elements.
  auto add_peer = [&](int64_t base, int p, int j, int64_t off, float (&c)[N]) {
    const P gp = LoadPack<T, V>(grad + (base + p) * grad_row_bytes + off);
    float f[N];
#pragma unroll
    for (int e = 0; e < N; ++e) f[e] = Elem<T>::ToF(gp.e[e]);
    if (op == Combine::kMul) {
      const int64_t id = IdAt(ids, ids64, base + p);
#pragma unroll 1
      for (int t = 0; t < k; ++t) {
        if (t != j) {
          const P x = LoadPack<T, V>(
              reinterpret_cast<const char*>(RowAddr<T>(l, sp, t, id)) + off);
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
      const int p = __ffs(rest) - 1;
      rest &= rest - 1u;
      add_peer(base, p, j, off, c);
    }
    AtomicAddFloats<N>(dst, c);
  };

  ForEachTile(tl, ids, ids64 != 0, n, [&](int64_t base, int64_t i,
                                          int64_t id) {
    const bool ok = i < n && IdInRange(l, id);
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
          const int64_t row = TableRow(l, j, id);
          mine_acc[j] = reinterpret_cast<unsigned long long>(
              acc + ao.off[j] + static_cast<unsigned long long>(row) *
                                    static_cast<unsigned long long>(l.width[j]));
          if (op == Combine::kMul) mine[j] = TableRowAddr<T>(l, sp, j, row);
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
        P gv[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
          if (good[u]) gv[u] = LoadPack<T, V>(grad + (base + q[u]) * grad_row_bytes + off);
        }
        if (op == Combine::kConcat) {
          // Vector v belongs to the last table whose columns start at or
          // before it (every width is a multiple of N).
          int jv = 0;
#pragma unroll
          for (int j = 1; j < KMAX; ++j) {
            if (j < k && v >= l.col_offset[j] / N) jv = j;
          }
          const int vl = v - l.col_offset[jv] / N;
#pragma unroll
          for (int u = 0; u < U; ++u) {
            if (!good[u]) continue;
            float c[N];
#pragma unroll
            for (int e = 0; e < N; ++e) c[e] = Elem<T>::ToF(gv[u].e[e]);
            unsigned long long dst = 0ull;
            unsigned pm = 0u;
#pragma unroll
            for (int j = 0; j < KMAX; ++j) {
              if (j == jv) {
                dst = accs.a[u][j];
                pm = peers[u][j];
              }
            }
            flush(base, q[u], pm, jv, off, reinterpret_cast<float*>(dst) + vl * N, c);
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
                c[e] = GradShare<T, V, KMAX>(op, k, j, gv[u], x[u], e);
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
    DenseCompactKernel(const __grid_constant__ Layout l,
                       const __grid_constant__ ShardOutputs so,
                       const __grid_constant__ KeyOffsets ko,
                       const __grid_constant__ AccOffsets ao,
                       const uint32_t* __restrict__ marks,
                       const uint32_t* __restrict__ incl,
                       const int64_t* __restrict__ bounds,
                       const float* __restrict__ acc, int64_t num_keys,
                       int64_t tiles, int ids64, int log2_group) {
  using P = Pack<T, V>;
  constexpr int N = P::N;
  const Group g = MakeGroup(log2_group);
  const int64_t groups = static_cast<int64_t>(gridDim.x) * (kBlock >> log2_group);
  const int64_t first =
      (static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x) >> log2_group;
  for (int64_t w = first; w < num_keys * tiles; w += groups) {
    const int64_t key = w / tiles;
    const int t = static_cast<int>(w - key * tiles);
    if (marks[key] == 0u) continue;
    const RunRef rr = DecodeKey(l, ko, static_cast<unsigned long long>(key));
    const int j = rr.table;
    const int64_t out_row =
        static_cast<int64_t>(incl[key]) - 1 - bounds[rr.shard];
    if (t == 0 && g.lane == 0) WriteGradIndex(so, rr, out_row, ids64 != 0);
    const int v = t * g.size + g.lane;
    if (v >= l.width[j] / N) continue;
    const int64_t row = static_cast<int64_t>(key - ko.off[j]);
    float a[N];
    LoadFloats<N>(acc + ao.off[j] + row * l.width[j] + static_cast<int64_t>(v) * N, a);
    WriteGradValues<T, V>(l, so, rr, out_row, v, a);
  }
}

// ------------------------------------------------------------ host helpers
size_t ElemSize(DType d) { return d == DType::kFloat32 ? 4 : 2; }

int NumSMs() {
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) !=
          cudaSuccess ||
      sms <= 0) {
    cudaGetLastError();
    sms = 108;
  }
  return sms;
}

int Log2Ceil(int64_t x) {
  int r = 0;
  while ((int64_t{1} << r) < x) ++r;
  return r;
}

// log2 of the group size for rows of `vectors` vectors.
int GroupLog2(int64_t vectors) { return std::min(5, Log2Ceil(std::max<int64_t>(vectors, 1))); }

unsigned GridFor(int64_t groups, int log2_group) {
  const int64_t per_block = kBlock >> log2_group;
  const int64_t need = (groups + per_block - 1) / per_block;
  const int64_t cap = static_cast<int64_t>(NumSMs()) * (2048 / kBlock);
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(need, cap)));
}

bool Aligned(const void* p, int v) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % v == 0;
}

// Largest vector size (16, 8, 4, 2 bytes; at least one element) that divides
// every table row and every pointer in `ptrs`.
int ChooseVector(const Layout& l, size_t esz, const void* const* ptrs,
                 int num_ptrs) {
  for (int v = 16; v > static_cast<int>(esz); v /= 2) {
    bool ok = (static_cast<int64_t>(l.out_width) * esz) % v == 0;
    for (int j = 0; ok && j < l.num_tables; ++j) {
      ok = (static_cast<int64_t>(l.width[j]) * esz) % v == 0;
    }
    for (int q = 0; ok && q < num_ptrs; ++q) ok = Aligned(ptrs[q], v);
    if (ok) return v;
  }
  return static_cast<int>(esz);
}

template <typename T>
struct TypeTag {
  using type = T;
};
template <int V>
using VecTag = std::integral_constant<int, V>;

bool KnownDType(DType d) {
  return d == DType::kFloat32 || d == DType::kFloat16 || d == DType::kBFloat16;
}

// Calls f(TypeTag<T>{}, VecTag<V>{}) for the element type of a known dtype
// and a vector size from ChooseVector (16, 8, 4 bytes; 2 for 2-byte types):
// the instantiations every launcher picks from.
template <typename F>
void WithTypeAndVector(DType dtype, int v, F&& f) {
  auto with_vector = [&](auto t) {
    using T = typename decltype(t)::type;
    switch (v) {
      case 16: f(t, VecTag<16>{}); break;
      case 8: f(t, VecTag<8>{}); break;
      case 4: f(t, VecTag<4>{}); break;
      default:
        if constexpr (sizeof(T) == 2) f(t, VecTag<2>{});
        break;
    }
  };
  switch (dtype) {
    case DType::kFloat32: with_vector(TypeTag<float>{}); break;
    case DType::kFloat16: with_vector(TypeTag<__half>{}); break;
    default: with_vector(TypeTag<__nv_bfloat16>{}); break;
  }
}

bool LayoutOk(const Layout& l) {
  if (l.num_tables < 1 || l.num_tables > kMaxTables) return false;
  const int S = l.shard_begin[l.num_tables];
  if (S < l.num_tables || S > kMaxShards || l.out_width <= 0) return false;
  for (int j = 0; j < l.num_tables; ++j) {
    if (l.width[j] <= 0 || l.rows[j] <= 0 || l.divisor[j] <= 0) return false;
  }
  return true;
}

// Ids per batch (U) of the forward for k <= 2. 4, the default, keeps 8 row
// loads in flight per lane at 114 registers (f32 on sm_90: two 256-thread
// blocks per SM, 25% occupancy; ncu on an H200 found DRAM at 72% and L2 at
// 81% of peak there, neither saturated). 2 needs 64 registers (four blocks
// per SM) and 8 keeps twice the loads in flight. The environment variable
// TFMH_GPU_FORWARD_BATCH = 2 or 8 picks them, so that the benchmark can time
// all three and the test can check them; the default stays until a GPU run
// shows another pays.
int ForwardBatch() {
  const char* b = std::getenv("TFMH_GPU_FORWARD_BATCH");
  if (b != nullptr && std::strcmp(b, "2") == 0) return 2;
  if (b != nullptr && std::strcmp(b, "8") == 0) return 8;
  return 4;
}

template <typename T, int V>
void LaunchLookupV(const Layout& l, const ShardPointers& sp, const void* ids,
                   bool ids64, int64_t n, void* out, int64_t* first_bad,
                   cudaStream_t s) {
  const int n_vec =
      static_cast<int>(static_cast<int64_t>(l.out_width) * sizeof(T) / V);
  const int lg = GroupLog2(n_vec);
  const unsigned grid = GridFor((n + 31) / 32, 5);  // one warp per 32 ids
  if (l.num_tables <= 2) {
    switch (ForwardBatch()) {
      case 2:
        TFMH_LAUNCH(grid, kBlock, 0, s, LookupKernel<T, V, 2, 2>)(
            l, sp, ids, ids64, n, static_cast<char*>(out), first_bad, lg);
        break;
      case 8:
        TFMH_LAUNCH(grid, kBlock, 0, s, LookupKernel<T, V, 2, 8>)(
            l, sp, ids, ids64, n, static_cast<char*>(out), first_bad, lg);
        break;
      default:
        TFMH_LAUNCH(grid, kBlock, 0, s, LookupKernel<T, V, 2, 4>)(
            l, sp, ids, ids64, n, static_cast<char*>(out), first_bad, lg);
        break;
    }
  } else {
    TFMH_LAUNCH(grid, kBlock, 0, s, LookupKernel<T, V, kMaxTables, 2>)(
        l, sp, ids, ids64, n, static_cast<char*>(out), first_bad, lg);
  }
}


// ---------------------------------------------------------- backward plan
constexpr size_t kAlign = 256;
size_t AlignUp(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

struct GradPlan {
  int64_t n = 0, m = 0;
  int num_shards = 0;
  bool key64 = false;
  int key_bits = 1;
  KeyOffsets ko = {};
  int64_t chunk = 1, chunks = 0, wstride = 0;
  // Byte offsets from the 256-aligned workspace base.
  size_t counts = 0, bounds = 0, pos = 0, run_id = 0, keys = 0;
  size_t temp = 0;  // phase 1 temporaries; phase 2 partials alias them
  size_t keys_in = 0, pos_in = 0, cub = 0, cub_bytes = 0;
  size_t partials = 0;
  size_t prod = 0;  // mul: the P_j of all tables (aliases the temporaries)
  size_t total = 0;  // including kAlign slack for an unaligned workspace
};

// Items per chunk: about 64K chunks, 32..1024 items each.
int64_t ChunkFor(int64_t m) {
  int64_t c = 32;
  while (c < 1024 && c * 65536 < m) c *= 2;
  return c;
}

cudaError_t MakeGradPlan(const Layout& l, IdType id_type, int64_t n,
                         GradPlan* p) {
  (void)id_type;
  if (!LayoutOk(l) || n < 0) return cudaErrorInvalidValue;
  // Positions are uint32 and CUB item counts int.
  if (n > static_cast<int64_t>(UINT32_MAX) ||
      static_cast<int64_t>(l.num_tables) * n > static_cast<int64_t>(INT_MAX)) {
    return cudaErrorInvalidValue;
  }
  *p = GradPlan();
  p->n = n;
  p->m = static_cast<int64_t>(l.num_tables) * n;
  p->num_shards = l.shard_begin[l.num_tables];
  unsigned long long r = 0;
  for (int j = 0; j < l.num_tables; ++j) {
    p->ko.off[j] = r;
    r += static_cast<unsigned long long>(l.rows[j]);
  }
  for (int j = l.num_tables; j <= kMaxTables; ++j) p->ko.off[j] = r;
  // Sum of table rows above 2^32 - 1 needs 64-bit sort keys. The environment
  // variable TFMH_GPU_FORCE_KEY64=1 forces them (for the standalone test).
  const char* force = std::getenv("TFMH_GPU_FORCE_KEY64");
  p->key64 = r > 0xffffffffull || (force != nullptr && force[0] == '1');
  p->key_bits = 1;
  while (p->key_bits < 64 && (r >> p->key_bits) != 0) ++p->key_bits;
  int wmax = 0;
  for (int j = 0; j < l.num_tables; ++j) wmax = std::max(wmax, l.width[j]);
  p->wstride = (wmax + 7) / 8 * 8;
  p->chunk = ChunkFor(p->m);
  p->chunks = (p->m + p->chunk - 1) / p->chunk;

  const size_t m = static_cast<size_t>(p->m);
  const size_t ksz = p->key64 ? 8 : 4;
  size_t off = 0;
  p->counts = off; off += AlignUp(sizeof(int64_t) * kMaxShards);
  p->bounds = off; off += AlignUp(sizeof(int64_t) * (kMaxShards + 1));
  p->pos = off; off += AlignUp(4 * m);
  p->run_id = off; off += AlignUp(4 * m);
  p->keys = off; off += AlignUp(ksz * m);
  p->temp = off;
  size_t t = off;
  p->keys_in = t; t += AlignUp(ksz * m);  // the head flags after the sort
  p->pos_in = t; t += AlignUp(4 * m);
  p->cub = t;
  if (p->m > 0) {
    const int items = static_cast<int>(p->m);
    size_t sort_bytes = 0, scan_bytes = 0;
    cudaError_t e;
    if (p->key64) {
      e = cub::DeviceRadixSort::SortPairs(
          nullptr, sort_bytes, static_cast<const unsigned long long*>(nullptr),
          static_cast<unsigned long long*>(nullptr),
          static_cast<const uint32_t*>(nullptr), static_cast<uint32_t*>(nullptr),
          items, 0, p->key_bits);
    } else {
      e = cub::DeviceRadixSort::SortPairs(
          nullptr, sort_bytes, static_cast<const uint32_t*>(nullptr),
          static_cast<uint32_t*>(nullptr), static_cast<const uint32_t*>(nullptr),
          static_cast<uint32_t*>(nullptr), items, 0, p->key_bits);
    }
    if (e != cudaSuccess) return e;
    e = cub::DeviceScan::InclusiveSum(nullptr, scan_bytes,
                                      static_cast<const uint32_t*>(nullptr),
                                      static_cast<uint32_t*>(nullptr), items);
    if (e != cudaSuccess) return e;
    p->cub_bytes = std::max(sort_bytes, scan_bytes);
  }
  t += AlignUp(std::max<size_t>(p->cub_bytes, 1));
  p->partials = off;
  const size_t partial_bytes =
      AlignUp(sizeof(float) * 2 * static_cast<size_t>(p->chunks) *
              static_cast<size_t>(p->wstride));
  // Mul: P_j[i] for every table j and position i, out_width floats each
  // (k * n * out_width floats), after the partials. Like the partials it
  // only lives in phase 2, so it reuses the phase 1 temporaries.
  size_t prod_bytes = 0;
  if (l.combine == Combine::kMul) {
    const uint64_t w = static_cast<uint64_t>(l.out_width);
    if (p->m > 0 &&
        w > (static_cast<uint64_t>(SIZE_MAX) / 8) / sizeof(float) / m) {
      return cudaErrorInvalidValue;  // the workspace size would overflow
    }
    prod_bytes = AlignUp(sizeof(float) * m * static_cast<size_t>(w));
  }
  p->prod = off + partial_bytes;
  p->total = std::max(t, off + partial_bytes + prod_bytes) + kAlign;
  return cudaSuccess;
}

char* AlignedBase(void* ws) {
  const uintptr_t x = reinterpret_cast<uintptr_t>(ws);
  return reinterpret_cast<char*>((x + kAlign - 1) / kAlign * kAlign);
}

// First key of every shard; [S] = the sentinel key.
BoundTargets ShardTargets(const Layout& l, const KeyOffsets& ko) {
  BoundTargets targets = {};
  const int num_shards = l.shard_begin[l.num_tables];
  for (int j = 0; j < l.num_tables; ++j) {
    for (int sh = l.shard_begin[j]; sh < l.shard_begin[j + 1]; ++sh) {
      targets.key[sh] = ko.off[j] + static_cast<unsigned long long>(l.shard_row[sh]);
    }
  }
  targets.key[num_shards] = ko.off[l.num_tables];
  return targets;
}

template <typename Index, typename Key>
cudaError_t PrepareT(const Layout& l, const GradPlan& p, const void* ids,
                     char* ws, int64_t* h_counts, cudaStream_t s) {
  Key* keys_in = reinterpret_cast<Key*>(ws + p.keys_in);
  Key* keys = reinterpret_cast<Key*>(ws + p.keys);
  uint32_t* pos_in = reinterpret_cast<uint32_t*>(ws + p.pos_in);
  uint32_t* pos = reinterpret_cast<uint32_t*>(ws + p.pos);
  uint32_t* flags = reinterpret_cast<uint32_t*>(ws + p.keys_in);
  uint32_t* run_id = reinterpret_cast<uint32_t*>(ws + p.run_id);
  int64_t* bounds = reinterpret_cast<int64_t*>(ws + p.bounds);
  int64_t* counts = reinterpret_cast<int64_t*>(ws + p.counts);
  const int items = static_cast<int>(p.m);
  const unsigned grid_n = GridFor(p.n, 0);
  TFMH_LAUNCH(grid_n, kBlock, 0, s, BuildKeysKernel<Index, Key>)(
      l, p.ko, static_cast<const Index*>(ids), p.n, keys_in, pos_in);
  size_t cub_bytes = p.cub_bytes;
  cudaError_t e = cub::DeviceRadixSort::SortPairs(
      ws + p.cub, cub_bytes, keys_in, keys, pos_in, pos, items, 0, p.key_bits,
      s);
  if (e != cudaSuccess) return e;
  TFMH_LAUNCH(GridFor(p.m, 0), kBlock, 0, s, HeadFlagsKernel<Key>)(keys, p.m, flags);
  cub_bytes = p.cub_bytes;
  e = cub::DeviceScan::InclusiveSum(ws + p.cub, cub_bytes, flags, run_id,
                                    items, s);
  if (e != cudaSuccess) return e;
  TFMH_LAUNCH(1, 128, 0, s, ShardBoundsKernel<Key>)(ShardTargets(l, p.ko), p.num_shards, keys, p.m,
                                           run_id, bounds, counts);
  e = cudaGetLastError();
  if (e != cudaSuccess || h_counts == nullptr) return e;
  return cudaMemcpyAsync(h_counts, counts, sizeof(int64_t) * p.num_shards,
                         cudaMemcpyDeviceToHost, s);
}

// PrepareT for either key width; the m == 0 case only writes zero counts.
template <typename Index>
cudaError_t PrepareAny(const Layout& l, const GradPlan& p, const void* ids,
                       char* ws, int64_t* h_counts, cudaStream_t s) {
  if (p.m == 0) {
    int64_t* counts = reinterpret_cast<int64_t*>(ws + p.counts);
    cudaError_t e = cudaMemsetAsync(counts, 0, sizeof(int64_t) * p.num_shards, s);
    if (e != cudaSuccess || h_counts == nullptr) return e;
    return cudaMemcpyAsync(h_counts, counts, sizeof(int64_t) * p.num_shards,
                           cudaMemcpyDeviceToHost, s);
  }
  return p.key64 ? PrepareT<Index, unsigned long long>(l, p, ids, ws, h_counts, s)
                 : PrepareT<Index, uint32_t>(l, p, ids, ws, h_counts, s);
}

// MulPartialKernel; float_grad: a.grad holds float rows. Only 2-byte tables
// need a second kernel for that (for float tables it is the same kernel).
template <typename T, int V, int KMAX, int U>
void LaunchMulPartial(unsigned grid, cudaStream_t s, bool float_grad,
                      const Layout& l, const ShardPointers& sp,
                      const GradArgs& a, float* prod, int log2_group) {
  constexpr bool kHalf = sizeof(T) == 2;
  if (kHalf && float_grad) {
    TFMH_LAUNCH(grid, kBlock, 0, s, MulPartialKernel<T, V, KMAX, U, kHalf>)(
        l, sp, a.ids, a.ids64, a.n, a.grad, prod, log2_group);
  } else {
    TFMH_LAUNCH(grid, kBlock, 0, s, MulPartialKernel<T, V, KMAX, U>)(
        l, sp, a.ids, a.ids64, a.n, a.grad, prod, log2_group);
  }
}

// float_grad: a.grad holds float rows of out_width (the merged path's
// stage 2), read through the kProd path whatever T is.
template <typename T, int V>
void FinishV(const Layout& l, const ShardPointers& sp, const ShardOutputs& so,
             GradArgs a, float* prod, bool float_grad, cudaStream_t s) {
  constexpr int N = V / static_cast<int>(sizeof(T));
  int wmax = 0;
  for (int j = 0; j < l.num_tables; ++j) wmax = std::max(wmax, l.width[j]);
  const int64_t nv = wmax / N;  // every width is a multiple of N
  const int lg = GroupLog2(nv);
  a.tiles = (nv + (1 << lg) - 1) >> lg;
  const unsigned grid = GridFor(a.chunks * a.tiles, lg);
  if (l.combine == Combine::kMul) {
    const int lgp = GroupLog2(l.out_width / N);
    const unsigned grid_p = GridFor((a.n + 31) / 32, 5);  // a warp per 32 ids
    if (l.num_tables <= 2) {
      LaunchMulPartial<T, V, 2, 4>(grid_p, s, float_grad, l, sp, a, prod, lgp);
    } else {
      LaunchMulPartial<T, V, kMaxTables, 1>(grid_p, s, float_grad, l, sp, a, prod, lgp);
    }
    a.prod = prod;
    a.prod_stride = a.n * l.out_width;
    TFMH_LAUNCH(grid, kBlock, 0, s, GradReduceKernel<T, V, true>)(l, so, a, lg);
  } else if (float_grad) {
    a.prod = reinterpret_cast<const float*>(a.grad);
    a.prod_stride = 0;
    TFMH_LAUNCH(grid, kBlock, 0, s, GradReduceKernel<T, V, true>)(l, so, a, lg);
  } else {
    TFMH_LAUNCH(grid, kBlock, 0, s, GradReduceKernel<T, V, false>)(l, so, a, lg);
  }
  TFMH_LAUNCH(grid, kBlock, 0, s, GradFixupKernel<T, V>)(l, so, a, lg);
  const int64_t batches = (a.chunks + kBlock - 1) / kBlock;
  const unsigned grid_long = static_cast<unsigned>(
      std::max<int64_t>(1, std::min<int64_t>(batches, NumSMs() * 4)));
  TFMH_LAUNCH(grid_long, kBlock, kBlock * (N * sizeof(float) + sizeof(int)) + sizeof(int),
              s, GradLongFixupKernel<T, V>)(l, so, a);
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
Layout IdsLayout(const Layout& l) {
  Layout r;
  r.num_tables = 1;
  r.combine = Combine::kAdd;
  r.out_width = l.out_width;
  r.capacity = l.capacity;
  r.rows[0] = l.capacity;
  r.divisor[0] = 1;
  r.width[0] = l.out_width;
  r.col_offset[0] = 0;
  r.shard_begin[0] = 0;
  r.shard_begin[1] = 1;
  r.shard_row[0] = 0;
  return r;
}

// Whether kSorted merges equal ids first: when it moves at most 3/4 of the
// direct path's bytes (see above; the margin covers its extra sort and
// launches). TFMH_GPU_SORTED_MERGE=0 or =1 forces never or always (n > 0,
// any op), for the standalone test and the benchmark.
bool MergeIds(const Layout& l, DType dt, int64_t n) {
  if (n <= 0 || !LayoutOk(l) || l.capacity <= 0) return false;
  const char* force = std::getenv("TFMH_GPU_SORTED_MERGE");
  if (force != nullptr && force[0] == '0') return false;
  if (force != nullptr && force[0] == '1') return true;
  // Bytes per output column (the rows' widths cancel out).
  const int64_t k = l.num_tables;
  const int64_t u = std::min(n, l.capacity);
  const int64_t g = static_cast<int64_t>(ElemSize(dt));  // gradient element
  const int64_t f = static_cast<int64_t>(sizeof(float));
  int64_t direct = 0, merged = 0;
  if (l.combine == Combine::kAdd) {
    direct = k * n * g;
    merged = n * g + (k + 1) * u * f;
  } else if (l.combine == Combine::kMul) {
    direct = n * g + 2 * k * n * f;
    merged = n * g + (2 * k + 2) * u * f;
  } else {
    return false;
  }
  return 4 * merged <= 3 * direct;
}

struct MergedPlan {
  Layout ids_layout;
  GradPlan s1, s2;   // stage 1 (ids layout, n items), stage 2 (real, uniq)
  int64_t uniq = 0;  // rows of uid and usum: min(n, capacity)
  // Byte offsets from the 256-aligned workspace base; each stage's plan is
  // relative to its own base.
  size_t s1_base = 0, uid = 0, usum = 0, s2_base = 0;
  size_t total = 0;  // including kAlign slack for an unaligned workspace
};

cudaError_t MakeMergedPlan(const Layout& l, IdType id_type, int64_t n,
                           MergedPlan* p) {
  if (!LayoutOk(l) || n <= 0 || l.capacity <= 0) return cudaErrorInvalidValue;
  *p = MergedPlan();
  p->ids_layout = IdsLayout(l);
  p->uniq = std::min(n, l.capacity);
  cudaError_t e = MakeGradPlan(p->ids_layout, id_type, n, &p->s1);
  if (e != cudaSuccess) return e;
  e = MakeGradPlan(l, id_type, p->uniq, &p->s2);
  if (e != cudaSuccess) return e;
  const size_t uniq = static_cast<size_t>(p->uniq);
  const uint64_t w = static_cast<uint64_t>(l.out_width);
  if (w > (static_cast<uint64_t>(SIZE_MAX) / 8) / sizeof(float) / uniq) {
    return cudaErrorInvalidValue;  // the workspace size would overflow
  }
  const size_t isz = id_type == IdType::kInt64 ? 8 : 4;
  size_t off = 0;
  p->s1_base = off; off += AlignUp(p->s1.total);
  p->uid = off; off += AlignUp(isz * uniq);
  p->usum = off; off += AlignUp(sizeof(float) * uniq * static_cast<size_t>(w));
  p->s2_base = off; off += AlignUp(p->s2.total);
  p->total = off + kAlign;
  return cudaSuccess;
}

template <typename Index>
cudaError_t MergedPrepareT(const Layout& l, const MergedPlan& p,
                           const void* ids, char* ws, int64_t* h_counts,
                           cudaStream_t s) {
  char* w1 = ws + p.s1_base;
  cudaError_t e = PrepareAny<Index>(p.ids_layout, p.s1, ids, w1, nullptr, s);
  if (e != cudaSuccess) return e;
  Index* uid = reinterpret_cast<Index*>(ws + p.uid);
  e = cudaMemsetAsync(uid, 0xff, sizeof(Index) * static_cast<size_t>(p.uniq), s);
  if (e != cudaSuccess) return e;  // all bits set: -1, out of range
  TFMH_LAUNCH(GridFor(p.s1.m, 0), kBlock, 0, s, DistinctIdsKernel<Index>)(
      w1 + p.s1.keys, p.s1.key64 ? 1 : 0,
      reinterpret_cast<const uint32_t*>(w1 + p.s1.run_id), p.s1.m, l.capacity,
      uid);
  e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  return PrepareAny<Index>(l, p.s2, uid, ws + p.s2_base, h_counts, s);
}

// Phase 2 arguments of a (stage's) plan whose workspace starts at ws.
GradArgs ArgsOf(const GradPlan& p, char* ws, const void* ids, bool ids64,
                const char* grad) {
  GradArgs a = {};
  a.ids = ids;
  a.ids64 = ids64 ? 1 : 0;
  a.grad = grad;
  a.n = p.n;
  a.m = p.m;
  a.chunk = p.chunk;
  a.chunks = p.chunks;
  a.keys = ws + p.keys;
  a.key64 = p.key64 ? 1 : 0;
  a.pos = reinterpret_cast<const uint32_t*>(ws + p.pos);
  a.run_id = reinterpret_cast<const uint32_t*>(ws + p.run_id);
  a.bounds = reinterpret_cast<const int64_t*>(ws + p.bounds);
  a.partials = reinterpret_cast<float*>(ws + p.partials);
  a.wstride = p.wstride;
  a.ko = p.ko;
  a.prod = nullptr;  // FinishV sets it (mul, or a float gradient)
  a.prod_stride = 0;
  return a;
}

// ------------------------------------------------------------ dense plan
// kAuto takes kDense where it timed faster than kSorted (on an H200, see
// the README): for mul at every size (kSorted's product pass writes and
// reads k * n * width floats), and for add and concat up to kDenseMaxIds
// ids, where the sort's fixed costs dominate (beyond that the dense pass is
// bound by the rate of float atomics in L2, and kSorted, which reads the
// gradient once per table, wins). In both cases only when the accumulator
// is no larger than the gradient (so zeroing and compacting it cost less
// than the pass itself) and every table has at least kDenseMinRows rows
// (fewer rows put thousands of ids' atomics on the same addresses).
constexpr int64_t kDenseMinRows = 64;
constexpr int64_t kDenseMaxIds = int64_t{1} << 18;

struct DensePlan {
  int64_t n = 0;
  int num_shards = 0;
  int64_t num_keys = 0;  // sum of the tables' rows
  KeyOffsets ko = {};
  AccOffsets ao = {};
  unsigned long long acc_floats = 0;
  // Byte offsets from the 256-aligned workspace base.
  size_t counts = 0, bounds = 0, marks = 0, incl = 0, cub = 0, cub_bytes = 0;
  size_t acc = 0;
  size_t total = 0;  // including kAlign slack for an unaligned workspace
};

// Sum of rows and of accumulator floats (each table's rounded up to 4);
// false if the keys do not fit CUB's int item count.
bool DenseSizes(const Layout& l, KeyOffsets* ko, AccOffsets* ao,
                unsigned long long* keys, unsigned long long* floats) {
  unsigned long long r = 0, a = 0;
  for (int j = 0; j < l.num_tables; ++j) {
    ko->off[j] = r;
    ao->off[j] = a;
    r += static_cast<unsigned long long>(l.rows[j]);
    if (r > static_cast<unsigned long long>(INT_MAX)) return false;
    a += (static_cast<unsigned long long>(l.rows[j]) *
              static_cast<unsigned long long>(l.width[j]) + 3ull) / 4ull * 4ull;
  }
  for (int j = l.num_tables; j <= kMaxTables; ++j) ko->off[j] = r;
  *keys = r;
  *floats = a;
  return true;
}

cudaError_t MakeDensePlan(const Layout& l, int64_t n, DensePlan* p) {
  if (!LayoutOk(l) || n < 0) return cudaErrorInvalidValue;
  *p = DensePlan();
  p->n = n;
  p->num_shards = l.shard_begin[l.num_tables];
  unsigned long long keys = 0;
  if (!DenseSizes(l, &p->ko, &p->ao, &keys, &p->acc_floats)) {
    return cudaErrorInvalidValue;
  }
  if (p->acc_floats > (static_cast<unsigned long long>(SIZE_MAX) / 8) / sizeof(float)) {
    return cudaErrorInvalidValue;
  }
  p->num_keys = static_cast<int64_t>(keys);
  const size_t r = static_cast<size_t>(keys);
  size_t off = 0;
  p->counts = off; off += AlignUp(sizeof(int64_t) * kMaxShards);
  p->bounds = off; off += AlignUp(sizeof(int64_t) * (kMaxShards + 1));
  p->marks = off; off += AlignUp(4 * r);
  p->incl = off; off += AlignUp(4 * r);
  cudaError_t e = cub::DeviceScan::InclusiveSum(
      nullptr, p->cub_bytes, static_cast<const uint32_t*>(nullptr),
      static_cast<uint32_t*>(nullptr), static_cast<int>(keys));
  if (e != cudaSuccess) return e;
  p->cub = off; off += AlignUp(std::max<size_t>(p->cub_bytes, 1));
  p->acc = off; off += AlignUp(sizeof(float) * static_cast<size_t>(p->acc_floats));
  p->total = off + kAlign;
  return cudaSuccess;
}

GradAlgorithm Resolve(const Layout& l, int64_t n, GradAlgorithm requested) {
  if (requested != GradAlgorithm::kAuto) return requested;
  if (!LayoutOk(l) || n < 0) return GradAlgorithm::kSorted;
  KeyOffsets ko = {};
  AccOffsets ao = {};
  unsigned long long keys = 0, floats = 0;
  const bool dense_ok = DenseSizes(l, &ko, &ao, &keys, &floats);
  const bool sorted_ok =
      n <= static_cast<int64_t>(UINT32_MAX) &&
      static_cast<int64_t>(l.num_tables) * n <= static_cast<int64_t>(INT_MAX);
  if (!dense_ok) return GradAlgorithm::kSorted;
  if (!sorted_ok) return GradAlgorithm::kDense;
  int64_t min_rows = l.rows[0];
  for (int j = 1; j < l.num_tables; ++j) min_rows = std::min(min_rows, l.rows[j]);
  const unsigned long long grad_floats =
      static_cast<unsigned long long>(n) * static_cast<unsigned long long>(l.out_width);
  const bool pays = l.combine == Combine::kMul || n <= kDenseMaxIds;
  return pays && min_rows >= kDenseMinRows && floats <= grad_floats ? GradAlgorithm::kDense
                                                            : GradAlgorithm::kSorted;
}

template <typename Index>
cudaError_t DensePrepareT(const Layout& l, const DensePlan& p, const void* ids,
                          char* ws, int64_t* h_counts, cudaStream_t s) {
  uint32_t* marks = reinterpret_cast<uint32_t*>(ws + p.marks);
  uint32_t* incl = reinterpret_cast<uint32_t*>(ws + p.incl);
  int64_t* bounds = reinterpret_cast<int64_t*>(ws + p.bounds);
  int64_t* counts = reinterpret_cast<int64_t*>(ws + p.counts);
  cudaError_t e = cudaMemsetAsync(marks, 0, sizeof(uint32_t) * p.num_keys, s);
  if (e != cudaSuccess) return e;
  if (p.n > 0) {
    TFMH_LAUNCH(GridFor(p.n, 0), kBlock, 0, s, MarkKernel<Index>)(
        l, p.ko, static_cast<const Index*>(ids), p.n, marks);
  }
  size_t cub_bytes = p.cub_bytes;
  e = cub::DeviceScan::InclusiveSum(ws + p.cub, cub_bytes, marks, incl,
                                    static_cast<int>(p.num_keys), s);
  if (e != cudaSuccess) return e;
  TFMH_LAUNCH(1, 128, 0, s, DenseBoundsKernel)(ShardTargets(l, p.ko),
                                               p.num_shards, incl, bounds,
                                               counts);
  e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  return cudaMemcpyAsync(h_counts, counts, sizeof(int64_t) * p.num_shards,
                         cudaMemcpyDeviceToHost, s);
}

template <typename T, int V>
void DenseFinishV(const Layout& l, const ShardPointers& sp,
                  const ShardOutputs& so, const DensePlan& p, const char* ws,
                  const void* ids, bool ids64, const char* grad,
                  cudaStream_t s) {
  constexpr int N = V / static_cast<int>(sizeof(T));
  float* acc = reinterpret_cast<float*>(const_cast<char*>(ws) + p.acc);
  if (p.n > 0) {
    const int lg = GroupLog2(l.out_width / N);
    const unsigned grid = GridFor((p.n + 31) / 32, 5);  // a warp per 32 ids
    if (l.num_tables <= 2) {
      TFMH_LAUNCH(grid, kBlock, 0, s, DenseScatterKernel<T, V, 2, 2>)(
          l, sp, p.ao, ids, ids64 ? 1 : 0, p.n, grad, acc, lg);
    } else {
      TFMH_LAUNCH(grid, kBlock, 0, s, DenseScatterKernel<T, V, kMaxTables, 1>)(
          l, sp, p.ao, ids, ids64 ? 1 : 0, p.n, grad, acc, lg);
    }
  }
  int wmax = 0;
  for (int j = 0; j < l.num_tables; ++j) wmax = std::max(wmax, l.width[j]);
  const int64_t nv = wmax / N;  // every width is a multiple of N
  const int lg = GroupLog2(nv);
  const int64_t tiles = (nv + (1 << lg) - 1) >> lg;
  TFMH_LAUNCH(GridFor(p.num_keys * tiles, lg), kBlock, 0, s,
              DenseCompactKernel<T, V>)(
      l, so, p.ko, p.ao, reinterpret_cast<const uint32_t*>(ws + p.marks),
      reinterpret_cast<const uint32_t*>(ws + p.incl),
      reinterpret_cast<const int64_t*>(ws + p.bounds), acc, p.num_keys, tiles,
      ids64 ? 1 : 0, lg);
}


}  // namespace

const char* ErrorString(Status status) {
  return cudaGetErrorString(static_cast<cudaError_t>(status));
}

Status LaunchLookup(const Layout& layout, DType dtype, IdType id_type,
                    const ShardPointers& shards, const void* d_ids, int64_t n,
                    void* d_out, int64_t* d_first_bad, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (!LayoutOk(layout) || !KnownDType(dtype) || n < 0) return cudaErrorInvalidValue;
  if (d_first_bad != nullptr) TFMH_LAUNCH(1, 1, 0, s, InitFirstBadKernel)(d_first_bad);
  if (n == 0) return cudaGetLastError();
  const size_t esz = ElemSize(dtype);
  const void* ptrs[kMaxShards + 1];
  int np = 0;
  ptrs[np++] = d_out;
  for (int q = 0; q < layout.shard_begin[layout.num_tables]; ++q) {
    ptrs[np++] = shards.data[q];
  }
  const int v = ChooseVector(layout, esz, ptrs, np);
  const bool ids64 = id_type == IdType::kInt64;
  WithTypeAndVector(dtype, v, [&](auto t, auto vec) {
    LaunchLookupV<typename decltype(t)::type, decltype(vec)::value>(
        layout, shards, d_ids, ids64, n, d_out, d_first_bad, s);
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

bool KnownAlgorithm(GradAlgorithm a) {
  return a == GradAlgorithm::kAuto || a == GradAlgorithm::kSorted ||
         a == GradAlgorithm::kDense;
}

GradAlgorithm ChosenGradAlgorithm(const Layout& layout, int64_t n,
                                  GradAlgorithm requested) {
  return Resolve(layout, n, requested);
}

bool SortedMergesIds(const Layout& layout, DType dtype, int64_t n) {
  return MergeIds(layout, dtype, n);
}

namespace {

// The backward's path for these arguments and its workspace plan: the same
// in all three launchers, since each decides from the same inputs.
struct BackwardPlan {
  enum Path { kDirect, kMerged, kDense } path = kDirect;
  GradPlan direct;
  MergedPlan merged;
  DensePlan dense;
  size_t total = 0;
};

cudaError_t MakeBackwardPlan(const Layout& l, DType dtype, IdType id_type,
                             int64_t n, GradAlgorithm algorithm,
                             BackwardPlan* b) {
  if (!KnownAlgorithm(algorithm)) return cudaErrorInvalidValue;
  cudaError_t e;
  if (Resolve(l, n, algorithm) == GradAlgorithm::kDense) {
    b->path = BackwardPlan::kDense;
    e = MakeDensePlan(l, n, &b->dense);
    b->total = b->dense.total;
  } else if (MergeIds(l, dtype, n)) {
    b->path = BackwardPlan::kMerged;
    e = MakeMergedPlan(l, id_type, n, &b->merged);
    b->total = b->merged.total;
  } else {
    b->path = BackwardPlan::kDirect;
    e = MakeGradPlan(l, id_type, n, &b->direct);
    b->total = b->direct.total;
  }
  return e;
}

}  // namespace

size_t LookupGradWorkspaceBytes(const Layout& layout, DType dtype,
                                IdType id_type, int64_t n,
                                GradAlgorithm algorithm) {
  BackwardPlan b;
  if (MakeBackwardPlan(layout, dtype, id_type, n, algorithm, &b) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return b.total;
}

Status LaunchLookupGradPrepare(const Layout& layout, DType dtype,
                               IdType id_type, const void* d_ids, int64_t n,
                               void* d_workspace, size_t workspace_bytes,
                               int64_t* h_shard_counts, void* stream,
                               GradAlgorithm algorithm) {
  BackwardPlan b;
  cudaError_t e = MakeBackwardPlan(layout, dtype, id_type, n, algorithm, &b);
  if (e != cudaSuccess) return e;
  if (d_workspace == nullptr || workspace_bytes < b.total) {
    return cudaErrorInvalidValue;
  }
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  char* ws = AlignedBase(d_workspace);
  const bool i32 = id_type == IdType::kInt32;
  switch (b.path) {
    case BackwardPlan::kDense:
      e = i32 ? DensePrepareT<int32_t>(layout, b.dense, d_ids, ws, h_shard_counts, s)
              : DensePrepareT<int64_t>(layout, b.dense, d_ids, ws, h_shard_counts, s);
      break;
    case BackwardPlan::kMerged:
      e = i32 ? MergedPrepareT<int32_t>(layout, b.merged, d_ids, ws, h_shard_counts, s)
              : MergedPrepareT<int64_t>(layout, b.merged, d_ids, ws, h_shard_counts, s);
      break;
    default:
      e = i32 ? PrepareAny<int32_t>(layout, b.direct, d_ids, ws, h_shard_counts, s)
              : PrepareAny<int64_t>(layout, b.direct, d_ids, ws, h_shard_counts, s);
      break;
  }
  if (e != cudaSuccess) return e;
  return cudaGetLastError();
}

Status LaunchLookupGradFinish(const Layout& layout, DType dtype,
                              IdType id_type, const ShardPointers& shards,
                              const void* d_ids, const void* d_grad, int64_t n,
                              void* d_workspace, size_t workspace_bytes,
                              void* const* d_indices, void* const* d_values,
                              void* stream, GradAlgorithm algorithm) {
  if (!KnownDType(dtype)) return cudaErrorInvalidValue;
  BackwardPlan b;
  cudaError_t e = MakeBackwardPlan(layout, dtype, id_type, n, algorithm, &b);
  if (e != cudaSuccess) return e;
  if (d_workspace == nullptr || workspace_bytes < b.total) {
    return cudaErrorInvalidValue;
  }
  if (n == 0) return cudaGetLastError();
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const GradPlan& p = b.direct;
  const DensePlan& dp = b.dense;
  const MergedPlan& mp = b.merged;
  char* ws = AlignedBase(d_workspace);
  const int num_shards = layout.shard_begin[layout.num_tables];
  ShardOutputs so = {};
  const void* ptrs[2 * kMaxShards + 1];
  int np = 0;
  ptrs[np++] = d_grad;
  for (int q = 0; q < num_shards; ++q) {
    so.indices[q] = d_indices[q];
    so.values[q] = d_values[q];
    ptrs[np++] = d_values[q];
    if (layout.combine == Combine::kMul) ptrs[np++] = shards.data[q];
  }
  const int v = ChooseVector(layout, ElemSize(dtype), ptrs, np);
  const bool ids64 = id_type == IdType::kInt64;
  const char* grad = static_cast<const char*>(d_grad);

  if (b.path == BackwardPlan::kDense) {
    e = cudaMemsetAsync(ws + dp.acc, 0, sizeof(float) * dp.acc_floats, s);
    if (e != cudaSuccess) return e;
    WithTypeAndVector(dtype, v, [&](auto t, auto vec) {
      DenseFinishV<typename decltype(t)::type, decltype(vec)::value>(
          layout, shards, so, dp, ws, d_ids, ids64, grad, s);
    });
    return cudaGetLastError();
  }

  // The sorted sums of one plan (a stage of the merged path, or the direct
  // path) whose workspace starts at w.
  auto finish = [&](const Layout& l, const GradPlan& gp, char* w,
                    const ShardOutputs& out, const void* ids, const char* g,
                    bool float_grad) {
    WithTypeAndVector(dtype, v, [&](auto t, auto vec) {
      FinishV<typename decltype(t)::type, decltype(vec)::value>(
          l, shards, out, ArgsOf(gp, w, ids, ids64, g),
          reinterpret_cast<float*>(w + gp.prod), float_grad, s);
    });
  };
  if (b.path == BackwardPlan::kMerged) {
    // Stage 1: per distinct id, the float sum of its gradient rows, into
    // usum (its index output rewrites uid with the same ids).
    ShardOutputs so1 = {};
    so1.indices[0] = ws + mp.uid;
    so1.values[0] = ws + mp.usum;
    so1.float_values = 1;
    finish(mp.ids_layout, mp.s1, ws + mp.s1_base, so1, d_ids, grad, false);
    // Stage 2: the real tables, from the distinct ids and their sums.
    finish(layout, mp.s2, ws + mp.s2_base, so, ws + mp.uid, ws + mp.usum, true);
  } else {
    finish(layout, p, ws, so, d_ids, grad, false);
  }
  return cudaGetLastError();
}

}  // namespace gpu
}  // namespace tfmh
