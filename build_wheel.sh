#!/usr/bin/env bash
# Builds dist/tensorflow_multihash-<version>+tf<release>-py3-none-<platform>.whl:
# the Python package and the op library, requiring the TensorFlow release the
# library was built against (tensorflow==2.Y.*). With auditwheel installed
# (configure.sh installs it) the platform tag is the manylinux one that
# `auditwheel repair` finds, TensorFlow's own libtensorflow_framework.so.2
# excluded (the installed tensorflow provides it); without it, linux_x86_64.
#
# Usage: ./build_wheel.sh [--no-configure] [--cpu-only] [--dist DIR]
#                         [--no-local-version] [--tf 2.Y]...
#   (no --tf)           the wheel for the TensorFlow of $PYTHON_BIN_PATH, else
#                       .venv: ./configure.sh, then the wheel, in this tree
#   --no-configure      use the library ./configure.sh already built
#   --cpu-only          pass --cpu-only to ./configure.sh
#   --dist DIR          write the wheel(s) to DIR (default: dist/); a wheel of
#                       the same version there is replaced, others are kept
#   --no-local-version  version 0.1.0, not 0.1.0+tf2.Y (for PyPI, which takes
#                       no local versions, hence one release per version)
#   --tf 2.Y            (repeatable; "all": 2.16 to 2.21) build for that
#                       release, leaving this tree's build as it is: in
#                       .whl/tf2.Y/ (git-ignored), a virtual environment with
#                       tensorflow==2.Y.* (created once, from PyPI) and a copy
#                       of this tree's files (tracked and untracked, not
#                       ignored), configured and built there; its own Bazel
#                       output, kept for the next build (a build takes
#                       3.5 minutes or more CPU-only on 2 cores)
# The wheel itself is built offline: pip runs setup.py with the environment's
# setuptools and wheel (--no-build-isolation), never an index (--no-index).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
CONFIGURE=1
DIST="$ROOT/dist"
CONFIGURE_ARGS=()
LOCAL_VERSION=1
RELEASES=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-configure) CONFIGURE=0 ;;
    --cpu-only) CONFIGURE_ARGS+=(--cpu-only) ;;
    --dist) DIST="$2"; shift ;;
    --no-local-version) LOCAL_VERSION=0 ;;
    --tf)
      case "${2:-}" in
        all) RELEASES+=(2.16 2.17 2.18 2.19 2.20 2.21) ;;
        2.1[6-9]|2.2[01]) RELEASES+=("$2") ;;
        *) echo "build_wheel.sh: --tf ${2:-}: not a supported release (2.16 to 2.21, or all)" >&2; exit 2 ;;
      esac
      shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "build_wheel.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$DIST"
DIST="$(cd "$DIST" && pwd)"

# ------------------------------------------------ one wheel per release
if [ "${#RELEASES[@]}" -gt 0 ]; then
  command -v git >/dev/null 2>&1 && git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1 ||
    { echo "build_wheel.sh: --tf needs a git clone (it copies the files git knows)" >&2; exit 1; }
  BASE_PYTHON="${TFMH_BASE_PYTHON:-$(command -v python3)}"
  for release in "${RELEASES[@]}"; do
    work="$ROOT/.whl/tf$release"
    echo "==> TensorFlow $release in $work"
    mkdir -p "$work"
    if [ ! -x "$work/venv/bin/python" ] ||
       ! "$work/venv/bin/python" -c "import tensorflow" >/dev/null 2>&1; then
      rm -rf "$work/venv"
      "$BASE_PYTHON" -m venv "$work/venv"
      "$work/venv/bin/python" -m pip install -q --upgrade pip
      "$work/venv/bin/python" -m pip install -q "tensorflow==$release.*"
    fi
    # A fresh copy of the tree at the same path (so Bazel reuses its output).
    rm -rf "$work/src"
    mkdir "$work/src"
    git -C "$ROOT" ls-files -z --cached --others --exclude-standard |
      while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
      tar --null -T - -cf - | tar -xf - -C "$work/src"
    (cd "$work/src" && PYTHON_BIN_PATH="$work/venv/bin/python" ./configure.sh "${CONFIGURE_ARGS[@]}")
    flags=(--no-configure --dist "$DIST")
    [ "$LOCAL_VERSION" = 1 ] || flags+=(--no-local-version)
    PYTHON_BIN_PATH="$work/venv/bin/python" "$work/src/build_wheel.sh" "${flags[@]}"
    (cd "$work/src" && bazel shutdown) || true
  done
  exit 0
fi

# ------------------------------------------ the wheel of this tree's build
if [ "$CONFIGURE" = 1 ]; then
  ./configure.sh "${CONFIGURE_ARGS[@]}"
fi
PYTHON="${PYTHON_BIN_PATH:-$ROOT/.venv/bin/python}"
# Build from a staged copy of the package's tracked sources and the built
# library, so that no build/ or *.egg-info lands in the tree and no stale
# file (a removed module, __pycache__) can leak into the wheel.
STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
[ -f tensorflow_multihash/_multihash_ops.so ] ||
  { echo "build_wheel.sh: tensorflow_multihash/_multihash_ops.so is missing; run ./configure.sh" >&2; exit 1; }
mkdir "$STAGE/src" "$STAGE/plain" "$STAGE/out"
cp setup.py pyproject.toml "$STAGE/src/"
mkdir "$STAGE/src/tensorflow_multihash"
cp tensorflow_multihash/*.py tensorflow_multihash/_multihash_ops.so "$STAGE/src/tensorflow_multihash/"
TFMH_WHEEL_LOCAL_VERSION="$LOCAL_VERSION" \
  "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation --no-index -w "$STAGE/plain" "$STAGE/src"
plain="$(ls "$STAGE"/plain/tensorflow_multihash-*.whl)"
if "$PYTHON" -c "import auditwheel" >/dev/null 2>&1; then
  # The manylinux tag of the oldest glibc/libstdc++ the library's symbols
  # allow; libtensorflow_framework.so.2 is TensorFlow's, not grafted in.
  # Nothing is grafted, so no ELF file needs patching: auditwheel's "none"
  # patcher where this auditwheel has one, else patchelf on PATH.
  patcher=()
  if "$PYTHON" -m auditwheel repair --help 2>/dev/null | grep -q -e '--patcher'; then
    patcher=(--patcher none)
  fi
  PATH="$(dirname "$PYTHON"):$PATH" "$PYTHON" -m auditwheel repair "${patcher[@]}" \
    -w "$STAGE/out" --exclude libtensorflow_framework.so.2 "$plain" \
    >"$STAGE/auditwheel.log" 2>&1 ||
    { cat "$STAGE/auditwheel.log" >&2; echo "build_wheel.sh: auditwheel repair failed" >&2; exit 1; }
else
  echo "build_wheel.sh: note: auditwheel is not installed (pip install auditwheel):" \
       "the wheel keeps the linux_x86_64 tag, which PyPI does not accept" >&2
  cp "$plain" "$STAGE/out/"
fi
wheel="$(ls "$STAGE"/out/tensorflow_multihash-*.whl)"
# tensorflow_multihash-<version>-py3-none-<platform>.whl: replace a wheel of
# the same version (any platform tag), keep the other releases'.
name_version="$(basename "$wheel" | cut -d- -f1-2)"
rm -f "$DIST/$name_version"-*.whl
cp "$wheel" "$DIST/"
ls -l "$DIST/$(basename "$wheel")"
