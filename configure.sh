#!/usr/bin/env bash
# Sets up everything needed to build and use tensorflow_multihash, then builds
# the op library and copies it into the Python package:
#   1. Bazel (Debian's bazel-bootstrap 4.2.3 + its rules), if missing;
#   2. a Python with tensorflow 2.21, numpy, pytest, tf_keras, setuptools, wheel: $PYTHON_BIN_PATH if
#      set, else .venv/ at the repo root (created if missing); a .pth file in
#      a virtual environment's site-packages puts the repo root on sys.path;
#   3. .bazelrc (git-ignored) with the TensorFlow flags from tf.sysconfig, the
#      local CUDA toolkit ($CUDA_HOME, else nvcc on PATH; none: CPU only) and
#      the overrides that keep the build offline;
#   4. bazel build //:all //examples/serving:all (the op library and the C
#      serving clients), then copies bazel-bin/_multihash_ops.so to
#      tensorflow_multihash/_multihash_ops.so
# Idempotent: installs only what is missing; rerun after changing Python or
# CUDA.
#
# Usage: ./configure.sh [--cpu-only] [--no-build]
#   --cpu-only  ignore any CUDA toolkit (also: TFMH_CPU_ONLY=1)
#   --no-build  stop after writing .bazelrc
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"

CPU_ONLY="${TFMH_CPU_ONLY:-0}"
BUILD=1
for arg in "$@"; do
  case "$arg" in
    --cpu-only) CPU_ONLY=1 ;;
    --no-build) BUILD=0 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "configure.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

TF_REQUIREMENT="tensorflow==2.21.*"

log() { echo "==> $*"; }
die() { echo "configure.sh: error: $*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null 2>&1 ||
    die "need Debian packages ($*) but apt-get is not available; install them by hand"
  if [ "$APT_UPDATED" -eq 0 ]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

# ------------------------------------------------------------------- Bazel
RULES_JAVA_DIR=/usr/share/bazel/rules/java
PLATFORMS_DIR=/usr/share/bazel/tools/platforms
missing_pkgs=()
command -v bazel >/dev/null 2>&1 || missing_pkgs+=(bazel-bootstrap)
[ -f "$RULES_JAVA_DIR/WORKSPACE" ] || missing_pkgs+=(bazel-rules-java)
[ -f "$PLATFORMS_DIR/WORKSPACE" ] || missing_pkgs+=(bazel-platforms)
command -v g++ >/dev/null 2>&1 || missing_pkgs+=(g++)
if [ "${#missing_pkgs[@]}" -gt 0 ]; then
  apt_install "${missing_pkgs[@]}"
fi
command -v bazel >/dev/null 2>&1 || die "bazel is still not on PATH"

# ------------------------------------------------------------------ Python
if [ -n "${PYTHON_BIN_PATH:-}" ]; then
  PYTHON="$PYTHON_BIN_PATH"
  [ -x "$PYTHON" ] || PYTHON="$(command -v "$PYTHON" || true)"
  [ -n "$PYTHON" ] && [ -x "$PYTHON" ] || die "PYTHON_BIN_PATH=$PYTHON_BIN_PATH is not an executable"
else
  PYTHON="$ROOT/.venv/bin/python"
  if [ ! -x "$PYTHON" ]; then
    BASE_PYTHON="$(command -v python3 || true)"
    [ -n "$BASE_PYTHON" ] || { apt_install python3 python3-venv; BASE_PYTHON="$(command -v python3)"; }
    log "creating .venv with $BASE_PYTHON"
    if ! "$BASE_PYTHON" -m venv "$ROOT/.venv"; then
      rm -rf "$ROOT/.venv"
      apt_install python3-venv
      "$BASE_PYTHON" -m venv "$ROOT/.venv"
    fi
    "$PYTHON" -m pip install -q --upgrade pip
  fi
fi

missing_py=()
"$PYTHON" -c "import tensorflow" >/dev/null 2>&1 || missing_py+=("$TF_REQUIREMENT")
"$PYTHON" -c "import numpy" >/dev/null 2>&1 || missing_py+=(numpy)
"$PYTHON" -c "import pytest" >/dev/null 2>&1 || missing_py+=(pytest)
# For the tests of the feature columns with tf_keras.layers.DenseFeatures.
"$PYTHON" -c "import tf_keras" >/dev/null 2>&1 || missing_py+=("tf_keras==2.21.*")
# For ./build_wheel.sh (pip wheel --no-build-isolation) and its test.
"$PYTHON" -c "import setuptools" >/dev/null 2>&1 || missing_py+=(setuptools)
"$PYTHON" -c "import setuptools.command.bdist_wheel" >/dev/null 2>&1 ||
  "$PYTHON" -c "import wheel.bdist_wheel" >/dev/null 2>&1 || missing_py+=(wheel)
if [ "${#missing_py[@]}" -gt 0 ]; then
  log "pip install ${missing_py[*]}"
  "$PYTHON" -m pip install -q "${missing_py[@]}"
fi

# Make the package importable from anywhere (e.g. the examples/ scripts)
# with a .pth file naming the repo root, in a virtual environment only.
SITE_DIR="$("$PYTHON" -c 'import sys, sysconfig; print(sysconfig.get_paths()["purelib"] if sys.prefix != sys.base_prefix else "")')"
if [ -n "$SITE_DIR" ] && [ -w "$SITE_DIR" ]; then
  echo "$ROOT" > "$SITE_DIR/_tensorflow_multihash_repo.pth"
else
  echo "configure.sh: note: $PYTHON is not a writable virtual environment; set PYTHONPATH=$ROOT to import tensorflow_multihash outside the repo root" >&2
fi

# ------------------------------------------------- TensorFlow build flags
# One "key=value" line each, straight from tf.sysconfig.
TF_INFO="$(TF_CPP_MIN_LOG_LEVEL=3 "$PYTHON" - <<'EOF' 2>/dev/null
import os
import tensorflow as tf
cflags = tf.sysconfig.get_compile_flags()
lflags = tf.sysconfig.get_link_flags()
include = [f[2:] for f in cflags if f.startswith("-I")]
defines = [f for f in cflags if f.startswith("-D")]
std = [f for f in cflags if f.lstrip("-").startswith("std=")]
libdir = [f[2:] for f in lflags if f.startswith("-L")]
lib = [f for f in lflags if f.startswith("-l")]
name = lib[0][3:] if lib and lib[0].startswith("-l:") else ("lib%s.so" % lib[0][2:] if lib else "")
print("version=" + tf.__version__)
print("include=" + (include[0] if include else tf.sysconfig.get_include()))
print("libdir=" + (libdir[0] if libdir else tf.sysconfig.get_lib()))
print("libname=" + name)
print("defines=" + " ".join(defines))
print("std=" + ("-" + std[0].lstrip("-") if std else "-std=c++17"))
EOF
)" || die "could not import tensorflow with $PYTHON"
tf_get() { printf '%s\n' "$TF_INFO" | sed -n "s/^$1=//p"; }
TF_VERSION="$(tf_get version)"
TF_INCLUDE="$(tf_get include)"
TF_LIBDIR="$(tf_get libdir)"
TF_LIBNAME="$(tf_get libname)"
TF_DEFINES="$(tf_get defines)"
TF_STD="$(tf_get std)"
[ -n "$TF_LIBNAME" ] && [ -f "$TF_LIBDIR/$TF_LIBNAME" ] ||
  die "TensorFlow framework library not found ($TF_LIBDIR/$TF_LIBNAME)"

# -------------------------------------------------------------------- CUDA
# A toolkit root has bin/nvcc, include/cuda_runtime.h and libcudart_static.a.
is_cuda_root() {
  [ -x "$1/bin/nvcc" ] && [ -f "$1/include/cuda_runtime.h" ] &&
    ls "$1"/lib64/libcudart_static.a "$1"/lib/libcudart_static.a \
       "$1"/targets/*/lib/libcudart_static.a >/dev/null 2>&1
}
CUDA_ROOT=""
if [ "$CPU_ONLY" != 1 ]; then
  if [ -n "${CUDA_HOME:-}" ]; then
    is_cuda_root "$CUDA_HOME" || die "CUDA_HOME=$CUDA_HOME is not a CUDA toolkit (bin/nvcc, include/cuda_runtime.h, libcudart_static.a)"
    CUDA_ROOT="$(cd "$CUDA_HOME" && pwd -P)"
  elif NVCC="$(command -v nvcc)"; then
    # nvcc on PATH may be a symlink or a wrapper script: try its real
    # directory, then the toolkit root nvcc itself reports.
    cand="$(dirname "$(dirname "$(readlink -f "$NVCC")")")"
    if ! is_cuda_root "$cand"; then
      cand="$(nvcc --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n1)"
      cand="${cand%/bin/..}"
    fi
    if [ -n "$cand" ] && is_cuda_root "$cand"; then
      CUDA_ROOT="$(cd "$cand" && pwd -P)"
    else
      echo "configure.sh: warning: found $NVCC but no CUDA toolkit root; building CPU only" >&2
    fi
  fi
fi

# ---------------------------------------------------------------- .bazelrc
log "writing .bazelrc"
{
  echo "# Generated by ./configure.sh; do not edit (rerun it instead). Git-ignored."
  echo "# Offline build: Bazel's own rule repositories resolve to local copies."
  for cmd in build query fetch; do
    echo "$cmd --override_repository=rules_cc=$ROOT/third_party/rules_cc"
    echo "$cmd --override_repository=rules_java=$RULES_JAVA_DIR"
    echo "$cmd --override_repository=platforms=$PLATFORMS_DIR"
  done
  echo
  echo "# TensorFlow $TF_VERSION ($PYTHON)"
  echo "build --repo_env=TF_HEADER_DIR=$TF_INCLUDE"
  echo "build --repo_env=TF_SHARED_LIBRARY_DIR=$TF_LIBDIR"
  echo "build --repo_env=TF_SHARED_LIBRARY_NAME=$TF_LIBNAME"
  echo "build --repo_env=TFMH_CUDA_HOME=$CUDA_ROOT"
  echo "build --nosandbox_debug"   # Debian's /etc/bazel/bazelrc turns it on
  echo "build -c opt"
  echo "build --cxxopt=$TF_STD"
  for d in $TF_DEFINES; do echo "build --copt=$d"; done
  echo "build --copt=-DTFMH_TF_VERSION=\\\"$TF_VERSION\\\""
  echo "build --copt=-Wno-sign-compare"
  if [ -n "$CUDA_ROOT" ]; then
    echo
    echo "# CUDA toolkit: $CUDA_ROOT"
    echo "build --define=with_cuda=true"
  fi
} > .bazelrc

if [ "$BUILD" != 1 ]; then
  log "skipping the build (--no-build)"
  exit 0
fi

# ------------------------------------------------------------------- build
log "bazel build //:all //examples/serving:all"
bazel build //:all //examples/serving:all
install -m 0755 bazel-bin/_multihash_ops.so tensorflow_multihash/_multihash_ops.so

echo
echo "tensorflow_multihash configured:"
echo "  Python:      $PYTHON"
echo "  TensorFlow:  $TF_VERSION"
if [ -n "$CUDA_ROOT" ]; then
  echo "  CUDA:        yes ($CUDA_ROOT, $("$CUDA_ROOT/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'))"
else
  echo "  CUDA:        no (CPU-only build)"
fi
echo "  op library:  tensorflow_multihash/_multihash_ops.so"
