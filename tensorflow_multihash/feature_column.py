"""Feature columns: `categorical_column_with_multihash` and its embedding
column.

The categorical column carries integer ids (or strings hashed into the
capacity) and the multi-hash layout; the embedding column owns the small
tables (`embedding_weights_q`, `embedding_weights_r` in the column's variable
scope for k = 2, `embedding_weights_0` ... otherwise) and looks bags of ids
up through the fused op: every id's embedding is composed first, then the
bag is pooled with the combiner and the weights of a
`weighted_categorical_column`.
"""

from __future__ import annotations

import collections
import math
from typing import Any, Callable, Optional, Sequence, Union

import tensorflow as tf
from tensorflow.python.feature_column import feature_column as fc_old
from tensorflow.python.feature_column import feature_column_v2 as fc2
from tensorflow.python.feature_column import serialization

from tensorflow_multihash import embedding_ops
from tensorflow_multihash import multihash_ops
from tensorflow_multihash.variable import MultiHashVariable
from tensorflow_multihash.variable import resolve_deeprec_mapping
from tensorflow_multihash.variable import validate_config


def _table_variables(num_tables):
  """The embedding column's variable names: DeepRec's for k = 2."""
  if num_tables == 2:
    return ("embedding_weights_q", "embedding_weights_r")
  return tuple("embedding_weights_%d" % j for j in range(num_tables))


# pylint: disable=protected-access


@serialization.register_feature_column
class MultiHashCategoricalColumn(
    fc2.CategoricalColumn,
    fc_old._CategoricalColumn,
    collections.namedtuple(
        "MultiHashCategoricalColumn",
        (
            "key",
            "dims",
            "complementary_strategy",
            "operation",
            "dtype",
            "partition_num",
            "out_of_range",
            "hash_strings",
            "deeprec_mapping",
        ),
        defaults=("error", False, False),
    ),
):
  """Integer ids in [0, prod(dims)) (or strings hashed into that range); see
  `categorical_column_with_multihash`."""

  @property
  def _is_v2_column(self):
    return True

  @property
  def name(self):
    return self.key

  @property
  def parse_example_spec(self):
    return {self.key: tf.io.VarLenFeature(self.dtype)}

  @property
  def _parse_example_spec(self):
    return self.parse_example_spec

  def _transform_input_tensor(self, input_tensor):
    values = input_tensor.values
    if self.hash_strings and values.dtype == tf.string:
      # TensorFlow's own string hash (the one its hash-bucket column uses),
      # straight into the capacity; integer ids are never hashed.
      values = tf.strings.to_hash_bucket_fast(values, self.num_buckets)
    elif not values.dtype.is_integer:
      raise ValueError(
          "categorical_column_with_multihash %r needs integer ids, got dtype "
          "%s%s"
          % (
              self.key,
              input_tensor.dtype.name,
              "; pass hash_strings=True to hash strings"
              if values.dtype == tf.string
              else "",
          )
      )
    if values.dtype == tf.uint64 and self.out_of_range == "wrap":
      # Unsigned arithmetic: as int64, 2**64 - 1 would be -1.
      values = tf.math.floormod(
          values, tf.constant(self.num_buckets, tf.uint64)
      )
    if values.dtype != tf.int64:
      values = tf.cast(values, tf.int64)
    if self.out_of_range == "wrap":
      values = multihash_ops._wrap_ids(values, self.num_buckets)
    return tf.SparseTensor(
        input_tensor.indices, values, input_tensor.dense_shape
    )

  def transform_feature(self, transformation_cache, state_manager):
    return self._transform_input_tensor(
        fc2._to_sparse_input_and_drop_ignore_values(
            transformation_cache.get(self.key, state_manager)
        )
    )

  def _transform_feature(self, inputs):
    return self._transform_input_tensor(
        fc2._to_sparse_input_and_drop_ignore_values(inputs.get(self.key))
    )

  @property
  def num_buckets(self):
    return multihash_ops._capacity_of(
        list(self.dims), self.complementary_strategy, self.deeprec_mapping
    )

  @property
  def _num_buckets(self):
    return self.num_buckets

  def get_sparse_tensors(self, transformation_cache, state_manager):
    return fc2.CategoricalColumn.IdWeightPair(
        transformation_cache.get(self, state_manager), None
    )

  def _get_sparse_tensors(
      self, inputs, weight_collections=None, trainable=None
  ):
    del weight_collections, trainable
    return fc2.CategoricalColumn.IdWeightPair(inputs.get(self), None)

  @property
  def parents(self):
    return [self.key]

  def get_config(self):
    config = dict(zip(self._fields, self))
    config["dtype"] = self.dtype.name
    return config

  @classmethod
  def from_config(cls, config, custom_objects=None, columns_by_name=None):
    del custom_objects, columns_by_name
    kwargs = dict(config)
    kwargs["dtype"] = tf.as_dtype(kwargs["dtype"])
    kwargs["dims"] = tuple(kwargs["dims"])
    return cls(**kwargs)


def categorical_column_with_multihash(
    key: str,
    dims: Sequence[int],
    complementary_strategy: str = "Q-R",
    operation: str = "concat",
    dtype: tf.DType = tf.int64,
    partition_num: Optional[int] = None,
    out_of_range: str = "error",
    hash_strings: bool = False,
    deeprec_mapping: Optional[bool] = None,
) -> MultiHashCategoricalColumn:
  """A categorical column of integer ids for a multi-hash embedding.

  Args:
    key: the feature's key.
    dims: the row count of each small table, (rows_Q, rows_R) for k = 2:
      id x uses row x // rows_R of the Q table and row x % rows_R of the R
      table; ids must lie in [0, prod(dims)). k > 2 entries need
      "generalized-Q-R" or "CRT".
    complementary_strategy: "Q-R" (k = 2), "generalized-Q-R" or "CRT" (see
      `get_multihash_variable`).
    operation: "add", "mul" ("mult" too) or "concat", used by the embedding
      column.
    dtype: the ids' dtype: an integer dtype, or tf.string with
      `hash_strings=True`.
    partition_num: if set, the embedding column splits each table into this
      many row blocks (`fixed_size_partitioner`).
    out_of_range: "error" (an id outside [0, prod(dims)) fails) or "wrap"
      (ids folded into the capacity by floor-mod).
    hash_strings: if True, string ids are hashed into [0, prod(dims)) with
      TensorFlow's string hash (`tf.strings.to_hash_bucket_fast`, as its
      hash-bucket column does); integer ids are used as they are.
    deeprec_mapping: True maps ids as DeepRec does (k = 2 "Q-R" only):
      x // rows_Q and x % rows_R, ids in [0, rows_Q * rows_Q). None follows
      `set_deeprec_mapping` (False unless set).

  Returns:
    A `MultiHashCategoricalColumn`.

  Raises:
    ValueError: a bad key, dims, strategy, operation, dtype, partition_num,
      out_of_range or hash_strings.
  """
  if not isinstance(key, str) or not key:
    raise ValueError("key must be a non-empty string, got %r" % (key,))
  if not isinstance(dims, (list, tuple)) or len(dims) < 2:
    raise ValueError(
        "dims must be a pair (rows_Q, rows_R), or one row count "
        "per table, got %r" % (dims,)
    )
  pairs, operation = validate_config(
      [[d, 1] for d in dims], len(dims), complementary_strategy, operation
  )
  multihash_ops._check_out_of_range(out_of_range)
  deeprec_mapping = resolve_deeprec_mapping(
      deeprec_mapping, complementary_strategy, len(pairs)
  )
  if not isinstance(hash_strings, bool):
    raise ValueError(
        "hash_strings must be True or False, got %r" % (hash_strings,)
    )
  dtype = tf.as_dtype(dtype)
  if not (dtype.is_integer or (dtype == tf.string and hash_strings)):
    raise ValueError(
        "categorical_column_with_multihash needs an integer "
        "dtype (or tf.string with hash_strings=True), got %s" % dtype.name
    )
  if partition_num is not None and (
      isinstance(partition_num, bool)
      or not isinstance(partition_num, int)
      or partition_num <= 0
  ):
    raise ValueError(
        "partition_num must be a positive integer, got %r" % (partition_num,)
    )
  return MultiHashCategoricalColumn(
      key=key,
      dims=tuple(rows for rows, _ in pairs),
      complementary_strategy=complementary_strategy,
      operation=operation,
      dtype=dtype,
      partition_num=partition_num,
      out_of_range=out_of_range,
      hash_strings=hash_strings,
      deeprec_mapping=deeprec_mapping,
  )


def multihash_column_of(categorical_column):
  """The MultiHashCategoricalColumn in `categorical_column` (itself or the
  one a weighted column wraps), or None."""
  if isinstance(categorical_column, MultiHashCategoricalColumn):
    return categorical_column
  inner = getattr(categorical_column, "categorical_column", None)
  if isinstance(inner, MultiHashCategoricalColumn):
    return inner
  return None


@serialization.register_feature_column
class MultiHashEmbeddingColumn(
    fc2.DenseColumn,
    fc_old._DenseColumn,
    collections.namedtuple(
        "MultiHashEmbeddingColumn",
        (
            "categorical_column",
            "dimension",
            "combiner",
            "initializer",
            "max_norm",
            "trainable",
        ),
    ),
):
  """Dense embeddings of a multi-hash categorical column; see
  `embedding_column`."""

  @property
  def _multihash(self):
    return multihash_column_of(self.categorical_column)

  @property
  def _is_v2_column(self):
    return self.categorical_column._is_v2_column

  @property
  def name(self):
    return "{}_embedding".format(self.categorical_column.name)

  @property
  def parse_example_spec(self):
    return self.categorical_column.parse_example_spec

  @property
  def _parse_example_spec(self):
    return self.categorical_column._parse_example_spec

  def transform_feature(self, transformation_cache, state_manager):
    return transformation_cache.get(self.categorical_column, state_manager)

  def _transform_feature(self, inputs):
    return inputs.get(self.categorical_column)

  @property
  def _dims(self):
    return [
        [rows, width]
        for rows, width in zip(self._multihash.dims, self.dimension)
    ]

  @property
  def _table_names(self):
    return _table_variables(len(self.dimension))

  @property
  def _out_width(self):
    widths = self.dimension
    return sum(widths) if self._multihash.operation == "concat" else widths[0]

  @property
  def variable_shape(self):
    return tf.TensorShape([self._out_width])

  @property
  def _variable_shape(self):
    return self.variable_shape

  def _initializer(self):
    if self.initializer is not None:
      return self.initializer
    return tf.compat.v1.truncated_normal_initializer(
        stddev=1.0 / math.sqrt(self._out_width)
    )

  def create_state(self, state_manager):
    for name, shape in zip(self._table_names, self._dims):
      state_manager.create_variable(
          self,
          name=name,
          shape=shape,
          dtype=tf.float32,
          trainable=self.trainable,
          use_resource=True,
          initializer=self._initializer(),
      )

  def _lookup(self, sparse_tensors, tables):
    column = self._multihash
    # The categorical column has already wrapped ids if asked to.
    params = MultiHashVariable(
        self.name,
        self._dims,
        len(self._dims),
        column.complementary_strategy,
        column.operation,
        tf.float32,
        tables,
        deeprec_mapping=column.deeprec_mapping,
    )
    # A negative id is an error, as for the variable's lookups (dense
    # inputs' -1 padding was already dropped by the categorical column).
    return embedding_ops.pooled_lookup(
        params,
        sparse_tensors.id_tensor,
        sparse_tensors.weight_tensor,
        combiner=self.combiner,
        default_id=None,
        max_norm=self.max_norm,
        prune_ids=False,
        name="%s_weights" % self.name,
    )

  def get_dense_tensor(self, transformation_cache, state_manager):
    sparse_tensors = self.categorical_column.get_sparse_tensors(
        transformation_cache, state_manager
    )
    tables = [
        state_manager.get_variable(self, name=name)
        for name in self._table_names
    ]
    return self._lookup(sparse_tensors, tables)

  def _get_dense_tensor(self, inputs, weight_collections=None, trainable=None):
    sparse_tensors = self.categorical_column._get_sparse_tensors(
        inputs, weight_collections, trainable
    )
    if (
        weight_collections
        and tf.compat.v1.GraphKeys.GLOBAL_VARIABLES not in weight_collections
    ):
      weight_collections.append(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)
    partition_num = self._multihash.partition_num
    partitioner = (
        tf.compat.v1.fixed_size_partitioner(partition_num)
        if partition_num
        else None
    )
    tables = [
        tf.compat.v1.get_variable(
            name=name,
            shape=shape,
            dtype=tf.float32,
            initializer=self._initializer(),
            trainable=self.trainable and trainable is not False,
            collections=weight_collections,
            partitioner=partitioner,
        )
        for name, shape in zip(self._table_names, self._dims)
    ]
    return self._lookup(sparse_tensors, tables)

  @property
  def parents(self):
    return [self.categorical_column]

  def get_config(self):
    config = dict(zip(self._fields, self))
    config["categorical_column"] = serialization.serialize_feature_column(
        self.categorical_column
    )
    config["initializer"] = serialization._serialize_keras_object(
        self.initializer
    )
    return config

  @classmethod
  def from_config(cls, config, custom_objects=None, columns_by_name=None):
    kwargs = dict(config)
    kwargs["categorical_column"] = serialization.deserialize_feature_column(
        config["categorical_column"], custom_objects, columns_by_name
    )
    kwargs["initializer"] = serialization._deserialize_keras_object(
        config["initializer"], module_objects={}, custom_objects=custom_objects
    )
    kwargs["dimension"] = tuple(kwargs["dimension"])
    return cls(**kwargs)


def embedding_column(
    categorical_column: Union[
        MultiHashCategoricalColumn, fc2.WeightedCategoricalColumn
    ],
    dimension: Union[int, Sequence[int]],
    combiner: str = "mean",
    initializer: Optional[Callable[..., Any]] = None,
    max_norm: Optional[float] = None,
    trainable: bool = True,
) -> MultiHashEmbeddingColumn:
  """Embeddings of a multi-hash categorical column.

  Args:
    categorical_column: a `categorical_column_with_multihash`, or a
      `weighted_categorical_column` of one (its weights are used).
    dimension: (width_Q, width_R), or one width per table for k > 2; equal
      widths for add and mul, for which one int means that width for every
      table.
    combiner: "sum", "mean" or "sqrtn", pooling the composed embeddings of
      each row's ids.
    initializer: for both tables; default a truncated normal with stddev
      1 / sqrt(output width).
    max_norm: if set, each composed embedding is clipped to this L2 norm.
    trainable: whether the tables are trainable.

  Returns:
    A `MultiHashEmbeddingColumn` whose output is [batch, sum of widths]
    for concat and [batch, width] for add and mul.

  Raises:
    ValueError: `dimension` is not a pair (one width per table) of positive
      integers ("MultiHashVariable dimension error"), unequal widths for add
      or mul, a bad combiner or a column that is not a multi-hash column.
  """
  column = multihash_column_of(categorical_column)
  if column is None:
    raise ValueError(
        "categorical_column must be a categorical_column_with_multihash (or "
        "a weighted column of one), got %r" % (categorical_column,)
    )
  k = len(column.dims)
  if (
      column.operation != "concat"
      and not isinstance(dimension, bool)
      and isinstance(dimension, int)
  ):
    dimension = (dimension,) * k
  if (
      not isinstance(dimension, (list, tuple))
      or len(dimension) != k
      or any(
          isinstance(d, bool) or not isinstance(d, int) or d <= 0
          for d in dimension
      )
  ):
    what = (
        "a pair (width_Q, width_R)"
        if k == 2
        else "%d widths, one per table," % k
    )
    raise ValueError(
        "MultiHashVariable dimension error: dimension must be "
        "%s of positive integers, got %r" % (what, dimension)
    )
  validate_config(
      [[rows, width] for rows, width in zip(column.dims, dimension)],
      k,
      column.complementary_strategy,
      column.operation,
  )
  if combiner not in embedding_ops.COMBINERS:
    raise ValueError(
        "combiner must be one of %s, got %r"
        % (", ".join(embedding_ops.COMBINERS), combiner)
    )
  if initializer is not None and not callable(initializer):
    raise ValueError("initializer must be callable, got %r" % (initializer,))
  return MultiHashEmbeddingColumn(
      categorical_column=categorical_column,
      dimension=tuple(dimension),
      combiner=combiner,
      initializer=initializer,
      max_norm=max_norm,
      trainable=trainable,
  )


# pylint: enable=protected-access
