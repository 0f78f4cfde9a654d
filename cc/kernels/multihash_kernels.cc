// CPU kernels of MultiHashLookup and MultiHashLookupGrad. The kernels
// validate and allocate; the functions in the anonymous namespace compute,
// using the arithmetic of multihash_mapping.h only.
#include <algorithm>
#include <cstring>
#include <numeric>
#include <type_traits>

#include "cc/kernels/multihash_cpu_rows.h"
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

using cpu_rows::Accumulator;
using cpu_rows::AccumulateRow;
using cpu_rows::CombineRows;
using cpu_rows::PrefetchRange;

// Address of logical row `row` of table j.
template <typename T>
inline const T* TableRowPtr(const tfmh::Layout& layout, const T* const* shards,
                            int j, int64_t row) {
  const tfmh::RowRef ref = tfmh::LocateRow(layout, j, row);
  return shards[ref.shard] + ref.local_row * layout.width[j];
}

// Address of an in-range id's row of table j.
template <typename T>
inline const T* RowOf(const tfmh::Layout& layout, const T* const* shards, int j,
                      int64_t id) {
  return TableRowPtr(layout, shards, j, tfmh::TableRow(layout, j, id));
}

// Columns are combined in chunks through a small accumulator buffer, so the
// inner loops are plain element-wise loops the compiler can vectorise.
constexpr int kChunk = 256;

template <typename T>
void ComposeRow(const tfmh::Layout& layout, const T* const* rows, T* out) {
  using Acc = typename Accumulator<T>::type;
  if (layout.combine == tfmh::Combine::kConcat) {
    for (int j = 0; j < layout.num_tables; ++j) {
      std::copy(rows[j], rows[j] + layout.width[j], out + layout.col_offset[j]);
    }
    return;
  }
  Acc acc[kChunk];
  for (int c0 = 0; c0 < layout.out_width; c0 += kChunk) {
    const int len = std::min(kChunk, layout.out_width - c0);
    for (int c = 0; c < len; ++c) acc[c] = static_cast<Acc>(rows[0][c0 + c]);
    for (int j = 1; j < layout.num_tables; ++j) {
      const T* row = rows[j] + c0;
      if (layout.combine == tfmh::Combine::kMul) {
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


inline bool SingleShardTables(const tfmh::Layout& layout) {
  for (int j = 0; j < layout.num_tables; ++j) {
    if (layout.shard_begin[j + 1] - layout.shard_begin[j] != 1) return false;
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
void Lookup2Cpu(const tfmh::Layout& layout, const tfmh::QRSplit& qr,
                const T* tq, const T* tr, const Index* ids, int64_t begin,
                int64_t end, T* out) {
  constexpr int kBlock = 64;
  constexpr int kAhead = 4;
  const int wa = layout.width[0], wb = layout.width[1], wo = layout.out_width;
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
void LookupCpu(OpKernelContext* ctx, const tfmh::Layout& layout,
               const T* const* shards, const Index* ids, int64_t n, T* out) {
  const auto& workers = *ctx->device()->tensorflow_cpu_worker_threads();
  const tfmh::QRSplit qr(layout);
  if (qr.ok && SingleShardTables(layout)) {
    auto work2 = [&](int64_t begin, int64_t end) {
      switch (layout.combine) {
        case tfmh::Combine::kMul:
          Lookup2Cpu<T, Index, tfmh::Combine::kMul>(layout, qr, shards[0],
                                                    shards[1], ids, begin,
                                                    end, out);
          break;
        case tfmh::Combine::kAdd:
          Lookup2Cpu<T, Index, tfmh::Combine::kAdd>(layout, qr, shards[0],
                                                    shards[1], ids, begin,
                                                    end, out);
          break;
        default:
          Lookup2Cpu<T, Index, tfmh::Combine::kConcat>(layout, qr, shards[0],
                                                       shards[1], ids, begin,
                                                       end, out);
      }
    };
    Shard(workers.num_threads, workers.workers, n,
          /*cost_per_unit=*/2 * layout.out_width * sizeof(T) + 20, work2);
    return;
  }
  auto work = [&](int64_t begin, int64_t end) {
    const T* rows[tfmh::kMaxTables];
    for (int64_t i = begin; i < end; ++i) {
      for (int j = 0; j < layout.num_tables; ++j) {
        rows[j] = RowOf(layout, shards, j, static_cast<int64_t>(ids[i]));
      }
      ComposeRow(layout, rows, out + i * layout.out_width);
    }
  };
  Shard(workers.num_threads, workers.workers, n,
        /*cost_per_unit=*/4 * layout.out_width * (layout.num_tables + 1), work);
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
void SumRowGrads(OpKernelContext* ctx, const tfmh::Layout& layout,
                 const T* const* shards, int j, const Index* ids,
                 const T* grad, const RowGroups& g, int64_t u_begin,
                 int64_t u_end, T* values) {
  using Acc = typename Accumulator<T>::type;
  const int width = layout.width[j];
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
          const T* g_row =
              grad + i * layout.out_width + layout.col_offset[j] + c0;
          if (layout.combine == tfmh::Combine::kMul) {
            for (int t = 0; t < layout.num_tables; ++t) {
              rows[t] =
                  RowOf(layout, shards, t, static_cast<int64_t>(ids[i])) + c0;
            }
            for (int c = 0; c < len; ++c) {
              const Acc partial = tfmh::CombinePartial<Acc>(
                  layout.combine, layout.num_tables, j,
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
        /*cost_per_unit=*/(per_row + 1) * width * (layout.num_tables + 1),
        work);
}

// Row of every id in every table: rows[j * n + i] == tfmh::TableRow(layout, j,
// ids[i]), computed once, in parallel.
template <typename Index>
void ComputeRows(OpKernelContext* ctx, const tfmh::Layout& layout,
                 const Index* ids, int64_t n, int64_t* rows) {
  const tfmh::QRSplit qr(layout);
  auto work = [&](int64_t begin, int64_t end) {
    if (qr.ok) {
      for (int64_t i = begin; i < end; ++i) {
        qr.Split(static_cast<int64_t>(ids[i]), &rows[i], &rows[n + i]);
      }
      return;
    }
    for (int j = 0; j < layout.num_tables; ++j) {
      for (int64_t i = begin; i < end; ++i) {
        rows[j * n + i] =
            tfmh::TableRow(layout, j, static_cast<int64_t>(ids[i]));
      }
    }
  };
  const auto& workers = *ctx->device()->tensorflow_cpu_worker_threads();
  Shard(workers.num_threads, workers.workers, n,
        /*cost_per_unit=*/10 * layout.num_tables, work);
}

// Dense-slot gradients, for tables with few rows relative to the number of
// ids (the others are grouped by GroupRows). slot[row] numbers the rows a
// table's ids touch, in ascending row order; acc ([num_unique, width])
// receives, for every touched row, the sum over the ids that touch it, in
// increasing id position, of grad_i (times the product of the other tables'
// rows for mul): the same operations in the same order as SumRowGrads, so
// the same bits.
template <typename Acc>
struct DenseTable {
  bool used = false;
  bool direct = false;  // acc is the op's own values output
  Tensor slot_t, unique_t, counts_t, buffer_t, id_slot_t;
  int64_t* slot = nullptr;     // [table rows]: slot of a touched row
  int64_t* id_slot = nullptr;  // [n]: slot of id i's row
  int64_t* unique_rows = nullptr;
  int64_t* counts = nullptr;
  int64_t num_unique = 0;
  Acc* acc = nullptr;
};

// A table takes the dense slots when its slot array (8 bytes a row) costs
// no more than a few times the ids themselves; the numbering scans it once.
inline bool UseDenseSlots(int64_t table_rows, int64_t n) {
  return table_rows <= 16 * n + 65536;
}

// Split of one dense pass into tasks: `groups` ranges of output columns
// (multiples of kColumnAlign, so no two tasks write one cache line of an
// accumulator row) times `blocks` ranges of slots per table. Columns come
// first: a column split reads every gradient element exactly once; slot
// blocks, used only when the rows are too narrow to feed every thread, read
// a gradient row once per block that holds one of its rows.
struct DensePassPlan {
  static constexpr int kColumnAlign = 16;
  int groups = 1;
  int blocks = 1;
  int out_width = 0;
  int ColumnBegin(int g) const {
    const int units = (out_width + kColumnAlign - 1) / kColumnAlign;
    return std::min(out_width,
                    static_cast<int>(int64_t{g} * units / groups) *
                        kColumnAlign);
  }
};

inline DensePassPlan PlanDensePass(int out_width, int64_t n, int threads) {
  DensePassPlan plan;
  plan.out_width = out_width;
  // Below this many gradient elements a second thread costs more than it
  // saves.
  if (n * out_width < (int64_t{1} << 16) || threads <= 1) return plan;
  const int units = (out_width + DensePassPlan::kColumnAlign - 1) /
                    DensePassPlan::kColumnAlign;
  plan.groups = std::max(1, std::min(threads, units));
  plan.blocks = std::max(1, threads / plan.groups);
  return plan;
}

// Numbers the rows of table j that the ids touch (rows_j[i] is id i's row)
// and allocates the sums: the op's values output itself when the table has
// one shard and sums in T, else a buffer (see WriteDenseOutputs).
template <typename T, typename Index>
absl::Status PrepareDenseTable(OpKernelContext* ctx,
                               const tfmh::Layout& layout, int j,
                               const int64_t* rows_j, int64_t n,
                               DenseTable<typename Accumulator<T>::type>* d) {
  using Acc = typename Accumulator<T>::type;
  const int64_t table_rows = layout.rows[j];
  const int width = layout.width[j];
  TF_RETURN_IF_ERROR(AllocateTemp(ctx, table_rows, &d->slot_t, &d->slot));
  int64_t* slot = d->slot;
  std::fill(slot, slot + table_rows, int64_t{0});
  for (int64_t i = 0; i < n; ++i) ++slot[rows_j[i]];
  int64_t num_unique = 0;
  for (int64_t r = 0; r < table_rows; ++r) num_unique += slot[r] > 0;
  TF_RETURN_IF_ERROR(
      AllocateTemp(ctx, num_unique, &d->unique_t, &d->unique_rows));
  TF_RETURN_IF_ERROR(AllocateTemp(ctx, num_unique, &d->counts_t, &d->counts));
  {
    int64_t u = 0;
    for (int64_t r = 0; r < table_rows; ++r) {
      if (slot[r] > 0) {
        d->counts[u] = slot[r];
        d->unique_rows[u] = r;
        slot[r] = u++;
      }
    }
  }
  TF_RETURN_IF_ERROR(AllocateTemp(ctx, n, &d->id_slot_t, &d->id_slot));
  for (int64_t i = 0; i < n; ++i) d->id_slot[i] = slot[rows_j[i]];
  d->num_unique = num_unique;
  d->used = true;
  d->direct = layout.shard_begin[j + 1] - layout.shard_begin[j] == 1 &&
              std::is_same<Acc, T>::value;
  if (!d->direct) {
    return AllocateTemp(ctx, num_unique * width, &d->buffer_t, &d->acc);
  }
  const int num_shards = layout.shard_begin[layout.num_tables];
  const int s = layout.shard_begin[j];
  Tensor* indices = nullptr;
  Tensor* values = nullptr;
  TF_RETURN_IF_ERROR(
      ctx->allocate_output(s, TensorShape({num_unique}), &indices));
  TF_RETURN_IF_ERROR(ctx->allocate_output(
      num_shards + s, TensorShape({num_unique, width}), &values));
  auto idx = indices->flat<Index>();
  for (int64_t u = 0; u < num_unique; ++u) {
    idx(u) = static_cast<Index>(d->unique_rows[u]);
  }
  d->acc = reinterpret_cast<Acc*>(values->flat<T>().data());
  return absl::OkStatus();
}

// Slots [bound[b], bound[b + 1]) of a table form block b: about equal id
// counts per block.
inline void SlotBlocks(const int64_t* counts, int64_t num_unique, int64_t n,
                       int blocks, int64_t* bound) {
  std::fill(bound, bound + blocks + 1, num_unique);
  bound[0] = 0;
  int b = 1;
  int64_t seen = 0;
  for (int64_t u = 0; u < num_unique && b < blocks; ++u) {
    seen += counts[u];
    if (seen * blocks >= n * b) bound[b++] = u + 1;
  }
}

// The k = 2 case of DenseGradPass with both tables dense and one shard
// each: the loop every Q-R gradient takes, without the general case's
// per-table bookkeeping. Same operations in the same order.
template <typename T, typename Acc>
struct DensePair {
  const int64_t* id_slot[2];
  Acc* acc[2];       // at the task's first column
  int width[2];
  int len[2];
  int grad_col[2];
  const int64_t* rows[2];
  const T* table[2];  // at the other table's first column of the task
};

template <typename T, typename Acc, bool kMul>
void DensePairPass(const DensePair<T, Acc>& p, const T* grad, int out_width,
                   int64_t n, bool prefetch) {
  constexpr int64_t kAhead = 8;
  for (int64_t i = 0; i < n; ++i) {
    if (prefetch && i + kAhead < n) {
      for (int j = 0; j < 2; ++j) {
        PrefetchRange(p.acc[j] + p.id_slot[j][i + kAhead] * p.width[j],
                      p.len[j], /*for_write=*/true);
        if (kMul) {
          PrefetchRange(
              p.table[1 - j] + p.rows[1 - j][i + kAhead] * p.width[1 - j],
              p.len[j], /*for_write=*/false);
        }
      }
    }
    const T* g = grad + i * out_width;
    for (int j = 0; j < 2; ++j) {
      Acc* acc = p.acc[j] + p.id_slot[j][i] * p.width[j];
      const T* other =
          kMul ? p.table[1 - j] + p.rows[1 - j][i] * p.width[1 - j] : nullptr;
      AccumulateRow<T, Acc>(acc, g + p.grad_col[j], other, p.len[j]);
    }
  }
}

// One pass over the ids for every dense table at once: each gradient row is
// read once (per slot block) and split among the tables it feeds. Every
// task zeroes, then sums, its own columns of its own slots, scanning the ids
// in increasing position; a few ids ahead, the rows it will update and read
// are prefetched (they are scattered when the tables are large).
template <typename T>
absl::Status DenseGradPass(OpKernelContext* ctx, const tfmh::Layout& layout,
                           const T* const* shards, const int64_t* rows,
                           int64_t n, const T* grad,
                           DenseTable<typename Accumulator<T>::type>* dense) {
  using Acc = typename Accumulator<T>::type;
  const auto& workers = *ctx->device()->tensorflow_cpu_worker_threads();
  const DensePassPlan plan =
      PlanDensePass(layout.out_width, n, workers.num_threads);
  const int k = layout.num_tables;
  // bounds[j * (blocks + 1) + b]: slot block b of table j.
  Tensor bounds_t;
  int64_t* bounds = nullptr;
  TF_RETURN_IF_ERROR(
      AllocateTemp(ctx, int64_t{k} * (plan.blocks + 1), &bounds_t, &bounds));
  for (int j = 0; j < k; ++j) {
    if (!dense[j].used) continue;
    SlotBlocks(dense[j].counts, dense[j].num_unique, n, plan.blocks,
               bounds + j * (plan.blocks + 1));
  }
  // Row pointers of every table, with a fast path for one shard.
  const T* base[tfmh::kMaxTables];
  for (int t = 0; t < k; ++t) {
    const bool single = layout.shard_begin[t + 1] - layout.shard_begin[t] == 1;
    base[t] = single ? shards[layout.shard_begin[t]] : nullptr;
  }
  auto row_ptr = [&](int t, int64_t row) -> const T* {
    return base[t] != nullptr ? base[t] + row * layout.width[t]
                              : TableRowPtr(layout, shards, t, row);
  };
  const bool mul = layout.combine == tfmh::Combine::kMul;
  const bool concat = layout.combine == tfmh::Combine::kConcat;
  const int out_width = layout.out_width;
  // Prefetching pays only when what the ids scatter over (the sums, and the
  // other tables' rows for mul) outgrows a core's cache.
  int64_t scattered_bytes = 0;
  for (int j = 0; j < k; ++j) {
    if (dense[j].used) {
      scattered_bytes += dense[j].num_unique * layout.width[j] * sizeof(Acc);
    }
    if (mul) scattered_bytes += layout.rows[j] * layout.width[j] * sizeof(T);
  }
  const bool prefetch = scattered_bytes > (int64_t{1} << 20);

  auto task = [&](int64_t task_begin, int64_t task_end) {
    for (int64_t t_id = task_begin; t_id < task_end; ++t_id) {
      const int group = static_cast<int>(t_id % plan.groups);
      const int block = static_cast<int>(t_id / plan.groups);
      const int c0 = plan.ColumnBegin(group), c1 = plan.ColumnBegin(group + 1);
      // Per active table: its columns [lo, lo + len) within the table, the
      // gradient column where they start, and its slots [s0, s1).
      int active[tfmh::kMaxTables];
      int lo[tfmh::kMaxTables], len[tfmh::kMaxTables], gcol[tfmh::kMaxTables];
      int64_t s0[tfmh::kMaxTables], s1[tfmh::kMaxTables];
      int num_active = 0;
      for (int j = 0; j < k; ++j) {
        if (!dense[j].used || dense[j].num_unique == 0) continue;
        const int off = concat ? layout.col_offset[j] : 0;
        const int begin = std::max(c0, off);
        const int end = std::min(c1, off + layout.width[j]);
        if (begin >= end) continue;
        active[num_active] = j;
        lo[j] = begin - off;
        len[j] = end - begin;
        gcol[j] = begin;
        s0[j] = bounds[j * (plan.blocks + 1) + block];
        s1[j] = bounds[j * (plan.blocks + 1) + block + 1];
        const int w = layout.width[j];
        for (int64_t u = s0[j]; u < s1[j]; ++u) {
          std::fill_n(dense[j].acc + u * w + lo[j], len[j], Acc(0));
        }
        ++num_active;
      }
      if (num_active == 0) continue;
      if (k == 2 && num_active == 2 && plan.blocks == 1 &&
          base[0] != nullptr && base[1] != nullptr) {
        DensePair<T, Acc> pair;
        for (int j = 0; j < 2; ++j) {
          pair.id_slot[j] = dense[j].id_slot;
          pair.acc[j] = dense[j].acc + lo[j];
          pair.width[j] = layout.width[j];
          pair.len[j] = len[j];
          pair.grad_col[j] = gcol[j];
          pair.rows[j] = rows + int64_t{j} * n;
          pair.table[j] = base[j] + lo[1 - j];
        }
        if (mul) {
          DensePairPass<T, Acc, true>(pair, grad, out_width, n, prefetch);
        } else {
          DensePairPass<T, Acc, false>(pair, grad, out_width, n, prefetch);
        }
        continue;
      }
      constexpr int64_t kAhead = 8;
      for (int64_t i = 0; i < n; ++i) {
        if (prefetch && i + kAhead < n) {
          for (int a = 0; a < num_active; ++a) {
            const int j = active[a];
            const int64_t u =
                dense[j].id_slot[i + kAhead];
            PrefetchRange(dense[j].acc + u * layout.width[j] + lo[j],
                          len[j], /*for_write=*/true);
            if (mul && k == 2) {
              PrefetchRange(
                  row_ptr(1 - j, rows[int64_t{1 - j} * n + i + kAhead]) +
                      lo[j],
                  len[j], /*for_write=*/false);
            }
          }
        }
        const T* g_row = grad + i * out_width;
        for (int a = 0; a < num_active; ++a) {
          const int j = active[a];
          const int64_t u = dense[j].id_slot[i];
          if (u < s0[j] || u >= s1[j]) continue;
          Acc* acc = dense[j].acc + u * layout.width[j] + lo[j];
          const T* g = g_row + gcol[j];
          if (!mul) {
            AccumulateRow<T, Acc>(acc, g, nullptr, len[j]);
          } else if (k == 2) {
            AccumulateRow<T, Acc>(
                acc, g, row_ptr(1 - j, rows[int64_t{1 - j} * n + i]) + lo[j],
                len[j]);
          } else {
            const T* others[tfmh::kMaxTables];
            for (int t = 0; t < k; ++t) {
              others[t] = row_ptr(t, rows[int64_t{t} * n + i]) + lo[j];
            }
            for (int c = 0; c < len[j]; ++c) {
              const Acc partial = tfmh::CombinePartial<Acc>(
                  layout.combine, k, j,
                  [&](int t) { return static_cast<Acc>(others[t][c]); });
              acc[c] += static_cast<Acc>(g[c]) * partial;
            }
          }
        }
      }
    }
  };
  const int64_t num_tasks = int64_t{plan.groups} * plan.blocks;
  if (num_tasks == 1) {
    task(0, 1);
  } else {
    Shard(workers.num_threads, workers.workers, num_tasks,
          /*cost_per_unit=*/1 << 20, task);
  }
  return absl::OkStatus();
}

// Table j's outputs, shard by shard: its touched rows (ascending; shards are
// ascending row blocks, so each shard's rows are one run of them) as
// shard-local indices, and fill(u_begin, u_end, values) writes the summed
// rows [u_begin, u_end) into that shard's values.
template <typename T, typename Index, typename Fill>
absl::Status WriteShardOutputs(OpKernelContext* ctx, const tfmh::Layout& layout,
                               int j, const int64_t* unique_rows,
                               int64_t num_unique, Fill fill) {
  const int num_shards = layout.shard_begin[layout.num_tables];
  int64_t u_begin = 0;
  for (int s = layout.shard_begin[j]; s < layout.shard_begin[j + 1]; ++s) {
    const int64_t row_end = layout.shard_row[s] + tfmh::ShardRows(layout, j, s);
    const int64_t u_end =
        std::lower_bound(unique_rows, unique_rows + num_unique, row_end) -
        unique_rows;
    const int64_t count = u_end - u_begin;
    Tensor* indices = nullptr;
    Tensor* values = nullptr;
    TF_RETURN_IF_ERROR(ctx->allocate_output(s, TensorShape({count}), &indices));
    TF_RETURN_IF_ERROR(ctx->allocate_output(
        num_shards + s, TensorShape({count, layout.width[j]}), &values));
    auto idx = indices->flat<Index>();
    for (int64_t u = u_begin; u < u_end; ++u) {
      idx(u - u_begin) =
          static_cast<Index>(unique_rows[u] - layout.shard_row[s]);
    }
    if (count > 0) fill(u_begin, u_end, values->flat<T>().data());
    u_begin = u_end;
  }
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
    using Acc = typename Accumulator<T>::type;
    ResolvedTables tables;
    OP_REQUIRES_OK(ctx, ResolveTables(ctx, &tables));
    const tfmh::Layout& layout = tables.layout();
    const Tensor& grad = ctx->input(0);
    const Tensor& ids = ctx->input(ctx->num_inputs() - 1);
    OP_REQUIRES_OK(ctx, CheckIds<Index>(layout, ids));
    OP_REQUIRES_OK(ctx, CheckGradInputs(ctx, layout, grad, ids));
    const auto data = tables.Data<T>();
    const Index* id_data = ids.flat<Index>().data();
    const int64_t n = ids.NumElements();
    Tensor rows_t;
    int64_t* rows = nullptr;
    OP_REQUIRES_OK(
        ctx, AllocateTemp(ctx, layout.num_tables * n, &rows_t, &rows));
    ComputeRows(ctx, layout, id_data, n, rows);
    const T* grad_data = grad.flat<T>().data();
    DenseTable<Acc> dense[tfmh::kMaxTables];
    bool any_dense = false;
    for (int j = 0; j < layout.num_tables; ++j) {
      if (UseDenseSlots(layout.rows[j], n)) {
        OP_REQUIRES_OK(ctx, PrepareDenseTable<T, Index>(
                                ctx, layout, j, rows + j * n, n, &dense[j]));
        any_dense = true;
        continue;
      }
      RowGroups groups;
      OP_REQUIRES_OK(ctx, GroupRows(ctx, rows + j * n, n, &groups));
      OP_REQUIRES_OK(ctx,
                     WriteShardOutputs<T, Index>(
                         ctx, layout, j, groups.unique_rows, groups.num_unique,
                         [&](int64_t u_begin, int64_t u_end, T* values) {
                           SumRowGrads<T, Index>(ctx, layout, data.data(), j,
                                                 id_data, grad_data, groups,
                                                 u_begin, u_end, values);
                         }));
    }
    if (!any_dense) return;
    OP_REQUIRES_OK(ctx, DenseGradPass<T>(ctx, layout, data.data(), rows, n,
                                         grad_data, dense));
    for (int j = 0; j < layout.num_tables; ++j) {
      if (dense[j].used && !dense[j].direct) {
        // Sums in Acc (or split among shards): converted to T per shard.
        const DenseTable<Acc>& d = dense[j];
        const int width = layout.width[j];
        OP_REQUIRES_OK(ctx, WriteShardOutputs<T, Index>(
                                ctx, layout, j, d.unique_rows, d.num_unique,
                                [&](int64_t u_begin, int64_t u_end, T* values) {
                                  const Acc* sums = d.acc + u_begin * width;
                                  for (int64_t e = 0;
                                       e < (u_end - u_begin) * width; ++e) {
                                    values[e] = static_cast<T>(sums[e]);
                                  }
                                }));
      }
    }
  }
};

#define REGISTER_CPU(T, Index)                                \
  REGISTER_KERNEL_BUILDER(Name("MultiHashLookup")             \
                              .Device(DEVICE_CPU)             \
                              .TypeConstraint<T>("T")         \
                              .TypeConstraint<Index>("Tidx"), \
                          MultiHashLookupCpuOp<T, Index>);    \
  REGISTER_KERNEL_BUILDER(Name("MultiHashLookupGrad")         \
                              .Device(DEVICE_CPU)             \
                              .TypeConstraint<T>("T")         \
                              .TypeConstraint<Index>("Tidx"), \
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
