"""Helpers for the tests of the user-facing API (get_multihash_variable,
embedding lookups, training, checkpoints).

The references are written from the contract (SPEC sections 3-4) only:
NumPy, or stock TensorFlow ops (tf.gather / floordiv / floormod) on plain
variables.
"""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.ops import variables as tf_variables

from mh_testutil import ref_lookup

# Unequal row counts: capacity 15, q = id // 5, r = id % 5.
DIMS = {
    "add": [[3, 4], [5, 4]],
    "mul": [[3, 4], [5, 4]],
    "mult": [[3, 4], [5, 4]],
    "concat": [[3, 3], [5, 2]],
}
ROWS_R = 5
CAPACITY = 15
OPS = ("add", "mul", "concat")


def out_width(operation):
  d = DIMS[operation]
  return d[0][1] + d[1][1] if operation == "concat" else d[0][1]


@pytest.fixture(scope="session")
def tfmh():
  """The package; fails (not skips) while the API is missing."""
  import tensorflow_multihash as m

  assert hasattr(
      m, "get_multihash_variable"
  ), "tensorflow_multihash.get_multihash_variable is missing"
  return m


def table_arrays(rng, dims, low=-1.0, high=1.0):
  """Random float32 arrays [Q, R] of the shapes in `dims`."""
  return [
      rng.uniform(low, high, size=(r, w)).astype(np.float32) for r, w in dims
  ]


def array_initializer(arrays):
  """An initializer giving each table its array, chosen by full shape.

  Handles partitioned variables (TF passes `partition_info` with the full
  shape and the shard's offset). The arrays must have distinct shapes.
  """
  by_shape = {tuple(a.shape): a for a in arrays}
  assert len(by_shape) == len(arrays), "arrays need distinct shapes"

  def init(shape, dtype=None, partition_info=None):
    shape = [int(s) for s in shape]
    if partition_info is not None:
      full = by_shape[tuple(int(s) for s in partition_info.full_shape)]
      off = [int(o) for o in partition_info.var_offset]
      block = full[off[0] : off[0] + shape[0], off[1] : off[1] + shape[1]]
    else:
      block = by_shape[tuple(shape)]
    assert list(block.shape) == shape, (block.shape, shape)
    return tf.constant(block, dtype=dtype if dtype is not None else tf.float32)

  return init


def np_lookup(arrays, ids, operation):
  return ref_lookup([np.asarray(a, np.float64) for a in arrays], ids, operation)


def tf_ref_lookup(q_table, r_table, ids, operation, rows_r=ROWS_R):
  """The same lookup with stock ops (gradients are IndexedSlices too)."""
  ids = tf.cast(tf.convert_to_tensor(ids), tf.int64)
  a = tf.gather(q_table, tf.math.floordiv(ids, rows_r))
  b = tf.gather(r_table, tf.math.floormod(ids, rows_r))
  if operation == "add":
    return a + b
  if operation in ("mul", "mult"):
    return a * b
  if operation == "concat":
    return tf.concat([a, b], axis=-1)
  raise ValueError(operation)


def dedup_slices(g):
  """Sums the rows of an IndexedSlices that share an index.

  tf.gather's gradient repeats an index once per lookup; TF1 optimizers sum
  repeats themselves, Keras 3 optimizers do not (Adagrad/Adam then square
  each repeat separately). A reference built on tf.gather therefore
  deduplicates before a Keras optimizer sees it, which is what the true
  (dense) gradient gives.
  """
  if not isinstance(g, tf.IndexedSlices):
    return g
  uniq, idx = tf.unique(g.indices)
  values = tf.math.unsorted_segment_sum(g.values, idx, tf.shape(uniq)[0])
  return tf.IndexedSlices(values, uniq, g.dense_shape)


def is_partitioned(t):
  return isinstance(t, tf_variables.PartitionedVariable)


def shards(t):
  return list(t) if is_partitioned(t) else [t]


def eager_value(t):
  return np.concatenate([s.numpy() for s in shards(t)], axis=0)


def sess_value(sess, t):
  return np.concatenate(sess.run(shards(t)), axis=0)


def np_pool(arrays, operation, indices, values, weights, n_rows, combiner):
  """Reference for embedding_lookup_sparse: compose, then pool per row."""
  width = out_width(operation)
  emb = np_lookup(arrays, np.asarray(values, np.int64), operation)
  w = (
      np.ones(len(values))
      if weights is None
      else np.asarray(weights, np.float64)
  )
  out = np.zeros((n_rows, width))
  rows = np.asarray(indices)[:, 0] if len(values) else np.zeros(0, np.int64)
  for b in range(n_rows):
    sel = rows == b
    if not sel.any():
      continue
    s = (w[sel, None] * emb[sel]).sum(axis=0)
    if combiner == "sum":
      out[b] = s
    elif combiner == "mean":
      out[b] = s / w[sel].sum()
    elif combiner == "sqrtn":
      out[b] = s / np.sqrt((w[sel] ** 2).sum())
    else:
      raise ValueError(combiner)
  return out


def clip_rows(x, max_norm):
  n = np.linalg.norm(x, axis=-1, keepdims=True)
  return np.where(n > max_norm, x * max_norm / np.maximum(n, 1e-30), x)
