"""Loads the op library that ships inside this package, once.

The library is built against one TensorFlow release; it says which (and
whether it carries the GPU kernels) through its `TfmhBuildInfo` symbol, and
the same text is in its bytes, so a failed load can still name it.
"""

import ctypes
import os
import re
import warnings

import tensorflow as tf

LIBRARY_NAME = "_multihash_ops.so"
LIBRARY_PATH = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), LIBRARY_NAME
)

_BUILD_INFO = re.compile(rb"TFMH_BUILD_INFO tf=([^ \x00]+) cuda=([01])")

_module = None
_build_info = None


def _read_build_info(path):
  """(tf_version, built_with_cuda) of the library file, read from its bytes."""
  try:
    with open(path, "rb") as f:
      match = _BUILD_INFO.search(f.read())
  except OSError:
    return None
  if match is None:
    return None
  return match.group(1).decode(), match.group(2) == b"1"


def load():
  """Loads the op library (once) and returns its generated op module.

  Raises:
    ImportError: the library is missing or cannot be loaded; the message
      names the file and the TensorFlow it was built against.
  """
  global _module, _build_info
  if _module is not None:
    return _module
  if not os.path.exists(LIBRARY_PATH):
    raise ImportError(
        f"tensorflow_multihash: the op library {LIBRARY_PATH} does not exist; "
        "build it with ./configure.sh at the repository root"
    )
  info = _read_build_info(LIBRARY_PATH)
  built_for = info[0] if info else "an unknown version"
  try:
    module = tf.load_op_library(LIBRARY_PATH)
  except Exception as e:  # TF raises NotFoundError for dlopen failures.
    raise ImportError(
        f"tensorflow_multihash: cannot load the op library {LIBRARY_PATH}, "
        f"built against TensorFlow {built_for}, into TensorFlow "
        f"{tf.__version__}: {e}"
    ) from e
  try:
    text = ctypes.CDLL(LIBRARY_PATH).TfmhBuildInfo
    text.restype = ctypes.c_char_p
    match = _BUILD_INFO.search(text())
    info = (match.group(1).decode(), match.group(2) == b"1")
  except (OSError, AttributeError):
    pass
  if info and info[0] != tf.__version__:
    warnings.warn(
        f"tensorflow_multihash: the op library {LIBRARY_PATH} was built "
        f"against TensorFlow {info[0]} but TensorFlow {tf.__version__} is "
        "running; rebuild it (./configure.sh, or ./build_wheel.sh for a wheel) "
        "against the running TensorFlow if ops fail",
        RuntimeWarning,
    )
  _module, _build_info = module, info
  return module


def built_with_cuda():
  """True if the loaded library has the GPU kernels."""
  load()
  return bool(_build_info and _build_info[1])


def built_tf_version():
  """The TensorFlow version the library was built against."""
  load()
  return _build_info[0] if _build_info else None
