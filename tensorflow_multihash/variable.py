"""`get_multihash_variable` and the `MultiHashVariable` it returns.

A multi-hash variable is one logical embedding table of `capacity` rows
stored as k small tables (k = 2: a quotient table Q and a remainder table R).
The small tables are ordinary TensorFlow variables created with
`tf.compat.v1.get_variable` in the current variable scope, named
`<name>/multhash_Q` and `<name>/multhash_R` for k = 2 (the names DeepRec
checkpoints use) and `<name>/multhash_0` ... `<name>/multhash_{k-1}`
otherwise, so scopes, reuse, partitioners, custom getters, collections,
savers and optimizers treat them like any other variable.
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Any, Callable, Optional, Sequence, Union

import tensorflow as tf
from tensorflow.python.ops import variables as variables_lib

from tensorflow_multihash import multihash_ops

# The kernels' limit on the number of small tables (kMaxTables).
MAX_PARTITIONS = 8
# Ids are int64: a capacity beyond this has rows no id can reach.
MAX_CAPACITY = 2**63 - 1
# The widest output row (concat: the sum of the widths) the kernels take.
MAX_OUT_WIDTH = 2**31 - 1

# Sub-variable names, in table order: for k = 2 DeepRec's spelling (kept so
# that its checkpoints restore by name), else numbered.
_QR_SUFFIXES = ("multhash_Q", "multhash_R")


def table_suffixes(num_tables):
  """The sub-variable names of k small tables: multhash_Q and multhash_R for
  k = 2, multhash_0 ... multhash_{k-1} otherwise."""
  if num_tables == 2:
    return _QR_SUFFIXES
  return tuple("multhash_%d" % j for j in range(num_tables))


# The process-wide default of `deeprec_mapping`: None until
# `set_deeprec_mapping` is called (then a bool).
_deeprec_mapping_default = None


def set_deeprec_mapping(enabled: bool) -> None:
  """Sets the process-wide default of `deeprec_mapping` (initially False).

  With True, every k = 2 "Q-R" multi-hash variable and feature column made
  afterwards with `deeprec_mapping=None` maps ids as DeepRec does:
  q = id // rows_Q, r = id % rows_R, for ids in [0, rows_Q * rows_Q). Two
  ids then share both rows when rows_Q != rows_R, exactly as in DeepRec, so
  checkpoints trained there give the same embeddings here. Other strategies
  are not affected. DeepRec code runs unchanged plus this one line.

  Args:
    enabled: True or False.

  Raises:
    ValueError: `enabled` is not a bool.
  """
  global _deeprec_mapping_default
  if not isinstance(enabled, bool):
    raise ValueError(
        "set_deeprec_mapping takes True or False, got %r" % (enabled,)
    )
  _deeprec_mapping_default = enabled


def deeprec_mapping_chosen():
  """Whether `set_deeprec_mapping` was ever called in this process."""
  return _deeprec_mapping_default is not None


def resolve_deeprec_mapping(deeprec_mapping, strategy, num_tables):
  """The mapping a new variable or column uses: `deeprec_mapping` if given
  (checked), else the process default where it applies (k = 2 "Q-R")."""
  if deeprec_mapping is None:
    return bool(_deeprec_mapping_default) and (
        strategy == "Q-R" and num_tables == 2
    )
  return multihash_ops._check_deeprec_mapping(
      deeprec_mapping, strategy, num_tables
  )


class MultiHashConfig(object):
  """DeepRec's option object of a multi-hash variable: `size` is the dims,
  `num_of_partitions` the number of small tables."""

  def __init__(self, size, strategy, operation, num_of_partitions=None):
    self.size = size
    self.strategy = strategy
    self.operation = operation
    self.num_of_partitions = (
        len(size) if num_of_partitions is None else num_of_partitions
    )

  def __repr__(self):
    return (
        "MultiHashConfig(size=%r, strategy=%r, operation=%r, "
        "num_of_partitions=%r)"
        % (self.size, self.strategy, self.operation, self.num_of_partitions)
    )


class _Untracked(object):
  """Holds objects that must not become checkpoint dependencies."""

  def __init__(self, value):
    self.value = value


def validate_config(dims, num_of_partitions, complementary_strategy, operation):
  """Checks the configuration; returns (dims as int pairs, operation).

  Raises:
    ValueError: naming the first bad argument and its value.
  """
  multihash_ops._check_strategy(complementary_strategy)
  operation = multihash_ops._canonical_operation(operation)
  if isinstance(num_of_partitions, bool) or not isinstance(
      num_of_partitions, numbers.Integral
  ):
    raise ValueError(
        "num_of_partitions must be an integer, got %r" % (num_of_partitions,)
    )
  if complementary_strategy == "Q-R" and num_of_partitions != 2:
    raise ValueError(
        "The Q-R strategy needs num_of_partitions = 2, got %r"
        % (num_of_partitions,)
    )
  if not 2 <= num_of_partitions <= MAX_PARTITIONS:
    raise ValueError(
        "num_of_partitions must be in [2, %d], got %r"
        % (MAX_PARTITIONS, num_of_partitions)
    )
  if not isinstance(dims, (list, tuple)):
    raise ValueError(
        "dims must be a list of [rows, width] pairs, got %r" % (dims,)
    )
  if len(dims) != num_of_partitions:
    raise ValueError(
        "dims has %d entries but num_of_partitions is %d: give "
        "one [rows, width] pair per partition, got %r"
        % (len(dims), num_of_partitions, dims)
    )
  pairs = []
  for j, pair in enumerate(dims):
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
      raise ValueError(
          "dims[%d] must be a [rows, width] pair, got %r" % (j, pair)
      )
    for field, value in zip(("rows", "width"), pair):
      if (
          isinstance(value, bool)
          or not isinstance(value, numbers.Integral)
          or value <= 0
      ):
        raise ValueError(
            "dims[%d] %s must be a positive integer, got %r" % (j, field, value)
        )
    pairs.append([int(pair[0]), int(pair[1])])
  widths = [w for _, w in pairs]
  if operation != "concat" and len(set(widths)) != 1:
    raise ValueError(
        "operation %r needs equal widths in dims, got widths %s"
        % (operation, widths)
    )
  out_width = sum(widths) if operation == "concat" else widths[0]
  if out_width > MAX_OUT_WIDTH:
    raise ValueError(
        "dims give output rows %d wide (%s), more than the %d (2**31 - 1) "
        "supported; got widths %s"
        % (
            out_width,
            "the sum of the widths for concat"
            if operation == "concat"
            else "the table width",
            MAX_OUT_WIDTH,
            widths,
        )
    )
  multihash_ops._check_rows([r for r, _ in pairs], complementary_strategy)
  capacity = math.prod(r for r, _ in pairs)
  if capacity > MAX_CAPACITY:
    raise ValueError(
        "dims give a capacity of %d ids (the product of the row counts), "
        "more than int64 ids can name (at most 2**63 - 1); use fewer or "
        "smaller tables, got %r" % (capacity, dims)
    )
  return pairs, operation


def check_table_dtype(dtype):
  """The tables' `tf.DType` (Python `float` is tf.float32); ValueError for
  a dtype that is not floating point."""
  try:
    dtype = tf.as_dtype(dtype)
  except TypeError as e:
    raise ValueError(
        "dtype must be a floating-point type (float32, "
        "float64, float16, bfloat16), got %r" % (dtype,)
    ) from e
  if not dtype.is_floating:
    raise ValueError(
        "dtype must be a floating-point type (float32, "
        "float64, float16, bfloat16): the tables are embedding "
        "weights; got %s" % dtype.name
    )
  return dtype


def _base_name(table):
  """The variable-scope path of a small table, without ':0'."""
  name = table.name
  return name[:-2] if name.endswith(":0") else name


def _shard_variables(table):
  if isinstance(table, variables_lib.PartitionedVariable):
    partitions = table._get_partitions()  # pylint: disable=protected-access
    if any(p != 1 for p in partitions[1:]):
      raise ValueError(
          "a multi-hash table may only be partitioned along its "
          "rows (axis 0), got partitions %s for %s" % (partitions, table.name)
      )
  return multihash_ops._table_shards(table)


class MultiHashVariable(tf.Module):
  """One logical [capacity, embedding_dim] embedding table stored as small
  tables; look it up with `tf.nn.embedding_lookup` or
  `tensorflow_multihash.embedding_lookup`.

  Attributes:
    name: the variable's name (with its variable scope).
    dims: the [rows, width] pair of every small table.
    operation: "add", "mul" or "concat".
    complementary_strategy: "Q-R", "generalized-Q-R" or "CRT".
    out_of_range: "error" or "wrap" (ids folded into the capacity).
    deeprec_mapping: True if ids map as in DeepRec (q = id // rows_Q).
    num_of_partitions: the number of small tables.
    dtype: a `tf.DType`.
    capacity: the number of ids, the product of the tables' rows
      (rows_Q * rows_Q with deeprec_mapping).
    embedding_dim: width of a looked-up embedding.
    shape: `tf.TensorShape([capacity, embedding_dim])`.
    tables: the small tables, each a variable or a partitioned variable.
    val_list: the same as `tables` (DeepRec's name).
    mhvconfig: DeepRec's option object; `mhvconfig.size == dims`.
    variables, trainable_variables: every shard variable, flat.
  """

  def __init__(
      self,
      name: str,
      dims: Sequence[Sequence[int]],
      num_of_partitions: int,
      complementary_strategy: str,
      operation: str,
      dtype: Union[tf.DType, type, str],
      tables: Sequence[Any],
      out_of_range: str = "error",
      deeprec_mapping: bool = False,
  ) -> None:
    super().__init__(name="MultiHashVariable")
    self._out_of_range = multihash_ops._check_out_of_range(out_of_range)
    self._deeprec_mapping = multihash_ops._check_deeprec_mapping(
        deeprec_mapping, complementary_strategy, len(dims)
    )
    self._mh_name = name
    self._dims = [list(d) for d in dims]
    self._num_of_partitions = num_of_partitions
    self._strategy = complementary_strategy
    self._operation = operation
    self._dtype = tf.as_dtype(dtype)
    self._tables = _Untracked(tuple(tables))
    # The shard variables are the checkpoint dependencies.
    self._shards = [s for t in tables for s in _shard_variables(t)]

  @property
  def name(self):
    return self._mh_name

  @property
  def dims(self):
    return [list(d) for d in self._dims]

  @property
  def operation(self):
    return self._operation

  @property
  def complementary_strategy(self):
    return self._strategy

  @property
  def out_of_range(self):
    return self._out_of_range

  @property
  def deeprec_mapping(self):
    return self._deeprec_mapping

  @property
  def num_of_partitions(self):
    return self._num_of_partitions

  @property
  def dtype(self):
    return self._dtype

  @property
  def capacity(self):
    return multihash_ops._capacity_of(
        [rows for rows, _ in self._dims], self._strategy, self._deeprec_mapping
    )

  @property
  def embedding_dim(self):
    widths = [w for _, w in self._dims]
    return sum(widths) if self._operation == "concat" else widths[0]

  @property
  def shape(self):
    return tf.TensorShape([self.capacity, self.embedding_dim])

  def get_shape(self):
    return self.shape

  @property
  def tables(self):
    return list(self._tables.value)

  @property
  def val_list(self):
    return self.tables

  @property
  def mhvconfig(self):
    return MultiHashConfig(
        self.dims, self._strategy, self._operation, self._num_of_partitions
    )

  @property
  def variables(self):
    return tuple(self._shards)

  @property
  def trainable_variables(self):
    return tuple(v for v in self._shards if v.trainable)

  # Saving. tf.train.Checkpoint and SavedModel reach the shard variables as
  # tracked children (so optimizer slots follow them); this object has no
  # tensors of its own there. A TF1 Saver given the object itself in
  # var_list asks the legacy hook instead, which hands it the shard
  # variables, saved under their own names as if listed one by one.
  def _serialize_to_tensors(self):
    return {}

  def _restore_from_tensors(self, restored_tensors):
    del restored_tensors
    return tf.no_op()

  def _gather_saveables_for_checkpoint(self):
    return {str(i): v for i, v in enumerate(self._shards)}

  def __repr__(self):
    extra = " out_of_range=wrap" if self._out_of_range == "wrap" else ""
    extra += " deeprec_mapping" if self._deeprec_mapping else ""
    return (
        "<MultiHashVariable '%s' dims=%s operation=%s strategy=%s "
        "dtype=%s%s>"
        % (
            self._mh_name,
            self.dims,
            self._operation,
            self._strategy,
            self._dtype.name,
            extra,
        )
    )


def _get_multihash_variable(
    name: str,
    dims: Sequence[Sequence[int]],
    num_of_partitions: int = 2,
    complementary_strategy: str = "Q-R",
    operation: str = "add",
    dtype: Union[tf.DType, type, str] = tf.float32,
    initializer: Optional[Any] = None,
    regularizer: Optional[Callable[..., Any]] = None,
    trainable: Optional[bool] = None,
    collections: Optional[Sequence[str]] = None,
    caching_device: Optional[Any] = None,
    partitioner: Optional[Callable[..., Any]] = None,
    validate_shape: bool = True,
    use_resource: Optional[bool] = None,
    custom_getter: Optional[Callable[..., Any]] = None,
    constraint: Optional[Callable[..., Any]] = None,
    synchronization: tf.VariableSynchronization = (
        tf.VariableSynchronization.AUTO
    ),
    aggregation: tf.VariableAggregation = tf.VariableAggregation.NONE,
    out_of_range: str = "error",
    deeprec_mapping: Optional[bool] = None,
) -> MultiHashVariable:
  """Creates (or, under a reusing variable scope, gets) a multi-hash variable.

  The arguments may also be given in the order of DeepRec's source, which
  has no `num_of_partitions`: `get_multihash_variable(name, dims,
  complementary_strategy, operation, dtype, initializer, ...)`. A string in
  third place means that order.

  Args:
    name: the variable's name; its small tables are `<name>/multhash_Q` and
      `<name>/multhash_R` (k = 2) or `<name>/multhash_0` ...
      `<name>/multhash_{k-1}` in the current variable scope.
    dims: one [rows, width] pair per small table, Q first: [[2, 2], [2, 2]]
      is a 2 x 2 Q table and a 2 x 2 R table, capacity 4.
    num_of_partitions: k, the number of small tables (2 to 8); 2 for "Q-R".
    complementary_strategy: how id x picks table j's row; every id in
      [0, capacity = prod(rows)) gets a unique row tuple:
      "Q-R" (k = 2): row x // rows_R of Q and row x % rows_R of R;
      "generalized-Q-R" (mixed radix): (x // prod(rows[j+1:])) % rows[j];
      "CRT" (pairwise coprime rows): x % rows[j].
    operation: "add", "mul" ("mult" too) or "concat" (Q's part first).
    dtype: the tables' dtype (Python `float` means tf.float32).
    initializer: as for `tf.compat.v1.get_variable`; default a truncated
      normal with stddev 1 / sqrt(embedding_dim).
    regularizer, trainable, collections, caching_device, partitioner,
    validate_shape, use_resource, custom_getter, constraint, synchronization,
    aggregation: passed to `tf.compat.v1.get_variable` for each small table.
      A partitioner splits each table into row blocks.
    out_of_range: "error" (default: an id outside [0, capacity) fails the
      lookup) or "wrap" (ids are folded into the capacity by floor-mod: the
      hashing trick beyond the capacity, complementary inside it).
    deeprec_mapping: True maps ids as DeepRec does (k = 2 "Q-R" only):
      q = id // rows_Q, r = id % rows_R, ids in [0, rows_Q * rows_Q), so
      that checkpoints trained with DeepRec give the same embeddings (ids
      collide when rows_Q != rows_R, as there). None (the default) follows
      `set_deeprec_mapping` (False unless set).

  Returns:
    A `MultiHashVariable`.

  Raises:
    ValueError: an unsupported strategy or operation, num_of_partitions
      other than 2 with "Q-R", len(dims) != num_of_partitions, a row count or
      width that is not a positive integer, unequal widths for add or mul,
      row counts that are not pairwise coprime for "CRT", a bad
      out_of_range, a dtype that is not floating point, a capacity beyond
      int64 ids, deeprec_mapping=True with another strategy.
    TypeError: arguments that do not bind to the signature.
  """
  pairs, operation = validate_config(
      dims, num_of_partitions, complementary_strategy, operation
  )
  multihash_ops._check_out_of_range(out_of_range)
  deeprec_mapping = resolve_deeprec_mapping(
      deeprec_mapping, complementary_strategy, len(pairs)
  )
  dtype = check_table_dtype(dtype)
  if initializer is None:
    width = sum(w for _, w in pairs) if operation == "concat" else pairs[0][1]
    initializer = tf.compat.v1.truncated_normal_initializer(
        stddev=1.0 / math.sqrt(width)
    )
  tables = []
  suffixes = table_suffixes(len(pairs))
  for suffix, (rows, width) in zip(suffixes, pairs):
    tables.append(
        tf.compat.v1.get_variable(
            "%s/%s" % (name, suffix),
            shape=[rows, width],
            dtype=dtype,
            initializer=initializer,
            regularizer=regularizer,
            trainable=trainable,
            collections=collections,
            caching_device=caching_device,
            partitioner=partitioner,
            validate_shape=validate_shape,
            use_resource=use_resource,
            custom_getter=custom_getter,
            constraint=constraint,
            synchronization=synchronization,
            aggregation=aggregation,
        )
    )
  full_name = _base_name(tables[0])[: -len("/" + suffixes[0])]
  return MultiHashVariable(
      full_name,
      pairs,
      num_of_partitions,
      complementary_strategy,
      operation,
      dtype,
      tables,
      out_of_range=out_of_range,
      deeprec_mapping=deeprec_mapping,
  )


_SEED_ORDER = tuple(inspect.signature(_get_multihash_variable).parameters)
# DeepRec's source order: the seed's without num_of_partitions.
_DEEPREC_ORDER = tuple(n for n in _SEED_ORDER if n != "num_of_partitions")


def bind_arguments(args, kwargs):
  """The keyword arguments of a `get_multihash_variable(*args, **kwargs)`
  call, positional ones named in the seed's order or, when the third one is
  a string, in DeepRec's source order.

  Raises:
    TypeError: too many positional arguments, or one given twice.
  """
  order = (
      _DEEPREC_ORDER
      if len(args) > 2 and isinstance(args[2], str)
      else _SEED_ORDER
  )
  if len(args) > len(order):
    raise TypeError(
        "get_multihash_variable takes at most %d positional "
        "arguments, got %d" % (len(order), len(args))
    )
  bound = dict(kwargs)
  for arg_name, value in zip(order, args):
    if arg_name in bound:
      raise TypeError(
          "get_multihash_variable got multiple values for "
          "argument %r" % arg_name
      )
    bound[arg_name] = value
  return bound


def get_multihash_variable(  # pylint: disable=missing-docstring
    *args: Any, **kwargs: Any
) -> MultiHashVariable:
  return _get_multihash_variable(**bind_arguments(args, kwargs))


get_multihash_variable.__doc__ = _get_multihash_variable.__doc__
get_multihash_variable.__signature__ = inspect.signature(
    _get_multihash_variable
)
