// Launcher API of the multi-hash CUDA kernels. Framework-free: no TensorFlow
// and no CUDA header, so the TensorFlow kernels (built with the host compiler)
// and the standalone CUDA test both call it. Streams are passed as the raw
// cudaStream_t in a void*; every pointer named `d_*` is device memory and all
// work is enqueued on `stream` (nothing here synchronizes unless it says so).
//
// Element types: float, __half and __nv_bfloat16 tables, passed as void* with
// a DType tag; accumulation is always in float. Ids are int32 or int64.
#ifndef TENSORFLOW_MULTIHASH_GPU_KERNELS_MULTIHASH_GPU_H_
#define TENSORFLOW_MULTIHASH_GPU_KERNELS_MULTIHASH_GPU_H_

#include <cstddef>
#include <cstdint>

#include "cc/kernels/multihash_mapping.h"

namespace tfmh {
namespace gpu {

enum class DType : int32_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };
enum class IdType : int32_t { kInt32 = 0, kInt64 = 1 };

// Device pointers of every shard of every table, in Layout's flat order.
// Shard s has ShardRows(layout, j, s) rows of layout.width[j] elements.
struct ShardPointers {
  const void* data[kMaxShards];
};

// Return value of every launcher: 0 on success, else a cudaError_t value;
// ErrorString() turns it into text.
using Status = int;
const char* ErrorString(Status status);

// ---------------------------------------------------------------- options
// Kernel variants that only the standalone test and the benchmark choose:
// the launchers read no environment, they take these. The defaults are
// what the library runs. The three backward calls of one gradient
// (LookupGradWorkspaceBytes, LaunchLookupGradPrepare and
// LaunchLookupGradFinish) must get the same options, since each derives
// the workspace plan from them.
enum class SortedMerge : int32_t {
  kAuto = 0,    // merge equal ids first where that moves fewer bytes
  kNever = 1,
  kAlways = 2,  // for any op and any n > 0
};

struct LaunchOptions {
  // Ids per batch of the forward kernel when num_tables <= 2. 4, the
  // default, is the only one in the library: the variants 2 and 8 are
  // compiled only where TFMH_GPU_TUNING_VARIANTS is defined (device_check.sh
  // defines it for the standalone test and benchmark; the Bazel build does
  // not), no GPU measurement having shown them to pay. Elsewhere, and for
  // any other value, the forward falls back to 4; ForwardBatchUsed says
  // which one runs.
  int forward_batch = 4;
  // The sorted gradient sorts 64-bit keys even where 32 bits hold every
  // (table, row) key (they are 64-bit anyway where the tables' rows add up
  // to more than 2^32 - 1).
  bool force_key64 = false;
  // Whether kSorted merges equal ids first (see SortedMergesIds).
  SortedMerge sorted_merge = SortedMerge::kAuto;
};

// The forward batch LaunchLookup runs for these options: options.forward_batch
// where that variant is compiled in (2 and 8 with TFMH_GPU_TUNING_VARIANTS),
// else 4.
int ForwardBatchUsed(const LaunchOptions& options);

// ---------------------------------------------------------------- forward
// out[i, :] = combine of the rows of ids[i] (n ids, out is n x out_width).
// Ids outside [0, capacity) write a zero row and set *d_first_bad to the
// smallest such position (atomicMin); the launcher first sets *d_first_bad
// to INT64_MAX. No table is ever read outside its shards.
Status LaunchLookup(const Layout& layout, DType dtype, IdType id_type,
                    const ShardPointers& shards, const void* d_ids, int64_t n,
                    void* d_out, int64_t* d_first_bad, void* stream,
                    const LaunchOptions& options = LaunchOptions());

// Only checks the ids: sets *d_first_bad to the smallest position of an id
// outside [0, capacity), or to INT64_MAX if there is none (the same flag as
// LaunchLookup's). The TensorFlow gradient kernel runs it first, so an
// out-of-range id is an error on every device, as on the CPU.
Status LaunchCheckIds(const Layout& layout, IdType id_type, const void* d_ids,
                      int64_t n, int64_t* d_first_bad, void* stream);

// ---------------------------------------------------------------- backward
// Per-table sparse gradients with duplicate rows summed, in two phases
// because output sizes depend on the data:
//   1. LaunchLookupGradPrepare finds the distinct rows of every table and
//      writes the number of distinct rows of every shard to h_shard_counts
//      (host memory, layout.shard_begin[num_tables] entries, pinned for a
//      true async copy). The caller synchronizes the stream, then allocates
//      each shard's outputs with those counts.
//   2. LaunchLookupGradFinish writes, for every shard s, d_indices[s] (the
//      distinct shard-local rows, ascending, as id_type) and d_values[s]
//      (count x width[j] rows of dtype: the summed gradient of each row).
// All three calls take the same algorithm, and both phases use the same
// caller-allocated workspace of LookupGradWorkspaceBytes() bytes (256-byte
// aligned), which holds the state between them. Ids must already be known to
// be in range (the forward pass checks them); out-of-range ids are skipped,
// never read or written. Sums are in float whatever the table type.
enum class GradAlgorithm : int32_t {
  // kDense where ChosenGradAlgorithm says it pays, else kSorted.
  kAuto = 0,
  // Deterministic: one radix sort of (table, row) keys, then segment sums
  // in ascending id position; every run gives the same bits. At most
  // 2^32 - 1 ids and num_tables * ids <= 2^31 - 1. For add and mul, when
  // the ids must repeat (n well above the capacity), equal ids are first
  // merged by the same sort-and-sum on the ids, which reads the gradient
  // once; still deterministic.
  kSorted = 1,
  // One pass over the gradient: float atomic adds into a dense float
  // accumulator of every table (sum of rows[j] * width[j] floats), then the
  // touched rows are compacted. No sort; the order of the additions, and so
  // the last bits of a sum, can differ between runs.
  kDense = 2,
};

// The algorithm kAuto resolves to for this layout and id count (kSorted
// and kDense resolve to themselves).
GradAlgorithm ChosenGradAlgorithm(const Layout& layout, int64_t n,
                                  GradAlgorithm requested);

// Whether kSorted merges equal ids first for this layout, table type and
// id count (with SortedMerge::kAuto it does where that moves at most 3/4
// of the bytes; options.sorted_merge can force never or always).
bool SortedMergesIds(const Layout& layout, DType dtype, int64_t n,
                     const LaunchOptions& options = LaunchOptions());

// 0 if the layout or n is not supported by the algorithm. The dtype enters
// through the choice of the sorted path's variant (its byte counts).
size_t LookupGradWorkspaceBytes(const Layout& layout, DType dtype,
                                IdType id_type, int64_t n,
                                GradAlgorithm algorithm = GradAlgorithm::kAuto,
                                const LaunchOptions& options = LaunchOptions());

Status LaunchLookupGradPrepare(const Layout& layout, DType dtype,
                               IdType id_type, const void* d_ids, int64_t n,
                               void* d_workspace, size_t workspace_bytes,
                               int64_t* h_shard_counts, void* stream,
                               GradAlgorithm algorithm = GradAlgorithm::kAuto,
                               const LaunchOptions& options = LaunchOptions());

Status LaunchLookupGradFinish(const Layout& layout, DType dtype,
                              IdType id_type, const ShardPointers& shards,
                              const void* d_ids, const void* d_grad, int64_t n,
                              void* d_workspace, size_t workspace_bytes,
                              void* const* d_indices, void* const* d_values,
                              void* stream,
                              GradAlgorithm algorithm = GradAlgorithm::kAuto,
                              const LaunchOptions& options = LaunchOptions());

}  // namespace gpu
}  // namespace tfmh

#endif  // TENSORFLOW_MULTIHASH_GPU_KERNELS_MULTIHASH_GPU_H_
