#!/usr/bin/env bash
# Builds and (with a GPU) runs the standalone CUDA test and benchmark of the
# multi-hash kernels. No TensorFlow needed.
#
#   gpu_kernels/device_check.sh --build-only   compile for sm_75,80,86,89,90
#                                              + compute_90 PTX (no GPU needed)
#   gpu_kernels/device_check.sh                detect the GPU, build for it,
#                                              run the test, then the bench;
#                                              log in $OUT/device_check.log
#   gpu_kernels/device_check.sh --emulate      no GPU needed: build the kernels
#                                              and the test with the host
#                                              compiler against gpu_kernels/emu
#                                              (a CPU emulation of CUDA) and run
#                                              the emulator's self-test and the
#                                              test, -O2 (full test, blocks in
#                                              shuffled order), then ASan +
#                                              UBSan (--quick, 1 emulated SM,
#                                              index order). Checks logic and memory
#                                              accesses, not speed; log in
#                                              $OUT/device_check_emulate.log
# Environment: NVCC (default: nvcc on PATH, else /usr/local/cuda/bin/nvcc),
# OUT (default: gpu_kernels/build/out); for --emulate also CXX (default g++)
# and CUDA_INCLUDE, the toolkit's headers (default: $CUDA_HOME/include, else
# the include/ beside nvcc). Exit status: nonzero if the build or the test
# fails (a failing benchmark is reported but does not fail the run).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# The kernels and launchers: every gpu_kernels/*.cu, as the BUILD compiles
# them (one compiler run each).
KERNEL_SRCS=(gpu_kernels/*.cu)
BUILD_ONLY=0
EMULATE=0
for arg in "$@"; do
  case "$arg" in
    --build-only) BUILD_ONLY=1 ;;
    --emulate) EMULATE=1 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done
if [[ "$BUILD_ONLY" == 1 && "$EMULATE" == 1 ]]; then
  echo "--build-only and --emulate exclude each other" >&2; exit 2
fi

NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
BUILD="$ROOT/gpu_kernels/build"
mkdir -p "$BUILD"
NPROC="$(nproc 2>/dev/null || echo 2)"

start_log() {  # log file name under $OUT, mode words for the first line
  OUT="${OUT:-$ROOT/gpu_kernels/build/out}"
  mkdir -p "$OUT"
  LOG="$OUT/$1"
  : > "$LOG"
  exec > >(tee -a "$LOG") 2>&1
  echo "== device_check $2$(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
}

if [[ "$EMULATE" == 1 ]]; then
  # CPU emulation (gpu_kernels/emu, see cuda_emu.h): every kernel thread is a
  # fiber that switches only at __syncthreads and warp collectives. It checks
  # what the kernels compute and, under AddressSanitizer, which memory they
  # touch; it cannot see data races, and its timings mean nothing.
  start_log device_check_emulate.log "--emulate "
  echo "== CPU EMULATION of CUDA (no GPU): checks the kernels' logic and memory"
  echo "   accesses, NOT their speed"
  CXX="${CXX:-g++}"
  source "$ROOT/gpu_kernels/emu/cuda_include.sh"
  PYTHON="${PYTHON:-${PYTHON_BIN_PATH:-$ROOT/.venv/bin/python}}"
  if ! find_cuda_include "$NVCC" "$PYTHON"; then
    echo "no CUDA toolkit headers found (set CUDA_INCLUDE, or run ./configure.sh:"
    echo "TensorFlow's wheel carries them)"; exit 3
  fi
  echo "== $("$CXX" --version | head -1); CUDA headers: $CUDA_INCLUDE"
  # -fno-strict-aliasing: the kernels move bytes as uint4 / float4 / ushort
  # words, as CUDA code does; the host compiler's type-based aliasing must
  # not reorder those. -Wno-maybe-uninitialized: g++ cannot see through the
  # kernels' guards (loads and uses under the same condition).
  # TFMH_GPU_TUNING_VARIANTS as in the GPU build below.
  EFLAGS=(-std=c++17 -DTFMH_CUDA_EMULATION -DTFMH_GPU_TUNING_VARIANTS
          -I"$ROOT" "${CUDA_INCLUDE_FLAGS[@]}"
          -fno-strict-aliasing -Wall -Wextra -Wno-unused-parameter
          -Wno-unknown-pragmas -Wno-maybe-uninitialized)
  SANITIZE=(-fsanitize=address,undefined -fno-sanitize-recover=all
            -fno-omit-frame-pointer)
  export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}"

  emu_build() {  # dir, then extra compiler flags
    local dir="$1"; shift
    local t0=$SECONDS src fail=0 pids=() kernel_objs=() emu_objs=()
    # The emulated CUDA: its runtime API and its kernel execution.
    local emu_srcs=(gpu_kernels/emu/cuda_emu_runtime.cc
                    gpu_kernels/emu/cuda_emu_kernels.cc)
    mkdir -p "$dir"
    for src in "${KERNEL_SRCS[@]}"; do
      kernel_objs+=("$dir/$(basename "${src%.*}").o")
    done
    for src in "${emu_srcs[@]}"; do
      emu_objs+=("$dir/$(basename "${src%.*}").o")
    done
    for src in "${KERNEL_SRCS[@]}" gpu_kernels/tests/multihash_gpu_test.cu \
               "${emu_srcs[@]}" gpu_kernels/emu/cuda_emu_test.cc; do
      "$CXX" "${EFLAGS[@]}" "$@" -x c++ -c "$src" \
          -o "$dir/$(basename "${src%.*}").o" & pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || fail=1; done
    if [[ "$fail" != 0 ]]; then echo "== BUILD FAILED"; return 1; fi
    "$CXX" "$@" -o "$dir/multihash_gpu_test" "$dir/multihash_gpu_test.o" \
        "${kernel_objs[@]}" "${emu_objs[@]}" &&
      "$CXX" "$@" -o "$dir/cuda_emu_test" "$dir/cuda_emu_test.o" "${emu_objs[@]}" ||
      { echo "== LINK FAILED"; return 1; }
    echo "   built in $((SECONDS - t0)) s"
  }

  FAIL=0
  emu_run() {  # label, time limit in s, then the command
    local label="$1" limit="$2"; shift 2
    echo "== $label"
    local t0=$SECONDS
    timeout "$limit" "$@"
    local rc=$?
    echo "== $label: exit status $rc in $((SECONDS - t0)) s"
    if [[ "$rc" != 0 ]]; then FAIL=1; fi
  }

  T0=$SECONDS
  echo "== building (-O2) in $BUILD/emu"
  emu_build "$BUILD/emu" -O2 || exit 1
  emu_run "emulator self-test" 60 "$BUILD/emu/cuda_emu_test"
  # Blocks in a shuffled order here (a GPU promises none), in index order
  # under ASan below.
  emu_run "test (emulated, blocks shuffled: TFMH_EMU_SHUFFLE_BLOCKS=1)" 300 \
      env TFMH_EMU_SHUFFLE_BLOCKS=1 "$BUILD/emu/multihash_gpu_test"
  echo "== building (-O1, AddressSanitizer + UBSan) in $BUILD/emu-asan"
  emu_build "$BUILD/emu-asan" -O1 "${SANITIZE[@]}" || exit 1
  emu_run "emulator self-test (ASan + UBSan)" 120 "$BUILD/emu-asan/cuda_emu_test"
  # The memcheck. One emulated SM means grids of 8 blocks, so the --quick
  # sizes already take several grid-stride passes (where reads past the end
  # of an array hide).
  emu_run "memcheck: test --quick under ASan + UBSan, 1 emulated SM" 400 \
      env TFMH_EMU_SMS=1 "$BUILD/emu-asan/multihash_gpu_test" --quick
  echo "== total $((SECONDS - T0)) s"
  if [[ "$FAIL" != 0 ]]; then echo "== EMULATED TEST FAILED"; exit 1; fi
  echo "== OK (CPU emulation: logic and memory accesses checked, speed not)"
  exit 0
fi

if [[ "$BUILD_ONLY" == 1 ]]; then
  LOG=/dev/null
  GENCODE=(-gencode arch=compute_75,code=sm_75
           -gencode arch=compute_80,code=sm_80
           -gencode arch=compute_86,code=sm_86
           -gencode arch=compute_89,code=sm_89
           -gencode "arch=compute_90,code=[sm_90,compute_90]")
else
  start_log device_check.log ""
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

# TFMH_GPU_TUNING_VARIANTS: the kernel variants the test checks and the
# benchmark times but the library leaves out (LaunchOptions::forward_batch 2
# and 8; see gpu_kernels/multihash_gpu.h).
FLAGS=(-std=c++17 -O3 -I"$ROOT" -DTFMH_GPU_TUNING_VARIANTS
       -Xcompiler -Wall,-Wextra,-Wno-unused-parameter -lineinfo)
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
PIDS=()
KERNEL_OBJS=()
for src in "${KERNEL_SRCS[@]}"; do
  obj="$BUILD/$(basename "${src%.*}").o"
  KERNEL_OBJS+=("$obj")
  compile "$src" "$obj" & PIDS+=($!)
done
compile gpu_kernels/tests/multihash_gpu_test.cu "$BUILD/multihash_gpu_test.o" & PIDS+=($!)
compile gpu_kernels/tests/multihash_gpu_bench.cu "$BUILD/multihash_gpu_bench.o" & PIDS+=($!)
FAIL=0
for p in "${PIDS[@]}"; do wait "$p" || FAIL=1; done
if [[ "$FAIL" != 0 ]]; then echo "== BUILD FAILED"; exit 1; fi
"$NVCC" "${GENCODE[@]}" -o "$BUILD/multihash_gpu_test" "$BUILD/multihash_gpu_test.o" "${KERNEL_OBJS[@]}" || { echo "== LINK FAILED"; exit 1; }
"$NVCC" "${GENCODE[@]}" -o "$BUILD/multihash_gpu_bench" "$BUILD/multihash_gpu_bench.o" "${KERNEL_OBJS[@]}" || { echo "== LINK FAILED"; exit 1; }
echo "== build done in $((SECONDS - T0)) s"
if [[ "$BUILD_ONLY" == 1 ]]; then exit 0; fi

echo "== test"
T1=$SECONDS
timeout 240 "$BUILD/multihash_gpu_test"
TEST_RC=$?
echo "== test exit status $TEST_RC in $((SECONDS - T1)) s"

if command -v compute-sanitizer >/dev/null 2>&1 || [[ -x /usr/local/cuda/bin/compute-sanitizer ]]; then
  SAN="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
  echo "== memcheck (quick subset, 90 s cap)"
  timeout 90 "$SAN" --tool memcheck --error-exitcode 99 "$BUILD/multihash_gpu_test" --quick > "$BUILD/memcheck.log" 2>&1
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
