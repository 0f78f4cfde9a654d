"""The multi-hash lookup from stock TensorFlow ops, for XLA.

XLA compiles no custom kernel, so `MultiHashLookup` cannot run inside a
`tf.function(jit_compile=True)` or a Keras model compiled with
`jit_compile=True` (Keras's default "auto" turns XLA on whenever a GPU is
present). Inside such an XLA context `multihash_ops.multihash_lookup` calls
`lookup` below instead, which computes the same numbers from ops XLA
compiles and fuses:

  row_j = (id // divisor_j) % rows_j        (multihash_ops._table_divisors)
  part_j = tf.gather(table_j, row_j)
  out = part_0 op part_1 op ... op part_{k-1}   (left to right, as the kernel)

float16 and bfloat16 parts are combined in float32 and the result is rounded
once, as the fused kernel does. The gradient reaches each table as a
`tf.IndexedSlices` with one entry per id (static shapes, as XLA needs) in
which each row's total, summed in float32 for half types and rounded once
as the fused kernel's gradient, stands at the first id that reads the row
and the other entries are zeros: every optimizer then sees the numbers of
the fused op's gradient (one summed entry per distinct row).

Out-of-range ids under XLA: XLA cannot raise a run-time error. It compiles
`tf.debugging` assertions to nothing (with a warning) and its gather clamps
indices into the table. So with out_of_range="error" an id outside
[0, capacity) is not clamped and not wrapped: its embedding is NaN in every
element (the tables are never read outside their rows, and no table row
receives a gradient from it). The loss of a batch holding such an id is NaN,
which `keras.callbacks.TerminateOnNaN` stops on. Use out_of_range="wrap" for
ids that may lie outside the range, or check ids before the compiled step.
"""

import tensorflow as tf
from tensorflow.python.framework import ops
from tensorflow.python.ops import control_flow_util

from tensorflow_multihash import multihash_ops

_HALF_TYPES = (tf.float16, tf.bfloat16)


def in_xla_context():
  """Whether ops built now are compiled by XLA.

  True inside `tf.function(jit_compile=True)` (Keras's `jit_compile=True`
  train, test and predict functions are such functions), also in a plain
  `tf.function` called from one; False in eager mode, in a plain
  `tf.function` and in TF1 graphs.
  """
  if tf.executing_eagerly():
    return False
  return control_flow_util.GraphOrParentsInXlaContext(ops.get_default_graph())


def _dtype_max(dtype):
  return dtype.max


def valid_ids(ids, bound):
  """A bool tensor like `ids`: `0 <= id < bound` (unsigned ids: `id < bound`)."""
  ids = tf.convert_to_tensor(ids)
  below = (
      tf.less(ids, tf.constant(bound, ids.dtype))
      if bound <= _dtype_max(ids.dtype)
      else tf.ones_like(ids, tf.bool)
  )
  if ids.dtype.is_unsigned:
    return below
  return tf.logical_and(tf.greater_equal(ids, tf.zeros_like(ids)), below)


def nan_where_invalid(embeddings, valid):
  """`embeddings` with every element of the rows where `valid` is False set
  to NaN; the gradient reaches only the valid rows."""
  nan = tf.constant(float("nan"), embeddings.dtype)
  return tf.where(tf.expand_dims(valid, -1), embeddings, nan)


def _rows_of(ids, divisor, rows):
  """(ids // divisor) % rows, in ids' dtype when the numbers fit."""
  if ids.dtype == tf.int32 and max(divisor, rows) > 2**31 - 1:
    ids = tf.cast(ids, tf.int64)
  x = ids
  if divisor != 1:
    x = tf.math.floordiv(x, tf.constant(divisor, x.dtype))
  return tf.math.floormod(x, tf.constant(rows, x.dtype))


def _gather_table(shards, row):
  """Rows `row` of a table given as row shards (contiguous blocks)."""
  if len(shards) == 1:
    return tf.gather(shards[0], row)
  # Each shard gathers with its local row clamped into it, and the shard
  # that owns the row is selected; the other shards' gathers get a zero
  # gradient. (tf.dynamic_partition, which the sharded stock lookup uses,
  # has no static output shape and does not compile.)
  out, offset = None, 0
  for shard in shards:
    n = tf.compat.dimension_value(shard.shape[0])
    local = tf.clip_by_value(row - offset, 0, n - 1)
    part = tf.gather(shard, local)
    if out is None:
      out = part
    else:
      owned = tf.expand_dims(tf.greater_equal(row, offset), -1)
      out = tf.where(owned, part, out)
    offset += n
  return out


def _one_entry_per_row(part, rows, num_rows):
  """`part` (the gathered rows of one table), whose gradient holds each
  table row's total in the first position that reads the row and zeros in
  the others.

  The gradient of `tf.gather` repeats a row once per id that reads it.
  Summed, that is the same gradient, but optimizers that square the
  gradient's entries before summing them (Keras 3 Adam and Adagrad) would
  then square each id's share instead of the row's total, as they do with
  the fused op's gradient (one summed entry per row). Summing per row here
  (static shapes, so XLA compiles it) gives them the same numbers.
  """
  width = tf.compat.dimension_value(part.shape[-1])

  @tf.custom_gradient
  def identity(x):
    def grad(dy):
      flat_rows = tf.reshape(rows, [-1])
      flat_dy = tf.reshape(dy, [-1, width])
      totals = tf.math.unsorted_segment_sum(flat_dy, flat_rows, num_rows)
      positions = tf.range(
          tf.size(flat_rows, out_type=flat_rows.dtype), dtype=flat_rows.dtype
      )
      first = tf.math.unsorted_segment_min(positions, flat_rows, num_rows)
      is_first = tf.equal(tf.gather(first, flat_rows), positions)
      values = tf.where(
          tf.expand_dims(is_first, -1),
          tf.gather(totals, flat_rows),
          tf.zeros_like(flat_dy),
      )
      return tf.reshape(values, tf.shape(dy))

    return tf.identity(x), grad

  return identity(part)


def lookup(
    tables,
    ids,
    operation="add",
    complementary_strategy="Q-R",
    out_of_range="error",
    deeprec_mapping=False,
):
  """`multihash_ops.multihash_lookup` from stock ops that XLA compiles.

  Takes the same arguments and gives the same numbers, in and out of XLA;
  `multihash_ops.multihash_lookup` calls it inside an XLA context. See the
  module docstring for what an out-of-range id gives with
  out_of_range="error".

  Raises:
    ValueError, TypeError: as `multihash_ops.multihash_lookup`.
  """
  (operation, shards, rows, widths, dtype, divisors, capacity) = (
      multihash_ops._describe_lookup(
          tables,
          operation,
          complementary_strategy,
          out_of_range,
          deeprec_mapping,
      )
  )
  # pylint: disable=protected-access
  ids = multihash_ops._ids_tensor(ids)
  # pylint: enable=protected-access
  valid = None
  if out_of_range == "wrap":
    ids = multihash_ops._wrap_ids(ids, capacity)
  else:
    valid = valid_ids(ids, capacity)
  parts = []
  for table_shards, divisor, num_rows in zip(shards, divisors, rows):
    row = _rows_of(ids, divisor, num_rows)
    part = _gather_table(table_shards, row)
    if dtype in _HALF_TYPES:  # the kernel's float32 accumulator
      part = tf.cast(part, tf.float32)
    parts.append(_one_entry_per_row(part, row, num_rows))
  if operation == "concat":
    out = tf.concat(parts, axis=-1)
  else:
    out = parts[0]
    for p in parts[1:]:
      out = out * p if operation == "mul" else out + p
  out = tf.cast(out, dtype)
  if valid is not None:
    out = nan_where_invalid(out, valid)
  return out
