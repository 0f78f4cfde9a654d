// CPU kernels of MultiHashLookup and MultiHashLookupGrad. The kernels
// validate and allocate; the functions in the anonymous namespace compute,
// using the arithmetic of multihash_mapping.h only.
#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include "cc/kernels/multihash_kernel_base.h"
#include "cc/kernels/multihash_mapping.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/util/work_sharder.h"

// The build passes the version of the TensorFlow it compiles against (the
// wheel's headers do not define it).
#ifndef TFMH_TF_VERSION
#define TFMH_TF_VERSION "unknown"
#endif

// Read by the Python loader (and found in the file's bytes when loading
// fails) to tell which TensorFlow this library was built against, and
// whether it has the GPU kernels.
extern "C" const char* TfmhBuildInfo() {
#if GOOGLE_CUDA
  return "TFMH_BUILD_INFO tf=" TFMH_TF_VERSION " cuda=1";
#else
  return "TFMH_BUILD_INFO tf=" TFMH_TF_VERSION " cuda=0";
#endif
}

namespace tensorflow {
namespace multihash {
namespace {

// Half types accumulate in float; float and double in themselves.
template <typename T>
struct Accumulator {
  using type = float;
};
template <>
struct Accumulator<double> {
  using type = double;
};

// Address of an in-range id's row of table j.
template <typename T>
inline const T* RowOf(const tfmh::Layout& l, const T* const* shards, int j,
                      int64_t id) {
  const tfmh::RowRef ref = tfmh::Locate(l, j, id);
  return shards[ref.shard] + ref.local_row * l.width[j];
}

// Columns are combined in chunks through a small accumulator buffer, so the
// inner loops are plain element-wise loops the compiler can vectorise.
constexpr int kChunk = 256;

template <typename T>
void ComposeRow(const tfmh::Layout& l, const T* const* rows, T* out) {
  using Acc = typename Accumulator<T>::type;
  if (l.combine == tfmh::Combine::kConcat) {
    for (int j = 0; j < l.num_tables; ++j) {
      std::copy(rows[j], rows[j] + l.width[j], out + l.col_offset[j]);
    }
    return;
  }
  Acc acc[kChunk];
  for (int c0 = 0; c0 < l.out_width; c0 += kChunk) {
    const int len = std::min(kChunk, l.out_width - c0);
    for (int c = 0; c < len; ++c) acc[c] = static_cast<Acc>(rows[0][c0 + c]);
    for (int j = 1; j < l.num_tables; ++j) {
      const T* row = rows[j] + c0;
      if (l.combine == tfmh::Combine::kMul) {
        for (int c = 0; c < len; ++c) {
          acc[c] = tfmh::CombineStep(tfmh::Combine::kMul, acc[c],
                                     static_cast<Acc>(row[c]));
        }
      } else {
        for (int c = 0; c < len; ++c) {
          acc[c] = tfmh::CombineStep(tfmh::Combine::kAdd, acc[c],
                                     static_cast<Acc>(row[c]));
        }
      }
    }
    for (int c = 0; c < len; ++c) out[c0 + c] = static_cast<T>(acc[c]);
  }
}

template <typename T, typename Index>
void LookupCpu(OpKernelContext* ctx, const tfmh::Layout& l,
               const T* const* shards, const Index* ids, int64_t n, T* out) {
  auto work = [&](int64_t begin, int64_t end) {
    const T* rows[tfmh::kMaxTables];
    for (int64_t i = begin; i < end; ++i) {
      for (int j = 0; j < l.num_tables; ++j) {
        rows[j] = RowOf(l, shards, j, static_cast<int64_t>(ids[i]));
      }
      ComposeRow(l, rows, out + i * l.out_width);
    }
  };
  const auto& workers = *ctx->device()->tensorflow_cpu_worker_threads();
  Shard(workers.num_threads, workers.workers, n,
        /*cost_per_unit=*/4 * l.out_width * (l.num_tables + 1), work);
}

// The distinct rows of one table that the ids touch, ascending, with the
// positions of the ids that touch each one: positions[seg[u]..seg[u+1]) for
// unique row u, in increasing position order (so sums are deterministic).
struct RowGroups {
  std::vector<int64_t> unique_rows;
  std::vector<int64_t> seg;
  std::vector<int64_t> positions;
};

template <typename Index>
void GroupRows(const tfmh::Layout& l, int j, const Index* ids, int64_t n,
               RowGroups* g) {
  std::vector<int64_t> row(n);
  for (int64_t i = 0; i < n; ++i) {
    row[i] = tfmh::TableRow(l, j, static_cast<int64_t>(ids[i]));
  }
  g->positions.resize(n);
  g->unique_rows.clear();
  g->seg.assign(1, 0);
  if (l.rows[j] <= 4 * n + 4096) {
    // Counting sort over the table's rows: linear, and small tables are the
    // common case.
    std::vector<int64_t> count(l.rows[j] + 1, 0);
    for (int64_t i = 0; i < n; ++i) ++count[row[i] + 1];
    for (int64_t r = 0; r < l.rows[j]; ++r) {
      if (count[r + 1] > 0) {
        g->unique_rows.push_back(r);
        g->seg.push_back(g->seg.back() + count[r + 1]);
      }
      count[r + 1] += count[r];
    }
    for (int64_t i = 0; i < n; ++i) g->positions[count[row[i]]++] = i;
  } else {
    std::iota(g->positions.begin(), g->positions.end(), 0);
    std::stable_sort(g->positions.begin(), g->positions.end(),
                     [&row](int64_t a, int64_t b) { return row[a] < row[b]; });
    for (int64_t p = 0; p < n; ++p) {
      const int64_t r = row[g->positions[p]];
      if (g->unique_rows.empty() || g->unique_rows.back() != r) {
        if (!g->unique_rows.empty()) g->seg.push_back(p);
        g->unique_rows.push_back(r);
      }
    }
    if (n > 0) g->seg.push_back(n);
  }
}

// Sums the gradient of every unique row of table j into values (one row of
// width[j] per unique row in [u_begin, u_end)).
template <typename T, typename Index>
void SumRowGrads(OpKernelContext* ctx, const tfmh::Layout& l,
                 const T* const* shards, int j, const Index* ids,
                 const T* grad, const RowGroups& g, int64_t u_begin,
                 int64_t u_end, T* values) {
  using Acc = typename Accumulator<T>::type;
  const int width = l.width[j];
  auto work = [&](int64_t begin, int64_t end) {
    std::vector<Acc> acc(width);
    const T* rows[tfmh::kMaxTables];
    for (int64_t u = u_begin + begin; u < u_begin + end; ++u) {
      std::fill(acc.begin(), acc.end(), Acc(0));
      for (int64_t p = g.seg[u]; p < g.seg[u + 1]; ++p) {
        const int64_t i = g.positions[p];
        const T* g_row = grad + i * l.out_width + l.col_offset[j];
        if (l.combine == tfmh::Combine::kMul) {
          for (int t = 0; t < l.num_tables; ++t) {
            rows[t] = RowOf(l, shards, t, static_cast<int64_t>(ids[i]));
          }
          for (int c = 0; c < width; ++c) {
            const Acc partial = tfmh::CombinePartial<Acc>(
                l.combine, l.num_tables, j,
                [&](int t) { return static_cast<Acc>(rows[t][c]); });
            acc[c] += static_cast<Acc>(g_row[c]) * partial;
          }
        } else {
          for (int c = 0; c < width; ++c) acc[c] += static_cast<Acc>(g_row[c]);
        }
      }
      T* out = values + (u - u_begin) * width;
      for (int c = 0; c < width; ++c) out[c] = static_cast<T>(acc[c]);
    }
  };
  const auto& workers = *ctx->device()->tensorflow_cpu_worker_threads();
  const int64_t per_row =
      (g.seg[u_end] - g.seg[u_begin]) / std::max<int64_t>(1, u_end - u_begin);
  Shard(workers.num_threads, workers.workers, u_end - u_begin,
        /*cost_per_unit=*/(per_row + 1) * width * (l.num_tables + 1), work);
}

}  // namespace

template <typename T, typename Index>
class MultiHashLookupCpuOp : public MultiHashKernelBase {
 public:
  using MultiHashKernelBase::MultiHashKernelBase;

  void Compute(OpKernelContext* ctx) override {
    ResolvedTables tables;
    OP_REQUIRES_OK(ctx, ResolveTables(ctx, &tables));
    const tfmh::Layout& layout = tables.layout();
    const Tensor& ids = ctx->input(ctx->num_inputs() - 1);
    OP_REQUIRES_OK(ctx, CheckIds<Index>(layout, ids));
    TensorShape out_shape = ids.shape();
    out_shape.AddDim(layout.out_width);
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &out));
    const std::vector<const T*> data = tables.Data<T>();
    LookupCpu<T, Index>(ctx, layout, data.data(), ids.flat<Index>().data(),
                        ids.NumElements(), out->flat<T>().data());
  }
};

template <typename T, typename Index>
class MultiHashLookupGradCpuOp : public MultiHashKernelBase {
 public:
  using MultiHashKernelBase::MultiHashKernelBase;

  void Compute(OpKernelContext* ctx) override {
    ResolvedTables tables;
    OP_REQUIRES_OK(ctx, ResolveTables(ctx, &tables));
    const tfmh::Layout& l = tables.layout();
    const Tensor& grad = ctx->input(0);
    const Tensor& ids = ctx->input(ctx->num_inputs() - 1);
    OP_REQUIRES_OK(ctx, CheckIds<Index>(l, ids));
    OP_REQUIRES_OK(ctx, CheckGradInputs(ctx, l, grad, ids));
    const int num_shards = l.shard_begin[l.num_tables];
    const std::vector<const T*> data = tables.Data<T>();
    const Index* id_data = ids.flat<Index>().data();
    const int64_t n = ids.NumElements();
    RowGroups groups;
    for (int j = 0; j < l.num_tables; ++j) {
      GroupRows(l, j, id_data, n, &groups);
      // Unique rows are ascending and shards are ascending row blocks, so
      // each shard's rows form one run of the unique rows.
      int64_t u_begin = 0;
      for (int s = l.shard_begin[j]; s < l.shard_begin[j + 1]; ++s) {
        const int64_t row_end = l.shard_row[s] + tfmh::ShardRows(l, j, s);
        const int64_t u_end =
            std::lower_bound(groups.unique_rows.begin(),
                             groups.unique_rows.end(), row_end) -
            groups.unique_rows.begin();
        const int64_t count = u_end - u_begin;
        Tensor* indices = nullptr;
        Tensor* values = nullptr;
        OP_REQUIRES_OK(ctx,
                       ctx->allocate_output(s, TensorShape({count}), &indices));
        OP_REQUIRES_OK(
            ctx, ctx->allocate_output(num_shards + s,
                                      TensorShape({count, l.width[j]}),
                                      &values));
        auto idx = indices->flat<Index>();
        for (int64_t u = u_begin; u < u_end; ++u) {
          idx(u - u_begin) =
              static_cast<Index>(groups.unique_rows[u] - l.shard_row[s]);
        }
        if (count > 0) {
          SumRowGrads<T, Index>(ctx, l, data.data(), j, id_data,
                                grad.flat<T>().data(), groups, u_begin, u_end,
                                values->flat<T>().data());
        }
        u_begin = u_end;
      }
    }
  }
};

#define REGISTER_CPU(T, Index)                                            \
  REGISTER_KERNEL_BUILDER(Name("MultiHashLookup")                         \
                              .Device(DEVICE_CPU)                         \
                              .TypeConstraint<T>("T")                     \
                              .TypeConstraint<Index>("Tidx"),             \
                          MultiHashLookupCpuOp<T, Index>);                \
  REGISTER_KERNEL_BUILDER(Name("MultiHashLookupGrad")                     \
                              .Device(DEVICE_CPU)                         \
                              .TypeConstraint<T>("T")                     \
                              .TypeConstraint<Index>("Tidx"),             \
                          MultiHashLookupGradCpuOp<T, Index>);

#define REGISTER_CPU_ALL_INDEX(T) \
  REGISTER_CPU(T, int32);         \
  REGISTER_CPU(T, int64_t);

TF_CALL_float(REGISTER_CPU_ALL_INDEX);
TF_CALL_double(REGISTER_CPU_ALL_INDEX);
TF_CALL_half(REGISTER_CPU_ALL_INDEX);
TF_CALL_bfloat16(REGISTER_CPU_ALL_INDEX);

#undef REGISTER_CPU_ALL_INDEX
#undef REGISTER_CPU

}  // namespace multihash
}  // namespace tensorflow
