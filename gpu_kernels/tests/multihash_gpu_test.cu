// Standalone correctness test of the multi-hash CUDA kernels (no TensorFlow).
// For every dtype x id type x combine x shard layout x k in {2, 3} and a set
// of id patterns it runs the forward lookup and both backward phases, the way
// the TensorFlow glue does, and compares with plain CPU loops in double.
// Device outputs are poisoned (0xFF bytes: NaN / -1) before each launch and
// have poisoned guard elements after the end that must stay untouched.
//
// Usage: multihash_gpu_test [--quick]   (--quick: no million-id cases)
// Built with -DTFMH_CUDA_EMULATION (gpu_kernels/emu, no GPU) it runs the
// million-id case for 6 of the 72 combos only.
// Prints one line per case and "N passed, M failed"; exits 1 on a failure.
#include "gpu_kernels/cuda_compat.h"

#include <algorithm>
#include <cinttypes>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gpu_kernels/multihash_gpu.h"

using tfmh::Combine;
using tfmh::Layout;
using tfmh::Strategy;
using tfmh::gpu::DType;
using tfmh::gpu::GradAlgorithm;
using tfmh::gpu::IdType;
using tfmh::gpu::LaunchOptions;
using tfmh::gpu::SortedMerge;

#define CUDA_OK(x)                                                        \
  do {                                                                    \
    cudaError_t e_ = (x);                                                 \
    if (e_ != cudaSuccess) {                                              \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x,     \
                   cudaGetErrorString(e_));                               \
      std::exit(2);                                                       \
    }                                                                     \
  } while (0)

namespace {

constexpr int64_t kGuard = 64;  // poisoned elements after every output

size_t ElemSize(DType d) { return d == DType::kFloat32 ? 4 : 2; }
const char* DName(DType d) {
  return d == DType::kFloat32 ? "f32" : d == DType::kFloat16 ? "f16" : "bf16";
}
const char* AlgoName(GradAlgorithm a) {
  return a == GradAlgorithm::kSorted ? "sorted" : a == GradAlgorithm::kDense ? "dense" : "auto";
}
const char* OpName(Combine op) {
  return op == Combine::kAdd ? "add" : op == Combine::kMul ? "mul" : "concat";
}

// Rounds x to the element type, stores it at buf[i], returns the stored value.
double Store(std::vector<uint8_t>& buf, DType d, size_t i, double x) {
  if (d == DType::kFloat32) {
    float f = static_cast<float>(x);
    std::memcpy(&buf[4 * i], &f, 4);
    return f;
  }
  if (d == DType::kFloat16) {
    __half h = __float2half_rn(static_cast<float>(x));
    std::memcpy(&buf[2 * i], &h, 2);
    return __half2float(h);
  }
  __nv_bfloat16 b = __float2bfloat16_rn(static_cast<float>(x));
  std::memcpy(&buf[2 * i], &b, 2);
  return __bfloat162float(b);
}

double Load(const std::vector<uint8_t>& buf, DType d, size_t i) {
  if (d == DType::kFloat32) {
    float f;
    std::memcpy(&f, &buf[4 * i], 4);
    return f;
  }
  if (d == DType::kFloat16) {
    __half h;
    std::memcpy(&h, &buf[2 * i], 2);
    return __half2float(h);
  }
  __nv_bfloat16 b;
  std::memcpy(&b, &buf[2 * i], 2);
  return __bfloat162float(b);
}

// Relative rounding error of one store to the element type.
double Eps(DType d) {
  return d == DType::kFloat32 ? 1.2e-7 : d == DType::kFloat16 ? 9.8e-4 : 7.9e-3;
}

struct DeviceBuf {
  void* p = nullptr;
  size_t bytes = 0;
  DeviceBuf() = default;
  explicit DeviceBuf(size_t b) : bytes(b) {
    if (b > 0) CUDA_OK(cudaMalloc(&p, b));
  }
  ~DeviceBuf() {
    if (p) cudaFree(p);
  }
  DeviceBuf(const DeviceBuf&) = delete;
  DeviceBuf& operator=(const DeviceBuf&) = delete;
};

bool AllFF(const std::vector<uint8_t>& v, size_t from) {
  for (size_t i = from; i < v.size(); ++i) {
    if (v[i] != 0xFF) return false;
  }
  return true;
}

struct Tables {
  Layout l;
  DType dt;
  int num_shards = 0;
  std::vector<std::vector<double>> full;  // per table: rows x width, rounded
  std::vector<std::vector<uint8_t>> shard_host;
  std::vector<DeviceBuf*> shard_dev;
  std::vector<int64_t> shard_offset_bytes;  // misalignment applied on device
  tfmh::gpu::ShardPointers ptrs = {};
  ~Tables() {
    for (auto* b : shard_dev) delete b;
  }
};

// Builds random tables. shard_rows: flat per shard; misalign: add one element
// of byte offset to the device pointer of shard 1 (forces scalar vectors).
bool MakeTables(Strategy st, Combine op, DType dt, const std::vector<int64_t>& rows,
                const std::vector<int32_t>& widths, const std::vector<int32_t>& spt,
                const std::vector<int64_t>& shard_rows, bool misalign,
                std::mt19937_64& rng, Tables* t) {
  const int k = static_cast<int>(rows.size());
  std::string err = tfmh::InitLayout(st, op, k, rows.data(), widths.data(),
                                     spt.data(), shard_rows.data(), &t->l);
  if (!err.empty()) {
    std::printf("InitLayout failed: %s\n", err.c_str());
    return false;
  }
  t->dt = dt;
  t->num_shards = t->l.shard_begin[k];
  std::uniform_real_distribution<double> uni(-1.0, 1.0);
  const size_t es = ElemSize(dt);
  t->full.resize(k);
  for (int j = 0; j < k; ++j) {
    t->full[j].resize(static_cast<size_t>(rows[j]) * widths[j]);
    for (int s = t->l.shard_begin[j]; s < t->l.shard_begin[j + 1]; ++s) {
      const int64_t nr = tfmh::ShardRows(t->l, j, s);
      std::vector<uint8_t> host(static_cast<size_t>(nr) * widths[j] * es);
      for (int64_t r = 0; r < nr; ++r) {
        for (int c = 0; c < widths[j]; ++c) {
          double x = uni(rng);
          if (op == Combine::kMul) x = (x >= 0 ? 0.5 : -0.5) + x * 0.75;
          const size_t e = static_cast<size_t>(r) * widths[j] + c;
          const double stored = Store(host, dt, e, x);
          t->full[j][static_cast<size_t>(t->l.shard_row[s] + r) * widths[j] + c] = stored;
        }
      }
      const int64_t off = (misalign && s == 1) ? static_cast<int64_t>(es) : 0;
      auto* d = new DeviceBuf(host.size() + (host.empty() ? 0 : off));
      if (!host.empty()) {
        CUDA_OK(cudaMemcpy(static_cast<char*>(d->p) + off, host.data(), host.size(),
                           cudaMemcpyHostToDevice));
        t->ptrs.data[s] = static_cast<char*>(d->p) + off;
      } else {
        t->ptrs.data[s] = nullptr;
      }
      t->shard_dev.push_back(d);
      t->shard_host.push_back(std::move(host));
    }
  }
  return true;
}

struct Counter {
  int passed = 0, failed = 0;
};

// Ids as int64 on the host; converted to the id type for the device.
std::vector<uint8_t> IdBytes(const std::vector<int64_t>& ids, IdType it) {
  std::vector<uint8_t> b(ids.size() * (it == IdType::kInt32 ? 4 : 8));
  for (size_t i = 0; i < ids.size(); ++i) {
    if (it == IdType::kInt32) {
      const int32_t v = static_cast<int32_t>(ids[i]);
      std::memcpy(&b[4 * i], &v, 4);
    } else {
      std::memcpy(&b[8 * i], &ids[i], 8);
    }
  }
  return b;
}

// Runs forward + backward for one id set; returns "" or the first mismatch.
// force_key64: LaunchOptions::force_key64 in every backward run.
std::string RunCase(const Tables& t, IdType it, const std::vector<int64_t>& ids,
                    bool force_key64 = false) {
  const Layout& l = t.l;
  const DType dt = t.dt;
  const size_t es = ElemSize(dt);
  const int k = l.num_tables;
  const int64_t n = static_cast<int64_t>(ids.size());
  const int W = l.out_width;
  char msg[512];
  cudaStream_t stream;
  CUDA_OK(cudaStreamCreate(&stream));
  struct StreamGuard {
    cudaStream_t s;
    ~StreamGuard() { cudaStreamDestroy(s); }
  } sg{stream};

  const std::vector<uint8_t> id_bytes = IdBytes(ids, it);
  DeviceBuf d_ids(id_bytes.size());
  if (n > 0) {
    CUDA_OK(cudaMemcpy(d_ids.p, id_bytes.data(), id_bytes.size(), cudaMemcpyHostToDevice));
  }
  auto valid = [&](int64_t id) { return tfmh::IdInRange(l, id); };

  // ------------------------------------------------------------ forward
  // The forward with each batch size of the k <= 2 kernel
  // (LaunchOptions::forward_batch; for k = 3 all runs take the same kernel).
  auto forward = [&](int batch) -> std::string {
    LaunchOptions options;
    options.forward_batch = batch;
    if (tfmh::gpu::ForwardBatchUsed(options) != batch) {
      return "forward_batch " + std::to_string(batch) + " runs " +
             std::to_string(tfmh::gpu::ForwardBatchUsed(options)) +
             ": build with -DTFMH_GPU_TUNING_VARIANTS (device_check.sh does)";
    }
    const size_t out_elems = static_cast<size_t>(n) * W;
    DeviceBuf d_out((out_elems + kGuard) * es);
    DeviceBuf d_first_bad(sizeof(int64_t));
    CUDA_OK(cudaMemset(d_out.p, 0xFF, d_out.bytes));
    CUDA_OK(cudaMemset(d_first_bad.p, 0x11, sizeof(int64_t)));
    int st = tfmh::gpu::LaunchLookup(l, dt, it, t.ptrs, d_ids.p, n, d_out.p,
                                     static_cast<int64_t*>(d_first_bad.p), stream,
                                     options);
    if (st != 0) return std::string("LaunchLookup: ") + tfmh::gpu::ErrorString(st);
    CUDA_OK(cudaStreamSynchronize(stream));
    std::vector<uint8_t> out(d_out.bytes);
    CUDA_OK(cudaMemcpy(out.data(), d_out.p, out.size(), cudaMemcpyDeviceToHost));
    int64_t first_bad = 0;
    CUDA_OK(cudaMemcpy(&first_bad, d_first_bad.p, 8, cudaMemcpyDeviceToHost));
    int64_t want_bad = INT64_MAX;
    for (int64_t i = 0; i < n; ++i) {
      if (!valid(ids[i])) {
        want_bad = i;
        break;
      }
    }
    if (first_bad != want_bad) {
      std::snprintf(msg, sizeof(msg), "first_bad %" PRId64 ", want %" PRId64, first_bad, want_bad);
      return msg;
    }
    if (!AllFF(out, out_elems * es)) return "forward wrote past the output";
    for (int64_t i = 0; i < n; ++i) {
      const int64_t id = ids[i];
      for (int c = 0; c < W; ++c) {
        const double got = Load(out, dt, static_cast<size_t>(i) * W + c);
        double want = 0, scale = 0;
        bool exact = false;
        if (!valid(id)) {
          exact = true;
        } else if (l.combine == Combine::kConcat) {
          int j = 0;
          while (j + 1 < k && c >= l.col_offset[j + 1]) ++j;
          want = t.full[j][static_cast<size_t>(tfmh::TableRow(l, j, id)) * l.width[j] +
                           (c - l.col_offset[j])];
          exact = true;
        } else {
          want = l.combine == Combine::kMul ? 1.0 : 0.0;
          for (int j = 0; j < k; ++j) {
            const double x =
                t.full[j][static_cast<size_t>(tfmh::TableRow(l, j, id)) * l.width[j] + c];
            want = l.combine == Combine::kMul ? want * x : want + x;
            scale = l.combine == Combine::kMul ? (j == 0 ? std::fabs(x) : scale * std::fabs(x))
                                               : scale + std::fabs(x);
          }
        }
        const double tol = exact ? 0.0 : Eps(dt) * std::fabs(want) + 1e-6 * scale + 1e-7;
        if (!(std::fabs(got - want) <= tol)) {
          std::snprintf(msg, sizeof(msg),
                        "forward out[%" PRId64 "][%d] = %.9g, want %.9g (id %" PRId64 ")", i, c,
                        got, want, id);
          return msg;
        }
      }
    }
    return "";
  };
  for (int batch : {4, 2, 8}) {
    const std::string err = forward(batch);
    if (!err.empty()) return "forward (batch " + std::to_string(batch) + "): " + err;
  }

  // ------------------------------------------------------------ backward
  std::vector<uint8_t> grad((static_cast<size_t>(n) * W) * es);
  std::vector<double> gradd(static_cast<size_t>(n) * W);
  {
    std::mt19937_64 grng(static_cast<uint64_t>(n) * 7919 + W);
    std::uniform_real_distribution<double> uni(-1.0, 1.0);
    for (size_t e = 0; e < gradd.size(); ++e) gradd[e] = Store(grad, dt, e, uni(grng));
  }
  DeviceBuf d_grad(grad.size());
  if (!grad.empty()) {
    CUDA_OK(cudaMemcpy(d_grad.p, grad.data(), grad.size(), cudaMemcpyHostToDevice));
  }
  // Reference: dense per-table sums in double.
  std::vector<std::vector<double>> sum(k), abssum(k);
  std::vector<std::vector<int64_t>> cnt(k);
  for (int j = 0; j < k; ++j) {
    sum[j].assign(static_cast<size_t>(l.rows[j]) * l.width[j], 0.0);
    abssum[j].assign(sum[j].size(), 0.0);
    cnt[j].assign(static_cast<size_t>(l.rows[j]), 0);
  }
  for (int64_t i = 0; i < n; ++i) {
    const int64_t id = ids[i];
    if (!valid(id)) continue;
    int64_t row[tfmh::kMaxTables];
    for (int j = 0; j < k; ++j) row[j] = tfmh::TableRow(l, j, id);
    for (int j = 0; j < k; ++j) {
      ++cnt[j][row[j]];
      for (int c = 0; c < l.width[j]; ++c) {
        double term = gradd[static_cast<size_t>(i) * W + l.col_offset[j] + c];
        if (l.combine == Combine::kMul) {
          for (int q = 0; q < k; ++q) {
            if (q != j) term *= t.full[q][static_cast<size_t>(row[q]) * l.width[q] + c];
          }
        }
        sum[j][static_cast<size_t>(row[j]) * l.width[j] + c] += term;
        abssum[j][static_cast<size_t>(row[j]) * l.width[j] + c] += std::fabs(term);
      }
    }
  }
  // Both algorithms of the backward pass, each against the reference.
  // `values` (if not null) gets every shard's output values, as bytes.
  // `merge`: LaunchOptions::sorted_merge.
  auto backward = [&](GradAlgorithm algo, SortedMerge merge,
                      std::vector<std::vector<uint8_t>>* values) -> std::string {
    if (values != nullptr) values->assign(t.num_shards, {});
    LaunchOptions options;
    options.force_key64 = force_key64;
    options.sorted_merge = merge;
    const size_t ws_bytes =
        tfmh::gpu::LookupGradWorkspaceBytes(l, dt, it, n, algo, options);
    if (ws_bytes == 0) return "LookupGradWorkspaceBytes returned 0";
    DeviceBuf d_ws(ws_bytes);
    CUDA_OK(cudaMemset(d_ws.p, 0xA5, ws_bytes));  // stale state must not matter
    int64_t* h_counts = nullptr;
    CUDA_OK(cudaMallocHost(&h_counts, sizeof(int64_t) * tfmh::kMaxShards));
    struct HostGuard {
      int64_t* p;
      ~HostGuard() { cudaFreeHost(p); }
    } hg{h_counts};
    for (int s = 0; s < tfmh::kMaxShards; ++s) h_counts[s] = -7;
    int st = tfmh::gpu::LaunchLookupGradPrepare(l, dt, it, d_ids.p, n, d_ws.p, ws_bytes, h_counts,
                                            stream, algo, options);
    if (st != 0) return std::string("LaunchLookupGradPrepare: ") + tfmh::gpu::ErrorString(st);
    CUDA_OK(cudaStreamSynchronize(stream));
    // Expected unique rows per shard.
    std::vector<std::vector<int64_t>> want_rows(t.num_shards);
    for (int j = 0; j < k; ++j) {
      for (int64_t r = 0; r < l.rows[j]; ++r) {
        if (cnt[j][r] > 0) {
          const int s = tfmh::ShardOf(l, j, r);
          want_rows[s].push_back(r);
        }
      }
    }
    for (int s = 0; s < t.num_shards; ++s) {
      if (h_counts[s] != static_cast<int64_t>(want_rows[s].size())) {
        std::snprintf(msg, sizeof(msg), "shard %d: count %" PRId64 ", want %zu", s, h_counts[s],
                      want_rows[s].size());
        return msg;
      }
    }
    const size_t isz = it == IdType::kInt32 ? 4 : 8;
    std::vector<DeviceBuf*> d_idx(t.num_shards), d_val(t.num_shards);
    struct VecGuard {
      std::vector<DeviceBuf*>* a;
      std::vector<DeviceBuf*>* b;
      ~VecGuard() {
        for (auto* p : *a) delete p;
        for (auto* p : *b) delete p;
      }
    } vg{&d_idx, &d_val};
    std::vector<void*> idx_ptrs(t.num_shards), val_ptrs(t.num_shards);
    for (int j = 0; j < k; ++j) {
      for (int s = l.shard_begin[j]; s < l.shard_begin[j + 1]; ++s) {
        const int64_t c = h_counts[s];
        d_idx[s] = new DeviceBuf((c + kGuard) * isz);
        d_val[s] = new DeviceBuf((c * l.width[j] + kGuard) * es);
        CUDA_OK(cudaMemset(d_idx[s]->p, 0xFF, d_idx[s]->bytes));
        CUDA_OK(cudaMemset(d_val[s]->p, 0xFF, d_val[s]->bytes));
        idx_ptrs[s] = d_idx[s]->p;
        val_ptrs[s] = d_val[s]->p;
      }
    }
    st = tfmh::gpu::LaunchLookupGradFinish(l, dt, it, t.ptrs, d_ids.p, d_grad.p, n, d_ws.p,
                                           ws_bytes, idx_ptrs.data(), val_ptrs.data(), stream,
                                           algo, options);
    if (st != 0) return std::string("LaunchLookupGradFinish: ") + tfmh::gpu::ErrorString(st);
    CUDA_OK(cudaStreamSynchronize(stream));
    for (int j = 0; j < k; ++j) {
      const int w = l.width[j];
      for (int s = l.shard_begin[j]; s < l.shard_begin[j + 1]; ++s) {
        const int64_t c = h_counts[s];
        std::vector<uint8_t> hi(d_idx[s]->bytes), hv(d_val[s]->bytes);
        CUDA_OK(cudaMemcpy(hi.data(), d_idx[s]->p, hi.size(), cudaMemcpyDeviceToHost));
        CUDA_OK(cudaMemcpy(hv.data(), d_val[s]->p, hv.size(), cudaMemcpyDeviceToHost));
        if (values != nullptr) {
          (*values)[s].assign(hv.begin(), hv.begin() + c * w * es);
        }
        if (!AllFF(hi, c * isz)) return "backward wrote past the indices of shard " + std::to_string(s);
        if (!AllFF(hv, c * w * es)) return "backward wrote past the values of shard " + std::to_string(s);
        for (int64_t u = 0; u < c; ++u) {
          int64_t got_idx;
          if (isz == 4) {
            int32_t v;
            std::memcpy(&v, &hi[4 * u], 4);
            got_idx = v;
          } else {
            std::memcpy(&got_idx, &hi[8 * u], 8);
          }
          const int64_t row = want_rows[s][u];
          const int64_t want_idx = row - l.shard_row[s];
          if (got_idx != want_idx) {
            std::snprintf(msg, sizeof(msg), "shard %d: index[%" PRId64 "] = %" PRId64 ", want %" PRId64,
                          s, u, got_idx, want_idx);
            return msg;
          }
          for (int cc = 0; cc < w; ++cc) {
            const double got = Load(hv, dt, static_cast<size_t>(u) * w + cc);
            const double want = sum[j][static_cast<size_t>(row) * w + cc];
            const double tol = Eps(dt) * std::fabs(want) +
                               2e-6 * abssum[j][static_cast<size_t>(row) * w + cc] + 1e-6;
            if (!(std::fabs(got - want) <= tol)) {
              std::snprintf(msg, sizeof(msg),
                            "shard %d: value[%" PRId64 "][%d] = %.9g, want %.9g (row %" PRId64
                            ", %" PRId64 " ids)",
                            s, u, cc, got, want, row, cnt[j][row]);
              return msg;
            }
          }
        }
      }
    }
    return "";
  };
  // The sorted algorithm is deterministic: a second run, bit for bit.
  // `merge`: whether equal ids are merged first (kAuto: the launcher
  // decides).
  auto sorted = [&](SortedMerge merge, bool twice) -> std::string {
    const std::string what = merge == SortedMerge::kAuto     ? "sorted backward"
                             : merge == SortedMerge::kAlways ? "sorted backward, ids merged"
                                                             : "sorted backward, ids not merged";
    std::vector<std::vector<uint8_t>> first, second;
    std::string err = backward(GradAlgorithm::kSorted, merge, &first);
    if (err.empty() && twice) {
      err = backward(GradAlgorithm::kSorted, merge, &second);
      if (err.empty() && first != second) err = "a second run gave other bits";
    }
    return err.empty() ? "" : what + ": " + err;
  };
  std::string err = sorted(SortedMerge::kAuto, n >= 5000);
  if (!err.empty()) return err;
  err = backward(GradAlgorithm::kDense, SortedMerge::kAuto, nullptr);
  if (!err.empty()) return "dense backward: " + err;
  // kSorted either way, whatever the byte counts pick.
  err = sorted(SortedMerge::kNever, false);
  if (err.empty()) err = sorted(SortedMerge::kAlways, n >= 5000);
  return err;
}

void Report(Counter* ctr, const std::string& name, const std::string& err) {
  if (err.empty()) {
    ++ctr->passed;
    std::printf("PASS %s\n", name.c_str());
  } else {
    ++ctr->failed;
    std::printf("FAIL %s: %s\n", name.c_str(), err.c_str());
  }
  std::fflush(stdout);
}

// Splits `rows` into `parts` uneven shards (one of them empty if parts == 3
// and `with_empty`).
std::vector<int64_t> Split(int64_t rows, int parts, bool with_empty) {
  if (parts == 1) return {rows};
  if (parts == 2) {
    const int64_t a = std::max<int64_t>(1, rows * 2 / 3);
    return {a, rows - a};
  }
  if (with_empty) {
    const int64_t a = std::max<int64_t>(1, rows / 4);
    return {a, 0, rows - a};
  }
  const int64_t a = std::max<int64_t>(1, rows / 5);
  const int64_t b = std::max<int64_t>(1, rows / 2);
  return {a, b, rows - a - b};
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  for (int a = 1; a < argc; ++a) {
    if (std::strcmp(argv[a], "--quick") == 0) quick = true;
  }
  int dev = 0;
  CUDA_OK(cudaGetDevice(&dev));
  cudaDeviceProp prop;
  CUDA_OK(cudaGetDeviceProperties(&prop, dev));
  std::printf("device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
#if defined(TFMH_CUDA_EMULATION)
  std::printf("note: CPU emulation (checks logic, not speed)%s\n",
              quick ? "" : "; n=1000003 runs for the f32 k=3 multi-shard combos only");
#endif

  Counter ctr;
  const DType dtypes[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};
  const IdType itypes[] = {IdType::kInt32, IdType::kInt64};
  const Combine ops[] = {Combine::kAdd, Combine::kMul, Combine::kConcat};
  int combo = 0;
  for (DType dt : dtypes) {
    for (IdType it : itypes) {
      for (Combine op : ops) {
        for (int multi = 0; multi < 2; ++multi) {
          for (int k = 2; k <= 3; ++k, ++combo) {
            std::mt19937_64 rng(1234567 + combo);
            // Tables.
            std::vector<int64_t> rows = k == 2 ? std::vector<int64_t>{61, 53}
                                               : std::vector<int64_t>{13, 11, 7};
            // k = 2 alternates our Q-R with DeepRec's mapping (rows 61, 53:
            // colliding ids, capacity 61 * 61).
            const Strategy st =
                k == 2 ? (combo % 4 == 2 ? Strategy::kDeepRecQR : Strategy::kQR)
                       : (combo % 4 == 1 ? Strategy::kCRT : Strategy::kGeneralizedQR);
            std::vector<int32_t> widths, widths_big;
            if (op != Combine::kConcat) {
              static const int32_t ws[] = {8, 5, 16, 160, 1, 12};
              const int32_t w = ws[combo % 6];
              widths.assign(k, w);
              widths_big.assign(k, w > 16 ? 8 : w);
            } else if (k == 2) {
              static const std::vector<int32_t> ws[] = {{4, 12}, {3, 5}, {136, 8}, {2, 2}};
              widths = ws[combo % 4];
              widths_big = widths[0] > 16 ? std::vector<int32_t>{4, 12} : widths;
            } else {
              static const std::vector<int32_t> ws[] = {{8, 4, 16}, {3, 2, 7}, {8, 8, 8}, {1, 1, 1}};
              widths = ws[combo % 4];
              widths_big = widths;
            }
            std::vector<int32_t> spt;
            std::vector<int64_t> shard_rows;
            for (int j = 0; j < k; ++j) {
              const int parts = multi ? (j == 1 ? 2 : 3) : 1;
              const std::vector<int64_t> sp = Split(rows[j], parts, j == 2);
              spt.push_back(static_cast<int32_t>(sp.size()));
              shard_rows.insert(shard_rows.end(), sp.begin(), sp.end());
            }
            const bool misalign = multi && (combo % 2 == 1);
            char prefix[160];
            std::snprintf(prefix, sizeof(prefix), "%s %s %s k=%d%s %s w=%d%s", DName(dt),
                          it == IdType::kInt32 ? "i32" : "i64", OpName(op), k,
                          st == Strategy::kDeepRecQR ? " deeprec" : "",
                          multi ? "multi-shard" : "1-shard", widths[0],
                          misalign ? " misaligned" : "");
            Tables t, tb;
            if (!MakeTables(st, op, dt, rows, widths, spt, shard_rows, misalign, rng, &t) ||
                !MakeTables(st, op, dt, rows, widths_big, spt, shard_rows, misalign, rng, &tb)) {
              Report(&ctr, prefix, "table setup failed");
              continue;
            }
            const int64_t cap = t.l.capacity;
            auto uniform = [&](int64_t n) {
              std::vector<int64_t> v(n);
              std::uniform_int_distribution<int64_t> d(0, cap - 1);
              for (auto& x : v) x = d(rng);
              return v;
            };
            struct Case {
              std::string name;
              std::vector<int64_t> ids;
              bool big;
            };
            std::vector<Case> cases;
            cases.push_back({"n=1", uniform(1), false});
            cases.push_back({"n=7", uniform(7), false});
            cases.push_back({"n=0", {}, false});
            {
              std::vector<int64_t> v(quick ? 5000 : 20000);
              std::uniform_real_distribution<double> u(0.0, 1.0);
              for (auto& x : v) {
                x = std::min<int64_t>(cap - 1, static_cast<int64_t>(std::pow(u(rng), 5.0) * cap));
              }
              cases.push_back({"zipf n=" + std::to_string(v.size()), v, false});
            }
            {
              const int64_t ns = quick ? 5000 : 50000;
              cases.push_back({"all-same n=" + std::to_string(ns),
                               std::vector<int64_t>(ns, cap - 1), false});
            }
            {
              std::vector<int64_t> v = uniform(5000);
              const int64_t bad32[] = {-1, cap, cap + 12345, INT32_MIN, INT32_MAX, -cap};
              const int64_t bad64[] = {-1, cap, cap + 12345, INT64_MIN, INT64_MAX, -cap};
              const int64_t positions[] = {4999, 17, 2500, 18, 777, 3000};
              for (int q = 0; q < 6; ++q) {
                v[positions[q]] = it == IdType::kInt32 ? bad32[q] : bad64[q];
              }
              cases.push_back({"out-of-range n=5000", v, false});
            }
#if defined(TFMH_CUDA_EMULATION)
            // The CPU emulation takes seconds per million ids: only the f32
            // k=3 multi-shard combos run them (their 3M sorted items also
            // reach the larger chunk sizes); see the note main() prints.
            const bool million = !quick && dt == DType::kFloat32 && k == 3 && multi;
#else
            const bool million = !quick;
#endif
            if (million) cases.push_back({"n=1000003", uniform(1000003), true});
            for (const Case& c : cases) {
              Report(&ctr, std::string(prefix) + " | " + c.name,
                     RunCase(c.big ? tb : t, it, c.ids));
            }
          }
        }
      }
    }
  }
  // Capacity above 2^32 (64-bit mapping, 64-bit ids), every dtype and op;
  // the second round forces 64-bit sort keys in the backward pass.
  for (int key64 = 0; key64 < 2; ++key64) {
  for (DType dt : dtypes) {
    for (Combine op : ops) {
      std::mt19937_64 rng(99 + static_cast<int>(op));
      const std::vector<int64_t> rows = {2003, 1999, 1009};
      const std::vector<int32_t> widths = op == Combine::kConcat
                                              ? std::vector<int32_t>{8, 16, 8}
                                              : std::vector<int32_t>{8, 8, 8};
      const std::vector<int32_t> spt = {2, 1, 3};
      const std::vector<int64_t> shard_rows = {1000, 1003, 1999, 9, 500, 500};
      Tables t;
      std::string name = std::string(DName(dt)) + " i64 " + OpName(op) +
                         " k=3 capacity>2^32 | n=" + std::to_string(quick ? 3000 : 300000) +
                         (key64 ? " 64-bit keys" : "");
      if (!MakeTables(Strategy::kGeneralizedQR, op, dt, rows, widths, spt, shard_rows, false,
                      rng, &t)) {
        Report(&ctr, name, "table setup failed");
        continue;
      }
      std::vector<int64_t> ids(quick ? 3000 : 300000);
      std::uniform_int_distribution<int64_t> d(0, t.l.capacity - 1);
      for (auto& x : ids) x = d(rng);
      ids[1234] = t.l.capacity;  // one out-of-range id
      Report(&ctr, name, RunCase(t, IdType::kInt64, ids, /*force_key64=*/key64 != 0));
    }
  }
  }
  // What kAuto resolves to, and an unknown algorithm.
  {
    auto layout = [](int64_t r0, int64_t r1, Combine op) {
      Layout l;
      const int64_t rows[] = {r0, r1};
      const int32_t widths[] = {64, 64};
      const int32_t spt[] = {1, 1};
      tfmh::InitLayout(Strategy::kQR, op, 2, rows, widths, spt, rows, &l);
      return l;
    };
    const Layout big = layout(1000, 1000, Combine::kAdd),
                 big_mul = layout(1000, 1000, Combine::kMul),
                 skewed = layout(50, 20000, Combine::kAdd);
    struct Want {
      const Layout* l;
      int64_t n;
      GradAlgorithm asked, want;
      const char* name;
    };
    const Want wants[] = {
        {&big, 1 << 18, GradAlgorithm::kAuto, GradAlgorithm::kDense, "1000x1000 add n=2^18"},
        {&big, (1 << 18) + 1, GradAlgorithm::kAuto, GradAlgorithm::kSorted,
         "1000x1000 add n=2^18+1"},
        {&big_mul, 1 << 23, GradAlgorithm::kAuto, GradAlgorithm::kDense, "1000x1000 mul n=2^23"},
        {&big, 1000, GradAlgorithm::kAuto, GradAlgorithm::kSorted, "1000x1000 n=1000"},
        {&big, 1 << 20, GradAlgorithm::kSorted, GradAlgorithm::kSorted, "asked sorted"},
        {&big, 10, GradAlgorithm::kDense, GradAlgorithm::kDense, "asked dense"},
        {&skewed, 1 << 20, GradAlgorithm::kAuto, GradAlgorithm::kSorted, "50x20000 n=2^20"},
    };
    for (const Want& w : wants) {
      const GradAlgorithm got = tfmh::gpu::ChosenGradAlgorithm(*w.l, w.n, w.asked);
      Report(&ctr, std::string("algorithm choice ") + w.name,
             got == w.want ? "" : std::string("got ") + AlgoName(got) + ", want " + AlgoName(w.want));
    }
    // Whether kSorted merges ids: at most 3/4 of the direct path's bytes.
    const Layout big_concat = layout(1000, 1000, Combine::kConcat);
    struct Merge {
      const Layout* l;
      DType dt;
      int64_t n;
      bool want;
      const char* name;
    };
    const Merge merges[] = {
        {&big, DType::kFloat32, 6000000, true, "f32 add n=6M"},
        {&big, DType::kFloat32, 5999999, false, "f32 add n=6M-1"},
        {&big, DType::kFloat16, 8000000, false, "f16 add n=8M"},
        {&big, DType::kFloat16, 12000000, true, "f16 add n=12M"},
        {&big_mul, DType::kFloat32, 2181819, true, "f32 mul n=2181819"},
        {&big_mul, DType::kFloat32, 2181818, false, "f32 mul n=2181818"},
        {&big_concat, DType::kFloat32, 1 << 23, false, "f32 concat n=2^23"},
        {&big, DType::kFloat32, 0, false, "f32 add n=0"},
    };
    for (const Merge& m : merges) {
      const bool got = tfmh::gpu::SortedMergesIds(*m.l, m.dt, m.n, LaunchOptions());
      Report(&ctr, std::string("sorted merges ids ") + m.name,
             got == m.want ? "" : std::string("got ") + (got ? "yes" : "no"));
    }
    // LaunchOptions::sorted_merge forces the choice for any op and n > 0.
    for (const Merge& m : merges) {
      for (SortedMerge merge : {SortedMerge::kNever, SortedMerge::kAlways}) {
        LaunchOptions options;
        options.sorted_merge = merge;
        const bool want = merge == SortedMerge::kAlways && m.n > 0;
        const bool got = tfmh::gpu::SortedMergesIds(*m.l, m.dt, m.n, options);
        Report(&ctr,
               std::string("sorted merges ids, forced ") +
                   (merge == SortedMerge::kAlways ? "always " : "never ") + m.name,
               got == want ? "" : std::string("got ") + (got ? "yes" : "no"));
      }
    }
    const size_t bytes = tfmh::gpu::LookupGradWorkspaceBytes(big, DType::kFloat32, IdType::kInt64, 10,
                                                             static_cast<GradAlgorithm>(7));
    Report(&ctr, "unknown algorithm", bytes == 0 ? "" : "workspace bytes for algorithm 7");
  }
  std::printf("%d passed, %d failed\n", ctr.passed, ctr.failed);
  return ctr.failed == 0 ? 0 : 1;
}
