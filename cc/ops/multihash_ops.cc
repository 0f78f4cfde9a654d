// Op registrations of the multi-hash lookup and its gradient.
//
// Both ops are generic over the number of small tables (k >= 2) and over how
// each table is stored: every table is one or more row shards (contiguous row
// blocks, the layout TensorFlow's partitioners make), and every shard is
// either a tensor (a reference variable arrives as one, without a copy) or a
// resource handle that the kernel reads in place.
#include "absl/strings/str_cat.h"
#include "cc/kernels/multihash_mapping.h"
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor_shape.h"

namespace tensorflow {
namespace {

using shape_inference::DimensionHandle;
using shape_inference::InferenceContext;
using shape_inference::ShapeHandle;

// Attributes shared by both ops, read and checked once for shape inference
// by the same tfmh::CheckAttrs as the kernels (lengths, ranges, and every
// sum in int64 with explicit limits).
struct MultiHashAttrs {
  std::vector<int64_t> table_rows;
  std::vector<int64_t> table_widths;
  std::vector<int64_t> num_shards;
  std::vector<DataType> table_types;
  int64_t out_width = 0;
  int64_t total_shards = 0;
};

absl::Status ReadAttrs(InferenceContext* c, MultiHashAttrs* a) {
  std::string operation, strategy;
  TF_RETURN_IF_ERROR(c->GetAttr("operation", &operation));
  TF_RETURN_IF_ERROR(c->GetAttr("complementary_strategy", &strategy));
  TF_RETURN_IF_ERROR(c->GetAttr("table_rows", &a->table_rows));
  TF_RETURN_IF_ERROR(c->GetAttr("table_widths", &a->table_widths));
  TF_RETURN_IF_ERROR(c->GetAttr("num_shards", &a->num_shards));
  TF_RETURN_IF_ERROR(c->GetAttr("Ttables", &a->table_types));
  // The op's allowed values already restrict both strings; the kernel
  // checks them again.
  const tfmh::Combine combine =
      operation == "concat" ? tfmh::Combine::kConcat
      : operation == "mul"  ? tfmh::Combine::kMul
                            : tfmh::Combine::kAdd;
  const tfmh::Strategy st = strategy == "Q-R" ? tfmh::Strategy::kQR
                            : strategy == "CRT"
                                ? tfmh::Strategy::kCRT
                                : tfmh::Strategy::kGeneralizedQR;
  const std::string error = tfmh::CheckAttrs(
      st, combine, static_cast<int64_t>(a->table_rows.size()),
      a->table_rows.data(), static_cast<int64_t>(a->table_widths.size()),
      a->table_widths.data(), static_cast<int64_t>(a->num_shards.size()),
      a->num_shards.data(), static_cast<int64_t>(a->table_types.size()),
      &a->out_width, &a->total_shards);
  if (!error.empty()) return absl::InvalidArgumentError(error);
  return absl::OkStatus();
}

// ids.shape + [out_width], unless the output would have more dimensions
// than TensorFlow allows.
absl::Status OutputShape(InferenceContext* c, ShapeHandle ids,
                         int64_t out_width, ShapeHandle* out) {
  if (c->RankKnown(ids) &&
      c->Rank(ids) >= TensorShape::MaxDimensions()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ids have rank ", c->Rank(ids), ", but the output (ids.shape + [",
        out_width, "]) must have at most ", TensorShape::MaxDimensions(),
        " dimensions, TensorFlow's limit: ids may have rank at most ",
        TensorShape::MaxDimensions() - 1));
  }
  return c->Concatenate(ids, c->Vector(out_width), out);
}

// Each tensor shard must be a matrix of its table's width; resource shards
// are checked by the kernel, which sees the variable.
absl::Status CheckShardShapes(InferenceContext* c, const MultiHashAttrs& a,
                              int first_input) {
  int input = first_input;
  for (size_t j = 0; j < a.num_shards.size(); ++j) {
    for (int64_t s = 0; s < a.num_shards[j]; ++s, ++input) {
      if (a.table_types[input - first_input] == DT_RESOURCE) continue;
      ShapeHandle shard;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(input), 2, &shard));
      DimensionHandle width;
      TF_RETURN_IF_ERROR(
          c->WithValue(c->Dim(shard, 1), a.table_widths[j], &width));
    }
  }
  return absl::OkStatus();
}

constexpr char kCommonAttrs[] = R"doc(
tables: every row shard of every small table, table 0's shards first. A shard
  is a [rows, width] tensor or a resource handle of such a variable.
ids: ids in [0, prod(table_rows)), any shape.
operation: how the k rows of an id are combined: "add", "mul" or "concat".
complementary_strategy: how an id picks its rows. "Q-R" (k = 2): table 0 uses
  id // table_rows[1], table 1 uses id % table_rows[1]. "generalized-Q-R"
  (mixed radix, any k): table j uses (id // prod(table_rows[j+1:])) %
  table_rows[j]. "CRT" (pairwise coprime row counts): table j uses
  id % table_rows[j]. The capacity is prod(table_rows) for all three.
deeprec_mapping: with "Q-R" only: DeepRec's mapping, table 0 uses
  id // table_rows[0] and table 1 uses id % table_rows[1], for ids in
  [0, table_rows[0]**2). Two ids share both rows when the row counts differ.
table_rows: logical rows of each table (the sum of its shards' rows).
table_widths: columns of each table.
num_shards: how many consecutive entries of `tables` belong to each table.
)doc";

}  // namespace

REGISTER_OP("MultiHashLookup")
    .Input("tables: Ttables")
    .Input("ids: Tidx")
    .Output("output: T")
    .Attr("Ttables: list(type) >= 2")
    .Attr("T: {float, double, half, bfloat16}")
    .Attr("Tidx: {int32, int64}")
    .Attr("operation: {'add', 'mul', 'concat'}")
    .Attr("complementary_strategy: {'Q-R', 'generalized-Q-R', 'CRT'} = 'Q-R'")
    .Attr("table_rows: list(int) >= 2")
    .Attr("table_widths: list(int) >= 2")
    .Attr("num_shards: list(int) >= 2")
    .Attr("deeprec_mapping: bool = false")
    .SetShapeFn([](InferenceContext* c) {
      MultiHashAttrs a;
      TF_RETURN_IF_ERROR(ReadAttrs(c, &a));
      TF_RETURN_IF_ERROR(CheckShardShapes(c, a, 0));
      ShapeHandle out;
      TF_RETURN_IF_ERROR(OutputShape(c, c->input(c->num_inputs() - 1),
                                     a.out_width, &out));
      c->set_output(0, out);
      return absl::OkStatus();
    })
    .Doc(absl::StrCat(R"doc(
Looks up ids in a multi-hash embedding table: output[..., :] is the
combination of one row of each small table, chosen by the complementary
strategy. An id outside [0, capacity) is an InvalidArgumentError.

output: ids.shape + [width] (width of one table for add and mul, the sum of
  the widths for concat).
)doc",
                      kCommonAttrs));

REGISTER_OP("MultiHashLookupGrad")
    .Input("grad: T")
    .Input("tables: Ttables")
    .Input("ids: Tidx")
    .Output("indices: N * Tidx")
    .Output("values: N * T")
    .Attr("N: int >= 2")
    .Attr("Ttables: list(type) >= 2")
    .Attr("T: {float, double, half, bfloat16}")
    .Attr("Tidx: {int32, int64}")
    .Attr("operation: {'add', 'mul', 'concat'}")
    .Attr("complementary_strategy: {'Q-R', 'generalized-Q-R', 'CRT'} = 'Q-R'")
    .Attr("table_rows: list(int) >= 2")
    .Attr("table_widths: list(int) >= 2")
    .Attr("num_shards: list(int) >= 2")
    .Attr("deeprec_mapping: bool = false")
    .SetShapeFn([](InferenceContext* c) {
      MultiHashAttrs a;
      TF_RETURN_IF_ERROR(ReadAttrs(c, &a));
      TF_RETURN_IF_ERROR(CheckShardShapes(c, a, 1));
      // One (indices, values) pair per shard: set_output past the op's
      // outputs would throw, so N is checked first.
      if (c->num_outputs() != 2 * a.total_shards) {
        return absl::InvalidArgumentError(absl::StrCat(
            "N must equal the number of shards, ", a.total_shards,
            " (the sum of num_shards), got ", c->num_outputs() / 2));
      }
      ShapeHandle grad;
      TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(0), 1, &grad));
      ShapeHandle ids = c->input(c->num_inputs() - 1);
      ShapeHandle expected;  // only for the rank check
      TF_RETURN_IF_ERROR(OutputShape(c, ids, a.out_width, &expected));
      DimensionHandle width;
      TF_RETURN_IF_ERROR(
          c->WithValue(c->Dim(grad, -1), a.out_width, &width));
      int out = 0;
      for (size_t j = 0; j < a.num_shards.size(); ++j) {
        for (int64_t s = 0; s < a.num_shards[j]; ++s, ++out) {
          c->set_output(out, c->Vector(InferenceContext::kUnknownDim));
          c->set_output(static_cast<int>(a.total_shards) + out,
                        c->Matrix(InferenceContext::kUnknownDim,
                                  a.table_widths[j]));
        }
      }
      return absl::OkStatus();
    })
    .Doc(absl::StrCat(R"doc(
Gradient of MultiHashLookup with respect to every shard, as sparse rows: for
shard s, indices[s] are the distinct shard-local rows that the ids touch, in
ascending order, and values[s] the summed gradient of each of those rows.

grad: the gradient of MultiHashLookup's output.
N: the number of shards (the length of `tables`).
)doc",
                      kCommonAttrs));

}  // namespace tensorflow
