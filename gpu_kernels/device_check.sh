#!/usr/bin/env bash
# Builds and (with a GPU) runs the standalone CUDA test and benchmark of the
# multi-hash kernels. No TensorFlow needed.
#
#   gpu_kernels/device_check.sh --build-only   compile for sm_75,80,86,89,90
#                                              + compute_90 PTX (no GPU needed)
#   gpu_kernels/device_check.sh                detect the GPU, build for it,
#                                              run the test, then the bench;
#                                              log in $OUT/device_check.log
# Environment: NVCC (default: nvcc on PATH, else /usr/local/cuda/bin/nvcc),
# OUT (default: gpu_kernels/build/out). Exit status: nonzero if the build or
# the test fails (a failing benchmark is reported but does not fail the run).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUILD_ONLY=0
for arg in "$@"; do
  case "$arg" in
    --build-only) BUILD_ONLY=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
BUILD="$ROOT/gpu_kernels/build"
mkdir -p "$BUILD"
NPROC="$(nproc 2>/dev/null || echo 2)"

if [[ "$BUILD_ONLY" == 1 ]]; then
  LOG=/dev/null
  GENCODE=(-gencode arch=compute_75,code=sm_75
           -gencode arch=compute_80,code=sm_80
           -gencode arch=compute_86,code=sm_86
           -gencode arch=compute_89,code=sm_89
           -gencode "arch=compute_90,code=[sm_90,compute_90]")
else
  OUT="${OUT:-$ROOT/gpu_kernels/build/out}"
  mkdir -p "$OUT"
  LOG="$OUT/device_check.log"
  : > "$LOG"
  exec > >(tee -a "$LOG") 2>&1
  echo "== device_check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "nvidia-smi not found: no GPU to run on (use --build-only)"; exit 3
  fi
  nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv || nvidia-smi -L
  CC="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')"
  if [[ "$CC" =~ ^[0-9]+$ ]]; then
    GENCODE=(-gencode "arch=compute_${CC},code=sm_${CC}")
  else
    GENCODE=(-arch=native)
  fi
fi
echo "== nvcc: $("$NVCC" --version | tail -1); targets: ${GENCODE[*]}"

FLAGS=(-std=c++17 -O3 -I"$ROOT" -Xcompiler -Wall,-Wextra,-Wno-unused-parameter
       -lineinfo)
# --threads: one thread per target architecture inside each nvcc.
THREADS=(--threads "$NPROC")

compile() {  # src obj
  local t0=$SECONDS
  if "$NVCC" "${FLAGS[@]}" "${GENCODE[@]}" "${THREADS[@]}" -c "$1" -o "$2"; then
    echo "   compiled $(basename "$1") in $((SECONDS - t0)) s"
  else
    echo "FAILED to compile $1"; return 1
  fi
}

T0=$SECONDS
echo "== building in $BUILD ($NPROC cores)"
# The kernels take longest; the test and bench compile beside them.
compile gpu_kernels/multihash_gpu.cu "$BUILD/multihash_gpu.o" & P1=$!
compile gpu_kernels/tests/multihash_gpu_test.cu "$BUILD/multihash_gpu_test.o" & P2=$!
compile gpu_kernels/tests/multihash_gpu_bench.cu "$BUILD/multihash_gpu_bench.o" & P3=$!
FAIL=0
for p in $P1 $P2 $P3; do wait "$p" || FAIL=1; done
if [[ "$FAIL" != 0 ]]; then echo "== BUILD FAILED"; exit 1; fi
"$NVCC" "${GENCODE[@]}" -o "$BUILD/multihash_gpu_test" "$BUILD/multihash_gpu_test.o" "$BUILD/multihash_gpu.o" || { echo "== LINK FAILED"; exit 1; }
"$NVCC" "${GENCODE[@]}" -o "$BUILD/multihash_gpu_bench" "$BUILD/multihash_gpu_bench.o" "$BUILD/multihash_gpu.o" || { echo "== LINK FAILED"; exit 1; }
echo "== build done in $((SECONDS - T0)) s"
if [[ "$BUILD_ONLY" == 1 ]]; then exit 0; fi

echo "== test"
T1=$SECONDS
timeout 150 "$BUILD/multihash_gpu_test"
TEST_RC=$?
echo "== test exit status $TEST_RC in $((SECONDS - T1)) s"

if command -v compute-sanitizer >/dev/null 2>&1 || [[ -x /usr/local/cuda/bin/compute-sanitizer ]]; then
  SAN="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
  echo "== memcheck (quick subset, 60 s cap)"
  timeout 60 "$SAN" --tool memcheck --error-exitcode 99 "$BUILD/multihash_gpu_test" --quick > "$BUILD/memcheck.log" 2>&1
  SAN_RC=$?
  tail -3 "$BUILD/memcheck.log"
  grep -m 20 -E "Invalid|out of bounds|ERROR SUMMARY" "$BUILD/memcheck.log" || true
  if [[ "$SAN_RC" == 124 ]]; then
    echo "== memcheck: timed out (not counted)"
  elif [[ "$SAN_RC" != 0 ]]; then
    echo "== memcheck FAILED (exit $SAN_RC)"; TEST_RC=1
  else
    echo "== memcheck clean"
  fi
fi

echo "== bench"
T2=$SECONDS
timeout 120 "$BUILD/multihash_gpu_bench"
echo "== bench exit status $? in $((SECONDS - T2)) s"
echo "== total $((SECONDS - T0)) s"
if [[ "$TEST_RC" != 0 ]]; then echo "== TEST FAILED"; exit 1; fi
echo "== OK"
