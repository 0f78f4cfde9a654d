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

// ---------------------------------------------------------------- forward
// out[i, :] = combine of the rows of ids[i] (n ids, out is n x out_width).
// Ids outside [0, capacity) write a zero row and set *d_first_bad to the
// smallest such position (atomicMin); the launcher first sets *d_first_bad
// to INT64_MAX. No table is ever read outside its shards.
Status LaunchLookup(const Layout& layout, DType dtype, IdType id_type,
                    const ShardPointers& shards, const void* d_ids, int64_t n,
                    void* d_out, int64_t* d_first_bad, void* stream);

// ---------------------------------------------------------------- backward
// Per-table sparse gradients with duplicate rows summed, in two phases
// because output sizes depend on the data:
//   1. LaunchLookupGradPrepare sorts the ids' rows of every table, finds the
//      unique rows and writes the number of unique rows of every shard to
//      h_shard_counts (host memory, layout.shard_begin[num_tables] entries,
//      pinned for a true async copy). The caller synchronizes the stream,
//      then allocates each shard's outputs with those counts.
//   2. LaunchLookupGradFinish writes, for every shard s, d_indices[s] (the
//      unique shard-local rows, ascending, as id_type) and d_values[s]
//      (count x width[j] rows of dtype: the summed gradient of each row).
// Both phases use the same caller-allocated workspace of
// LookupGradWorkspaceBytes() bytes (256-byte aligned), which holds the state
// between them. Ids must already be known to be in range (the forward pass
// checks them); out-of-range ids are skipped, never read or written.
size_t LookupGradWorkspaceBytes(const Layout& layout, IdType id_type,
                                int64_t n);

Status LaunchLookupGradPrepare(const Layout& layout, DType dtype,
                               IdType id_type, const void* d_ids, int64_t n,
                               void* d_workspace, size_t workspace_bytes,
                               int64_t* h_shard_counts, void* stream);

Status LaunchLookupGradFinish(const Layout& layout, DType dtype,
                              IdType id_type, const ShardPointers& shards,
                              const void* d_ids, const void* d_grad, int64_t n,
                              void* d_workspace, size_t workspace_bytes,
                              void* const* d_indices, void* const* d_values,
                              void* stream);

}  // namespace gpu
}  // namespace tfmh

#endif  // TENSORFLOW_MULTIHASH_GPU_KERNELS_MULTIHASH_GPU_H_
