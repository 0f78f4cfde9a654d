// What the CPU and GPU kernels of both ops share: reading the attributes,
// resolving the table inputs (tensors or resource variables, read in place
// under the variables' shared locks) and building the tfmh::Layout.
#ifndef TENSORFLOW_MULTIHASH_CC_KERNELS_MULTIHASH_KERNEL_BASE_H_
#define TENSORFLOW_MULTIHASH_CC_KERNELS_MULTIHASH_KERNEL_BASE_H_

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "cc/kernels/multihash_mapping.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/framework/tensor.h"

namespace tensorflow {
namespace multihash {

// The shards of all tables as seen by one kernel invocation. Resource
// variables stay shared-locked for as long as this object lives, so an
// assignment cannot replace a tensor while it is being read; sparse updates
// that do not lock may run concurrently, as with TensorFlow's own gathers.
class ResolvedTables {
 public:
  ResolvedTables() = default;
  ResolvedTables(const ResolvedTables&) = delete;
  ResolvedTables& operator=(const ResolvedTables&) = delete;

  const std::vector<const Tensor*>& shards() const { return shards_; }
  const tfmh::Layout& layout() const { return layout_; }

  // Flat data pointers of every shard, in layout order (no heap: the
  // layout holds at most kMaxShards shards).
  template <typename T>
  std::array<const T*, tfmh::kMaxShards> Data() const {
    std::array<const T*, tfmh::kMaxShards> data = {};
    for (size_t s = 0; s < shards_.size() && s < data.size(); ++s) {
      data[s] = shards_[s]->flat<T>().data();
    }
    return data;
  }

 private:
  friend class MultiHashKernelBase;
  std::vector<core::RefCountPtr<Var>> vars_;
  std::vector<tf_shared_lock> locks_;
  std::vector<const Tensor*> shards_;
  tfmh::Layout layout_;
};

class MultiHashKernelBase : public OpKernel {
 public:
  explicit MultiHashKernelBase(OpKernelConstruction* ctx);

 protected:
  // Resolves the "tables" input list and validates every shard against the
  // attributes: dtype, rank 2, width, and row counts adding up to each
  // table's rows.
  absl::Status ResolveTables(OpKernelContext* ctx,
                             ResolvedTables* tables) const;

  // InvalidArgument for the first id outside [0, capacity), if any.
  template <typename Index>
  absl::Status CheckIds(const tfmh::Layout& layout, const Tensor& ids) const {
    const auto flat = ids.flat<Index>();
    for (int64_t i = 0; i < flat.size(); ++i) {
      if (!tfmh::IdInRange(layout, flat(i))) {
        return OutOfRangeError(layout, i, static_cast<int64_t>(flat(i)));
      }
    }
    return absl::OkStatus();
  }

  // The gradient op's grad must be ids.shape + [out_width], and it must have
  // one (indices, values) output pair per shard.
  absl::Status CheckGradInputs(OpKernelContext* ctx, const tfmh::Layout& l,
                               const Tensor& grad, const Tensor& ids) const;

  // ids.shape + [out_width], or InvalidArgument where that is no valid
  // TensorShape (rank above TensorFlow's limit, element count overflow).
  static absl::Status OutputShape(const Tensor& ids, const tfmh::Layout& l,
                                  TensorShape* shape);

  absl::Status OutOfRangeError(const tfmh::Layout& layout, int64_t position,
                               int64_t id) const;

  DataType dtype_;
  tfmh::Combine combine_;
  tfmh::Strategy strategy_;
  std::vector<int64_t> table_rows_;
  std::vector<int32_t> table_widths_;
  std::vector<int32_t> num_shards_;
};

}  // namespace multihash
}  // namespace tensorflow

#endif  // TENSORFLOW_MULTIHASH_CC_KERNELS_MULTIHASH_KERNEL_BASE_H_
