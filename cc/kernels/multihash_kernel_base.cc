#include "cc/kernels/multihash_kernel_base.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace tensorflow {
namespace multihash {

MultiHashKernelBase::MultiHashKernelBase(OpKernelConstruction* ctx)
    : OpKernel(ctx) {
  OP_REQUIRES_OK(ctx, ctx->GetAttr("T", &dtype_));
  std::string operation, strategy;
  OP_REQUIRES_OK(ctx, ctx->GetAttr("operation", &operation));
  OP_REQUIRES_OK(ctx, ctx->GetAttr("complementary_strategy", &strategy));
  if (operation == "add") {
    combine_ = tfmh::Combine::kAdd;
  } else if (operation == "mul") {
    combine_ = tfmh::Combine::kMul;
  } else if (operation == "concat") {
    combine_ = tfmh::Combine::kConcat;
  } else {
    ctx->CtxFailure(absl::InvalidArgumentError(absl::StrCat(
        "The operation ", operation,
        " is not supported; operation must be one of \"add\", \"mul\", "
        "\"concat\"")));
    return;
  }
  if (strategy == "Q-R") {
    strategy_ = tfmh::Strategy::kQR;
  } else if (strategy == "generalized-Q-R") {
    strategy_ = tfmh::Strategy::kGeneralizedQR;
  } else if (strategy == "CRT") {
    strategy_ = tfmh::Strategy::kCRT;
  } else {
    ctx->CtxFailure(absl::InvalidArgumentError(absl::StrCat(
        "The strategy ", strategy,
        " is not supported; complementary_strategy must be one of \"Q-R\", "
        "\"generalized-Q-R\", \"CRT\"")));
    return;
  }
  // Graphs saved before the attribute existed have no value: the default.
  bool deeprec_mapping = false;
  if (ctx->HasAttr("deeprec_mapping")) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("deeprec_mapping", &deeprec_mapping));
  }
  if (deeprec_mapping) {
    OP_REQUIRES(ctx, strategy_ == tfmh::Strategy::kQR,
                absl::InvalidArgumentError(absl::StrCat(
                    "deeprec_mapping needs complementary_strategy \"Q-R\", "
                    "got \"", strategy, "\"")));
    strategy_ = tfmh::Strategy::kDeepRecQR;
  }
  // Every attribute is checked here, by the kernel itself: eager calls
  // never run the shape function, and a graph (a SavedModel) may have been
  // edited. Lists are read as int64 and narrowed only once in range.
  std::vector<int64_t> widths, shards;
  OP_REQUIRES_OK(ctx, ctx->GetAttr("table_rows", &table_rows_));
  OP_REQUIRES_OK(ctx, ctx->GetAttr("table_widths", &widths));
  OP_REQUIRES_OK(ctx, ctx->GetAttr("num_shards", &shards));
  DataTypeVector table_types;
  OP_REQUIRES_OK(ctx, ctx->GetAttr("Ttables", &table_types));
  int64_t out_width = 0, total_shards = 0;
  const std::string error = tfmh::CheckAttrs(
      strategy_, combine_, static_cast<int64_t>(table_rows_.size()),
      table_rows_.data(), static_cast<int64_t>(widths.size()), widths.data(),
      static_cast<int64_t>(shards.size()), shards.data(),
      static_cast<int64_t>(table_types.size()), &out_width, &total_shards);
  OP_REQUIRES(ctx, error.empty(), absl::InvalidArgumentError(error));
  if (ctx->HasAttr("N")) {
    int64_t n = 0;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("N", &n));
    OP_REQUIRES(ctx, n == total_shards,
                absl::InvalidArgumentError(absl::StrCat(
                    "N must equal the number of shards, ", total_shards,
                    " (the sum of num_shards), got ", n)));
  }
  table_widths_.assign(widths.begin(), widths.end());
  num_shards_.assign(shards.begin(), shards.end());
  for (size_t i = 0; i < table_types.size(); ++i) {
    OP_REQUIRES(
        ctx, table_types[i] == dtype_ || table_types[i] == DT_RESOURCE,
        absl::InvalidArgumentError(absl::StrCat(
            "tables[", i, "] has dtype ", DataTypeString(table_types[i]),
            ", expected ", DataTypeString(dtype_), " or a resource")));
  }
}

absl::Status MultiHashKernelBase::ResolveTables(
    OpKernelContext* ctx, ResolvedTables* tables) const {
  int start = 0, stop = 0;
  TF_RETURN_IF_ERROR(ctx->op_kernel().InputRange("tables", &start, &stop));
  const int n = stop - start;

  // Look every resource up first, then lock in mutex address order (the
  // order TensorFlow's own kernels use) so no two kernels can deadlock.
  std::vector<Var*> var_of(n, nullptr);
  for (int i = 0; i < n; ++i) {
    if (ctx->input_dtype(start + i) != DT_RESOURCE) continue;
    core::RefCountPtr<Var> var;
    TF_RETURN_IF_ERROR(
        LookupResource(ctx, HandleFromInput(ctx, start + i), &var));
    var_of[i] = var.get();
    tables->vars_.push_back(std::move(var));
  }
  std::vector<mutex*> mutexes;
  for (Var* v : var_of) {
    if (v != nullptr) mutexes.push_back(v->mu());
  }
  std::sort(mutexes.begin(), mutexes.end());
  mutexes.erase(std::unique(mutexes.begin(), mutexes.end()), mutexes.end());
  tables->locks_.reserve(mutexes.size());
  for (mutex* mu : mutexes) tables->locks_.emplace_back(*mu);

  std::vector<int64_t> shard_rows(n);
  tables->shards_.resize(n);
  int shard = 0;
  for (size_t j = 0; j < num_shards_.size(); ++j) {
    for (int s = 0; s < num_shards_[j]; ++s, ++shard) {
      if (shard >= n) {
        return absl::InvalidArgumentError(absl::StrCat(
            "num_shards [", absl::StrJoin(num_shards_, ", "),
            "] needs more than the ", n, " tables given"));
      }
      const Tensor* t = var_of[shard] != nullptr ? var_of[shard]->tensor()
                                                 : &ctx->input(start + shard);
      if (var_of[shard] != nullptr && !t->IsInitialized()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "shard ", s, " of table ", j,
            " is an uninitialized resource variable"));
      }
      if (t->dtype() != dtype_) {
        return absl::InvalidArgumentError(absl::StrCat(
            "shard ", s, " of table ", j, " has dtype ",
            DataTypeString(t->dtype()), ", expected ", DataTypeString(dtype_)));
      }
      if (t->dims() != 2 || t->dim_size(1) != table_widths_[j]) {
        return absl::InvalidArgumentError(absl::StrCat(
            "shard ", s, " of table ", j, " must have shape [rows, ",
            table_widths_[j], "], got ", t->shape().DebugString()));
      }
      tables->shards_[shard] = t;
      shard_rows[shard] = t->dim_size(0);
    }
  }
  if (shard != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_shards [", absl::StrJoin(num_shards_, ", "),
                     "] adds up to ", shard, " shards, but ", n,
                     " tables were given"));
  }
  const std::string error = tfmh::InitLayout(
      strategy_, combine_, static_cast<int>(table_rows_.size()),
      table_rows_.data(), table_widths_.data(), num_shards_.data(),
      shard_rows.data(), &tables->layout_);
  if (!error.empty()) return absl::InvalidArgumentError(error);
  return absl::OkStatus();
}

absl::Status MultiHashKernelBase::CheckGradInputs(OpKernelContext* ctx,
                                                  const tfmh::Layout& l,
                                                  const Tensor& grad,
                                                  const Tensor& ids) const {
  TensorShape expected;
  TF_RETURN_IF_ERROR(OutputShape(ids, l, &expected));
  if (grad.shape() != expected) {
    return absl::InvalidArgumentError(absl::StrCat(
        "grad must have shape ", expected.DebugString(), " (ids.shape + [",
        l.out_width, "]), got ", grad.shape().DebugString()));
  }
  const int num_shards = l.shard_begin[l.num_tables];
  if (ctx->num_outputs() != 2 * num_shards) {
    return absl::InvalidArgumentError(absl::StrCat(
        "N must equal the number of shards, ", num_shards, ", got ",
        ctx->num_outputs() / 2));
  }
  return absl::OkStatus();
}

absl::Status MultiHashKernelBase::OutputShape(const Tensor& ids,
                                              const tfmh::Layout& l,
                                              TensorShape* shape) {
  if (ids.dims() >= TensorShape::MaxDimensions()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ids have rank ", ids.dims(), ", but the output (ids.shape + [",
        l.out_width, "]) must have at most ", TensorShape::MaxDimensions(),
        " dimensions, TensorFlow's limit: ids may have rank at most ",
        TensorShape::MaxDimensions() - 1));
  }
  *shape = ids.shape();
  absl::Status status = shape->AddDimWithStatus(l.out_width);
  if (!status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the output shape ids.shape + [", l.out_width, "] for ids of shape ",
        ids.shape().DebugString(), " is not a valid tensor shape: ",
        status.message()));
  }
  return absl::OkStatus();
}

absl::Status MultiHashKernelBase::OutOfRangeError(const tfmh::Layout& layout,
                                                  int64_t position,
                                                  int64_t id) const {
  return absl::InvalidArgumentError(absl::StrCat(
      "ids[", position, "] = ", id, " is out of range: ids must be in [0, ",
      layout.capacity, "), the capacity of tables with [",
      absl::StrJoin(table_rows_, ", "), "] rows",
      strategy_ == tfmh::Strategy::kDeepRecQR
          ? " under DeepRec's mapping (rows_Q * rows_Q)"
          : "",
      "; out_of_range=\"wrap\" folds larger ids into that range"));
}

}  // namespace multihash
}  // namespace tensorflow
