# Sourced by the scripts that build against the CPU emulation of CUDA
# (device_check.sh --emulate, build_tf_emulation.sh): they need the CUDA
# toolkit's headers (cuda_fp16.h, cuda_bf16.h and the runtime's types), not
# its compiler.
#
# find_cuda_include NVCC [PYTHON]: keeps $CUDA_INCLUDE if it is set, else
# looks in $CUDA_HOME/include, beside NVCC, where NVCC says its headers are,
# /usr/local/cuda/include and, last, the CUDA headers that TensorFlow's wheel
# carries (<tf include>/third_party/gpus/cuda/include, found with PYTHON), so
# the emulation builds on a machine without a toolkit too. Sets CUDA_INCLUDE
# to the first that holds cuda_fp16.h and CUDA_INCLUDE_FLAGS to the -I flags
# it needs (the wheel's copy keeps <nv/target> in libcudacxx beside it);
# returns 1 if none does.
find_cuda_include() {
  local nvcc="$1" python="${2:-}" c tf_include=""
  if [[ -z "${CUDA_INCLUDE:-}" ]]; then
    if [[ -n "$python" ]]; then
      tf_include="$(TF_CPP_MIN_LOG_LEVEL=3 "$python" -c \
        'import tensorflow as tf; print(tf.sysconfig.get_include())' 2>/dev/null || true)"
    fi
    # nvcc may be a wrapper script: ask it where its headers are.
    for c in ${CUDA_HOME:+"$CUDA_HOME/include"} \
             "$(dirname "$(readlink -f "$nvcc" 2>/dev/null || echo /nonexistent)")/../include" \
             "$("$nvcc" --dryrun -E -x cu /dev/null 2>&1 |
                sed -n 's/^#\$ INCLUDES="-I\([^"]*\)".*/\1/p' | head -1)" \
             /usr/local/cuda/include \
             ${tf_include:+"$tf_include/third_party/gpus/cuda/include"}; do
      if [[ -n "$c" && -f "$c/cuda_fp16.h" ]]; then
        CUDA_INCLUDE="$(cd "$c" && pwd -P)"
        break
      fi
    done
  fi
  [[ -f "${CUDA_INCLUDE:-}/cuda_fp16.h" ]] || return 1
  CUDA_INCLUDE_FLAGS=(-I"$CUDA_INCLUDE")
  if [[ ! -e "$CUDA_INCLUDE/nv/target" && -e "$CUDA_INCLUDE/../libcudacxx/include/nv/target" ]]; then
    CUDA_INCLUDE_FLAGS+=(-I"$(cd "$CUDA_INCLUDE/../libcudacxx/include" && pwd -P)")
  fi
}
