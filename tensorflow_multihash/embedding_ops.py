"""Lookups of a `MultiHashVariable`: dense, sparse with combiners, and safe.

Every id's embedding is composed from the small tables by the fused op
first; bags of ids are pooled afterwards (compose, then pool).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import tensorflow as tf

from tensorflow_multihash import distributed_lookup
from tensorflow_multihash import multihash_ops
from tensorflow_multihash.variable import MultiHashVariable

COMBINERS = ("sum", "mean", "sqrtn")


def single_params(params, arg_name="params"):
  """The `MultiHashVariable` of a `params` argument: the variable itself,
  or a list or tuple holding exactly one (TensorFlow's sharded-params form
  with one shard).

  Raises:
    TypeError: `params` is not a MultiHashVariable.
    ValueError: a list or tuple of several (a multi-hash variable is sharded
      by a partitioner on its tables, not by a list of variables).
  """
  if isinstance(params, (list, tuple)):
    if len(params) == 1 and isinstance(params[0], MultiHashVariable):
      return params[0]
    if any(isinstance(p, MultiHashVariable) for p in params):
      raise ValueError(
          "%s must be a MultiHashVariable or a list of exactly one, got a "
          "%s of %d entries; to shard a multi-hash variable, give "
          "get_multihash_variable a partitioner"
          % (arg_name, type(params).__name__, len(params))
      )
  if not isinstance(params, MultiHashVariable):
    raise TypeError(
        "%s must be a MultiHashVariable, got %s"
        % (arg_name, type(params).__name__)
    )
  return params


def _clip(emb, max_norm):
  if max_norm is None:
    return emb
  return tf.clip_by_norm(emb, max_norm, axes=[-1])


def embedding_lookup(
    params: Union[MultiHashVariable, Sequence[MultiHashVariable]],
    ids: Union[tf.types.experimental.TensorLike, tf.RaggedTensor],
    max_norm: Optional[float] = None,
    name: Optional[str] = None,
) -> Union[tf.Tensor, tf.RaggedTensor]:
  """Looks up `ids` in a multi-hash variable.

  Args:
    params: a `MultiHashVariable` (or a list or tuple of exactly one).
    ids: int32 or int64 ids of any shape, each in [0, params.capacity)
      (any id if the variable was made with out_of_range="wrap"); a
      `tf.RaggedTensor` of ids gives a ragged result, as in TensorFlow.
    max_norm: if set, each embedding is clipped to this L2 norm.
    name: a name for the operation.

  Returns:
    A tensor of shape `ids.shape + [params.embedding_dim]` (ragged for
    ragged ids).

  Raises:
    TypeError: `params` is not a MultiHashVariable, or float/string ids.
    ValueError: a list of several variables as `params`.
    tf.errors.InvalidArgumentError (when run): an id outside
      [0, capacity).
  """
  params = single_params(params)
  if isinstance(ids, tf.RaggedTensor):
    with tf.name_scope(name or "multihash_embedding_lookup_ragged"):
      return ids.with_flat_values(
          embedding_lookup(params, ids.flat_values, max_norm=max_norm)
      )
  with tf.name_scope(name or "multihash_embedding_lookup"):
    # Shards spread over devices (parameter servers): gather rows where
    # they live instead of copying shards to one kernel.
    lookup = (
        distributed_lookup.colocated_lookup
        if distributed_lookup.needs_colocated_lookup(params.tables)
        else multihash_ops.multihash_lookup
    )
    emb = lookup(
        params.tables,
        ids,
        operation=params.operation,
        complementary_strategy=params.complementary_strategy,
        out_of_range=params.out_of_range,
        deeprec_mapping=params.deeprec_mapping,
    )
    return _clip(emb, max_norm)


def _pool(emb, segment_ids, num_segments, weights, combiner):
  """Pools rows of `emb` into `num_segments` bags; empty bags are zeros."""
  if weights is not None:
    emb = emb * tf.expand_dims(weights, -1)
  total = tf.math.unsorted_segment_sum(emb, segment_ids, num_segments)
  if combiner == "sum":
    return total
  if weights is None:
    weights = tf.ones_like(segment_ids, dtype=emb.dtype)
  if combiner == "mean":
    denom = tf.math.unsorted_segment_sum(weights, segment_ids, num_segments)
  else:  # sqrtn
    denom = tf.sqrt(
        tf.math.unsorted_segment_sum(
            weights * weights, segment_ids, num_segments
        )
    )
  return tf.math.divide_no_nan(total, tf.expand_dims(denom, -1))


def _check_combiner(combiner):
  if combiner is None:
    return "mean"
  if combiner not in COMBINERS:
    raise ValueError(
        "combiner must be one of %s, got %r" % (", ".join(COMBINERS), combiner)
    )
  return combiner


def _ragged_bags(rt, arg_name):
  """(values, segment ids, number of bags) of a 2-D RaggedTensor."""
  if rt.ragged_rank != 1 or rt.flat_values.shape.rank != 1:
    raise ValueError(
        "%s must be a 2-D RaggedTensor [batch, (ids)], got "
        "shape %s" % (arg_name, rt.shape)
    )
  return rt.flat_values, rt.value_rowids(), rt.nrows()


def embedding_lookup_sparse(
    params: Union[MultiHashVariable, Sequence[MultiHashVariable]],
    sp_ids: Union[tf.SparseTensor, tf.RaggedTensor],
    sp_weights: Union[tf.SparseTensor, tf.RaggedTensor, None],
    combiner: Optional[str] = None,
    max_norm: Optional[float] = None,
    name: Optional[str] = None,
) -> tf.Tensor:
  """Looks up and pools bags of ids: row b of the result pools the
  embeddings of the ids in row b of `sp_ids`.

  Args:
    params: a `MultiHashVariable` (or a list or tuple of exactly one).
    sp_ids: a 2-D `SparseTensor` of int32/int64 ids, [batch, max_ids], or a
      2-D `RaggedTensor` [batch, (ids)].
    sp_weights: None, or float weights of the same kind as `sp_ids` (a
      `SparseTensor` with the same indices, or a `RaggedTensor` with the
      same row lengths). Weights of another float dtype are cast to the
      table's, as TensorFlow does here.
    combiner: "sum", "mean" (the default) or "sqrtn" (weighted sum divided
      by the square root of the sum of squared weights).
    max_norm: if set, each id's embedding is clipped to this L2 norm before
      weighting.
    name: a name for the operation.

  Returns:
    A `[batch, embedding_dim]` tensor, batch being `sp_ids.dense_shape[0]`
    (the number of rows of a ragged `sp_ids`); rows without ids are zeros.

  Raises:
    TypeError: `sp_ids` is neither a SparseTensor nor a RaggedTensor, or
      `sp_weights` is not None and not of the same kind.
    ValueError: an unknown combiner, a ragged `sp_ids` that is not 2-D.
  """
  params = single_params(params)
  combiner = _check_combiner(combiner)
  with tf.name_scope(name or "multihash_embedding_lookup_sparse"):
    if isinstance(sp_ids, tf.RaggedTensor):
      if sp_weights is not None and not isinstance(sp_weights, tf.RaggedTensor):
        raise TypeError(
            "sp_weights must be None or a RaggedTensor like "
            "sp_ids, got %s" % type(sp_weights).__name__
        )
      ids, segment_ids, num_bags = _ragged_bags(sp_ids, "sp_ids")
      weights = (
          None
          if sp_weights is None
          else _ragged_bags(sp_weights, "sp_weights")[0]
      )
    else:
      sp_ids = _as_sparse(sp_ids, "sp_ids")
      ids, segment_ids = sp_ids.values, sp_ids.indices[:, 0]
      num_bags = sp_ids.dense_shape[0]
      weights = (
          None
          if sp_weights is None
          else _as_sparse(sp_weights, "sp_weights").values
      )
    emb = embedding_lookup(params, ids, max_norm=max_norm)
    if weights is not None:
      weights = tf.cast(weights, emb.dtype)
    return _pool(emb, segment_ids, num_bags, weights, combiner)


def _as_sparse(sp, arg_name):
  if isinstance(sp, tf.compat.v1.SparseTensorValue):
    return tf.SparseTensor.from_value(sp)
  if not isinstance(sp, tf.SparseTensor):
    raise TypeError(
        "%s must be a SparseTensor or a RaggedTensor, got %s"
        % (arg_name, type(sp).__name__)
    )
  return sp


def safe_embedding_lookup_sparse(
    embedding_weights: Union[MultiHashVariable, Sequence[MultiHashVariable]],
    sparse_ids: Union[tf.SparseTensor, tf.RaggedTensor],
    sparse_weights: Union[tf.SparseTensor, tf.RaggedTensor, None] = None,
    combiner: str = "mean",
    default_id: Optional[int] = None,
    max_norm: Optional[float] = None,
    name: Optional[str] = None,
) -> tf.Tensor:
  """Like `embedding_lookup_sparse`, for ids of any rank, with TensorFlow's
  pruning: ids < 0 are dropped, and so are ids whose weight is not positive
  unless the combiner is "sum" (then every weight counts, negative ones
  too). Rows left without ids get the embedding of `default_id`, or zeros.

  Args:
    embedding_weights: a `MultiHashVariable` (or a list or tuple of exactly
      one).
    sparse_ids: a `SparseTensor` of ids, shape [d_0, ..., d_{n-1}, max_ids],
      or a 2-D `RaggedTensor` [d_0, (ids)].
    sparse_weights: None, or weights of the same kind and shape as
      `sparse_ids`, of the table's dtype.
    combiner: "sum", "mean" (the default) or "sqrtn".
    default_id: an id whose embedding fills empty rows, or None for zeros.
    max_norm: if set, each id's embedding is clipped to this L2 norm.
    name: a name for the operation.

  Returns:
    A `[d_0, ..., d_{n-1}, embedding_dim]` tensor.

  Raises:
    ValueError: weights of another dtype than the table (as TensorFlow), an
      unknown combiner, a ragged `sparse_ids` that is not 2-D.
    TypeError: ids or weights that are neither SparseTensor nor
      RaggedTensor, or of different kinds.
  """
  params = single_params(embedding_weights, "embedding_weights")
  if isinstance(sparse_weights, tf.compat.v1.SparseTensorValue):
    sparse_weights = tf.SparseTensor.from_value(sparse_weights)
  if sparse_weights is not None and sparse_weights.dtype != params.dtype:
    raise ValueError(
        "sparse_weights have dtype %s but the embedding table is %s; "
        "safe_embedding_lookup_sparse needs them equal (cast the weights)"
        % (sparse_weights.dtype.name, params.dtype.name)
    )
  if isinstance(sparse_ids, tf.RaggedTensor):
    if sparse_weights is not None and not isinstance(
        sparse_weights, tf.RaggedTensor
    ):
      raise TypeError(
          "sparse_weights must be None or a RaggedTensor like "
          "sparse_ids, got %s" % type(sparse_weights).__name__
      )
    _ragged_bags(sparse_ids, "sparse_ids")
    sparse_ids = sparse_ids.to_sparse()
    if sparse_weights is not None:
      _ragged_bags(sparse_weights, "sparse_weights")
      sparse_weights = sparse_weights.to_sparse()
  return pooled_lookup(
      params,
      sparse_ids,
      sparse_weights,
      combiner=combiner,
      default_id=default_id,
      max_norm=max_norm,
      prune_ids=True,
      name=name or "multihash_safe_embedding_lookup_sparse",
  )


def pooled_lookup(
    params,
    sparse_ids,
    sparse_weights,
    combiner,
    default_id,
    max_norm,
    prune_ids,
    name,
):
  """Pools bags of ids of any rank (the last dimension holds the bag).

  As TensorFlow's safe lookup: ids whose weight is not positive are dropped
  unless the combiner is "sum"; ids < 0 too if `prune_ids`, else they fail
  in the op like any other out-of-range id. Empty rows get `default_id`'s
  embedding, or zeros.
  """
  combiner = _check_combiner(combiner)
  sparse_ids = _as_sparse(sparse_ids, "sparse_ids")
  if sparse_weights is not None:
    sparse_weights = _as_sparse(sparse_weights, "sparse_weights")
  static_batch = sparse_ids.shape[:-1]
  with tf.name_scope(name):
    original_shape = sparse_ids.dense_shape
    batch_shape = original_shape[:-1]
    flat_shape = tf.stack([tf.reduce_prod(batch_shape), original_shape[-1]])
    sparse_ids = tf.sparse.reshape(sparse_ids, flat_shape)
    keep = (
        sparse_ids.values >= 0
        if prune_ids
        else tf.ones_like(sparse_ids.values, dtype=tf.bool)
    )
    if sparse_weights is not None:
      sparse_weights = tf.sparse.reshape(sparse_weights, flat_shape)
      if combiner != "sum":
        keep = tf.logical_and(keep, sparse_weights.values > 0)
      sparse_weights = tf.sparse.retain(sparse_weights, keep)
    sparse_ids = tf.sparse.retain(sparse_ids, keep)
    result = embedding_lookup_sparse(
        params, sparse_ids, sparse_weights, combiner=combiner, max_norm=max_norm
    )
    if default_id is not None:
      counts = tf.math.unsorted_segment_sum(
          tf.ones_like(sparse_ids.values, dtype=tf.int32),
          sparse_ids.indices[:, 0],
          flat_shape[0],
      )
      default = embedding_lookup(
          params,
          tf.constant(default_id, dtype=sparse_ids.values.dtype),
          max_norm=max_norm,
      )
      result = tf.where(
          tf.expand_dims(counts > 0, -1),
          result,
          tf.broadcast_to(default, tf.shape(result)),
      )
    out_shape = tf.concat([batch_shape, [params.embedding_dim]], axis=0)
    result = tf.reshape(result, out_shape)
    result.set_shape(static_batch.concatenate([params.embedding_dim]))
    return result
