"""Raw wrappers of the MultiHashLookup / MultiHashLookupGrad ops and the
registered gradient.

A table argument is one small table: a [rows, width] tensor, a variable
(resource or reference) or a partitioned variable, or a list of such row
shards (contiguous row blocks, in order). Resource variables reach the kernel
as handles and are read in place, never copied.
"""

import tensorflow as tf
from tensorflow.python.framework import ops
from tensorflow.python.ops import resource_variable_ops
from tensorflow.python.ops import variables

from tensorflow_multihash import op_library

_gen = op_library.load()

LIBRARY_PATH = op_library.LIBRARY_PATH
BUILT_WITH_CUDA = op_library.built_with_cuda()

OPERATIONS = ("add", "mul", "concat")
_OPERATION_ALIASES = {"mult": "mul"}
STRATEGIES = ("Q-R",)
ID_DTYPES = (tf.int32, tf.int64)


def canonical_operation(operation):
  """"add", "mul" (or its alias "mult") or "concat"; else ValueError."""
  op = _OPERATION_ALIASES.get(operation, operation)
  if op not in OPERATIONS:
    raise ValueError("The operation %s is not supported" % (operation,))
  return op


def check_strategy(strategy):
  if strategy not in STRATEGIES:
    raise ValueError("The strategy %s is not supported" % (strategy,))
  return strategy


def _shards_of(table):
  """The row shards of one table argument, as a list."""
  if isinstance(table, (list, tuple)):
    return list(table)
  if isinstance(table, variables.PartitionedVariable):
    return list(table)
  return [table]


def _shard_input(shard):
  """(op input, static shape, dtype) of one shard; resource variables as
  handles."""
  if isinstance(shard, resource_variable_ops.BaseResourceVariable):
    # As ResourceVariable.sparse_read does: tell the tape the variable was
    # read, since the handle is consumed directly.
    resource_variable_ops.variable_accessed(shard)
    return shard.handle, shard.shape, shard.dtype.base_dtype
  t = tf.convert_to_tensor(shard)
  return t, t.shape, t.dtype.base_dtype


def _ids_tensor(ids):
  if isinstance(ids, tf.Tensor):
    t = ids
  else:
    try:
      t = tf.convert_to_tensor(ids)
    except (TypeError, ValueError) as e:
      raise TypeError("ids must be int32 or int64, got %r" % (ids,)) from e
  if t.dtype not in ID_DTYPES:
    raise TypeError("ids must be int32 or int64, got %s" % t.dtype.name)
  return t


def _flatten_tables(tables):
  """Op inputs and the attributes describing them."""
  if not isinstance(tables, (list, tuple)) or len(tables) < 2:
    raise ValueError(
        "tables must be a list of at least 2 tables, got %r" % (tables,))
  inputs, rows, widths, num_shards = [], [], [], []
  dtype = None
  for j, table in enumerate(tables):
    shards = _shards_of(table)
    if not shards:
      raise ValueError("table %d has no shards" % j)
    table_rows, width = 0, None
    for s, shard in enumerate(shards):
      value, shape, shard_dtype = _shard_input(shard)
      if dtype is None:
        dtype = shard_dtype
      elif shard_dtype != dtype:
        raise ValueError("all tables must have one dtype: shard %d of table "
                         "%d is %s, expected %s" %
                         (s, j, shard_dtype.name, dtype.name))
      if shape.rank != 2 or None in shape.as_list():
        raise ValueError("shard %d of table %d must have a static shape "
                         "[rows, width], got %s" % (s, j, shape))
      if width is not None and shape[1] != width:
        raise ValueError("shard %d of table %d has width %d, the other shards "
                         "%d" % (s, j, shape[1], width))
      width = shape[1]
      table_rows += shape[0]
      inputs.append(value)
    rows.append(table_rows)
    widths.append(width)
    num_shards.append(len(shards))
  return inputs, dtype, rows, widths, num_shards


def _check_widths(operation, widths):
  if operation != "concat" and len(set(widths)) != 1:
    raise ValueError("operation %r needs equal table widths, got %s" %
                     (operation, widths))


def multihash_lookup(tables, ids, operation="add",
                     complementary_strategy="Q-R", name=None):
  """Looks up `ids` in the multi-hash table made of `tables`.

  Args:
    tables: a list of k >= 2 small tables (see the module docstring); all of
      one dtype (float32, float64, float16 or bfloat16).
    ids: int32 or int64 ids of any shape, each in [0, capacity) where
      capacity is the product of the tables' row counts.
    operation: "add", "mul" ("mult" too) or "concat".
    complementary_strategy: "Q-R": with k = 2, table 0 is looked up at
      id // rows_1 and table 1 at id % rows_1.
    name: a name for the op.

  Returns:
    A tensor of shape `ids.shape + [width]`, width being the tables' common
    width for add and mul and the sum of the widths for concat.

  Raises:
    ValueError: unknown operation or strategy, unequal widths for add or
      mul, shards that are not [rows, width] matrices of one dtype.
    TypeError: ids that are not int32 or int64.
    tf.errors.InvalidArgumentError (when run): an id outside [0, capacity).
  """
  operation = canonical_operation(operation)
  check_strategy(complementary_strategy)
  with ops.name_scope(name, "MultiHashLookup"):
    ids = _ids_tensor(ids)
    inputs, dtype, rows, widths, num_shards = _flatten_tables(tables)
    _check_widths(operation, widths)
    return _gen.multi_hash_lookup(
        tables=inputs, ids=ids, T=dtype, operation=operation,
        complementary_strategy=complementary_strategy, table_rows=rows,
        table_widths=widths, num_shards=num_shards)


def multihash_lookup_grad(grad, tables, ids, operation="add",
                          complementary_strategy="Q-R", name=None):
  """The raw gradient op: a list of (indices, values), one per shard.

  Tables in order, then shards in order; `indices` are the distinct
  shard-local rows that `ids` touch (ascending) and `values` the summed
  gradient of each.
  """
  operation = canonical_operation(operation)
  check_strategy(complementary_strategy)
  with ops.name_scope(name, "MultiHashLookupGrad"):
    ids = _ids_tensor(ids)
    inputs, dtype, rows, widths, num_shards = _flatten_tables(tables)
    _check_widths(operation, widths)
    indices, values = _gen.multi_hash_lookup_grad(
        grad=tf.convert_to_tensor(grad, dtype=dtype), tables=inputs, ids=ids,
        N=len(inputs),        operation=operation, complementary_strategy=complementary_strategy,
        table_rows=rows, table_widths=widths, num_shards=num_shards)
    return list(zip(indices, values))


def _shard_shape(op_input):
  if op_input.dtype == tf.resource:
    return tf.cast(resource_variable_ops.variable_shape(op_input), tf.int64)
  return tf.shape(op_input, out_type=tf.int64)


@ops.RegisterGradient("MultiHashLookup")
def _multihash_lookup_grad(op, grad):
  """Sparse gradients: one tf.IndexedSlices per shard, none for the ids."""
  tables = list(op.inputs[:-1])
  ids = op.inputs[-1]
  indices, values = _gen.multi_hash_lookup_grad(
      grad=grad, tables=tables, ids=ids, N=len(tables),
      operation=op.get_attr("operation").decode(),
      complementary_strategy=op.get_attr("complementary_strategy").decode(),
      table_rows=op.get_attr("table_rows"),
      table_widths=op.get_attr("table_widths"),
      num_shards=op.get_attr("num_shards"))
  table_grads = [
      tf.IndexedSlices(v, i, _shard_shape(t))
      for t, i, v in zip(tables, indices, values)
  ]
  return table_grads + [None]
