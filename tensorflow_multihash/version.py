"""The version of tensorflow_multihash, in one place.

setup.py reads it from this file as text (it must not import the package,
which loads TensorFlow) and adds the TensorFlow release the wheel is built
for as a local label (0.1.0+tf2.21); `tensorflow_multihash.__version__` is
this public part.
"""

__version__ = "0.1.0"
