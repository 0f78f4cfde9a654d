// GPU kernels of MultiHashLookup and MultiHashLookupGrad: they validate,
// allocate with TensorFlow's allocators and call the framework-free CUDA
// launchers of gpu_kernels/ on the op's stream. Built with the host compiler;
// only when the build found CUDA (GOOGLE_CUDA).
//
// The same file also builds the test-only library of
// gpu_kernels/emu/build_tf_emulation.sh (TFMH_TF_GPU_EMULATION): there the
// launchers are compiled over the CPU emulation of CUDA (gpu_kernels/emu),
// and these kernels register on the CPU device under the kernel label
// "gpu_emulation", so the Python tests run this code inside TensorFlow
// without a GPU. Only OpStream and the registration differ between the two.
#if GOOGLE_CUDA || TFMH_TF_GPU_EMULATION

#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "cc/kernels/multihash_kernel_base.h"
#include "gpu_kernels/multihash_gpu.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/util/determinism.h"
#if GOOGLE_CUDA
#include "xla/stream_executor/device_address.h"
#include "xla/stream_executor/stream.h"
#endif

namespace tensorflow {
namespace multihash {
namespace {

template <typename T>
struct GpuDType;
template <>
struct GpuDType<float> {
  static constexpr tfmh::gpu::DType value = tfmh::gpu::DType::kFloat32;
};
template <>
struct GpuDType<Eigen::half> {
  static constexpr tfmh::gpu::DType value = tfmh::gpu::DType::kFloat16;
};
template <>
struct GpuDType<bfloat16> {
  static constexpr tfmh::gpu::DType value = tfmh::gpu::DType::kBFloat16;
};

template <typename Index>
constexpr tfmh::gpu::IdType GpuIdType() {
  return sizeof(Index) == 4 ? tfmh::gpu::IdType::kInt32
                            : tfmh::gpu::IdType::kInt64;
}

// The op's stream: its raw cudaStream_t for the launchers, copies from
// device memory to the host, and waiting for the work enqueued so far.
#if GOOGLE_CUDA
class OpStream {
 public:
  explicit OpStream(OpKernelContext* ctx)
      : stream_(ctx->op_device_context()->stream()) {}
  void* handle() const { return stream_->platform_specific_handle().stream; }
  absl::Status CopyToHost(void* host, const void* device, uint64_t bytes) {
    return stream_->Memcpy(
        host, se::DeviceAddressBase(const_cast<void*>(device), bytes), bytes);
  }
  absl::Status Wait() { return stream_->BlockHostUntilDone(); }

 private:
  se::Stream* stream_;
};
#else
// Emulation: the emulated runtime runs every call synchronously on the host
// (its default stream is nullptr), and "device" memory is host memory.
class OpStream {
 public:
  explicit OpStream(OpKernelContext*) {}
  void* handle() const { return nullptr; }
  absl::Status CopyToHost(void* host, const void* device, uint64_t bytes) {
    std::memcpy(host, device, bytes);
    return absl::OkStatus();
  }
  absl::Status Wait() { return absl::OkStatus(); }
};
#endif

absl::Status LaunchStatus(const char* what, tfmh::gpu::Status status) {
  if (status == 0) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, " failed: ",
                                          tfmh::gpu::ErrorString(status)));
}

tfmh::gpu::ShardPointers PointersOf(const ResolvedTables& tables) {
  tfmh::gpu::ShardPointers p = {};
  for (size_t s = 0; s < tables.shards().size(); ++s) {
    p.data[s] = tables.shards()[s]->data();
  }
  return p;
}

// Host memory the GPU can copy into directly.
absl::Status AllocatePinned(OpKernelContext* ctx, DataType dtype, int64_t n,
                            Tensor* t) {
  AllocatorAttributes attr;
#if GOOGLE_CUDA
  attr.set_on_host(true);
  attr.set_gpu_compatible(true);
#endif
  return ctx->allocate_temp(dtype, TensorShape({n}), t, attr);
}

// The launchers read no environment; their defaults are the release
// behaviour. The one exception is for tests/test_gpu_kernels_emulated.py:
// TFMH_GPU_SORTED_MERGE = 0 or 1 makes the sorted gradient never or always
// merge equal ids first. It is read once, when the kernel is constructed.
tfmh::gpu::LaunchOptions GradLaunchOptionsFromEnvironment() {
  tfmh::gpu::LaunchOptions options;
  const char* merge = std::getenv("TFMH_GPU_SORTED_MERGE");
  if (merge != nullptr && merge[0] == '0') {
    options.sorted_merge = tfmh::gpu::SortedMerge::kNever;
  } else if (merge != nullptr && merge[0] == '1') {
    options.sorted_merge = tfmh::gpu::SortedMerge::kAlways;
  }
  return options;
}

}  // namespace

template <typename T, typename Index>
class MultiHashLookupGpuOp : public MultiHashKernelBase {
 public:
  using MultiHashKernelBase::MultiHashKernelBase;

  void Compute(OpKernelContext* ctx) override {
    ResolvedTables tables;
    OP_REQUIRES_OK(ctx, ResolveTables(ctx, &tables));
    const tfmh::Layout& layout = tables.layout();
    const Tensor& ids = ctx->input(ctx->num_inputs() - 1);
    TensorShape out_shape;
    OP_REQUIRES_OK(ctx, OutputShape(ids, layout, &out_shape));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &out));
    const int64_t n = ids.NumElements();
    if (n == 0) return;

    // The kernel checks the ids on the device; the first bad position comes
    // back to the host so the error is raised here, as on the CPU.
    Tensor first_bad, first_bad_host;
    OP_REQUIRES_OK(ctx,
                   ctx->allocate_temp(DT_INT64, TensorShape({1}), &first_bad));
    OP_REQUIRES_OK(ctx, AllocatePinned(ctx, DT_INT64, 1, &first_bad_host));
    int64_t* d_first_bad = first_bad.flat<int64_t>().data();
    OpStream stream(ctx);
    OP_REQUIRES_OK(
        ctx, LaunchStatus("MultiHashLookup",
                          tfmh::gpu::LaunchLookup(
                              layout, GpuDType<T>::value, GpuIdType<Index>(),
                              PointersOf(tables), ids.data(), n, out->data(),
                              d_first_bad, stream.handle(),
                              tfmh::gpu::LaunchOptions())));
    int64_t* h_first_bad = first_bad_host.flat<int64_t>().data();
    OP_REQUIRES_OK(ctx,
                   stream.CopyToHost(h_first_bad, d_first_bad, sizeof(int64_t)));
    OP_REQUIRES_OK(ctx, stream.Wait());
    if (*h_first_bad != std::numeric_limits<int64_t>::max()) {
      const int64_t position = *h_first_bad;
      Index bad_id = 0;
      const Index* d_bad = ids.flat<Index>().data() + position;
      OP_REQUIRES_OK(ctx, stream.CopyToHost(&bad_id, d_bad, sizeof(Index)));
      OP_REQUIRES_OK(ctx, stream.Wait());
      ctx->CtxFailure(
          OutOfRangeError(layout, position, static_cast<int64_t>(bad_id)));
    }
  }
};

template <typename T, typename Index>
class MultiHashLookupGradGpuOp : public MultiHashKernelBase {
 public:
  explicit MultiHashLookupGradGpuOp(OpKernelConstruction* ctx)
      : MultiHashKernelBase(ctx),
        options_(GradLaunchOptionsFromEnvironment()) {}

  void Compute(OpKernelContext* ctx) override {
    ResolvedTables tables;
    OP_REQUIRES_OK(ctx, ResolveTables(ctx, &tables));
    const tfmh::Layout& layout = tables.layout();
    const Tensor& grad = ctx->input(0);
    const Tensor& ids = ctx->input(ctx->num_inputs() - 1);
    const int64_t n = ids.NumElements();
    const tfmh::gpu::IdType id_type = GpuIdType<Index>();
    OpStream stream(ctx);
    // The ids first, on the device, as the forward does: an out-of-range id
    // is the same InvalidArgument error as on the CPU (the launchers below
    // would only skip it).
    if (n > 0) {
      Tensor first_bad, first_bad_host;
      OP_REQUIRES_OK(
          ctx, ctx->allocate_temp(DT_INT64, TensorShape({1}), &first_bad));
      OP_REQUIRES_OK(ctx, AllocatePinned(ctx, DT_INT64, 1, &first_bad_host));
      int64_t* d_first_bad = first_bad.flat<int64_t>().data();
      OP_REQUIRES_OK(ctx, LaunchStatus("MultiHashLookupGrad",
                                       tfmh::gpu::LaunchCheckIds(
                                           layout, id_type, ids.data(), n,
                                           d_first_bad, stream.handle())));
      int64_t* h_first_bad = first_bad_host.flat<int64_t>().data();
      OP_REQUIRES_OK(ctx, stream.CopyToHost(h_first_bad, d_first_bad,
                                            sizeof(int64_t)));
      OP_REQUIRES_OK(ctx, stream.Wait());
      if (*h_first_bad != std::numeric_limits<int64_t>::max()) {
        const int64_t position = *h_first_bad;
        Index bad_id = 0;
        const Index* d_bad = ids.flat<Index>().data() + position;
        OP_REQUIRES_OK(ctx, stream.CopyToHost(&bad_id, d_bad, sizeof(Index)));
        OP_REQUIRES_OK(ctx, stream.Wait());
        ctx->CtxFailure(
            OutOfRangeError(layout, position, static_cast<int64_t>(bad_id)));
        return;
      }
    }
    OP_REQUIRES_OK(ctx, CheckGradInputs(ctx, layout, grad, ids));
    const int num_shards = layout.shard_begin[layout.num_tables];

    // Phase 1 finds the distinct rows of every shard; their counts size the
    // outputs, so they come back to the host before phase 2. With
    // tf.config.experimental.enable_op_determinism() the sums take the
    // sorted algorithm, which gives the same bits on every run; otherwise
    // the launcher may add with atomics (see multihash_gpu.h).
    const tfmh::gpu::GradAlgorithm algorithm =
        OpDeterminismRequired() ? tfmh::gpu::GradAlgorithm::kSorted
                                : tfmh::gpu::GradAlgorithm::kAuto;
    const size_t ws_bytes = tfmh::gpu::LookupGradWorkspaceBytes(
        layout, GpuDType<T>::value, id_type, n, algorithm, options_);
    if (ws_bytes == 0) {
      int64_t rows = 0;
      for (int j = 0; j < layout.num_tables; ++j) rows += layout.rows[j];
      ctx->CtxFailure(absl::InvalidArgumentError(absl::StrCat(
          "the GPU gradient cannot sum ", n, " ids over ", layout.num_tables,
          " tables of ", rows,
          " rows in all: the deterministic algorithm takes at most 2^32 - 1 "
          "ids and k * ids <= 2^31 - 1, the other at most 2^31 - 1 rows")));
      return;
    }
    Tensor workspace, counts;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(
                            DT_INT8,
                            TensorShape({static_cast<int64_t>(ws_bytes)}),
                            &workspace));
    OP_REQUIRES_OK(ctx, AllocatePinned(ctx, DT_INT64, num_shards, &counts));
    int64_t* h_counts = counts.flat<int64_t>().data();
    OP_REQUIRES_OK(ctx, LaunchStatus("MultiHashLookupGrad",
                                     tfmh::gpu::LaunchLookupGradPrepare(
                                         layout, GpuDType<T>::value, id_type,
                                         ids.data(), n, workspace.data(),
                                         ws_bytes, h_counts, stream.handle(),
                                         algorithm, options_)));
    OP_REQUIRES_OK(ctx, stream.Wait());

    void* indices[tfmh::kMaxShards] = {};
    void* values[tfmh::kMaxShards] = {};
    for (int j = 0; j < layout.num_tables; ++j) {
      for (int s = layout.shard_begin[j]; s < layout.shard_begin[j + 1]; ++s) {
        Tensor* idx = nullptr;
        Tensor* val = nullptr;
        OP_REQUIRES_OK(ctx, ctx->allocate_output(
                                s, TensorShape({h_counts[s]}), &idx));
        OP_REQUIRES_OK(ctx,
                       ctx->allocate_output(
                           num_shards + s,
                           TensorShape({h_counts[s], layout.width[j]}), &val));
        indices[s] = idx->data();
        values[s] = val->data();
      }
    }
    OP_REQUIRES_OK(ctx, LaunchStatus("MultiHashLookupGrad",
                                     tfmh::gpu::LaunchLookupGradFinish(
                                         layout, GpuDType<T>::value, id_type,
                                         PointersOf(tables), ids.data(),
                                         grad.data(), n, workspace.data(),
                                         ws_bytes, indices, values,
                                         stream.handle(), algorithm,
                                         options_)));
  }

 private:
  // The same for all three launcher calls of a gradient, as they require.
  const tfmh::gpu::LaunchOptions options_;
};

#if GOOGLE_CUDA
#define TFMH_GPU_KERNEL(op) Name(op).Device(DEVICE_GPU)
#else
#define TFMH_GPU_KERNEL(op) Name(op).Device(DEVICE_CPU).Label("gpu_emulation")
#endif

#define REGISTER_GPU(T, Index)                                            \
  REGISTER_KERNEL_BUILDER(TFMH_GPU_KERNEL("MultiHashLookup")              \
                              .TypeConstraint<T>("T")                     \
                              .TypeConstraint<Index>("Tidx"),             \
                          MultiHashLookupGpuOp<T, Index>);                \
  REGISTER_KERNEL_BUILDER(TFMH_GPU_KERNEL("MultiHashLookupGrad")          \
                              .TypeConstraint<T>("T")                     \
                              .TypeConstraint<Index>("Tidx"),             \
                          MultiHashLookupGradGpuOp<T, Index>);

#define REGISTER_GPU_ALL_INDEX(T) \
  REGISTER_GPU(T, int32);         \
  REGISTER_GPU(T, int64_t);

TF_CALL_float(REGISTER_GPU_ALL_INDEX);
TF_CALL_half(REGISTER_GPU_ALL_INDEX);
TF_CALL_bfloat16(REGISTER_GPU_ALL_INDEX);

#undef REGISTER_GPU_ALL_INDEX
#undef REGISTER_GPU
#undef TFMH_GPU_KERNEL

}  // namespace multihash
}  // namespace tensorflow

#endif  // GOOGLE_CUDA || TFMH_TF_GPU_EMULATION
