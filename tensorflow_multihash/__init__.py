"""Multi-hash embedding variables for stock TensorFlow 2.x.

One logical embedding table of `capacity` rows is stored as small tables whose
rows are picked by complementary hash functions (quotient and remainder) and
combined by add, mul or concat. Importing the package loads the op library
and lets DeepRec code that uses `get_multihash_variable` run unchanged.
"""

from tensorflow_multihash.version import __version__
from tensorflow_multihash import multihash_ops
from tensorflow_multihash.embedding_ops import embedding_lookup
from tensorflow_multihash.embedding_ops import embedding_lookup_sparse
from tensorflow_multihash.embedding_ops import safe_embedding_lookup_sparse
from tensorflow_multihash.feature_column import categorical_column_with_multihash
from tensorflow_multihash.feature_column import embedding_column
from tensorflow_multihash.multihash_ops import multihash_lookup
from tensorflow_multihash.sizing import multihash_dims
from tensorflow_multihash.variable import MultiHashVariable
from tensorflow_multihash.variable import get_multihash_variable
from tensorflow_multihash.variable import set_deeprec_mapping
from tensorflow_multihash import deeprec_compat  # noqa: F401  (registers)


def __getattr__(name):
  # `tfmh.keras` (the Keras 3 layer) is imported on first use, so the
  # package imports without Keras.
  if name == "keras":
    from tensorflow_multihash import keras_layers

    return keras_layers
  raise AttributeError("module %r has no attribute %r" % (__name__, name))


# `import tensorflow` imports Keras when it is installed; registering the
# layer right away then costs nothing and lets keras.saving.load_model find
# it after a plain `import tensorflow_multihash`.
if "keras" in __import__("sys").modules:
  try:
    from tensorflow_multihash import keras_layers as keras  # noqa: F401
  except ImportError:  # Keras 2: `tfmh.keras` raises the reason on use.
    pass

__all__ = [
    "MultiHashVariable",
    "categorical_column_with_multihash",
    "embedding_column",
    "embedding_lookup",
    "embedding_lookup_sparse",
    "get_multihash_variable",
    "multihash_dims",
    "multihash_lookup",
    "multihash_ops",
    "safe_embedding_lookup_sparse",
    "set_deeprec_mapping",
]
