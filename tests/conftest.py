"""Shared pytest configuration for the tensorflow_multihash test suite.

TFMH_TEST_MODE (tests/mh_mode.py) selects the TensorFlow behaviour of the
whole run: tf2 (default), v1 (`disable_v2_behavior()`, as DeepRec users run)
or graph (`disable_eager_execution()` only). In v1 and graph mode only the
tests marked `tf1` run.
"""

import os
import sys
import zlib

# Must be set before TensorFlow is imported anywhere.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mh_mode  # noqa: E402

MODE = mh_mode.apply()

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

try:  # Keep the suite light on small CI machines.
  tf.config.threading.set_inter_op_parallelism_threads(2)
  tf.config.threading.set_intra_op_parallelism_threads(2)
except RuntimeError:  # TF already initialized by another plugin.
  pass


def pytest_configure(config):
  config.addinivalue_line(
      "markers",
      "tf1: also runs under TFMH_TEST_MODE=v1 and =graph (TF1 graph code)",
  )
  config.addinivalue_line(
      "markers",
      "slow: takes more than ~20 s (clusters, builds, serving); "
      "the fast loop is pytest -m 'not slow'",
  )


def pytest_report_header(config):
  return "tensorflow_multihash test mode: %s (TFMH_TEST_MODE)" % MODE


def pytest_collection_modifyitems(config, items):
  if MODE == "tf2":
    return
  keep, drop = [], []
  for item in items:
    (keep if item.get_closest_marker("tf1") else drop).append(item)
  if drop:
    config.hook.pytest_deselected(items=drop)
    items[:] = keep


@pytest.fixture(scope="session")
def mh():
  """The `tensorflow_multihash.multihash_ops` module (errors loudly if unbuilt)."""
  from tensorflow_multihash import multihash_ops

  return multihash_ops


@pytest.fixture
def rng(request):
  """A per-test deterministic random generator (seeded from the test id)."""
  return np.random.default_rng(zlib.crc32(request.node.nodeid.encode("utf-8")))
