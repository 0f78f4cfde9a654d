// Element-wise row loops of the CPU kernels: the combine of two rows, the
// accumulation of a gradient row, prefetching. Included only by
// multihash_kernels.cc; split out so each file reads as one stage.
#ifndef TENSORFLOW_MULTIHASH_CC_KERNELS_MULTIHASH_CPU_ROWS_H_
#define TENSORFLOW_MULTIHASH_CC_KERNELS_MULTIHASH_CPU_ROWS_H_

#include <cstdint>
#include <cstring>

#include "Eigen/Core"

namespace tensorflow {
namespace multihash {
namespace cpu_rows {

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

// bfloat16, 4 lanes at a time, with the exact bits of Eigen's scalar
// conversions: widening is a 16-bit shift; narrowing rounds to nearest even
// and turns a NaN into the quiet NaN of its sign. Plain integer vector
// operations, so the half-type loops below vectorise like float's.
typedef uint32_t V4u __attribute__((vector_size(16)));
typedef uint16_t V4h __attribute__((vector_size(8)));
inline V4f LoadBf16x4(const Eigen::bfloat16* p) {
  V4h half;
  std::memcpy(&half, p, sizeof(half));
  const V4u wide = __builtin_convertvector(half, V4u) << 16;
  V4f v;
  std::memcpy(&v, &wide, sizeof(v));
  return v;
}
inline void StoreBf16x4(Eigen::bfloat16* p, V4f v) {
  V4u bits;
  std::memcpy(&bits, &v, sizeof(bits));
  const V4u rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const V4u nan = reinterpret_cast<V4u>(v != v);  // all ones where NaN
  const V4u quiet_nan = ((bits >> 16) & 0x8000u) | 0x7fc0u;
  const V4h half =
      __builtin_convertvector((rounded & ~nan) | (quiet_nan & nan), V4h);
  std::memcpy(static_cast<void*>(p), &half, sizeof(half));
}

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

template <>
inline void CombineRows<Eigen::bfloat16, true>(
    const Eigen::bfloat16* __restrict a, const Eigen::bfloat16* __restrict b,
    int w, Eigen::bfloat16* __restrict out) {
  int c = 0;
  for (; c + 4 <= w; c += 4) {
    StoreBf16x4(out + c, LoadBf16x4(a + c) * LoadBf16x4(b + c));
  }
  for (; c < w; ++c) {
    out[c] = static_cast<Eigen::bfloat16>(static_cast<float>(a[c]) *
                                          static_cast<float>(b[c]));
  }
}
template <>
inline void CombineRows<Eigen::bfloat16, false>(
    const Eigen::bfloat16* __restrict a, const Eigen::bfloat16* __restrict b,
    int w, Eigen::bfloat16* __restrict out) {
  int c = 0;
  for (; c + 4 <= w; c += 4) {
    StoreBf16x4(out + c, LoadBf16x4(a + c) + LoadBf16x4(b + c));
  }
  for (; c < w; ++c) {
    out[c] = static_cast<Eigen::bfloat16>(static_cast<float>(a[c]) +
                                          static_cast<float>(b[c]));
  }
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
template <>
inline void AccumulateRow<Eigen::bfloat16, float>(
    float* __restrict acc, const Eigen::bfloat16* __restrict g,
    const Eigen::bfloat16* __restrict o, int w) {
  int c = 0;
  if (o == nullptr) {
    for (; c + 4 <= w; c += 4) {
      StoreV4(acc + c, LoadV4(acc + c) + LoadBf16x4(g + c));
    }
    for (; c < w; ++c) acc[c] += static_cast<float>(g[c]);
  } else {
    for (; c + 4 <= w; c += 4) {
      StoreV4(acc + c,
              LoadV4(acc + c) + LoadBf16x4(g + c) * LoadBf16x4(o + c));
    }
    for (; c < w; ++c) {
      acc[c] += static_cast<float>(g[c]) * static_cast<float>(o[c]);
    }
  }
}

// Asks for every cache line of p[0, len) ahead of its use.
template <typename E>
inline void PrefetchRange(const E* p, int len, bool for_write) {
  const char* begin = reinterpret_cast<const char*>(p);
  const char* end = reinterpret_cast<const char*>(p + len);
  for (const char* line = begin; line < end; line += 64) {
    if (for_write) {
      __builtin_prefetch(line, 1);
    } else {
      __builtin_prefetch(line, 0);
    }
  }
}

}  // namespace cpu_rows
}  // namespace multihash
}  // namespace tensorflow

#endif  // TENSORFLOW_MULTIHASH_CC_KERNELS_MULTIHASH_CPU_ROWS_H_
