#!/usr/bin/env bash
# Builds the test-only op-kernel library in which the TensorFlow GPU kernels
# (cc/kernels/multihash_kernels_gpu.cc) run inside TensorFlow without a GPU:
# the CUDA launchers (gpu_kernels/*.cu) are compiled by the host
# compiler over the CPU emulation of CUDA (gpu_kernels/emu), and the kernels
# register on the CPU device under the kernel label "gpu_emulation". A graph
# built under
#   graph._kernel_label_map({"MultiHashLookup": "gpu_emulation",
#                            "MultiHashLookupGrad": "gpu_emulation"})
# runs them (tests/test_gpu_kernels_emulated.py). Load it with
# tf.load_op_library after tensorflow_multihash, which registers the ops.
#
#   gpu_kernels/emu/build_tf_emulation.sh     prints the library's path
#
# Environment: PYTHON (default $PYTHON_BIN_PATH, else .venv/bin/python), the
# interpreter with TensorFlow; CXX (default g++); NVCC and CUDA_INCLUDE as in
# device_check.sh (only the toolkit's headers are used). Output in
# gpu_kernels/build/tf_emu, rebuilt only when a source is newer or the
# TensorFlow differs. Exit status 3: no CUDA toolkit headers found.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-${PYTHON_BIN_PATH:-$ROOT/.venv/bin/python}}"
CXX="${CXX:-g++}"
NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
OUTDIR="$ROOT/gpu_kernels/build/tf_emu"
LIB="$OUTDIR/_multihash_ops_gpu_emulation.so"

source "$ROOT/gpu_kernels/emu/cuda_include.sh"
if ! find_cuda_include "$NVCC" "$PYTHON"; then
  echo "no CUDA toolkit headers found (set CUDA_INCLUDE)" >&2
  exit 3
fi

KERNEL_SRCS=(gpu_kernels/*.cu)
# The emulated CUDA: its runtime API and its kernel execution.
EMU_SRCS=(gpu_kernels/emu/cuda_emu_runtime.cc gpu_kernels/emu/cuda_emu_kernels.cc)
SRCS=(cc/kernels/multihash_kernels_gpu.cc cc/kernels/multihash_kernel_base.cc
      "${KERNEL_SRCS[@]}" "${EMU_SRCS[@]}"
      gpu_kernels/emu/tf_emulation_init.cc)
DEPS=("${SRCS[@]}" cc/kernels/*.h gpu_kernels/*.h gpu_kernels/*.cuh
      gpu_kernels/emu/*.h
      gpu_kernels/emu/build_tf_emulation.sh)
# TensorFlow's flags, and the version and location of the TensorFlow they
# come from: a library built against another TensorFlow is rebuilt.
TF_INFO="$(TF_CPP_MIN_LOG_LEVEL=3 "$PYTHON" -c '
import tensorflow as tf
print(" ".join(tf.sysconfig.get_compile_flags()))
print(" ".join(tf.sysconfig.get_link_flags()))
print(tf.__version__, tf.sysconfig.get_lib())' 2>/dev/null)" || {
  echo "build_tf_emulation: $PYTHON cannot import tensorflow" >&2; exit 1; }
read -r -a TF_CFLAGS <<< "$(sed -n 1p <<< "$TF_INFO")"
read -r -a TF_LFLAGS <<< "$(sed -n 2p <<< "$TF_INFO")"
STAMP="$OUTDIR/tensorflow.txt"
if [[ -f "$LIB" && -f "$STAMP" && "$(cat "$STAMP")" == "$TF_INFO" ]]; then
  fresh=1
  for f in "${DEPS[@]}"; do
    if [[ "$f" -nt "$LIB" ]]; then fresh=0; break; fi
  done
  if [[ "$fresh" == 1 ]]; then echo "$LIB"; exit 0; fi
fi

# The ABI and alignment flags of TensorFlow's build apply to every object.
ABI=()
for f in "${TF_CFLAGS[@]}"; do
  case "$f" in -D*) ABI+=("$f") ;; esac
done

mkdir -p "$OUTDIR"
TMP="$(mktemp -d "$OUTDIR/build.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
COMMON=(-std=c++17 -O1 -fPIC -I"$ROOT" -fno-strict-aliasing "${ABI[@]}")
# The CUDA side: the launchers and the emulated runtime (no TensorFlow
# header), as with device_check.sh --emulate.
EMU=(-DTFMH_CUDA_EMULATION "${CUDA_INCLUDE_FLAGS[@]}")
pids=()
KERNEL_OBJS=()
for src in "${KERNEL_SRCS[@]}"; do
  obj="$TMP/$(basename "${src%.*}").o"
  KERNEL_OBJS+=("$obj")
  "$CXX" "${COMMON[@]}" "${EMU[@]}" -x c++ -c "$src" -o "$obj" & pids+=($!)
done
EMU_OBJS=()
for src in "${EMU_SRCS[@]}"; do
  obj="$TMP/$(basename "${src%.*}").o"
  EMU_OBJS+=("$obj")
  "$CXX" "${COMMON[@]}" "${EMU[@]}" -c "$src" -o "$obj" & pids+=($!)
done
"$CXX" "${COMMON[@]}" "${EMU[@]}" -c gpu_kernels/emu/tf_emulation_init.cc \
    -o "$TMP/tf_emulation_init.o" & pids+=($!)
# The TensorFlow side, as the op library builds it, but for the emulation
# (TensorFlow's headers warn about their own deprecations).
TFC=("${COMMON[@]}" "${TF_CFLAGS[@]}" -Wno-deprecated-declarations
     -Wno-interference-size)
"$CXX" "${TFC[@]}" -DTFMH_TF_GPU_EMULATION=1 \
    -c cc/kernels/multihash_kernels_gpu.cc -o "$TMP/multihash_kernels_gpu.o" &
pids+=($!)
"$CXX" "${TFC[@]}" -c cc/kernels/multihash_kernel_base.cc \
    -o "$TMP/multihash_kernel_base.o" & pids+=($!)
fail=0
for p in "${pids[@]}"; do wait "$p" || fail=1; done
if [[ "$fail" != 0 ]]; then echo "build_tf_emulation: compile failed" >&2; exit 1; fi
# The emulated runtime defines cudaMalloc, cudaLaunchKernel, ... which
# TensorFlow's framework library also exports (its CUDA stubs): keep ours
# private to this library (--exclude-libs) and bind its own calls to itself
# (-Bsymbolic), so neither side sees the other's.
ar rcs "$TMP/libtfmh_gpu_emulation.a" "${KERNEL_OBJS[@]}" "${EMU_OBJS[@]}"
"$CXX" -shared -o "$TMP/lib.so" "$TMP/tf_emulation_init.o" \
    "$TMP/multihash_kernels_gpu.o" "$TMP/multihash_kernel_base.o" \
    "$TMP/libtfmh_gpu_emulation.a" -Wl,--exclude-libs,libtfmh_gpu_emulation.a \
    -Wl,-Bsymbolic "${TF_LFLAGS[@]}" -lpthread
mv "$TMP/lib.so" "$LIB"
printf '%s\n' "$TF_INFO" > "$STAMP"
echo "$LIB"
