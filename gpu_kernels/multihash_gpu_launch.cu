// Host side of the multi-hash CUDA launchers: the helpers every source
// shares (multihash_gpu_internal.cuh), the choice between the backward
// algorithms and the workspace plan of each, and the backward launchers of
// gpu_kernels/multihash_gpu.h (LookupGradWorkspaceBytes,
// LaunchLookupGradPrepare, LaunchLookupGradFinish). No kernel is defined
// here: the sorted and the dense algorithms live in
// multihash_gpu_sorted_backward.cu and multihash_gpu_dense_backward.cu.
#include "gpu_kernels/multihash_gpu_internal.cuh"

namespace tfmh {
namespace gpu {
namespace internal {

// ------------------------------------------------------------ host helpers
namespace {

int Log2Ceil(int64_t x) {
  int r = 0;
  while ((int64_t{1} << r) < x) ++r;
  return r;
}

bool Aligned(const void* p, int v) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % v == 0;
}

}  // namespace

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

int GroupLog2(int64_t vectors) { return std::min(5, Log2Ceil(std::max<int64_t>(vectors, 1))); }

unsigned GridFor(int64_t groups, int log2_group) {
  const int64_t per_block = kBlock >> log2_group;
  const int64_t need = (groups + per_block - 1) / per_block;
  const int64_t cap = static_cast<int64_t>(NumSMs()) * (2048 / kBlock);
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(need, cap)));
}

int ChooseVector(const Layout& layout, size_t esz, const void* const* ptrs,
                 int num_ptrs) {
  for (int v = 16; v > static_cast<int>(esz); v /= 2) {
    bool ok = (static_cast<int64_t>(layout.out_width) * esz) % v == 0;
    for (int j = 0; ok && j < layout.num_tables; ++j) {
      ok = (static_cast<int64_t>(layout.width[j]) * esz) % v == 0;
    }
    for (int q = 0; ok && q < num_ptrs; ++q) ok = Aligned(ptrs[q], v);
    if (ok) return v;
  }
  return static_cast<int>(esz);
}

bool KnownDType(DType d) {
  return d == DType::kFloat32 || d == DType::kFloat16 || d == DType::kBFloat16;
}

bool LayoutOk(const Layout& layout) {
  if (layout.num_tables < 1 || layout.num_tables > kMaxTables) return false;
  const int S = layout.shard_begin[layout.num_tables];
  if (S < layout.num_tables || S > kMaxShards || layout.out_width <= 0)
    return false;
  for (int j = 0; j < layout.num_tables; ++j) {
    if (layout.width[j] <= 0 || layout.rows[j] <= 0 || layout.divisor[j] <= 0)
      return false;
  }
  return true;
}

char* AlignedBase(void* workspace) {
  const uintptr_t x = reinterpret_cast<uintptr_t>(workspace);
  return reinterpret_cast<char*>((x + kAlign - 1) / kAlign * kAlign);
}

// First key of every shard; [S] = the sentinel key.
BoundTargets ShardTargets(const Layout& layout, const KeyOffsets& key_offsets) {
  BoundTargets targets = {};
  const int num_shards = layout.shard_begin[layout.num_tables];
  for (int j = 0; j < layout.num_tables; ++j) {
    for (int sh = layout.shard_begin[j]; sh < layout.shard_begin[j + 1]; ++sh) {
      targets.key[sh] = key_offsets.off[j] +
                        static_cast<unsigned long long>(layout.shard_row[sh]);
    }
  }
  targets.key[num_shards] = key_offsets.off[layout.num_tables];
  return targets;
}

// ------------------------------------------------------------ plans
namespace {

// The one-table layout of the merged path's stage 1, whose rows are the
// ids themselves (see multihash_gpu_sorted_backward.cu).
Layout IdsLayout(const Layout& layout) {
  Layout r;
  r.num_tables = 1;
  r.combine = Combine::kAdd;
  r.out_width = layout.out_width;
  r.capacity = layout.capacity;
  r.rows[0] = layout.capacity;
  r.divisor[0] = 1;
  r.width[0] = layout.out_width;
  r.col_offset[0] = 0;
  r.shard_begin[0] = 0;
  r.shard_begin[1] = 1;
  r.shard_row[0] = 0;
  return r;
}

// Whether kSorted merges equal ids first: when it moves at most 3/4 of the
// direct path's bytes (see multihash_gpu_sorted_backward.cu; the margin covers its extra sort and
// launches). LaunchOptions::sorted_merge = kNever or kAlways forces never
// or always (n > 0, any op), for the standalone test and the benchmark.
bool MergesIdsFirst(const Layout& layout, DType dt, int64_t n,
                    SortedMerge merge) {
  if (n <= 0 || !LayoutOk(layout) || layout.capacity <= 0) return false;
  if (merge == SortedMerge::kNever) return false;
  if (merge == SortedMerge::kAlways) return true;
  // Bytes per output column (the rows' widths cancel out).
  const int64_t k = layout.num_tables;
  const int64_t u = std::min(n, layout.capacity);
  const int64_t g = static_cast<int64_t>(ElemSize(dt));  // gradient element
  const int64_t f = static_cast<int64_t>(sizeof(float));
  int64_t direct = 0, merged = 0;
  if (layout.combine == Combine::kAdd) {
    direct = k * n * g;
    merged = n * g + (k + 1) * u * f;
  } else if (layout.combine == Combine::kMul) {
    direct = n * g + 2 * k * n * f;
    merged = n * g + (2 * k + 2) * u * f;
  } else {
    return false;
  }
  return 4 * merged <= 3 * direct;
}

cudaError_t MakeMergedPlan(const Layout& layout, IdType id_type, int64_t n,
                           bool force_key64, MergedPlan* plan) {
  if (!LayoutOk(layout) || n <= 0 || layout.capacity <= 0)
    return cudaErrorInvalidValue;
  *plan = MergedPlan();
  plan->ids_layout = IdsLayout(layout);
  plan->uniq = std::min(n, layout.capacity);
  cudaError_t e = MakeGradPlan(plan->ids_layout, n, force_key64, &plan->stage1);
  if (e != cudaSuccess) return e;
  e = MakeGradPlan(layout, plan->uniq, force_key64, &plan->stage2);
  if (e != cudaSuccess) return e;
  const size_t uniq = static_cast<size_t>(plan->uniq);
  const uint64_t w = static_cast<uint64_t>(layout.out_width);
  if (w > (static_cast<uint64_t>(SIZE_MAX) / 8) / sizeof(float) / uniq) {
    return cudaErrorInvalidValue;  // the workspace size would overflow
  }
  const size_t isz = id_type == IdType::kInt64 ? 8 : 4;
  size_t off = 0;
  plan->s1_base = off; off += AlignUp(plan->stage1.total);
  plan->uid = off; off += AlignUp(isz * uniq);
  plan->usum = off;
  off += AlignUp(sizeof(float) * uniq * static_cast<size_t>(w));
  plan->s2_base = off; off += AlignUp(plan->stage2.total);
  plan->total = off + kAlign;
  return cudaSuccess;
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

GradAlgorithm ResolveGradAlgorithm(const Layout& layout, int64_t n,
                                   GradAlgorithm requested) {
  if (requested != GradAlgorithm::kAuto) return requested;
  if (!LayoutOk(layout) || n < 0) return GradAlgorithm::kSorted;
  KeyOffsets key_offsets = {};
  AccOffsets acc_offsets = {};
  unsigned long long keys = 0, floats = 0;
  const bool dense_ok =
      DenseSizes(layout, &key_offsets, &acc_offsets, &keys, &floats);
  const bool sorted_ok = n <= static_cast<int64_t>(UINT32_MAX) &&
                         static_cast<int64_t>(layout.num_tables) * n <=
                             static_cast<int64_t>(INT_MAX);
  if (!dense_ok) return GradAlgorithm::kSorted;
  if (!sorted_ok) return GradAlgorithm::kDense;
  int64_t min_rows = layout.rows[0];
  for (int j = 1; j < layout.num_tables; ++j)
    min_rows = std::min(min_rows, layout.rows[j]);
  const unsigned long long grad_floats =
      static_cast<unsigned long long>(n) *
      static_cast<unsigned long long>(layout.out_width);
  const bool pays = layout.combine == Combine::kMul || n <= kDenseMaxIds;
  return pays && min_rows >= kDenseMinRows && floats <= grad_floats ? GradAlgorithm::kDense
                                                            : GradAlgorithm::kSorted;
}

bool KnownAlgorithm(GradAlgorithm algorithm) {
  return algorithm == GradAlgorithm::kAuto ||
         algorithm == GradAlgorithm::kSorted ||
         algorithm == GradAlgorithm::kDense;
}

// The backward's path for these arguments and its workspace plan: the same
// in all three launchers, since each decides from the same inputs.
struct BackwardPlan {
  enum Path { kDirect, kMerged, kDense } path = kDirect;
  GradPlan direct;
  MergedPlan merged;
  DensePlan dense;
  size_t total = 0;
};

cudaError_t MakeBackwardPlan(const Layout& layout, DType dtype,
                             IdType id_type, int64_t n, GradAlgorithm algorithm,
                             const LaunchOptions& options, BackwardPlan* plan) {
  if (!KnownAlgorithm(algorithm)) return cudaErrorInvalidValue;
  cudaError_t err;
  if (ResolveGradAlgorithm(layout, n, algorithm) == GradAlgorithm::kDense) {
    plan->path = BackwardPlan::kDense;
    err = MakeDensePlan(layout, n, &plan->dense);
    plan->total = plan->dense.total;
  } else if (MergesIdsFirst(layout, dtype, n, options.sorted_merge)) {
    plan->path = BackwardPlan::kMerged;
    err = MakeMergedPlan(layout, id_type, n, options.force_key64,
                         &plan->merged);
    plan->total = plan->merged.total;
  } else {
    plan->path = BackwardPlan::kDirect;
    err = MakeGradPlan(layout, n, options.force_key64, &plan->direct);
    plan->total = plan->direct.total;
  }
  return err;
}

}  // namespace
}  // namespace internal

using namespace internal;

const char* ErrorString(Status status) {
  return cudaGetErrorString(static_cast<cudaError_t>(status));
}

GradAlgorithm ChosenGradAlgorithm(const Layout& layout, int64_t n,
                                  GradAlgorithm requested) {
  return ResolveGradAlgorithm(layout, n, requested);
}

bool SortedMergesIds(const Layout& layout, DType dtype, int64_t n,
                     const LaunchOptions& options) {
  return MergesIdsFirst(layout, dtype, n, options.sorted_merge);
}

size_t LookupGradWorkspaceBytes(const Layout& layout, DType dtype,
                                IdType id_type, int64_t n,
                                GradAlgorithm algorithm,
                                const LaunchOptions& options) {
  BackwardPlan plan;
  if (MakeBackwardPlan(layout, dtype, id_type, n, algorithm, options, &plan) !=
      cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return plan.total;
}

Status LaunchLookupGradPrepare(const Layout& layout, DType dtype,
                               IdType id_type, const void* d_ids, int64_t n,
                               void* d_workspace, size_t workspace_bytes,
                               int64_t* h_shard_counts, void* stream,
                               GradAlgorithm algorithm,
                               const LaunchOptions& options) {
  BackwardPlan plan;
  cudaError_t err =
      MakeBackwardPlan(layout, dtype, id_type, n, algorithm, options, &plan);
  if (err != cudaSuccess) return err;
  if (d_workspace == nullptr || workspace_bytes < plan.total) {
    return cudaErrorInvalidValue;
  }
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  char* workspace = AlignedBase(d_workspace);
  switch (plan.path) {
    case BackwardPlan::kDense:
      err = DensePrepare(layout, id_type, plan.dense, d_ids, workspace,
                         h_shard_counts, s);
      break;
    case BackwardPlan::kMerged:
      err = MergedPrepare(layout, id_type, plan.merged, d_ids, workspace,
                          h_shard_counts, s);
      break;
    default:
      err = SortedPrepare(layout, id_type, plan.direct, d_ids, workspace,
                          h_shard_counts, s);
      break;
  }
  if (err != cudaSuccess) return err;
  return cudaGetLastError();
}

Status LaunchLookupGradFinish(const Layout& layout, DType dtype,
                              IdType id_type, const ShardPointers& shards,
                              const void* d_ids, const void* d_grad, int64_t n,
                              void* d_workspace, size_t workspace_bytes,
                              void* const* d_indices, void* const* d_values,
                              void* stream, GradAlgorithm algorithm,
                              const LaunchOptions& options) {
  if (!KnownDType(dtype)) return cudaErrorInvalidValue;
  BackwardPlan plan;
  cudaError_t err =
      MakeBackwardPlan(layout, dtype, id_type, n, algorithm, options, &plan);
  if (err != cudaSuccess) return err;
  if (d_workspace == nullptr || workspace_bytes < plan.total) {
    return cudaErrorInvalidValue;
  }
  if (n == 0) return cudaGetLastError();
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  char* workspace = AlignedBase(d_workspace);
  const int num_shards = layout.shard_begin[layout.num_tables];
  ShardOutputs outputs = {};
  const void* ptrs[2 * kMaxShards + 1];
  int num_ptrs = 0;
  ptrs[num_ptrs++] = d_grad;
  for (int q = 0; q < num_shards; ++q) {
    outputs.indices[q] = d_indices[q];
    outputs.values[q] = d_values[q];
    ptrs[num_ptrs++] = d_values[q];
    if (layout.combine == Combine::kMul) ptrs[num_ptrs++] = shards.data[q];
  }
  const int vector_bytes =
      ChooseVector(layout, ElemSize(dtype), ptrs, num_ptrs);
  const bool ids64 = id_type == IdType::kInt64;
  const char* grad = static_cast<const char*>(d_grad);

  if (plan.path == BackwardPlan::kDense) {
    err = DenseFinish(dtype, vector_bytes, layout, shards, outputs, plan.dense,
                      workspace, d_ids, ids64, grad, s);
    if (err != cudaSuccess) return err;
    return cudaGetLastError();
  }
  if (plan.path == BackwardPlan::kMerged) {
    const MergedPlan& merged = plan.merged;
    // Stage 1: per distinct id, the float sum of its gradient rows, into
    // usum (its index output rewrites uid with the same ids).
    ShardOutputs distinct_id_sums = {};
    distinct_id_sums.indices[0] = workspace + merged.uid;
    distinct_id_sums.values[0] = workspace + merged.usum;
    distinct_id_sums.float_values = 1;
    SortedFinish(dtype, vector_bytes, merged.ids_layout, shards,
                 distinct_id_sums, merged.stage1, workspace + merged.s1_base,
                 d_ids, ids64, grad, /*float_grad=*/false, s);
    // Stage 2: the real tables, from the distinct ids and their sums.
    SortedFinish(dtype, vector_bytes, layout, shards, outputs, merged.stage2,
                 workspace + merged.s2_base, workspace + merged.uid, ids64,
                 workspace + merged.usum, /*float_grad=*/true, s);
  } else {
    SortedFinish(dtype, vector_bytes, layout, shards, outputs, plan.direct,
                 workspace, d_ids, ids64, grad, /*float_grad=*/false, s);
  }
  return cudaGetLastError();
}

}  // namespace gpu
}  // namespace tfmh
