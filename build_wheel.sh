#!/usr/bin/env bash
# Builds dist/tensorflow_multihash-<version>-py3-none-<platform>.whl: the
# Python package and the op library, requiring the TensorFlow release the
# library was built against.
#
# Usage: ./build_wheel.sh [--no-configure] [--dist DIR]
#   --no-configure  use the library ./configure.sh already built
#   --dist DIR      write the wheel to DIR (default: dist/)
# Offline: pip runs setup.py with the environment's setuptools and wheel
# (--no-build-isolation), never an index (--no-index).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
CONFIGURE=1
DIST="$ROOT/dist"
while [ $# -gt 0 ]; do
  case "$1" in
    --no-configure) CONFIGURE=0 ;;
    --dist) DIST="$2"; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "build_wheel.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

if [ "$CONFIGURE" = 1 ]; then
  ./configure.sh
fi
PYTHON="${PYTHON_BIN_PATH:-$ROOT/.venv/bin/python}"
mkdir -p "$DIST"
# Build from a staged copy of the package's tracked sources and the built
# library, so that no build/ or *.egg-info lands in the tree and no stale
# file (a removed module, __pycache__) can leak into the wheel.
STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
[ -f tensorflow_multihash/_multihash_ops.so ] ||
  { echo "build_wheel.sh: tensorflow_multihash/_multihash_ops.so is missing; run ./configure.sh" >&2; exit 1; }
cp setup.py pyproject.toml "$STAGE/"
mkdir "$STAGE/tensorflow_multihash"
cp tensorflow_multihash/*.py tensorflow_multihash/_multihash_ops.so "$STAGE/tensorflow_multihash/"
rm -f "$DIST"/tensorflow_multihash-*.whl
"$PYTHON" -m pip wheel -q --no-deps --no-build-isolation --no-index -w "$DIST" "$STAGE"
ls -l "$DIST"/tensorflow_multihash-*.whl
