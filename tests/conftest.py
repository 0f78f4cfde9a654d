"""Shared pytest configuration for the tensorflow_multihash test suite."""
import os
import zlib

# Must be set before TensorFlow is imported anywhere.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

try:  # Keep the suite light on small CI machines.
    tf.config.threading.set_inter_op_parallelism_threads(2)
    tf.config.threading.set_intra_op_parallelism_threads(2)
except RuntimeError:  # TF already initialized by another plugin.
    pass


@pytest.fixture(scope="session")
def mh():
    """The `tensorflow_multihash.multihash_ops` module (errors loudly if unbuilt)."""
    from tensorflow_multihash import multihash_ops

    return multihash_ops


@pytest.fixture
def rng(request):
    """A per-test deterministic random generator (seeded from the test id)."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode("utf-8")))
