"""Raw wrappers of the MultiHashLookup / MultiHashLookupGrad ops and the
registered gradient.

A table argument is one small table: a [rows, width] tensor, a variable
(resource or reference), a partitioned variable (TF1 partitioner), a sharded
variable (TF2 `variable_partitioner`), or a list of such row shards
(contiguous row blocks, in order). Resource variables reach the kernel as
handles and are read in place, never copied.
"""

from __future__ import annotations

import math
from typing import Any, List, Optional, Sequence, Tuple

import tensorflow as tf
from tensorflow.python.distribute import sharded_variable
from tensorflow.python.framework import ops
from tensorflow.python.ops import resource_variable_ops
from tensorflow.python.ops import variables

from tensorflow_multihash import op_library

_gen = op_library.load()

LIBRARY_PATH = op_library.LIBRARY_PATH
BUILT_WITH_CUDA = op_library.built_with_cuda()

OPERATIONS = ("add", "mul", "concat")
_OPERATION_ALIASES = {"mult": "mul"}
STRATEGIES = ("Q-R", "generalized-Q-R", "CRT")
OUT_OF_RANGE = ("error", "wrap")
ID_DTYPES = (tf.int32, tf.int64)


def _choices(values):
  return ", ".join('"%s"' % v for v in values)


def _is_one_of(value, choices):
  """`value in choices` that is False (not a TypeError) for lists, dicts and
  other unhashable or odd values."""
  return isinstance(value, str) and value in choices


def _canonical_operation(operation):
  """Returns "add", "mul" (also for its alias "mult") or "concat", else raises."""
  if _is_one_of(operation, _OPERATION_ALIASES):
    return _OPERATION_ALIASES[operation]
  if not _is_one_of(operation, OPERATIONS):
    raise ValueError(
        "The operation %s is not supported; operation must be one of %s "
        '("mult" is accepted as "mul")' % (operation, _choices(OPERATIONS))
    )
  return operation


def _check_strategy(strategy):
  if not _is_one_of(strategy, STRATEGIES):
    raise ValueError(
        "The strategy %s is not supported; complementary_strategy must be "
        "one of %s" % (strategy, _choices(STRATEGIES))
    )
  return strategy


def _check_out_of_range(out_of_range):
  if not _is_one_of(out_of_range, OUT_OF_RANGE):
    raise ValueError(
        "out_of_range must be one of %s, got %r"
        % (_choices(OUT_OF_RANGE), out_of_range)
    )
  return out_of_range


def _check_deeprec_mapping(deeprec_mapping, strategy, num_tables):
  """Checks `deeprec_mapping` (a bool) against the strategy; returns it.

  DeepRec's mapping (q = id // rows_Q, r = id % rows_R) exists for k = 2
  "Q-R" only.

  Raises:
    ValueError: not a bool, or True with another strategy or k != 2.
  """
  if not isinstance(deeprec_mapping, bool):
    raise ValueError(
        "deeprec_mapping must be True or False, got %r" % (deeprec_mapping,)
    )
  if deeprec_mapping and (strategy != "Q-R" or num_tables != 2):
    raise ValueError(
        'deeprec_mapping=True is DeepRec\'s mapping of k = 2 "Q-R" tables, '
        "got complementary_strategy=%r with %d tables" % (strategy, num_tables)
    )
  return deeprec_mapping


def _check_rows(rows, strategy):
  """Checks the row counts against the strategy: exactly 2 tables for "Q-R",
  pairwise coprime counts for "CRT". Raises ValueError naming the tables."""
  _check_strategy(strategy)
  if len(rows) < 2:
    raise ValueError(
        "a multi-hash table needs at least 2 small tables, got "
        "%d" % len(rows)
    )
  if strategy == "Q-R" and len(rows) != 2:
    raise ValueError(
        "The Q-R strategy needs exactly 2 tables, got %d; use "
        '"generalized-Q-R" or "CRT" for more' % len(rows)
    )
  if strategy == "CRT":
    for i in range(len(rows)):
      for j in range(i + 1, len(rows)):
        g = math.gcd(rows[i], rows[j])
        if g != 1:
          raise ValueError(
              "The CRT strategy needs pairwise coprime row counts, but table "
              "%d has %d rows and table %d has %d (common factor %d)"
              % (i, rows[i], j, rows[j], g)
          )


def _capacity_of(rows, strategy, deeprec_mapping=False):
  """The number of ids the tables address: ids are valid in [0, capacity).

  prod(rows) for every strategy; rows_Q * rows_Q under DeepRec's mapping
  (its quotient row id // rows_Q must stay below rows_Q).
  """
  _check_strategy(strategy)
  if deeprec_mapping:
    return rows[0] * rows[0]
  return math.prod(rows)


def _table_divisors(rows, strategy, deeprec_mapping=False):
  """Table j's row of id x is `(x // divisors[j]) % rows[j]`.

  "Q-R" and "generalized-Q-R" are mixed radix (divisors are the products of
  the later tables' rows; for k = 2, q = x // rows_R and r = x % rows_R);
  "CRT" uses x % rows_j (divisors all 1); DeepRec's mapping divides by
  rows_Q (q = x // rows_Q, r = x % rows_R). The kernels compute the same
  divisors (cc/kernels/multihash_mapping.h); this is for Python code that
  must place rows itself, such as per-shard gathers on parameter servers.
  """
  _check_strategy(strategy)
  if deeprec_mapping:
    return [rows[0], 1]
  if strategy == "CRT":
    return [1] * len(rows)
  divisors, product = [], 1
  for r in reversed(rows):
    divisors.append(product)
    product *= r
  return divisors[::-1]


def _wrap_ids(ids, capacity):
  """Folds int ids into [0, capacity) by floor-mod (the hashing trick beyond
  the capacity). int32 ids stay int32 when the capacity fits in int32."""
  ids = _ids_tensor(ids)
  if ids.dtype == tf.int32 and capacity > 2**31 - 1:
    # Every int32 id >= 0 is already in range; negative ones need int64.
    ids = tf.cast(ids, tf.int64)
  return tf.math.floormod(ids, tf.constant(capacity, dtype=ids.dtype))


def _static_shape(x):
  """The static shape of a tensor or variable as a list of Python ints (None
  where unknown): the one place shapes are read, so that TF1's `Dimension`
  objects never reach the rest of the package. None for an unknown rank."""
  shape = tf.TensorShape(x.shape)
  return None if shape.rank is None else shape.as_list()


def _table_shards(table):
  """The row shards of one table argument, in order, as a list."""
  if isinstance(table, (list, tuple)):
    return list(table)
  if isinstance(table, variables.PartitionedVariable):
    return list(table)
  if isinstance(table, sharded_variable.ShardedVariableMixin):
    return list(table.variables)
  return [table]


def _as_shard(shard):
  """Variables and tensors as they are; anything else (arrays, lists) as a
  tensor, so that it has a static shape and a dtype."""
  if isinstance(shard, (tf.Variable, tf.Tensor)):
    return shard
  return tf.convert_to_tensor(shard)


def _describe_tables(tables):
  """Checks the table arguments; returns (shards, rows, widths, dtype).

  `shards[j]` lists table j's row shards (variables or tensors), `rows[j]`
  and `widths[j]` are its logical size and `dtype` the common dtype.

  Raises:
    ValueError: fewer than 2 tables, a table without shards, shards of
      different dtypes or widths, a shard without a static [rows, width]
      shape.
  """
  if not isinstance(tables, (list, tuple)) or len(tables) < 2:
    raise ValueError(
        "tables must be a list of at least 2 tables, got %r" % (tables,)
    )
  all_shards, rows, widths, dtype = [], [], [], None
  for j, table in enumerate(tables):
    shards = [_as_shard(s) for s in _table_shards(table)]
    if not shards:
      raise ValueError("table %d has no shards" % j)
    table_rows, width = 0, None
    for s, shard in enumerate(shards):
      shape, shard_dtype = _static_shape(shard), shard.dtype.base_dtype
      if dtype is None:
        dtype = shard_dtype
      elif shard_dtype != dtype:
        raise ValueError(
            "all tables must have one dtype: shard %d of table "
            "%d is %s, expected %s" % (s, j, shard_dtype.name, dtype.name)
        )
      if shape is None or len(shape) != 2 or None in shape:
        raise ValueError(
            "shard %d of table %d must have a static shape "
            "[rows, width], got %s" % (s, j, shard.shape)
        )
      if width is not None and shape[1] != width:
        raise ValueError(
            "shard %d of table %d has width %d, the other shards "
            "%d" % (s, j, shape[1], width)
        )
      width = shape[1]
      table_rows += shape[0]
    all_shards.append(shards)
    rows.append(table_rows)
    widths.append(width)
  return all_shards, rows, widths, dtype


def _describe_lookup(
    tables, operation, complementary_strategy, out_of_range, deeprec_mapping
):
  """Checks a lookup's arguments for the paths built from stock ops (XLA,
  shards on other devices); returns them described, the canonical operation
  first:
  (operation, shards, rows, widths, dtype, divisors, capacity).

  Raises:
    ValueError: as `multihash_lookup`.
  """
  operation = _canonical_operation(operation)
  _check_strategy(complementary_strategy)
  _check_out_of_range(out_of_range)
  shards, rows, widths, dtype = _describe_tables(tables)
  _check_widths(operation, widths)
  _check_rows(rows, complementary_strategy)
  _check_deeprec_mapping(deeprec_mapping, complementary_strategy, len(rows))
  divisors = _table_divisors(rows, complementary_strategy, deeprec_mapping)
  capacity = _capacity_of(rows, complementary_strategy, deeprec_mapping)
  return operation, shards, rows, widths, dtype, divisors, capacity


def _shard_input(shard):
  """The op input of one shard; resource variables as handles."""
  if isinstance(shard, resource_variable_ops.BaseResourceVariable):
    # As ResourceVariable.sparse_read does: tell the tape the variable was
    # read, since the handle is consumed directly.
    resource_variable_ops.variable_accessed(shard)
    return shard.handle
  return tf.convert_to_tensor(shard)


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
  shards, rows, widths, dtype = _describe_tables(tables)
  inputs = [_shard_input(s) for table in shards for s in table]
  return inputs, dtype, rows, widths, [len(table) for table in shards]


def _check_widths(operation, widths):
  if operation != "concat" and len(set(widths)) != 1:
    raise ValueError(
        "operation %r needs equal table widths, got %s" % (operation, widths)
    )


def multihash_lookup(
    tables: Sequence[Any],
    ids: tf.types.experimental.TensorLike,
    operation: str = "add",
    complementary_strategy: str = "Q-R",
    out_of_range: str = "error",
    deeprec_mapping: bool = False,
    name: Optional[str] = None,
) -> tf.Tensor:
  """Looks up `ids` in the multi-hash table made of `tables`.

  Args:
    tables: a list of k >= 2 small tables (see the module docstring); all of
      one dtype (float32, float64, float16 or bfloat16).
    ids: int32 or int64 ids of any shape, each in [0, capacity) where
      capacity is the product of the tables' row counts.
    operation: "add", "mul" ("mult" too) or "concat".
    complementary_strategy: how table j's row of id x is chosen:
      "Q-R" (k = 2): x // rows_1 and x % rows_1;
      "generalized-Q-R" (any k, mixed radix):
      (x // prod(rows[j+1:])) % rows[j];
      "CRT" (pairwise coprime row counts): x % rows[j].
    out_of_range: "error" (an id outside [0, capacity) fails) or "wrap"
      (ids are folded into the capacity by floor-mod first).
    deeprec_mapping: "Q-R" only: DeepRec's mapping, x // rows_0 and
      x % rows_1, for ids in [0, rows_0 * rows_0); ids collide when the row
      counts differ.
    name: a name for the op.

  Returns:
    A tensor of shape `ids.shape + [width]`, width being the tables' common
    width for add and mul and the sum of the widths for concat.

  Raises:
    ValueError: unknown operation, strategy or out_of_range, unequal widths
      for add or mul, row counts the strategy does not allow, shards that
      are not [rows, width] matrices of one dtype, deeprec_mapping with
      another strategy.
    TypeError: ids that are not int32 or int64.
    tf.errors.InvalidArgumentError (when run): an id outside [0, capacity).
  """
  from tensorflow_multihash import xla_lookup  # pylint: disable=g-import-not-at-top

  if xla_lookup.in_xla_context():  # XLA compiles no custom op: stock ops.
    with ops.name_scope(name, "MultiHashLookup"):
      return xla_lookup.lookup(
          tables,
          ids,
          operation,
          complementary_strategy,
          out_of_range,
          deeprec_mapping,
      )
  operation = _canonical_operation(operation)
  _check_strategy(complementary_strategy)
  _check_out_of_range(out_of_range)
  with ops.name_scope(name, "MultiHashLookup"):
    ids = _ids_tensor(ids)
    inputs, dtype, rows, widths, num_shards = _flatten_tables(tables)
    _check_widths(operation, widths)
    _check_rows(rows, complementary_strategy)
    _check_deeprec_mapping(deeprec_mapping, complementary_strategy, len(rows))
    if out_of_range == "wrap":
      ids = _wrap_ids(
          ids, _capacity_of(rows, complementary_strategy, deeprec_mapping)
      )
    return _gen.multi_hash_lookup(
        tables=inputs,
        ids=ids,
        T=dtype,
        operation=operation,
        complementary_strategy=complementary_strategy,
        table_rows=rows,
        table_widths=widths,
        num_shards=num_shards,
        deeprec_mapping=deeprec_mapping,
    )


def multihash_lookup_grad(
    grad: tf.types.experimental.TensorLike,
    tables: Sequence[Any],
    ids: tf.types.experimental.TensorLike,
    operation: str = "add",
    complementary_strategy: str = "Q-R",
    deeprec_mapping: bool = False,
    name: Optional[str] = None,
) -> List[Tuple[tf.Tensor, tf.Tensor]]:
  """The raw gradient op: a list of (indices, values), one per shard.

  Tables in order, then shards in order; `indices` are the distinct
  shard-local rows that `ids` touch (ascending) and `values` the summed
  gradient of each.
  """
  operation = _canonical_operation(operation)
  _check_strategy(complementary_strategy)
  with ops.name_scope(name, "MultiHashLookupGrad"):
    ids = _ids_tensor(ids)
    inputs, dtype, rows, widths, num_shards = _flatten_tables(tables)
    _check_widths(operation, widths)
    _check_rows(rows, complementary_strategy)
    _check_deeprec_mapping(deeprec_mapping, complementary_strategy, len(rows))
    indices, values = _gen.multi_hash_lookup_grad(
        grad=tf.convert_to_tensor(grad, dtype=dtype),
        tables=inputs,
        ids=ids,
        N=len(inputs),
        operation=operation,
        complementary_strategy=complementary_strategy,
        table_rows=rows,
        table_widths=widths,
        num_shards=num_shards,
        deeprec_mapping=deeprec_mapping,
    )
    return list(zip(indices, values))


def _shard_shape(op_input):
  if op_input.dtype == tf.resource:
    return tf.cast(resource_variable_ops.variable_shape(op_input), tf.int64)
  return tf.shape(op_input, out_type=tf.int64)


def _deeprec_attr(op):
  try:
    return bool(op.get_attr("deeprec_mapping"))
  except ValueError:  # an op made by a library without the attribute
    return False


@ops.RegisterGradient("MultiHashLookup")
def _multihash_lookup_grad(op, grad):
  """Sparse gradients: one tf.IndexedSlices per shard, none for the ids."""
  tables = list(op.inputs[:-1])
  ids = op.inputs[-1]
  indices, values = _gen.multi_hash_lookup_grad(
      grad=grad,
      tables=tables,
      ids=ids,
      N=len(tables),
      operation=op.get_attr("operation").decode(),
      complementary_strategy=op.get_attr("complementary_strategy").decode(),
      table_rows=op.get_attr("table_rows"),
      table_widths=op.get_attr("table_widths"),
      num_shards=op.get_attr("num_shards"),
      deeprec_mapping=_deeprec_attr(op),
  )
  table_grads = [
      tf.IndexedSlices(v, i, _shard_shape(t))
      for t, i, v in zip(tables, indices, values)
  ]
  return table_grads + [None]
