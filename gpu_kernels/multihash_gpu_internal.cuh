// Internals shared by the CUDA sources of the multi-hash kernels; not an
// API. The launcher API is gpu_kernels/multihash_gpu.h; all id -> (table,
// shard, row) arithmetic and the combine step come from
// cc/kernels/multihash_mapping.h. The sources, one nvcc action each:
//   multihash_gpu_forward.cu          the lookup and the id check
//                                     (LaunchLookup, LaunchCheckIds)
//   multihash_gpu_sorted_backward.cu  GradAlgorithm::kSorted: keys, sort,
//                                     segment sums, fix-ups
//   multihash_gpu_dense_backward.cu   GradAlgorithm::kDense: marks, float
//                                     atomics into an accumulator, compaction
//   multihash_gpu_launch.cu           host helpers, the choice of algorithm
//                                     and workspace plan, the backward
//                                     launchers
// This header holds what more than one of them uses: element and vector
// types, the lane groups and tile walk of the id-parallel kernels, the
// backward's key and output structures, the workspace plans, and the
// functions each source exports to the others.
#ifndef TENSORFLOW_MULTIHASH_GPU_KERNELS_MULTIHASH_GPU_INTERNAL_CUH_
#define TENSORFLOW_MULTIHASH_GPU_KERNELS_MULTIHASH_GPU_INTERNAL_CUH_

#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "gpu_kernels/cuda_compat.h"
#include "gpu_kernels/multihash_gpu.h"

namespace tfmh {
namespace gpu {
namespace internal {

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
__device__ __forceinline__ Pack<T, V> LoadPack(const char* src) {
  using W = typename Word<V>::type;
  const W w = __ldg(reinterpret_cast<const W*>(src));
  Pack<T, V> r;
  memcpy(&r, &w, V);
  return r;
}

// Streaming store (output rows are written once; keeps the tables in L2).
template <typename T, int V>
__device__ __forceinline__ void StorePack(char* dst, const Pack<T, V>& v) {
  using W = typename Word<V>::type;
  W w;
  memcpy(&w, &v, V);
  __stcs(reinterpret_cast<W*>(dst), w);
}

// N floats (N = 1, 2, 4 or 8), 4*N-byte aligned.
template <int N>
__device__ __forceinline__ void LoadFloats(const float* src, float (&vals)[N]) {
  if constexpr (N % 4 == 0) {
#pragma unroll
    for (int e = 0; e < N; e += 4) {
      const float4 v = *reinterpret_cast<const float4*>(src + e);
      vals[e] = v.x;
      vals[e + 1] = v.y;
      vals[e + 2] = v.z;
      vals[e + 3] = v.w;
    }
  } else if constexpr (N == 2) {
    const float2 v = *reinterpret_cast<const float2*>(src);
    vals[0] = v.x;
    vals[1] = v.y;
  } else {
#pragma unroll
    for (int e = 0; e < N; ++e) vals[e] = src[e];
  }
}

template <int N>
__device__ __forceinline__ void StoreFloats(float* dst,
                                            const float (&vals)[N]) {
  if constexpr (N % 4 == 0) {
#pragma unroll
    for (int e = 0; e < N; e += 4) {
      *reinterpret_cast<float4*>(dst + e) =
          make_float4(vals[e], vals[e + 1], vals[e + 2], vals[e + 3]);
    }
  } else if constexpr (N == 2) {
    *reinterpret_cast<float2*>(dst) = make_float2(vals[0], vals[1]);
  } else {
#pragma unroll
    for (int e = 0; e < N; ++e) dst[e] = vals[e];
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
    const Layout& layout, const ShardPointers& shards, int j, int64_t row) {
  const RowRef row_ref = LocateRow(layout, j, row);
  return reinterpret_cast<unsigned long long>(shards.data[row_ref.shard]) +
         static_cast<unsigned long long>(row_ref.local_row) *
             (static_cast<unsigned long long>(layout.width[j]) * sizeof(T));
}

// Byte address of table j's row of an in-range id.
template <typename T>
__device__ __forceinline__ unsigned long long RowAddr(
    const Layout& layout, const ShardPointers& shards, int j, int64_t id) {
  return TableRowAddr<T>(layout, shards, j, TableRow(layout, j, id));
}

// ------------------------------------------------------------ tile walk
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
__device__ __forceinline__ bool LaneRowAddrs(const Layout& layout,
                                             const ShardPointers& shards,
                                             int64_t i, int64_t n, int64_t id,
                                             unsigned long long (&mine)[KMAX]) {
  const bool ok = i < n && IdInRange(layout, id);
#pragma unroll
  for (int j = 0; j < KMAX; ++j) {
    mine[j] = (ok && j < layout.num_tables) ? RowAddr<T>(layout, shards, j, id)
                                            : 0ull;
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
  KeyOffsets key_offsets;
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

__device__ __forceinline__ RunRef DecodeKey(const Layout& layout,
                                            const KeyOffsets& key_offsets,
                                            unsigned long long key) {
  int j = 0;
#pragma unroll
  for (int jj = 1; jj < kMaxTables; ++jj) {
    if (jj < layout.num_tables && key >= key_offsets.off[jj]) j = jj;
  }
  const RowRef ref =
      LocateRow(layout, j, static_cast<int64_t>(key - key_offsets.off[j]));
  return RunRef{j, ref.shard, ref.local_row};
}

// The gradient outputs of one distinct row: its shard-local row in the
// shard's indices, and (per lane) N summed floats, as T (as float where
// outputs.float_values is set), at vector v of its values row.
__device__ __forceinline__ void WriteGradIndex(const ShardOutputs& outputs,
                                               const RunRef& run_ref,
                                               int64_t out_row, bool ids64) {
  if (ids64) {
    static_cast<int64_t*>(outputs.indices[run_ref.shard])[out_row] =
        run_ref.local_row;
  } else {
    static_cast<int32_t*>(outputs.indices[run_ref.shard])[out_row] =
        static_cast<int32_t>(run_ref.local_row);
  }
}

template <typename T, int V>
__device__ __forceinline__ void WriteGradValues(
    const Layout& layout, const ShardOutputs& outputs, const RunRef& run_ref,
    int64_t out_row, int v, const float (&acc)[Pack<T, V>::N]) {
  if (outputs.float_values) {
    StoreFloats<Pack<T, V>::N>(
        static_cast<float*>(outputs.values[run_ref.shard]) +
            out_row * static_cast<int64_t>(layout.width[run_ref.table]) +
            static_cast<int64_t>(v) * Pack<T, V>::N,
        acc);
    return;
  }
  Pack<T, V> o;
#pragma unroll
  for (int e = 0; e < Pack<T, V>::N; ++e) o.e[e] = Elem<T>::FromF(acc[e]);
  StorePack<T, V>(static_cast<char*>(outputs.values[run_ref.shard]) +
                      out_row *
                          static_cast<int64_t>(layout.width[run_ref.table]) *
                          sizeof(T) +
                      static_cast<int64_t>(v) * V,
                  o);
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

// ------------------------------------------------------------ dense backward
// kDense: every (table, row) pair has a key, key = key_offsets.off[j] + row,
// as in the sorted path; marks[key] = 1 for the keys of in-range ids, their
// inclusive scan numbers the distinct rows, and the gradient is summed into
// a dense float accumulator: table j's row r at floats
// acc + acc_off[j] + r * width[j].
struct AccOffsets {
  unsigned long long off[kMaxTables];  // multiples of 4 floats
};

// ------------------------------------------------------------ host helpers
// (defined in multihash_gpu_launch.cu)
inline size_t ElemSize(DType d) { return d == DType::kFloat32 ? 4 : 2; }
bool KnownDType(DType d);
bool LayoutOk(const Layout& layout);
// The device's SM count (108 if it cannot be read).
int NumSMs();
// log2 of the group size for rows of `vectors` vectors.
int GroupLog2(int64_t vectors);
// Blocks of kBlock threads for `groups` groups of 2^log2_group lanes, at
// most 2048 / kBlock blocks per SM.
unsigned GridFor(int64_t groups, int log2_group);
// Largest vector size (16, 8, 4, 2 bytes; at least one element) that divides
// every table row and every pointer in `ptrs`.
int ChooseVector(const Layout& layout, size_t elem_size,
                 const void* const* ptrs, int num_ptrs);

template <typename T>
struct TypeTag {
  using type = T;
};
template <int V>
using VecTag = std::integral_constant<int, V>;

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

// ------------------------------------------------------------ workspace plans
// Byte offsets in the gradient's workspace are from its first 256-byte
// aligned address.
constexpr size_t kAlign = 256;
inline size_t AlignUp(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }
char* AlignedBase(void* workspace);
// First key of every shard; [S] = the sentinel key.
BoundTargets ShardTargets(const Layout& layout, const KeyOffsets& key_offsets);

// kSorted, one pass of the sort and the sums (multihash_gpu_sorted_backward.cu).
struct GradPlan {
  int64_t n = 0, m = 0;
  int num_shards = 0;
  bool key64 = false;
  int key_bits = 1;
  KeyOffsets key_offsets = {};
  int64_t chunk = 1, chunks = 0, wstride = 0;
  // Byte offsets from the 256-aligned workspace base.
  size_t counts = 0, bounds = 0, pos = 0, run_id = 0, keys = 0;
  size_t temp = 0;  // phase 1 temporaries; phase 2 partials alias them
  size_t keys_in = 0, pos_in = 0, cub = 0, cub_bytes = 0;
  size_t partials = 0;
  size_t prod = 0;  // mul: the P_j of all tables (aliases the temporaries)
  size_t total = 0;  // including kAlign slack for an unaligned workspace
};

// kSorted with equal ids merged first: two GradPlans in one workspace (see
// multihash_gpu_sorted_backward.cu; planned in multihash_gpu_launch.cu).
struct MergedPlan {
  Layout ids_layout;
  GradPlan stage1,
      stage2;        // stage 1 (ids layout, n items), stage 2 (real, uniq)
  int64_t uniq = 0;  // rows of uid and usum: min(n, capacity)
  // Byte offsets from the 256-aligned workspace base; each stage's plan is
  // relative to its own base.
  size_t s1_base = 0, uid = 0, usum = 0, s2_base = 0;
  size_t total = 0;  // including kAlign slack for an unaligned workspace
};

// kDense (multihash_gpu_dense_backward.cu).
struct DensePlan {
  int64_t n = 0;
  int num_shards = 0;
  int64_t num_keys = 0;  // sum of the tables' rows
  KeyOffsets key_offsets = {};
  AccOffsets acc_offsets = {};
  unsigned long long acc_floats = 0;
  // Byte offsets from the 256-aligned workspace base.
  size_t counts = 0, bounds = 0, marks = 0, incl = 0, cub = 0, cub_bytes = 0;
  size_t acc = 0;
  size_t total = 0;  // including kAlign slack for an unaligned workspace
};

// -------------------------------------------- exported by the .cu files
// multihash_gpu_sorted_backward.cu. force_key64: LaunchOptions::force_key64.
cudaError_t MakeGradPlan(const Layout& layout, int64_t n, bool force_key64,
                         GradPlan* plan);
// Phase 1 of one plan: sorts, numbers the runs, writes the shard counts to
// h_counts (host; none where it is null).
cudaError_t SortedPrepare(const Layout& layout, IdType id_type,
                          const GradPlan& plan, const void* ids,
                          char* workspace, int64_t* h_counts,
                          cudaStream_t stream);
// Phase 1 of the merged path: stage 1's sort, the distinct ids, stage 2's
// sort (whose counts go to h_counts).
cudaError_t MergedPrepare(const Layout& layout, IdType id_type,
                          const MergedPlan& plan, const void* ids,
                          char* workspace, int64_t* h_counts,
                          cudaStream_t stream);
// Phase 2 of one plan whose workspace starts at plan_workspace: the sums
// of `grad` (float rows of out_width where float_grad, else dtype rows)
// into `outputs`, with vector_bytes-byte vectors (from ChooseVector).
void SortedFinish(DType dtype, int vector_bytes, const Layout& layout,
                  const ShardPointers& shards, const ShardOutputs& outputs,
                  const GradPlan& plan, char* plan_workspace, const void* ids,
                  bool ids64, const char* grad, bool float_grad,
                  cudaStream_t stream);

// multihash_gpu_dense_backward.cu.
// Sum of rows and of accumulator floats (each table's rounded up to 4);
// false if the keys do not fit CUB's int item count.
bool DenseSizes(const Layout& layout, KeyOffsets* key_offsets,
                AccOffsets* acc_offsets, unsigned long long* keys,
                unsigned long long* floats);
cudaError_t MakeDensePlan(const Layout& layout, int64_t n, DensePlan* plan);
cudaError_t DensePrepare(const Layout& layout, IdType id_type,
                         const DensePlan& plan, const void* ids,
                         char* workspace, int64_t* h_counts,
                         cudaStream_t stream);
// Zeroes the accumulator, adds the gradient into it, compacts it into
// `outputs`.
cudaError_t DenseFinish(DType dtype, int vector_bytes, const Layout& layout,
                        const ShardPointers& shards,
                        const ShardOutputs& outputs, const DensePlan& plan,
                        char* workspace, const void* ids, bool ids64,
                        const char* grad, cudaStream_t stream);

}  // namespace internal
}  // namespace gpu
}  // namespace tfmh

#endif  // TENSORFLOW_MULTIHASH_GPU_KERNELS_MULTIHASH_GPU_INTERNAL_CUH_
