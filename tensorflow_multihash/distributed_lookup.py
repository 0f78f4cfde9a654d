"""Multi-hash lookups whose table shards live on other devices.

The fused `MultiHashLookup` op reads every shard of every table in one
kernel, so all of them must be readable where that kernel runs. When the
shards are spread over devices (parameter-server tasks, or several local
devices), running it would copy whole shards to one place every step. This
module builds the lookup from stock ops instead, so that only rows move:

1. on the device that runs the lookup, each id's row of table j is computed
   as `(id // divisor_j) % rows_j`, and the distinct rows are routed to the
   shards holding them (contiguous row blocks, in order);
2. each shard gathers its rows on its own device (colocated with the shard);
3. the rows are stitched back and combined (add, mul or concat over the k
   tables) on the device that runs the lookup.

Gradients follow the stock gather gradient, so every shard receives a
`tf.IndexedSlices` of the rows it served and optimizers apply sparse updates
where the shard lives. `embedding_ops.embedding_lookup` chooses this path
with `needs_colocated_lookup`; single-device lookups keep the fused op.
"""

import contextlib

import tensorflow as tf
from tensorflow.core.framework import node_def_pb2
from tensorflow.python.framework import ops

from tensorflow_multihash import multihash_ops

# Table dtypes the fused kernels combine in float32 (then round once); the
# colocated path does the same so that both give identical bits.
_WIDENED_DTYPES = (tf.float16, tf.bfloat16)


class _DeviceProbe(object):
  """Stands in for an op so the graph's device functions can be asked where
  an op created now would go, without adding a node to the graph."""

  def __init__(self):
    self.node_def = node_def_pb2.NodeDef(
        name="multihash_device_probe", op="Identity"
    )
    self.type = "Identity"
    self.name = self.node_def.name

  @property
  def device(self):
    return self.node_def.device

  def _set_device_from_string(self, device):
    self.node_def.device = device


def current_device():
  """The device an op created now in the default graph would be given
  ("" when no device scope applies, and always "" when executing eagerly)."""
  if tf.executing_eagerly():
    return ""
  graph = ops.get_default_graph()
  probe = _DeviceProbe()
  try:
    graph._apply_device_functions(probe)  # pylint: disable=protected-access
  except (AttributeError, TypeError, ValueError):
    # A custom device function that needs a real op: no answer, so the
    # decision falls back to comparing the shards with each other.
    return ""
  return probe.device


def _spec(device):
  return tf.DeviceSpec.from_string(device or "")


def _conflict(a, b):
  """True if device strings a and b name different places. A field unset in
  either one does not conflict, since placement may still fill it in."""
  sa, sb = _spec(a), _spec(b)
  for field in ("job", "replica", "task", "device_type", "device_index"):
    va, vb = getattr(sa, field), getattr(sb, field)
    if va is not None and vb is not None and str(va).upper() != str(vb).upper():
      return True
  return False


def _shard_device(shard):
  try:
    return shard.device or ""
  except (AttributeError, ValueError):
    return ""


def needs_colocated_lookup(tables):
  """Whether a lookup of `tables` should gather rows where the shards live.

  True, in graph building (TF1 graphs and `tf.function`), when two shards
  have device strings that name different places, or when the shards'
  device differs from the device scope the lookup is built in (a worker
  reading tables held by a parameter server). Eager lookups and shards on
  one device keep the fused op; resource variables take the fused op to
  their own device, so only ids and results travel then.

  Args:
    tables: the small tables, as `multihash_ops.multihash_lookup` takes them.

  Returns:
    A bool.
  """
  if tf.executing_eagerly():
    return False
  devices = [
      _shard_device(s) for t in tables for s in multihash_ops._table_shards(t)
  ]
  devices = [d for d in devices if d]
  if not devices:
    return False
  if any(_conflict(devices[0], d) for d in devices[1:]):
    return True
  here = current_device()
  return bool(here) and _conflict(here, devices[0])


def _placed_with(shard):
  """A context that puts new ops on the shard's device."""
  if isinstance(shard, tf.Variable) or (
      isinstance(shard, tf.Tensor) and not isinstance(shard, ops.EagerTensor)
  ):
    # ops.colocate_with is tf.compat.v1.colocate_with without its
    # deprecation warning.
    return ops.colocate_with(shard)
  device = _shard_device(shard)
  return tf.device(device) if device else contextlib.nullcontext()


def _checked_ids(ids, capacity, rows, out_of_range):
  """Flat int64 ids; out-of-range ids fail (or wrap) before any gather."""
  if out_of_range == "wrap":
    return tf.cast(
        tf.reshape(multihash_ops._wrap_ids(ids, capacity), [-1]), tf.int64
    )
  flat = tf.cast(tf.reshape(ids, [-1]), tf.int64)
  bad = tf.logical_or(flat < 0, flat >= capacity)

  def report():
    # Built in the failing branch only: no string work on a good step.
    position = tf.argmax(tf.cast(bad, tf.int32))
    message = tf.strings.format(
        "ids[{}] = {} is out of range: ids must be in [0, %d), the capacity "
        'of tables with %s rows; out_of_range="wrap" folds larger ids '
        "into that range" % (capacity, list(rows)),
        (position, tf.gather(flat, position)),
    )
    return tf.debugging.Assert(False, [message])

  check = tf.cond(tf.reduce_any(bad), report, tf.no_op, name="check_ids")
  with tf.control_dependencies([check]):
    return tf.identity(flat)


def _gather_table(shards, table_rows, name):
  """Rows `table_rows` of one table whose shards may live anywhere.

  Each distinct row is fetched once, from the device of its shard; the
  result is put back in id order on the current device.
  """
  with tf.name_scope(name):
    # Duplicate ids are common (the quotient table serves many ids with one
    # row), so only distinct rows are sent for.
    uniq, inverse = tf.unique(table_rows, out_idx=tf.int32)
    if len(shards) == 1:
      with _placed_with(shards[0]):
        found = tf.gather(shards[0], uniq, name="gather_shard_0")
    else:
      sizes = [multihash_ops._static_shape(s)[0] for s in shards]
      starts = [0]
      for n in sizes[:-1]:
        starts.append(starts[-1] + n)
      # Shards are contiguous blocks in order: a row's shard is the number
      # of later block starts at or below it.
      which = tf.add_n([tf.cast(uniq >= b, tf.int32) for b in starts[1:]])
      local = uniq - tf.gather(tf.constant(starts, tf.int64), which)
      local_parts = tf.dynamic_partition(local, which, len(shards))
      positions = tf.dynamic_partition(
          tf.range(tf.size(uniq, out_type=tf.int32)), which, len(shards)
      )
      parts = []
      for s, shard in enumerate(shards):
        with _placed_with(shard):
          parts.append(
              tf.gather(shard, local_parts[s], name="gather_shard_%d" % s)
          )
      found = tf.dynamic_stitch(positions, parts)
    return tf.gather(found, inverse)


def _combine(parts, operation, dtype):
  """Add, mul or concat the k tables' rows, in the fused kernels' order and
  precision (left to right; half types in float32)."""
  if operation == "concat":
    return tf.concat(parts, axis=-1)
  widened = dtype in _WIDENED_DTYPES
  if widened:
    parts = [tf.cast(p, tf.float32) for p in parts]
  out = parts[0]
  for p in parts[1:]:
    out = out * p if operation == "mul" else out + p
  return tf.cast(out, dtype) if widened else out


def colocated_lookup(
    tables,
    ids,
    operation="add",
    complementary_strategy="Q-R",
    out_of_range="error",
    deeprec_mapping=False,
    name=None,
):
  """Looks up `ids`, gathering each shard's rows where the shard lives.

  Gives the same numbers as `multihash_ops.multihash_lookup` (identical
  bits for float32 and float64), with gradients that reach every shard as
  a `tf.IndexedSlices` of its rows.

  Args:
    tables: a list of k >= 2 small tables; each a variable, tensor,
      `PartitionedVariable`, `ShardedVariable` or list of row shards, all of
      one dtype, with static [rows, width] shapes.
    ids: int32 or int64 ids of any shape.
    operation: "add", "mul" ("mult" too) or "concat".
    complementary_strategy: "Q-R", "generalized-Q-R" or "CRT" (see
      `multihash_ops._table_divisors`).
    out_of_range: "error" (ids outside [0, capacity) fail the step) or
      "wrap" (ids are taken modulo the capacity).
    deeprec_mapping: "Q-R" only: DeepRec's mapping (see
      `multihash_ops.multihash_lookup`).
    name: a name scope for the ops.

  Returns:
    A tensor of shape `ids.shape + [width]`.

  Raises:
    ValueError: fewer than 2 tables, mismatched dtypes or widths, a shard
      without a static 2-D shape, an unknown operation, strategy or
      `out_of_range`, row counts the strategy cannot use.
    TypeError: ids that are not int32 or int64.
    tf.errors.InvalidArgumentError (when run): an id outside [0, capacity)
      with out_of_range="error".
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
  with tf.name_scope(name or "multihash_colocated_lookup"):
    ids = multihash_ops._ids_tensor(ids)  # pylint: disable=protected-access
    flat = _checked_ids(ids, capacity, rows, out_of_range)
    parts = []
    for j, (d, n) in enumerate(zip(divisors, rows)):
      row = flat if d == 1 else tf.math.floordiv(flat, d)
      # The modulo is the identity when in-range ids cannot reach rows_j
      # (the leading quotient table).
      if d * n < capacity:
        row = tf.math.floormod(row, n)
      parts.append(_gather_table(shards[j], row, "table_%d" % j))
    out = _combine(parts, operation, dtype)
    width = sum(widths) if operation == "concat" else widths[0]
    out = tf.reshape(out, tf.concat([tf.shape(ids), [width]], axis=0))
    out.set_shape(ids.shape.concatenate([width]))
    return out
