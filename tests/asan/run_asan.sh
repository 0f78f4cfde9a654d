#!/usr/bin/env bash
# Builds the CPU kernels and the op registrations with AddressSanitizer into
# a separate library (outside Bazel, with TensorFlow's own compile and link
# flags, as gpu_kernels/emu/build_tf_emulation.sh does) and runs the
# forward, gradient, raw-op, random differential and hostile-input tests
# against it.
#
#   tests/asan/run_asan.sh [pytest args...]     (default: the files below)
#
# The library goes into a copy of the package (build/asan/tree: the package's
# Python files, the tests, and the ASan library as _multihash_ops.so), so the
# installed op library is never touched; the tests run from that tree. A
# Python process needs the ASan runtime loaded first: LD_PRELOAD names the
# compiler's libasan. Leak checking is off (the interpreter and TensorFlow
# keep their allocations to exit); any other report fails the run
# (halt_on_error, exit code 99 from ASan, nonzero from pytest).
#
# Environment: PYTHON (default $PYTHON_BIN_PATH, else .venv/bin/python), the
# interpreter with TensorFlow; CXX (default g++). Rebuilt only when a source
# is newer than the library or TensorFlow changed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-${PYTHON_BIN_PATH:-$ROOT/.venv/bin/python}}"
CXX="${CXX:-g++}"
OUTDIR="$ROOT/build/asan"
LIB="$OUTDIR/_multihash_ops_asan.so"
TREE="$OUTDIR/tree"

SRCS=(cc/ops/multihash_ops.cc cc/kernels/multihash_kernels.cc
      cc/kernels/multihash_kernel_base.cc)
DEPS=("${SRCS[@]}" cc/kernels/*.h tests/asan/run_asan.sh)

TF_INFO="$(TF_CPP_MIN_LOG_LEVEL=3 "$PYTHON" -c '
import tensorflow as tf
print(" ".join(tf.sysconfig.get_compile_flags()))
print(" ".join(tf.sysconfig.get_link_flags()))
print(tf.__version__, tf.sysconfig.get_lib())' 2>/dev/null)" || {
  echo "run_asan: $PYTHON cannot import tensorflow" >&2; exit 1; }
read -r -a TF_CFLAGS <<< "$(sed -n 1p <<< "$TF_INFO")"
read -r -a TF_LFLAGS <<< "$(sed -n 2p <<< "$TF_INFO")"
TF_VERSION="$(sed -n 3p <<< "$TF_INFO" | cut -d' ' -f1)"

ASAN_RT="$("$CXX" -print-file-name=libasan.so)"
if [[ ! -e "$ASAN_RT" ]]; then
  echo "run_asan: $CXX has no libasan.so (install the compiler's ASan runtime)" >&2
  exit 1
fi

STAMP="$OUTDIR/tensorflow.txt"
fresh=0
if [[ -f "$LIB" && -f "$STAMP" && "$(cat "$STAMP")" == "$TF_INFO" ]]; then
  fresh=1
  for f in "${DEPS[@]}"; do
    if [[ "$f" -nt "$LIB" ]]; then fresh=0; break; fi
  done
fi
if [[ "$fresh" != 1 ]]; then
  mkdir -p "$OUTDIR"
  TMP="$(mktemp -d "$OUTDIR/build.XXXXXX")"
  trap 'rm -rf "$TMP"' EXIT
  FLAGS=(-std=c++17 -O1 -g -fPIC -fsanitize=address -fno-omit-frame-pointer
         -I"$ROOT" -DTFMH_TF_VERSION="\"$TF_VERSION\"" "${TF_CFLAGS[@]}"
         -Wno-deprecated-declarations -Wno-interference-size)
  pids=()
  for src in "${SRCS[@]}"; do
    "$CXX" "${FLAGS[@]}" -c "$src" -o "$TMP/$(basename "$src" .cc).o" &
    pids+=($!)
  done
  fail=0
  for p in "${pids[@]}"; do wait "$p" || fail=1; done
  if [[ "$fail" != 0 ]]; then echo "run_asan: compile failed" >&2; exit 1; fi
  "$CXX" -shared -fsanitize=address -o "$TMP/lib.so" "$TMP"/*.o \
      "${TF_LFLAGS[@]}" -lpthread
  mv "$TMP/lib.so" "$LIB"
  printf '%s\n' "$TF_INFO" > "$STAMP"
fi

# The package and the tests, with the ASan library in the package's place.
rm -rf "$TREE"
mkdir -p "$TREE/tensorflow_multihash" "$TREE/tests"
cp tensorflow_multihash/*.py "$TREE/tensorflow_multihash/"
cp "$LIB" "$TREE/tensorflow_multihash/_multihash_ops.so"
cp tests/*.py "$TREE/tests/"
for f in pyproject.toml setup.cfg pytest.ini; do
  if [[ -f "$f" ]]; then cp "$f" "$TREE/"; fi
done

if [[ $# -eq 0 ]]; then
  set -- tests/test_forward.py tests/test_gradients.py tests/test_raw_ops.py \
         tests/test_random_differential.py tests/test_hostile_input.py
fi
cd "$TREE"
# libstdc++ too: the interpreter does not link it, and ASan's __cxa_throw
# interceptor needs the real one when it starts (else the first C++
# exception, a pybind11 one in TensorFlow or matplotlib, is a CHECK failure).
STDCXX="$("$CXX" -print-file-name=libstdc++.so.6)"
export LD_PRELOAD="$ASAN_RT:$STDCXX${LD_PRELOAD:+:$LD_PRELOAD}"
# TensorFlow itself is not instrumented: only the checks that need no
# instrumented caller (heap overflows, use after free in our code).
# Reports go to files (pytest captures stderr, and a halted process takes
# its captured output with it); they are printed below.
REPORTS="$OUTDIR/reports"
rm -rf "$REPORTS"
mkdir -p "$REPORTS"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:detect_odr_violation=0:alloc_dealloc_mismatch=0:new_delete_type_mismatch=0:log_path=$REPORTS/asan${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
echo "run_asan: $LIB ($(basename "$ASAN_RT") preloaded) in $TREE"
rc=0
"$PYTHON" -m pytest -q -p no:cacheprovider "$@" || rc=$?
if compgen -G "$REPORTS/asan*" > /dev/null; then
  echo "run_asan: AddressSanitizer reports:" >&2
  cat "$REPORTS"/asan* >&2
  exit 1
fi
exit "$rc"
