// The CUB device-wide calls that gpu_kernels/ uses, emulated on the CPU for
// TFMH_CUDA_EMULATION builds (included by cuda_emu.h). Same signatures and
// the same two-call protocol as CUB: with d_temp_storage == nullptr a call
// only sets temp_storage_bytes; with too little storage it returns
// cudaErrorInvalidValue. Each call runs synchronously.
//
// To catch workspace mistakes, a call with storage first fills all of it
// with a garbage byte pattern (what the real temporaries would leave), and
// refuses (prints why, returns cudaErrorInvalidValue) storage that overlaps
// its inputs or outputs, and overlapping inputs and outputs where CUB does
// not allow them. The radix sort really uses its storage as the alternate
// key and value buffers, so its size grows with the number of items as
// CUB's does.
#ifndef TENSORFLOW_MULTIHASH_GPU_KERNELS_EMU_CUB_EMU_H_
#define TENSORFLOW_MULTIHASH_GPU_KERNELS_EMU_CUB_EMU_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <type_traits>

namespace cub {
namespace emu_detail {

constexpr size_t kAlign = 256;
constexpr unsigned char kGarbage = 0xA5;

inline size_t AlignUp(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

inline char* AlignPtr(void* p) {
  const uintptr_t x = reinterpret_cast<uintptr_t>(p);
  return reinterpret_cast<char*>((x + kAlign - 1) / kAlign * kAlign);
}

// Prints "cub::<call>: <what>" and returns cudaErrorInvalidValue.
cudaError_t Refuse(const char* call, const char* what);

inline bool Overlap(const void* a, size_t a_bytes, const void* b,
                    size_t b_bytes) {
  if (a_bytes == 0 || b_bytes == 0) return false;
  const uintptr_t x = reinterpret_cast<uintptr_t>(a);
  const uintptr_t y = reinterpret_cast<uintptr_t>(b);
  return x < y + b_bytes && y < x + a_bytes;
}

// Bytes of `n` items at `it` when it is a pointer, else 0 (not checked).
template <typename It>
size_t SpanBytes(It it, size_t n) {
  (void)it;
  if constexpr (std::is_pointer<It>::value) {
    return n * sizeof(*it);
  } else {
    return 0;
  }
}
template <typename It>
const void* SpanPtr(It it) {
  if constexpr (std::is_pointer<It>::value) {
    return static_cast<const void*>(it);
  } else {
    return nullptr;
  }
}

// The common part of every call: the size query, the size check, the
// overlap check against the given spans and the garbage fill. Returns
// cudaSuccess when the call should go on, else sets *done.
inline cudaError_t BeginCall(const char* call, void* temp, size_t& bytes,
                             size_t need, long long num_items,
                             const void* const* spans,
                             const size_t* span_bytes, int num_spans,
                             bool* done) {
  *done = true;
  if (num_items < 0) return Refuse(call, "num_items is negative");
  if (temp == nullptr) {
    bytes = need;
    return cudaSuccess;
  }
  if (bytes < need) return Refuse(call, "temp_storage_bytes is too small");
  for (int s = 0; s < num_spans; ++s) {
    if (Overlap(temp, bytes, spans[s], span_bytes[s])) {
      return Refuse(call, "the temporary storage overlaps an input or output");
    }
  }
  std::memset(temp, kGarbage, bytes);
  *done = false;
  return cudaSuccess;
}

// Radix digits of signed keys: flip the sign bit so they order as unsigned.
template <typename K>
typename std::make_unsigned<K>::type RadixBits(K key) {
  using U = typename std::make_unsigned<K>::type;
  U u;
  std::memcpy(&u, &key, sizeof(K));
  if constexpr (std::is_signed<K>::value) {
    u ^= static_cast<U>(U{1} << (sizeof(K) * 8 - 1));
  }
  return u;
}

// Stable LSD radix sort of keys (and values, when kPairs) by bits
// [begin_bit, end_bit), 8 bits per pass, ping-ponging between the outputs
// and the alternate buffers so that the last pass lands in the outputs.
template <bool kPairs, typename K, typename V>
void RadixSort(const K* keys_in, K* keys_out, const V* values_in,
               V* values_out, size_t n, int begin_bit, int end_bit,
               K* alt_keys, V* alt_values) {
  const int passes = (end_bit - begin_bit + 7) / 8;
  if (passes == 0) {
    std::memmove(keys_out, keys_in, n * sizeof(K));
    if constexpr (kPairs) std::memmove(values_out, values_in, n * sizeof(V));
    return;
  }
  const K* src_k = keys_in;
  const V* src_v = values_in;
  for (int p = 0; p < passes; ++p) {
    const bool to_out = (passes - 1 - p) % 2 == 0;
    K* dst_k = to_out ? keys_out : alt_keys;
    V* dst_v = to_out ? values_out : alt_values;
    const int shift = begin_bit + 8 * p;
    const int bits = end_bit - shift < 8 ? end_bit - shift : 8;
    const unsigned digit_mask = (1u << bits) - 1u;
    size_t offset[257] = {};
    for (size_t i = 0; i < n; ++i) {
      ++offset[((RadixBits(src_k[i]) >> shift) & digit_mask) + 1];
    }
    for (int d = 0; d < 256; ++d) offset[d + 1] += offset[d];
    for (size_t i = 0; i < n; ++i) {
      const size_t o = offset[(RadixBits(src_k[i]) >> shift) & digit_mask]++;
      dst_k[o] = src_k[i];
      if constexpr (kPairs) dst_v[o] = src_v[i];
    }
    src_k = dst_k;
    src_v = dst_v;
  }
}

template <bool kPairs, typename K, typename V>
cudaError_t SortCall(const char* call, void* temp, size_t& bytes,
                     const K* keys_in, K* keys_out, const V* values_in,
                     V* values_out, long long num_items, int begin_bit,
                     int end_bit) {
  static_assert(std::is_integral<K>::value,
                "the emulated radix sort takes integer keys");
  const size_t n = num_items < 0 ? 0 : static_cast<size_t>(num_items);
  const size_t need = kAlign + AlignUp(n * sizeof(K)) +
                      (kPairs ? AlignUp(n * sizeof(V)) : 0);
  const size_t kb = n * sizeof(K), vb = kPairs ? n * sizeof(V) : 0;
  const void* spans[] = {keys_in, keys_out, values_in, values_out};
  const size_t span_bytes[] = {kb, kb, vb, vb};
  bool done;
  cudaError_t e = BeginCall(call, temp, bytes, need, num_items, spans,
                            span_bytes, 4, &done);
  if (done) return e;
  if (begin_bit < 0 || end_bit > static_cast<int>(sizeof(K) * 8) ||
      begin_bit > end_bit) {
    return Refuse(call, "begin_bit / end_bit out of range");
  }
  if (Overlap(keys_in, kb, keys_out, kb) ||
      Overlap(values_in, vb, values_out, vb) ||
      Overlap(keys_out, kb, values_out, vb)) {
    return Refuse(call, "inputs and outputs overlap");
  }
  if (n == 0) return cudaSuccess;
  char* base = AlignPtr(temp);
  K* alt_keys = reinterpret_cast<K*>(base);
  V* alt_values = reinterpret_cast<V*>(base + AlignUp(kb));
  RadixSort<kPairs>(keys_in, keys_out, values_in, values_out, n, begin_bit,
                    end_bit, alt_keys, alt_values);
  return cudaSuccess;
}

// Temporary bytes of the scans, reductions and run-length encodings: a few
// bytes per 1024-item tile, like CUB's tile descriptors.
inline size_t SmallTemp(long long num_items) {
  const size_t n = num_items < 0 ? 0 : static_cast<size_t>(num_items);
  return kAlign + AlignUp(16 * (n / 1024 + 1));
}

template <typename In>
using ValueOf = typename std::iterator_traits<In>::value_type;

template <typename In, typename Out, typename Op, typename Acc,
          bool kInclusive>
cudaError_t ScanCall(const char* call, void* temp, size_t& bytes, In in,
                     Out out, Op op, Acc init, long long num_items) {
  const size_t n = num_items < 0 ? 0 : static_cast<size_t>(num_items);
  const void* spans[] = {SpanPtr(in), SpanPtr(out)};
  const size_t span_bytes[] = {SpanBytes(in, n), SpanBytes(out, n)};
  bool done;
  cudaError_t e = BeginCall(call, temp, bytes, SmallTemp(num_items),
                            num_items, spans, span_bytes, 2, &done);
  if (done) return e;
  if (spans[0] != spans[1] &&
      Overlap(spans[0], span_bytes[0], spans[1], span_bytes[1])) {
    return Refuse(call, "input and output overlap (only in == out is allowed)");
  }
  Acc acc = init;
  for (size_t i = 0; i < n; ++i) {
    const Acc x = static_cast<Acc>(in[i]);  // read before out[i] is written
    if constexpr (kInclusive) {
      acc = (i == 0) ? x : static_cast<Acc>(op(acc, x));
      out[i] = acc;
    } else {
      out[i] = acc;
      acc = static_cast<Acc>(op(acc, x));
    }
  }
  return cudaSuccess;
}

struct SumOp {
  template <typename A, typename B>
  auto operator()(const A& a, const B& b) const {
    return a + b;
  }
};

// The accumulator type of a sum of In's values (integer promotion included).
template <typename In>
using SumAcc = std::decay_t<decltype(std::declval<ValueOf<In>>() +
                                     std::declval<ValueOf<In>>())>;

}  // namespace emu_detail

struct Sum {
  template <typename A, typename B>
  auto operator()(const A& a, const B& b) const {
    return a + b;
  }
};
struct Min {
  template <typename A, typename B>
  auto operator()(const A& a, const B& b) const {
    return b < a ? b : a;
  }
};
struct Max {
  template <typename A, typename B>
  auto operator()(const A& a, const B& b) const {
    return a < b ? b : a;
  }
};

struct DeviceRadixSort {
  template <typename KeyT, typename ValueT, typename NumItemsT>
  static cudaError_t SortPairs(void* d_temp_storage, size_t& temp_storage_bytes,
                               const KeyT* d_keys_in, KeyT* d_keys_out,
                               const ValueT* d_values_in, ValueT* d_values_out,
                               NumItemsT num_items, int begin_bit = 0,
                               int end_bit = sizeof(KeyT) * 8,
                               cudaStream_t stream = 0) {
    (void)stream;
    return emu_detail::SortCall<true>(
        "DeviceRadixSort::SortPairs", d_temp_storage, temp_storage_bytes,
        d_keys_in, d_keys_out, d_values_in, d_values_out,
        static_cast<long long>(num_items), begin_bit, end_bit);
  }

  template <typename KeyT, typename NumItemsT>
  static cudaError_t SortKeys(void* d_temp_storage, size_t& temp_storage_bytes,
                              const KeyT* d_keys_in, KeyT* d_keys_out,
                              NumItemsT num_items, int begin_bit = 0,
                              int end_bit = sizeof(KeyT) * 8,
                              cudaStream_t stream = 0) {
    (void)stream;
    return emu_detail::SortCall<false, KeyT, char>(
        "DeviceRadixSort::SortKeys", d_temp_storage, temp_storage_bytes,
        d_keys_in, d_keys_out, nullptr, nullptr,
        static_cast<long long>(num_items), begin_bit, end_bit);
  }
};

struct DeviceScan {
  template <typename InputIteratorT, typename OutputIteratorT,
            typename NumItemsT>
  static cudaError_t InclusiveSum(void* d_temp_storage,
                                  size_t& temp_storage_bytes,
                                  InputIteratorT d_in, OutputIteratorT d_out,
                                  NumItemsT num_items,
                                  cudaStream_t stream = 0) {
    (void)stream;
    using Acc = emu_detail::SumAcc<InputIteratorT>;
    return emu_detail::ScanCall<InputIteratorT, OutputIteratorT, Sum, Acc,
                                true>(
        "DeviceScan::InclusiveSum", d_temp_storage, temp_storage_bytes, d_in,
        d_out, Sum(), Acc{}, static_cast<long long>(num_items));
  }

  template <typename InputIteratorT, typename OutputIteratorT,
            typename NumItemsT>
  static cudaError_t ExclusiveSum(void* d_temp_storage,
                                  size_t& temp_storage_bytes,
                                  InputIteratorT d_in, OutputIteratorT d_out,
                                  NumItemsT num_items,
                                  cudaStream_t stream = 0) {
    (void)stream;
    using Acc = emu_detail::SumAcc<InputIteratorT>;
    return emu_detail::ScanCall<InputIteratorT, OutputIteratorT, Sum, Acc,
                                false>(
        "DeviceScan::ExclusiveSum", d_temp_storage, temp_storage_bytes, d_in,
        d_out, Sum(), Acc{}, static_cast<long long>(num_items));
  }

  template <typename InputIteratorT, typename OutputIteratorT,
            typename ScanOpT, typename NumItemsT>
  static cudaError_t InclusiveScan(void* d_temp_storage,
                                   size_t& temp_storage_bytes,
                                   InputIteratorT d_in, OutputIteratorT d_out,
                                   ScanOpT scan_op, NumItemsT num_items,
                                   cudaStream_t stream = 0) {
    (void)stream;
    using Acc = emu_detail::ValueOf<InputIteratorT>;
    return emu_detail::ScanCall<InputIteratorT, OutputIteratorT, ScanOpT, Acc,
                                true>(
        "DeviceScan::InclusiveScan", d_temp_storage, temp_storage_bytes, d_in,
        d_out, scan_op, Acc{}, static_cast<long long>(num_items));
  }

  template <typename InputIteratorT, typename OutputIteratorT,
            typename ScanOpT, typename InitValueT, typename NumItemsT>
  static cudaError_t ExclusiveScan(void* d_temp_storage,
                                   size_t& temp_storage_bytes,
                                   InputIteratorT d_in, OutputIteratorT d_out,
                                   ScanOpT scan_op, InitValueT init_value,
                                   NumItemsT num_items,
                                   cudaStream_t stream = 0) {
    (void)stream;
    return emu_detail::ScanCall<InputIteratorT, OutputIteratorT, ScanOpT,
                                InitValueT, false>(
        "DeviceScan::ExclusiveScan", d_temp_storage, temp_storage_bytes, d_in,
        d_out, scan_op, init_value, static_cast<long long>(num_items));
  }
};

struct DeviceReduce {
  template <typename InputIteratorT, typename OutputIteratorT,
            typename NumItemsT>
  static cudaError_t Sum(void* d_temp_storage, size_t& temp_storage_bytes,
                         InputIteratorT d_in, OutputIteratorT d_out,
                         NumItemsT num_items, cudaStream_t stream = 0) {
    (void)stream;
    using Acc = emu_detail::SumAcc<InputIteratorT>;
    const long long n = static_cast<long long>(num_items);
    const void* spans[] = {emu_detail::SpanPtr(d_in),
                           emu_detail::SpanPtr(d_out)};
    const size_t span_bytes[] = {
        emu_detail::SpanBytes(d_in, n < 0 ? 0 : static_cast<size_t>(n)),
        emu_detail::SpanBytes(d_out, 1)};
    bool done;
    cudaError_t e = emu_detail::BeginCall(
        "DeviceReduce::Sum", d_temp_storage, temp_storage_bytes,
        emu_detail::SmallTemp(n), n, spans, span_bytes, 2, &done);
    if (done) return e;
    Acc acc{};
    for (long long i = 0; i < n; ++i) acc = acc + d_in[i];
    *d_out = acc;
    return cudaSuccess;
  }
};

struct DeviceRunLengthEncode {
  template <typename InputIteratorT, typename UniqueOutputIteratorT,
            typename LengthsOutputIteratorT, typename NumRunsOutputIteratorT,
            typename NumItemsT>
  static cudaError_t Encode(void* d_temp_storage, size_t& temp_storage_bytes,
                            InputIteratorT d_in,
                            UniqueOutputIteratorT d_unique_out,
                            LengthsOutputIteratorT d_counts_out,
                            NumRunsOutputIteratorT d_num_runs_out,
                            NumItemsT num_items, cudaStream_t stream = 0) {
    (void)stream;
    const long long n = static_cast<long long>(num_items);
    const size_t un = n < 0 ? 0 : static_cast<size_t>(n);
    const void* spans[] = {
        emu_detail::SpanPtr(d_in), emu_detail::SpanPtr(d_unique_out),
        emu_detail::SpanPtr(d_counts_out), emu_detail::SpanPtr(d_num_runs_out)};
    const size_t span_bytes[] = {emu_detail::SpanBytes(d_in, un),
                                 emu_detail::SpanBytes(d_unique_out, un),
                                 emu_detail::SpanBytes(d_counts_out, un),
                                 emu_detail::SpanBytes(d_num_runs_out, 1)};
    bool done;
    cudaError_t e = emu_detail::BeginCall(
        "DeviceRunLengthEncode::Encode", d_temp_storage, temp_storage_bytes,
        emu_detail::SmallTemp(n), n, spans, span_bytes, 4, &done);
    if (done) return e;
    long long runs = 0;
    for (long long i = 0; i < n;) {
      long long j = i + 1;
      while (j < n && d_in[j] == d_in[i]) ++j;
      d_unique_out[runs] = d_in[i];
      d_counts_out[runs] = j - i;
      ++runs;
      i = j;
    }
    *d_num_runs_out = runs;
    return cudaSuccess;
  }
};

}  // namespace cub

#endif  // TENSORFLOW_MULTIHASH_GPU_KERNELS_EMU_CUB_EMU_H_
