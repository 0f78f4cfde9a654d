# Sourced by the scripts that build against the CPU emulation of CUDA
# (device_check.sh --emulate, build_tf_emulation.sh): they need the CUDA
# toolkit's headers (cuda_fp16.h, cuda_bf16.h and the runtime's types), not
# its compiler.
#
# find_cuda_include NVCC: keeps $CUDA_INCLUDE if it is set, else looks in
# $CUDA_HOME/include, beside NVCC, where NVCC says its headers are, and
# /usr/local/cuda/include. Sets CUDA_INCLUDE to the first that holds
# cuda_fp16.h; returns 1 if none does.
find_cuda_include() {
  local nvcc="$1" c
  if [[ -z "${CUDA_INCLUDE:-}" ]]; then
    # nvcc may be a wrapper script: ask it where its headers are.
    for c in ${CUDA_HOME:+"$CUDA_HOME/include"} \
             "$(dirname "$(readlink -f "$nvcc" 2>/dev/null || echo /nonexistent)")/../include" \
             "$("$nvcc" --dryrun -E -x cu /dev/null 2>&1 |
                sed -n 's/^#\$ INCLUDES="-I\([^"]*\)".*/\1/p' | head -1)" \
             /usr/local/cuda/include; do
      if [[ -n "$c" && -f "$c/cuda_fp16.h" ]]; then
        CUDA_INCLUDE="$(cd "$c" && pwd -P)"
        break
      fi
    done
  fi
  [[ -f "${CUDA_INCLUDE:-}/cuda_fp16.h" ]]
}
