// The id -> (table, shard, row) arithmetic and the combine step of a
// multi-hash lookup. This header is the single source of truth for both:
// the CPU kernels, the CUDA kernels and the standalone CUDA test include it.
// It includes no TensorFlow or CUDA header.
#ifndef TENSORFLOW_MULTIHASH_CC_KERNELS_MULTIHASH_MAPPING_H_
#define TENSORFLOW_MULTIHASH_CC_KERNELS_MULTIHASH_MAPPING_H_

#include <cstdint>
#include <string>

#if defined(__CUDACC__)
#define TFMH_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define TFMH_HOST_DEVICE inline
#endif

namespace tfmh {

// Fixed upper bounds keep Layout a plain struct that can be passed by value
// to a CUDA kernel (well under the 4 KiB parameter limit).
constexpr int kMaxTables = 8;
constexpr int kMaxShards = 64;  // all shards of all tables together

enum class Combine : int32_t { kAdd = 0, kMul = 1, kConcat = 2 };

// Complementary strategies. Every strategy maps table j's row as
//   row_j(id) = (id / divisor[j]) % rows[j]
// and differs only in its divisors:
//   kQR, kGeneralizedQR: divisor[j] = prod(rows[j+1:]) (mixed radix; for k = 2
//                        this is q = id / rows_R, r = id % rows_R);
//   kCRT:                divisor[j] = 1 (rows pairwise coprime).
//   kDeepRecQR:          k = 2, divisor = {rows_Q, 1}: DeepRec's own Q-R
//                        mapping, q = id / rows_Q, r = id % rows_R, for
//                        checkpoints trained with DeepRec. Ids are in
//                        [0, rows_Q * rows_Q) (so q < rows_Q); two ids share
//                        a row pair when rows_Q != rows_R, exactly as there.
enum class Strategy : int32_t {
  kQR = 0,
  kGeneralizedQR = 1,
  kCRT = 2,
  kDeepRecQR = 3
};

// Everything a kernel needs to know about the small tables, by value.
struct Layout {
  int32_t num_tables = 0;
  Combine combine = Combine::kAdd;
  int32_t out_width = 0;   // width of one output row
  int64_t capacity = 0;    // ids must lie in [0, capacity)
  int64_t rows[kMaxTables] = {};     // logical rows of each table
  int64_t divisor[kMaxTables] = {};  // see Strategy
  int32_t width[kMaxTables] = {};    // columns of each table
  int32_t col_offset[kMaxTables] = {};  // output column of table j (concat)
  // Shards of table j are [shard_begin[j], shard_begin[j + 1]) in the flat
  // shard list; shard s holds the table rows starting at shard_row[s], and
  // shard_row[shard_begin[j + 1]] ... is not used: the last shard of a table
  // ends at rows[j].
  int32_t shard_begin[kMaxTables + 1] = {};
  int64_t shard_row[kMaxShards] = {};
};

// True if `id` may be looked up. Written so that any integer type works.
template <typename Index>
TFMH_HOST_DEVICE bool IdInRange(const Layout& l, Index id) {
  return id >= 0 && static_cast<int64_t>(id) < l.capacity;
}

// Logical row of table j for an in-range id.
// When id, divisor and rows are all in [0, 2^32) the unsigned 32-bit
// division gives exactly the same result as the int64 one (both are exact on
// non-negative values) at a fraction of the cost on a GPU, where 64-bit
// division is a long software routine. Any other input (a negative id, a
// capacity >= 2^32) takes the int64 path, so results are bit-identical for
// every input.
TFMH_HOST_DEVICE int64_t TableRow(const Layout& l, int j, int64_t id) {
  const int64_t d = l.divisor[j];
  const int64_t r = l.rows[j];
  if (((static_cast<uint64_t>(id) | static_cast<uint64_t>(d) |
        static_cast<uint64_t>(r)) >> 32) == 0) {
    return static_cast<int64_t>(
        (static_cast<uint32_t>(id) / static_cast<uint32_t>(d)) %
        static_cast<uint32_t>(r));
  }
  return (id / d) % r;
}

// The shard of table j that holds logical row `row` (shards are contiguous
// row blocks in order). Binary search; tables have few shards.
TFMH_HOST_DEVICE int ShardOf(const Layout& l, int j, int64_t row) {
  int lo = l.shard_begin[j];
  int hi = l.shard_begin[j + 1] - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (l.shard_row[mid] <= row) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// Row count of shard s, the last shard of table j ending at rows[j].
TFMH_HOST_DEVICE int64_t ShardRows(const Layout& l, int j, int s) {
  const int64_t end =
      (s + 1 < l.shard_begin[j + 1]) ? l.shard_row[s + 1] : l.rows[j];
  return end - l.shard_row[s];
}

// Where an id's row of table j lives: shard index and row within the shard.
struct RowRef {
  int32_t shard;
  int64_t local_row;
};

// ... of logical row `row` of table j.
TFMH_HOST_DEVICE RowRef LocateRow(const Layout& l, int j, int64_t row) {
  const int s = ShardOf(l, j, row);
  return RowRef{s, row - l.shard_row[s]};
}

// ... of an in-range id's row of table j.
TFMH_HOST_DEVICE RowRef Locate(const Layout& l, int j, int64_t id) {
  return LocateRow(l, j, TableRow(l, j, id));
}

// Host-side fast path of TableRow for the k = 2 Q-R layout, used by the CPU
// kernels (the CUDA kernels use TableRow itself): both rows of an id from one
// division, exact and bit-identical to TableRow.
//
// Division by a run-time constant d in [2, 2^32) of any n in [0, 2^32) by one
// 64x64->128 multiply (Lemire, Kaser, Kurz 2019: M = ceil(2^64 / d) makes
// floor(M * n / 2^64) == n / d exactly for every 32-bit n).
struct FastDiv32 {
  uint64_t m = 0;
  explicit FastDiv32(uint32_t d) : m(UINT64_C(0xFFFFFFFFFFFFFFFF) / d + 1) {}
  inline uint32_t Div(uint32_t n) const {
    return static_cast<uint32_t>(
        (static_cast<unsigned __int128>(m) * n) >> 64);
  }
};

// The k = 2 Q-R mapping (divisor[0] = rows[1], divisor[1] = 1), computed
// with one division per id: q = id / rows_R, r = id - q * rows_R. Since an
// in-range id is < rows_Q * rows_R, q < rows_Q and the "% rows_Q" of
// TableRow is the identity, so q and r equal TableRow(l, 0 / 1, id).
struct QRSplit {
  bool ok = false;      // the layout is a k = 2 Q-R layout
  bool fast32 = false;  // capacity <= 2^32 and rows_R >= 2: FastDiv32
  int64_t rows_r = 1;
  FastDiv32 div{2};
  explicit QRSplit(const Layout& l) {
    ok = l.num_tables == 2 && l.divisor[1] == 1 && l.divisor[0] == l.rows[1];
    rows_r = l.rows[1];
    fast32 = ok && rows_r >= 2 && l.capacity <= (int64_t{1} << 32) &&
             rows_r < (int64_t{1} << 32);
    if (fast32) div = FastDiv32(static_cast<uint32_t>(rows_r));
  }
  inline void Split(int64_t id, int64_t* q, int64_t* r) const {
    if (fast32) {
      const uint32_t qq = div.Div(static_cast<uint32_t>(id));
      *q = qq;
      *r = id - static_cast<int64_t>(qq) * rows_r;
    } else {
      *q = id / rows_r;
      *r = id - *q * rows_r;
    }
  }
};

// The combine step, one element at a time. For add and mul the output
// element c is Combine(row_0[c], ..., row_{k-1}[c]); for concat table j's
// element c goes to output column col_offset[j] + c unchanged.
template <typename Acc>
TFMH_HOST_DEVICE Acc CombineIdentity(Combine op) {
  return op == Combine::kMul ? Acc(1) : Acc(0);
}

template <typename Acc>
TFMH_HOST_DEVICE Acc CombineStep(Combine op, Acc acc, Acc x) {
  return op == Combine::kMul ? acc * x : acc + x;
}

// Gradient of the combined element with respect to table j's element:
// 1 for add and concat, the product of the other tables' elements for mul
// (computed directly, never by division, so zeros are exact).
template <typename Acc, typename Load>
TFMH_HOST_DEVICE Acc CombinePartial(Combine op, int num_tables, int j,
                                    Load load_element) {
  if (op != Combine::kMul) return Acc(1);
  Acc p = Acc(1);
  for (int i = 0; i < num_tables; ++i) {
    if (i != j) p *= load_element(i);
  }
  return p;
}


// Host only. The widest output row the kernels handle: widths, column
// offsets and the output width are int32 in Layout, and every sum of them
// is computed in int64 and checked against this limit first.
constexpr int64_t kMaxOutWidth = INT32_MAX;

// Host only: checks the op's attributes by themselves, before any tensor is
// seen (the kernels' constructors run it, so eager calls and tampered graphs
// are checked too, and so does the shape function). Lists are read as given
// (int64, any length): `rows`, `widths` and `shards` have num_rows,
// num_widths and num_shards entries; num_tensors is the length of the
// "tables" input list. Every sum is taken in int64 with explicit limits, so
// nothing overflows or is narrowed. Returns "" on success, else a message
// naming the attribute and the bad value; *out_width and *total_shards are
// set on success.
inline std::string CheckAttrs(Strategy strategy, Combine op, int64_t num_rows,
                              const int64_t* rows, int64_t num_widths,
                              const int64_t* widths, int64_t num_shards,
                              const int64_t* shards, int64_t num_tensors,
                              int64_t* out_width, int64_t* total_shards) {
  auto num = [](int64_t v) { return std::to_string(v); };
  if (num_widths != num_rows || num_shards != num_rows) {
    return "table_rows, table_widths and num_shards must have one entry per "
           "table, got " + num(num_rows) + ", " + num(num_widths) + " and " +
           num(num_shards) + " entries";
  }
  if (num_rows < 2 || num_rows > kMaxTables) {
    return "the number of tables (the length of table_rows) must be in [2, " +
           num(kMaxTables) + "], got " + num(num_rows);
  }
  if ((strategy == Strategy::kQR || strategy == Strategy::kDeepRecQR) &&
      num_rows != 2) {
    return "the Q-R strategy needs exactly 2 tables, got " + num(num_rows);
  }
  int64_t width_sum = 0, shard_sum = 0;
  for (int64_t j = 0; j < num_rows; ++j) {
    if (rows[j] <= 0) {
      return "table_rows[" + num(j) + "] must be positive, got " +
             num(rows[j]);
    }
    if (widths[j] <= 0 || widths[j] > kMaxOutWidth) {
      return "table_widths[" + num(j) + "] must be in [1, " +
             num(kMaxOutWidth) + "], got " + num(widths[j]);
    }
    if (op != Combine::kConcat && widths[j] != widths[0]) {
      return "add and mul need equal table widths, got " + num(widths[0]) +
             " for table 0 and " + num(widths[j]) + " for table " + num(j);
    }
    if (shards[j] <= 0 || shards[j] > kMaxShards) {
      return "num_shards[" + num(j) + "] must be in [1, " + num(kMaxShards) +
             "], got " + num(shards[j]);
    }
    // Each width is at most kMaxOutWidth and each shard count at most
    // kMaxShards (checked above), over at most kMaxTables tables: neither
    // int64 sum can overflow.
    width_sum += widths[j];
    shard_sum += shards[j];
    if (op == Combine::kConcat && width_sum > kMaxOutWidth) {
      return "concat output rows would be " + num(width_sum) +
             " wide after table " + num(j) + " (the sum of table_widths), "
             "more than the " + num(kMaxOutWidth) + " supported";
    }
    if (shard_sum > kMaxShards) {
      return "num_shards adds up to more than the " + num(kMaxShards) +
             " shards supported in all";
    }
  }
  if (shard_sum != num_tensors) {
    return "num_shards adds up to " + num(shard_sum) + " shards, but " +
           num(num_tensors) + " tables were given";
  }
  *out_width = op == Combine::kConcat ? width_sum : widths[0];
  *total_shards = shard_sum;
  return "";
}

// Host only: fills `l` from the per-table sizes and the row count of every
// shard (flat, table by table). Returns "" on success, else a message naming
// the bad field and value. The one place divisors and capacity are computed.
// Widths, column offsets and the output width are summed in int64 and must
// stay within kMaxOutWidth; shard row counts are summed in int64 with an
// overflow check.
inline std::string InitLayout(Strategy strategy, Combine op, int num_tables,
                              const int64_t* rows, const int32_t* widths,
                              const int32_t* shards_per_table,
                              const int64_t* shard_rows, Layout* l) {
  auto num = [](int64_t v) { return std::to_string(v); };
  if (num_tables < 2 || num_tables > kMaxTables) {
    return "the number of tables must be in [2, " + num(kMaxTables) +
           "], got " + num(num_tables);
  }
  if ((strategy == Strategy::kQR || strategy == Strategy::kDeepRecQR) &&
      num_tables != 2) {
    return "the Q-R strategy needs exactly 2 tables, got " + num(num_tables);
  }
  *l = Layout();
  l->num_tables = num_tables;
  l->combine = op;
  int total_shards = 0;
  int64_t out_width = 0;
  for (int j = 0; j < num_tables; ++j) {
    if (rows[j] <= 0) {
      return "table " + num(j) + " must have a positive row count, got " +
             num(rows[j]);
    }
    if (widths[j] <= 0) {
      return "table " + num(j) + " must have a positive width, got " +
             num(widths[j]);
    }
    if (op != Combine::kConcat && widths[j] != widths[0]) {
      return "add and mul need equal table widths, got " + num(widths[0]) +
             " for table 0 and " + num(widths[j]) + " for table " + num(j);
    }
    if (shards_per_table[j] <= 0 || shards_per_table[j] > kMaxShards) {
      return "table " + num(j) + " must have 1 to " + num(kMaxShards) +
             " shards, got " + num(shards_per_table[j]);
    }
    if (total_shards + shards_per_table[j] > kMaxShards) {
      return "at most " + num(kMaxShards) + " shards in all are supported";
    }
    l->rows[j] = rows[j];
    l->width[j] = widths[j];
    l->shard_begin[j] = total_shards;
    int64_t start = 0;
    for (int s = total_shards; s < total_shards + shards_per_table[j]; ++s) {
      if (shard_rows[s] < 0) {
        return "shard " + num(s - total_shards) + " of table " + num(j) +
               " has a negative row count " + num(shard_rows[s]);
      }
      if (shard_rows[s] > INT64_MAX - start) {
        return "the shards of table " + num(j) +
               " hold more rows in all than int64 can count";
      }
      l->shard_row[s] = start;
      start += shard_rows[s];
    }
    if (start != rows[j]) {
      return "the shards of table " + num(j) + " hold " + num(start) +
             " rows in all, but the table has " + num(rows[j]) + " rows";
    }
    total_shards += shards_per_table[j];
    // out_width <= kMaxOutWidth before this step, widths[j] <= INT32_MAX:
    // the int64 sum cannot overflow.
    const int64_t next =
        op == Combine::kConcat ? out_width + widths[j] : widths[0];
    if (next > kMaxOutWidth) {
      return "concat output rows would be " + num(next) + " wide after "
             "table " + num(j) + " (the sum of the table widths), more than "
             "the " + num(kMaxOutWidth) + " supported";
    }
    l->col_offset[j] =
        op == Combine::kConcat ? static_cast<int32_t>(out_width) : 0;
    out_width = next;
  }
  l->out_width = static_cast<int32_t>(out_width);
  l->shard_begin[num_tables] = total_shards;
  if (strategy == Strategy::kCRT) {
    // id % rows_j picks a unique row tuple for every id below the product
    // only if the row counts are pairwise coprime (Chinese remainder).
    for (int i = 0; i < num_tables; ++i) {
      for (int j = i + 1; j < num_tables; ++j) {
        int64_t a = rows[i], b = rows[j];
        while (b != 0) {
          const int64_t t = a % b;
          a = b;
          b = t;
        }
        if (a != 1) {
          return "the CRT strategy needs pairwise coprime row counts, but "
                 "table " + num(i) + " has " + num(rows[i]) + " rows and "
                 "table " + num(j) + " has " + num(rows[j]) +
                 " (common factor " + num(a) + ")";
        }
      }
    }
  }
  if (strategy == Strategy::kDeepRecQR) {
    if (rows[0] > INT64_MAX / rows[0]) {
      return "rows_Q * rows_Q (the capacity of DeepRec's mapping) overflows "
             "int64";
    }
    l->divisor[0] = rows[0];
    l->divisor[1] = 1;
    l->capacity = rows[0] * rows[0];
    return "";
  }
  // capacity = prod(rows); mixed-radix divisors are suffix products.
  int64_t capacity = 1;
  for (int j = num_tables - 1; j >= 0; --j) {
    l->divisor[j] = strategy == Strategy::kCRT ? 1 : capacity;
    if (capacity > INT64_MAX / rows[j]) {
      return "the product of the table row counts overflows int64";
    }
    capacity *= rows[j];
  }
  l->capacity = capacity;
  return "";
}

}  // namespace tfmh

#endif  // TENSORFLOW_MULTIHASH_CC_KERNELS_MULTIHASH_MAPPING_H_
