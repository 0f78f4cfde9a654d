"""Multi-hash embedding variables for stock TensorFlow 2.x.

One logical embedding table of `capacity` rows is stored as small tables whose
rows are picked by complementary hash functions (quotient and remainder) and
combined by add, mul or concat. Importing the package loads the op library.
"""

from tensorflow_multihash import multihash_ops
from tensorflow_multihash.multihash_ops import multihash_lookup

__all__ = ["multihash_ops", "multihash_lookup"]
