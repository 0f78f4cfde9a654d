// CPU kernels of MultiHashLookup and MultiHashLookupGrad. The kernels
// validate and allocate; the functions in the anonymous namespace compute,
// using the arithmetic of multihash_mapping.h only.
#include <algorithm>
#include <cstring>
#include <numeric>
#include <type_traits>

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


// Element-wise row loops. The build's -O2 does not vectorise loops of
// unknown trip count, so float gets explicit 4-wide vectors (GCC/Clang
// vector extensions, SSE2 on x86-64): per-lane IEEE mul/add, the same
// operations in the same order as the scalar loops, so the same bits.
typedef float V4f __attribute__((vector_size(16)));
inline V4f LoadV4(const float* p) {
  V4f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void StoreV4(float* p, V4f v) { std::memcpy(p, &v, sizeof(v)); }

// out[c] = a[c] * b[c] (kMul) or a[c] + b[c] (kAdd), in Acc.
template <typename T, bool kMulOp>
inline void CombineRows(const T* __restrict a, const T* __restrict b, int w,
                        T* __restrict out) {
  using Acc = typename Accumulator<T>::type;
  for (int c = 0; c < w; ++c) {
    const Acc x = static_cast<Acc>(a[c]), y = static_cast<Acc>(b[c]);
    out[c] = static_cast<T>(kMulOp ? x * y : x + y);
  }
}
template <>
inline void CombineRows<float, true>(const float* __restrict a,
                                     const float* __restrict b, int w,
                                     float* __restrict out) {
  int c = 0;
  for (; c + 8 <= w; c += 8) {
    StoreV4(out + c, LoadV4(a + c) * LoadV4(b + c));
    StoreV4(out + c + 4, LoadV4(a + c + 4) * LoadV4(b + c + 4));
  }
  for (; c < w; ++c) out[c] = a[c] * b[c];
}
template <>
inline void CombineRows<float, false>(const float* __restrict a,
                                      const float* __restrict b, int w,
                                      float* __restrict out) {
  int c = 0;
  for (; c + 8 <= w; c += 8) {
    StoreV4(out + c, LoadV4(a + c) + LoadV4(b + c));
    StoreV4(out + c + 4, LoadV4(a + c + 4) + LoadV4(b + c + 4));
  }
  for (; c < w; ++c) out[c] = a[c] + b[c];
}

// acc[c] += g[c] (o == nullptr) or acc[c] += g[c] * o[c], in Acc.
template <typename T, typename Acc>
inline void AccumulateRow(Acc* __restrict acc, const T* __restrict g,
                          const T* __restrict o, int w) {
  if (o == nullptr) {
    for (int c = 0; c < w; ++c) acc[c] += static_cast<Acc>(g[c]);
  } else {
    for (int c = 0; c < w; ++c) {
      acc[c] += static_cast<Acc>(g[c]) * static_cast<Acc>(o[c]);
    }
  }
}
template <>
inline void AccumulateRow<float, float>(float* __restrict acc,
                                        const float* __restrict g,
                                        const float* __restrict o, int w) {
  int c = 0;
  if (o == nullptr) {
    for (; c + 8 <= w; c += 8) {
      StoreV4(acc + c, LoadV4(acc + c) + LoadV4(g + c));
      StoreV4(acc + c + 4, LoadV4(acc + c + 4) + LoadV4(g + c + 4));
    }
    for (; c < w; ++c) acc[c] += g[c];
  } else {
    for (; c + 8 <= w; c += 8) {
      StoreV4(acc + c, LoadV4(acc + c) + LoadV4(g + c) * LoadV4(o + c));
      StoreV4(acc + c + 4,
              LoadV4(acc + c + 4) + LoadV4(g + c + 4) * LoadV4(o + c + 4));
    }
    for (; c < w; ++c) acc[c] += g[c] * o[c];
  }
}

// Address of logical row `row` of table j.
template <typename T>
inline const T* TableRowPtr(const tfmh::Layout& l, const T* const* shards,
                            int j, int64_t row) {
  const tfmh::RowRef ref = tfmh::LocateRow(l, j, row);
  return shards[ref.shard] + ref.local_row * l.width[j];
}

// Address of an in-range id's row of table j.
template <typename T>
inline const T* RowOf(const tfmh::Layout& l, const T* const* shards, int j,
                      int64_t id) {
  return TableRowPtr(l, shards, j, tfmh::TableRow(l, j, id));
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


inline bool SingleShardTables(const tfmh::Layout& l) {
  for (int j = 0; j < l.num_tables; ++j) {
    if (l.shard_begin[j + 1] - l.shard_begin[j] != 1) return false;
  }
  return true;
}

// One output row of a k = 2 lookup. Plain element-wise loops over restrict
// pointers, so they vectorise; float and double combine in themselves and
// half types in float, as ComposeRow does (same operations, same order:
// bit-identical).
template <typename T, tfmh::Combine kOp>
inline void ComposeRow2(const T* __restrict a, const T* __restrict b, int wa,
                        int wb, T* __restrict out) {
  if (kOp == tfmh::Combine::kConcat) {
    std::memcpy(out, a, wa * sizeof(T));
    std::memcpy(out + wa, b, wb * sizeof(T));
  } else {
    CombineRows<T, kOp == tfmh::Combine::kMul>(a, b, wa, out);
  }
}

// The k = 2, one-shard-per-table Q-R forward: ids are split a block at a
// time, the rows of the ids a few positions ahead are prefetched, and every
// output row is written once.
template <typename T, typename Index, tfmh::Combine kOp>
void Lookup2Cpu(const tfmh::Layout& l, const tfmh::QRSplit& qr, const T* tq,
                const T* tr, const Index* ids, int64_t begin, int64_t end,
                T* out) {
  constexpr int kBlock = 64;
  constexpr int kAhead = 4;
  const int wa = l.width[0], wb = l.width[1], wo = l.out_width;
  int64_t q[kBlock], r[kBlock];
  for (int64_t b0 = begin; b0 < end; b0 += kBlock) {
    const int len = static_cast<int>(std::min<int64_t>(kBlock, end - b0));
    for (int k = 0; k < len; ++k) {
      qr.Split(static_cast<int64_t>(ids[b0 + k]), &q[k], &r[k]);
    }
    for (int k = 0; k < len; ++k) {
      if (k + kAhead < len) {
        __builtin_prefetch(tq + q[k + kAhead] * wa);
        __builtin_prefetch(tr + r[k + kAhead] * wb);
      }
      ComposeRow2<T, kOp>(tq + q[k] * wa, tr + r[k] * wb, wa, wb,
                          out + (b0 + k) * wo);
    }
  }
}

template <typename T, typename Index>
void LookupCpu(OpKernelContext* ctx, const tfmh::Layout& l,
               const T* const* shards, const Index* ids, int64_t n, T* out) {
  const auto& workers = *ctx->device()->tensorflow_cpu_worker_threads();
  const tfmh::QRSplit qr(l);
  if (qr.ok && SingleShardTables(l)) {
    auto work2 = [&](int64_t begin, int64_t end) {
      switch (l.combine) {
        case tfmh::Combine::kMul:
          Lookup2Cpu<T, Index, tfmh::Combine::kMul>(l, qr, shards[0],
                                                    shards[1], ids, begin,
                                                    end, out);
          break;
        case tfmh::Combine::kAdd:
          Lookup2Cpu<T, Index, tfmh::Combine::kAdd>(l, qr, shards[0],
                                                    shards[1], ids, begin,
                                                    end, out);
          break;
        default:
          Lookup2Cpu<T, Index, tfmh::Combine::kConcat>(l, qr, shards[0],
                                                       shards[1], ids, begin,
                                                       end, out);
      }
    };
    Shard(workers.num_threads, workers.workers, n,
          /*cost_per_unit=*/2 * l.out_width * sizeof(T) + 20, work2);
    return;
  }
  auto work = [&](int64_t begin, int64_t end) {
    const T* rows[tfmh::kMaxTables];
    for (int64_t i = begin; i < end; ++i) {
      for (int j = 0; j < l.num_tables; ++j) {
        rows[j] = RowOf(l, shards, j, static_cast<int64_t>(ids[i]));
      }
      ComposeRow(l, rows, out + i * l.out_width);
    }
  };
  Shard(workers.num_threads, workers.workers, n,
        /*cost_per_unit=*/4 * l.out_width * (l.num_tables + 1), work);
}

// Temporaries come from the op's allocator (ctx->allocate_temp), as in
// TensorFlow's own kernels: out of memory is a ResourceExhausted status,
// never a C++ exception thrown through TensorFlow. Nothing below allocates
// on the heap inside a worker thread.
template <typename E>
absl::Status AllocateTemp(OpKernelContext* ctx, int64_t n, Tensor* t,
                          E** data) {
  TF_RETURN_IF_ERROR(
      ctx->allocate_temp(DataTypeToEnum<E>::value, TensorShape({n}), t));
  *data = t->flat<E>().data();
  return absl::OkStatus();
}

// The distinct rows of one table that the ids touch, ascending, with the
// positions of the ids that touch each one: positions[seg[u]..seg[u+1]) for
// unique row u, in increasing position order (so sums are deterministic).
struct RowGroups {
  Tensor unique_t, seg_t, positions_t;
  int64_t* unique_rows = nullptr;
  int64_t* seg = nullptr;
  int64_t* positions = nullptr;
  int64_t num_unique = 0;
};

// Groups the ids by their row of table j (rj[i], from ComputeRows) by a
// stable sort of the positions; for tables with many rows relative to the
// number of ids (the others take the dense slots of DenseTableGrad).
// std::stable_sort takes its buffer with a non-throwing new and sorts in
// place without one.
absl::Status GroupRows(OpKernelContext* ctx, const int64_t* rj, int64_t n,
                       RowGroups* g) {
  TF_RETURN_IF_ERROR(AllocateTemp(ctx, n, &g->positions_t, &g->positions));
  std::iota(g->positions, g->positions + n, int64_t{0});
  std::stable_sort(g->positions, g->positions + n,
                   [rj](int64_t a, int64_t b) { return rj[a] < rj[b]; });
  int64_t num_unique = 0;
  for (int64_t p = 0; p < n; ++p) {
    if (p == 0 || rj[g->positions[p]] != rj[g->positions[p - 1]]) {
      ++num_unique;
    }
  }
  g->num_unique = num_unique;
  TF_RETURN_IF_ERROR(
      AllocateTemp(ctx, num_unique, &g->unique_t, &g->unique_rows));
  TF_RETURN_IF_ERROR(AllocateTemp(ctx, num_unique + 1, &g->seg_t, &g->seg));
  int64_t u = 0;
  for (int64_t p = 0; p < n; ++p) {
    const int64_t r = rj[g->positions[p]];
    if (p == 0 || r != rj[g->positions[p - 1]]) {
      g->unique_rows[u] = r;
      g->seg[u] = p;
      ++u;
    }
  }
  g->seg[num_unique] = n;
  return absl::OkStatus();
}

// Sums the gradient of every unique row of table j into values (one row of
// width[j] per unique row in [u_begin, u_end)). Columns go through a small
// stack accumulator kChunk at a time; every column's sum runs over the same
// positions in the same order whatever the chunking, so the bits do not
// depend on it.
template <typename T, typename Index>
void SumRowGrads(OpKernelContext* ctx, const tfmh::Layout& l,
                 const T* const* shards, int j, const Index* ids,
                 const T* grad, const RowGroups& g, int64_t u_begin,
                 int64_t u_end, T* values) {
  using Acc = typename Accumulator<T>::type;
  const int width = l.width[j];
  auto work = [&](int64_t begin, int64_t end) {
    Acc acc[kChunk];
    const T* rows[tfmh::kMaxTables];
    for (int64_t u = u_begin + begin; u < u_begin + end; ++u) {
      T* out = values + (u - u_begin) * width;
      for (int c0 = 0; c0 < width; c0 += kChunk) {
        const int len = std::min(kChunk, width - c0);
        std::fill(acc, acc + len, Acc(0));
        for (int64_t p = g.seg[u]; p < g.seg[u + 1]; ++p) {
          const int64_t i = g.positions[p];
          const T* g_row = grad + i * l.out_width + l.col_offset[j] + c0;
          if (l.combine == tfmh::Combine::kMul) {
            for (int t = 0; t < l.num_tables; ++t) {
              rows[t] = RowOf(l, shards, t, static_cast<int64_t>(ids[i])) + c0;
            }
            for (int c = 0; c < len; ++c) {
              const Acc partial = tfmh::CombinePartial<Acc>(
                  l.combine, l.num_tables, j,
                  [&](int t) { return static_cast<Acc>(rows[t][c]); });
              acc[c] += static_cast<Acc>(g_row[c]) * partial;
            }
          } else {
            for (int c = 0; c < len; ++c) acc[c] += static_cast<Acc>(g_row[c]);
          }
        }
        for (int c = 0; c < len; ++c) out[c0 + c] = static_cast<T>(acc[c]);
      }
    }
  };
  const auto& workers = *ctx->device()->tensorflow_cpu_worker_threads();
  const int64_t per_row =
      (g.seg[u_end] - g.seg[u_begin]) / std::max<int64_t>(1, u_end - u_begin);
  Shard(workers.num_threads, workers.workers, u_end - u_begin,
        /*cost_per_unit=*/(per_row + 1) * width * (l.num_tables + 1), work);
}


// Row of every id in every table: rows[j * n + i] == tfmh::TableRow(l, j,
// ids[i]), computed once, in parallel.
template <typename Index>
void ComputeRows(OpKernelContext* ctx, const tfmh::Layout& l, const Index* ids,
                 int64_t n, int64_t* rows) {
  const tfmh::QRSplit qr(l);
  auto work = [&](int64_t begin, int64_t end) {
    if (qr.ok) {
      for (int64_t i = begin; i < end; ++i) {
        qr.Split(static_cast<int64_t>(ids[i]), &rows[i], &rows[n + i]);
      }
      return;
    }
    for (int j = 0; j < l.num_tables; ++j) {
      for (int64_t i = begin; i < end; ++i) {
        rows[j * n + i] = tfmh::TableRow(l, j, static_cast<int64_t>(ids[i]));
      }
    }
  };
  const auto& workers = *ctx->device()->tensorflow_cpu_worker_threads();
  Shard(workers.num_threads, workers.workers, n,
        /*cost_per_unit=*/10 * l.num_tables, work);
}

// Dense-slot gradient of table j, for tables with few rows relative to the
// number of ids. slot[row] numbers the touched rows in ascending row order;
// acc ([num_unique, width], zeroed) receives, for every unique row, the sum
// over the ids that touch it, in increasing id position, of grad_i (times
// the product of the other tables' rows for mul): the same operations in the
// same order as SumRowGrads, so the same bits. The slots are split into
// blocks of about equal id counts, one per thread; each block scans the ids
// in order and reads only its own ids' gradient rows, so no grad row is read
// twice for a table and nothing is serial but the O(n + rows) numbering.
template <typename T>
absl::Status SumRowGradsDense(OpKernelContext* ctx, const tfmh::Layout& l,
                      const T* const* shards, int j, const int64_t* rows,
                      int64_t n, const int64_t* slot, const int64_t* counts,
                      int64_t num_unique, const T* grad,
                      typename Accumulator<T>::type* acc) {
  using Acc = typename Accumulator<T>::type;
  const int width = l.width[j];
  const int64_t* rj = rows + j * n;
  const auto& workers = *ctx->device()->tensorflow_cpu_worker_threads();
  const int num_blocks = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(num_unique,
                           n * width < 32768 ? 1 : 2 * workers.num_threads)));
  // Block b holds slots [bound[b], bound[b + 1]).
  Tensor bound_t;
  int64_t* bound = nullptr;
  TF_RETURN_IF_ERROR(AllocateTemp(ctx, num_blocks + 1, &bound_t, &bound));
  std::fill(bound, bound + num_blocks + 1, num_unique);
  bound[0] = 0;
  {
    int b = 1;
    int64_t seen = 0;
    for (int64_t u = 0; u < num_unique && b < num_blocks; ++u) {
      seen += counts[u];
      if (seen * num_blocks >= n * b) bound[b++] = u + 1;
    }
  }
  const bool mul = l.combine == tfmh::Combine::kMul;
  const int col = l.col_offset[j];
  auto work = [&](int64_t b_begin, int64_t b_end) {
    const int64_t s0 = bound[b_begin], s1 = bound[b_end];
    if (s0 >= s1) return;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t u = slot[rj[i]];
      if (u < s0 || u >= s1) continue;
      Acc* a = acc + u * width;
      const T* g = grad + i * l.out_width + col;
      if (!mul) {
        AccumulateRow<T, Acc>(a, g, nullptr, width);
      } else if (l.num_tables == 2) {
        AccumulateRow<T, Acc>(
            a, g, TableRowPtr(l, shards, 1 - j, rows[(1 - j) * n + i]),
            width);
      } else {
        const T* others[tfmh::kMaxTables];
        for (int t = 0; t < l.num_tables; ++t) {
          others[t] = TableRowPtr(l, shards, t, rows[t * n + i]);
        }
        for (int c = 0; c < width; ++c) {
          const Acc partial = tfmh::CombinePartial<Acc>(
              l.combine, l.num_tables, j,
              [&](int t) { return static_cast<Acc>(others[t][c]); });
          a[c] += static_cast<Acc>(g[c]) * partial;
        }
      }
    }
  };
  Shard(workers.num_threads, workers.workers, num_blocks,
        /*cost_per_unit=*/1 << 20, work);
  return absl::OkStatus();
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
    TensorShape out_shape;
    OP_REQUIRES_OK(ctx, OutputShape(ids, layout, &out_shape));
    OP_REQUIRES_OK(ctx, CheckIds<Index>(layout, ids));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &out));
    const auto data = tables.Data<T>();
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
    const auto data = tables.Data<T>();
    const Index* id_data = ids.flat<Index>().data();
    const int64_t n = ids.NumElements();
    Tensor rows_t;
    int64_t* rows = nullptr;
    OP_REQUIRES_OK(ctx, AllocateTemp(ctx, l.num_tables * n, &rows_t, &rows));
    ComputeRows(ctx, l, id_data, n, rows);
    const T* grad_data = grad.flat<T>().data();
    for (int j = 0; j < l.num_tables; ++j) {
      if (l.rows[j] <= 4 * n + 4096) {
        OP_REQUIRES_OK(ctx, DenseTableGrad(ctx, l, data.data(), j, rows, n,
                                           grad_data));
        continue;
      }
      RowGroups groups;
      OP_REQUIRES_OK(ctx, GroupRows(ctx, rows + j * n, n, &groups));
      const int64_t* unique_begin = groups.unique_rows;
      const int64_t* unique_end = unique_begin + groups.num_unique;
      // Unique rows are ascending and shards are ascending row blocks, so
      // each shard's rows form one run of the unique rows.
      int64_t u_begin = 0;
      for (int s = l.shard_begin[j]; s < l.shard_begin[j + 1]; ++s) {
        const int64_t row_end = l.shard_row[s] + tfmh::ShardRows(l, j, s);
        const int64_t u_end =
            std::lower_bound(unique_begin, unique_end, row_end) -
            unique_begin;
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
          SumRowGrads<T, Index>(ctx, l, data.data(), j, id_data, grad_data,
                                groups, u_begin, u_end,
                                values->flat<T>().data());
        }
        u_begin = u_end;
      }
    }
  }

 private:
  // Table j's outputs by dense slots (see SumRowGradsDense).
  absl::Status DenseTableGrad(OpKernelContext* ctx, const tfmh::Layout& l,
                              const T* const* shards, int j,
                              const int64_t* rows, int64_t n,
                              const T* grad) {
    using Acc = typename Accumulator<T>::type;
    const int num_shards = l.shard_begin[l.num_tables];
    const int width = l.width[j];
    const int64_t* rj = rows + j * n;
    Tensor slot_t;
    int64_t* slot = nullptr;
    TF_RETURN_IF_ERROR(AllocateTemp(ctx, l.rows[j], &slot_t, &slot));
    std::fill(slot, slot + l.rows[j], int64_t{0});
    for (int64_t i = 0; i < n; ++i) ++slot[rj[i]];
    int64_t num_unique = 0;
    for (int64_t r = 0; r < l.rows[j]; ++r) num_unique += slot[r] > 0;
    Tensor unique_t, counts_t;
    int64_t* unique_rows = nullptr;
    int64_t* counts = nullptr;
    TF_RETURN_IF_ERROR(AllocateTemp(ctx, num_unique, &unique_t, &unique_rows));
    TF_RETURN_IF_ERROR(AllocateTemp(ctx, num_unique, &counts_t, &counts));
    {
      int64_t u = 0;
      for (int64_t r = 0; r < l.rows[j]; ++r) {
        if (slot[r] > 0) {
          counts[u] = slot[r];
          unique_rows[u] = r;
          slot[r] = u++;
        }
      }
    }
    const bool single = l.shard_begin[j + 1] - l.shard_begin[j] == 1;
    const bool direct = single && std::is_same<Acc, T>::value;
    Tensor buffer;
    Acc* acc = nullptr;
    Tensor* direct_values = nullptr;
    if (direct) {
      const int s = l.shard_begin[j];
      Tensor* indices = nullptr;
      TF_RETURN_IF_ERROR(
          ctx->allocate_output(s, TensorShape({num_unique}), &indices));
      TF_RETURN_IF_ERROR(ctx->allocate_output(
          num_shards + s, TensorShape({num_unique, width}), &direct_values));
      auto idx = indices->flat<Index>();
      for (int64_t u = 0; u < num_unique; ++u) {
        idx(u) = static_cast<Index>(unique_rows[u]);
      }
      acc = reinterpret_cast<Acc*>(direct_values->flat<T>().data());
    } else {
      TF_RETURN_IF_ERROR(AllocateTemp(ctx, num_unique * width, &buffer, &acc));
    }
    std::fill(acc, acc + num_unique * width, Acc(0));
    if (num_unique > 0) {
      TF_RETURN_IF_ERROR(SumRowGradsDense<T>(ctx, l, shards, j, rows, n, slot,
                                             counts, num_unique, grad, acc));
    }
    if (direct) return absl::OkStatus();
    int64_t u_begin = 0;
    for (int s = l.shard_begin[j]; s < l.shard_begin[j + 1]; ++s) {
      const int64_t row_end = l.shard_row[s] + tfmh::ShardRows(l, j, s);
      const int64_t u_end =
          std::lower_bound(unique_rows, unique_rows + num_unique, row_end) -
          unique_rows;
      const int64_t count = u_end - u_begin;
      Tensor* indices = nullptr;
      Tensor* values = nullptr;
      TF_RETURN_IF_ERROR(
          ctx->allocate_output(s, TensorShape({count}), &indices));
      TF_RETURN_IF_ERROR(ctx->allocate_output(
          num_shards + s, TensorShape({count, width}), &values));
      auto idx = indices->flat<Index>();
      T* out = values->flat<T>().data();
      for (int64_t u = u_begin; u < u_end; ++u) {
        idx(u - u_begin) = static_cast<Index>(unique_rows[u] - l.shard_row[s]);
      }
      for (int64_t e = 0; e < count * width; ++e) {
        out[e] = static_cast<T>(acc[u_begin * width + e]);
      }
      u_begin = u_end;
    }
    return absl::OkStatus();
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
