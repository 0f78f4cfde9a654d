#!/usr/bin/env bash
# CI, second part: builds and tests tensorflow_multihash against the oldest
# supported TensorFlow release (2.16; docs/tensorflow_versions.md), CPU-only,
# leaving the repository's own build (.venv, .bazelrc, bazel-*, the op
# library) untouched: in a temporary folder, a copy of the files git knows, a
# virtual environment with tensorflow==2.16.* from PyPI, and that copy's own
# Bazel output (expunged at the end). Then ./configure.sh there (which must
# keep 2.16 and add tf_keras 2.16), the fast tier of the tests (-m "not slow"),
# and the slow tests that depend on the release most: the wheel (its
# requirement and tag), the seed examples as users run them, and the C API
# client built against that release's headers. Any nonzero exit fails CI,
# pytest's 5 (no tests) included.
#
# Usage: bash .ci/oldest_tf.sh [pytest arguments, instead of the two runs above]
#   TFMH_OLDEST_TF=2.16    the release to test
#   TFMH_BASE_PYTHON=...   the Python for the environment (default: python3;
#                          TensorFlow 2.16 has wheels for Python 3.9 to 3.12)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RELEASE="${TFMH_OLDEST_TF:-2.16}"
BASE_PYTHON="${TFMH_BASE_PYTHON:-$(command -v python3)}"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/tfmh-tf$RELEASE.XXXXXX")"
cleanup() {
  if [ -f "$WORK/src/WORKSPACE" ]; then
    (cd "$WORK/src" && bazel clean --expunge >/dev/null 2>&1) || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
start=$SECONDS
say() { echo "==> [TensorFlow $RELEASE, $((SECONDS - start)) s] $*"; }

say "copying the tree to $WORK/src"
mkdir "$WORK/src"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard |
   while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
   tar --null -T - -cf -) | tar -xf - -C "$WORK/src"

say "virtual environment with tensorflow==$RELEASE.* ($BASE_PYTHON)"
"$BASE_PYTHON" -m venv "$WORK/venv"
PY="$WORK/venv/bin/python"
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q "tensorflow==$RELEASE.*"
tf_version() { TF_CPP_MIN_LOG_LEVEL=3 "$PY" -c "import tensorflow as tf; print(tf.__version__)"; }
installed="$(tf_version)"
say "installed TensorFlow $installed"

cd "$WORK/src"
unset CUDA_HOME PYTHONPATH
export PYTHON_BIN_PATH="$PY"
./configure.sh --cpu-only
after="$(tf_version)"
[ "$after" = "$installed" ] ||
  { echo "oldest_tf.sh: configure.sh changed TensorFlow $installed to $after" >&2; exit 1; }
"$PY" -m pip list 2>/dev/null | grep -E -i '^(tensorflow|tf[_-]keras|keras|numpy) '
say "configured; TensorFlow still $after"

run_pytest() {
  say "pytest $*"
  local rc=0
  "$PY" -m pytest "$@" || rc=$?
  say "pytest exit $rc"
  return "$rc"
}
if [ $# -gt 0 ]; then
  run_pytest "$@"
else
  rc=0
  run_pytest -q -m "not slow" tests || rc=1
  run_pytest -q -m slow tests/test_wheel.py tests/test_seed_examples.py \
    tests/test_serving_c_api.py || rc=1
  exit "$rc"
fi
