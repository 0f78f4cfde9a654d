#!/usr/bin/env bash
# Sets up everything needed to build and use tensorflow_multihash, then builds
# the op library and copies it into the Python package:
#   1. a Python: $PYTHON_BIN_PATH if set, else .venv/ at the repo root
#      (created if missing). Its TensorFlow is used as it is and never
#      changed; it must be a supported release, 2.16 to 2.21
#      (docs/tensorflow_versions.md), else configure.sh stops before installing
#      anything. Only where there is none, tensorflow 2.21 is installed.
#      Added if missing: numpy, pytest, setuptools, wheel, auditwheel,
#      pyink (the formatter, at $PYINK_VERSION, below), and tf_keras of the
#      TensorFlow's own release (tf_keras==2.X.*), all with the installed
#      TensorFlow pinned. A .pth file in a virtual environment's
#      site-packages puts the repo root on sys.path;
#   2. Bazel (Debian's bazel-bootstrap 4.2.3 + its rules), if missing;
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

# Supported TensorFlow releases (docs/tensorflow_versions.md), and the one
# installed where there is none.
TF_MIN_MINOR=16
TF_MAX_MINOR=21
TF_RANGE="2.$TF_MIN_MINOR to 2.$TF_MAX_MINOR"
TF_DEFAULT="2.$TF_MAX_MINOR"
# The formatter of the repository's Python (pyproject.toml's [tool.pyink];
# tests/test_format.py checks it and reads this pin). 24.10.1 is the newest
# that installs on every Python TensorFlow 2.16 to 2.21 supports (3.9+), so
# every environment formats alike.
PYINK_VERSION=24.10.1

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

# A TensorFlow already there is never changed: it must be in the supported
# range (checked before anything is installed), and what is added next to it
# is pinned to its release. Where there is none, the default is installed.
# The version comes from importing it; the distributions that own the
# `tensorflow` package (tensorflow, tensorflow-cpu, ...) and tf_keras's
# version from the package metadata.
TF_PROBE="$(TF_CPP_MIN_LOG_LEVEL=3 "$PYTHON" - <<'EOF' 2>/dev/null
import importlib.util
import sys
try:
    import importlib.metadata as md
except ImportError:
    md = None
try:
    print("tf_keras=" + md.version("tf_keras"))
except Exception:
    print("tf_keras=")
spec = importlib.util.find_spec("tensorflow")
if spec is None or spec.origin is None:  # none, or a leftover directory
    print("state=absent")
    sys.exit(0)
try:
    dists = sorted(set(md.packages_distributions().get("tensorflow", [])))
    print("pins=" + " ".join("%s==%s" % (d, md.version(d)) for d in dists))
except Exception:  # Python 3.9 has no packages_distributions
    pass
try:
    import tensorflow as tf
    print("version=" + tf.__version__)
    print("state=present")
except Exception as e:
    print("state=broken")
    print("error=%s: %s" % (type(e).__name__, (str(e).splitlines() or [""])[0]))
EOF
)" || die "could not run $PYTHON"
probe_get() { printf '%s\n' "$TF_PROBE" | sed -n "s/^$1=//p"; }
TF_STATE="$(probe_get state)"
TF_FOUND="$(probe_get version)"
case "$TF_STATE" in
  absent)
    TF_RELEASE="$TF_DEFAULT"
    ;;
  present)
    TF_RELEASE="$(printf '%s\n' "$TF_FOUND" | sed -n 's/^\([0-9]*\.[0-9]*\).*/\1/p')"
    tf_major="${TF_RELEASE%%.*}"
    tf_minor="${TF_RELEASE#*.}"
    if [ -z "$TF_RELEASE" ] || [ "$tf_major" != 2 ] ||
       [ "$tf_minor" -lt "$TF_MIN_MINOR" ] || [ "$tf_minor" -gt "$TF_MAX_MINOR" ]; then
      die "$PYTHON has TensorFlow $TF_FOUND, outside the supported range $TF_RANGE.
  configure.sh changes no installed TensorFlow and installed nothing. Use a Python
  with TensorFlow $TF_RANGE (PYTHON_BIN_PATH=...), or one without TensorFlow, where
  it installs $TF_DEFAULT (see docs/tensorflow_versions.md)."
    fi
    ;;
  *)
    die "$PYTHON has a TensorFlow that cannot be imported ($(probe_get error)).
  configure.sh changes no installed TensorFlow and installed nothing: repair it
  (e.g. pip install --force-reinstall of the same version) or use another Python."
    ;;
esac

missing_py=()
[ "$TF_STATE" = absent ] && missing_py+=("tensorflow==$TF_RELEASE.*")
"$PYTHON" -c "import numpy" >/dev/null 2>&1 || missing_py+=(numpy)
"$PYTHON" -c "import pytest" >/dev/null 2>&1 || missing_py+=(pytest)
# For ./build_wheel.sh (pip wheel --no-build-isolation; auditwheel for the
# manylinux tag) and its test.
"$PYTHON" -c "import setuptools" >/dev/null 2>&1 || missing_py+=(setuptools)
"$PYTHON" -c "import setuptools.command.bdist_wheel" >/dev/null 2>&1 ||
  "$PYTHON" -c "import wheel.bdist_wheel" >/dev/null 2>&1 || missing_py+=(wheel)
"$PYTHON" -c "import auditwheel" >/dev/null 2>&1 || missing_py+=(auditwheel)
# pyink at the pinned version (another version may format differently).
"$PYTHON" -c "import importlib.metadata as m, sys; sys.exit(m.version('pyink') != '$PYINK_VERSION')" \
  >/dev/null 2>&1 || missing_py+=("pyink==$PYINK_VERSION")
# For the tests of the feature columns with tf_keras.layers.DenseFeatures:
# the tf_keras of the same release (each requires its TensorFlow minor).
TF_KERAS="$(probe_get tf_keras)"
case "$TF_KERAS" in
  "$TF_RELEASE"|"$TF_RELEASE".*) TF_KERAS_REQ="" ;;
  *) TF_KERAS_REQ="tf_keras==$TF_RELEASE.*" ;;
esac
if [ "$TF_STATE" = absent ]; then
  missing_py+=($TF_KERAS_REQ)
  TF_KERAS_REQ=""
fi
if [ "${#missing_py[@]}" -gt 0 ] || [ -n "$TF_KERAS_REQ" ]; then
  # With a TensorFlow there, a constraint file pins it (and the distribution
  # that provides it) to its installed version, so no dependency can move it.
  CONSTRAINTS="$(mktemp)"
  trap 'rm -f "$CONSTRAINTS"' EXIT
  if [ "$TF_STATE" = present ]; then
    for pin in $(probe_get pins); do echo "$pin"; done > "$CONSTRAINTS"
    grep -q '^tensorflow==' "$CONSTRAINTS" || echo "tensorflow==$TF_FOUND" >> "$CONSTRAINTS"
  fi
  if [ "${#missing_py[@]}" -gt 0 ]; then
    log "pip install ${missing_py[*]}"
    "$PYTHON" -m pip install -q -c "$CONSTRAINTS" "${missing_py[@]}"
  fi
  if [ -n "$TF_KERAS_REQ" ]; then
    # Its only requirement is this TensorFlow release, which is there (and
    # may come from another distribution than `tensorflow`): --no-deps.
    log "pip install --no-deps $TF_KERAS_REQ (TensorFlow $TF_FOUND)"
    "$PYTHON" -m pip install -q --no-deps -c "$CONSTRAINTS" "$TF_KERAS_REQ"
  fi
fi

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
[ "$TF_STATE" = absent ] || [ "$TF_VERSION" = "$TF_FOUND" ] ||
  die "TensorFlow changed from $TF_FOUND to $TF_VERSION while installing packages"
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
