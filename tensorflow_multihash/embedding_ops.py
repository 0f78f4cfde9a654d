"""Lookups of a `MultiHashVariable`: dense, sparse with combiners, and safe.

Every id's embedding is composed from the small tables by the fused op
first; bags of ids are pooled afterwards (compose, then pool).
"""

import tensorflow as tf

from tensorflow_multihash import distributed_lookup
from tensorflow_multihash import multihash_ops
from tensorflow_multihash.variable import MultiHashVariable

COMBINERS = ("sum", "mean", "sqrtn")


def _check_params(params, arg_name="params"):
  if not isinstance(params, MultiHashVariable):
    raise TypeError("%s must be a MultiHashVariable, got %s" %
                    (arg_name, type(params).__name__))


def _clip(emb, max_norm):
  if max_norm is None:
    return emb
  return tf.clip_by_norm(emb, max_norm, axes=[-1])


def embedding_lookup(params, ids, max_norm=None, name=None):
  """Looks up `ids` in a multi-hash variable.

  Args:
    params: a `MultiHashVariable`.
    ids: int32 or int64 ids of any shape, each in [0, params.capacity)
      (any id if the variable was made with out_of_range="wrap").
    max_norm: if set, each embedding is clipped to this L2 norm.
    name: a name for the operation.

  Returns:
    A tensor of shape `ids.shape + [params.embedding_dim]`.

  Raises:
    TypeError: `params` is not a MultiHashVariable, or float/string ids.
    tf.errors.InvalidArgumentError (when run): an id outside
      [0, capacity).
  """
  _check_params(params)
  with tf.name_scope(name or "multihash_embedding_lookup"):
    # Shards spread over devices (parameter servers): gather rows where
    # they live instead of copying shards to one kernel.
    lookup = (distributed_lookup.colocated_lookup
              if distributed_lookup.needs_colocated_lookup(params.tables)
              else multihash_ops.multihash_lookup)
    emb = lookup(params.tables, ids, operation=params.operation,
                 complementary_strategy=params.complementary_strategy,
                 out_of_range=params.out_of_range)
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
    denom = tf.sqrt(tf.math.unsorted_segment_sum(
        weights * weights, segment_ids, num_segments))
  return tf.math.divide_no_nan(total, tf.expand_dims(denom, -1))


def _check_combiner(combiner):
  if combiner is None:
    return "mean"
  if combiner not in COMBINERS:
    raise ValueError("combiner must be one of %s, got %r" %
                     (", ".join(COMBINERS), combiner))
  return combiner


def embedding_lookup_sparse(params, sp_ids, sp_weights, combiner=None,
                            max_norm=None, name=None):
  """Looks up and pools bags of ids: row b of the result pools the
  embeddings of the ids in row b of `sp_ids`.

  Args:
    params: a `MultiHashVariable`.
    sp_ids: a 2-D `SparseTensor` of int32/int64 ids, [batch, max_ids].
    sp_weights: None, or a `SparseTensor` of float weights with the same
      indices as `sp_ids`.
    combiner: "sum", "mean" (the default) or "sqrtn" (weighted sum divided
      by the square root of the sum of squared weights).
    max_norm: if set, each id's embedding is clipped to this L2 norm before
      weighting.
    name: a name for the operation.

  Returns:
    A `[batch, embedding_dim]` tensor, batch being `sp_ids.dense_shape[0]`;
    rows without ids are zeros.
  """
  _check_params(params)
  combiner = _check_combiner(combiner)
  sp_ids = _as_sparse(sp_ids, "sp_ids")
  with tf.name_scope(name or "multihash_embedding_lookup_sparse"):
    emb = embedding_lookup(params, sp_ids.values, max_norm=max_norm)
    weights = None
    if sp_weights is not None:
      sp_weights = _as_sparse(sp_weights, "sp_weights")
      weights = tf.cast(sp_weights.values, emb.dtype)
    segment_ids = sp_ids.indices[:, 0]
    return _pool(emb, segment_ids, sp_ids.dense_shape[0], weights, combiner)


def _as_sparse(sp, arg_name):
  if isinstance(sp, tf.compat.v1.SparseTensorValue):
    return tf.SparseTensor.from_value(sp)
  if not isinstance(sp, tf.SparseTensor):
    raise TypeError("%s must be a SparseTensor, got %s" %
                    (arg_name, type(sp).__name__))
  return sp


def safe_embedding_lookup_sparse(embedding_weights, sparse_ids,
                                 sparse_weights=None, combiner="mean",
                                 default_id=None, max_norm=None, name=None):
  """Like `embedding_lookup_sparse`, for ids of any rank, pruning ids < 0 and
  ids whose weight is not positive; rows left empty get the embedding of
  `default_id`, or zeros.

  Args:
    embedding_weights: a `MultiHashVariable`.
    sparse_ids: a `SparseTensor` of ids, shape [d_0, ..., d_{n-1}, max_ids].
    sparse_weights: None, or a `SparseTensor` of weights like `sparse_ids`.
    combiner: "sum", "mean" (the default) or "sqrtn".
    default_id: an id whose embedding fills empty rows, or None for zeros.
    max_norm: if set, each id's embedding is clipped to this L2 norm.
    name: a name for the operation.

  Returns:
    A `[d_0, ..., d_{n-1}, embedding_dim]` tensor.
  """
  _check_params(embedding_weights, "embedding_weights")
  return pooled_lookup(embedding_weights, sparse_ids, sparse_weights,
                       combiner=combiner, default_id=default_id,
                       max_norm=max_norm, prune_ids=True,
                       name=name or "multihash_safe_embedding_lookup_sparse")


def pooled_lookup(params, sparse_ids, sparse_weights, combiner, default_id,
                  max_norm, prune_ids, name):
  """Pools bags of ids of any rank (the last dimension holds the bag).

  Ids whose weight is not positive are dropped, as TensorFlow's safe lookup
  does; ids < 0 too if `prune_ids`, else they fail in the op like any other
  out-of-range id. Empty rows get `default_id`'s embedding, or zeros.
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
    keep = (sparse_ids.values >= 0 if prune_ids
            else tf.ones_like(sparse_ids.values, dtype=tf.bool))
    if sparse_weights is not None:
      sparse_weights = tf.sparse.reshape(sparse_weights, flat_shape)
      keep = tf.logical_and(keep, sparse_weights.values > 0)
      sparse_weights = tf.sparse.retain(sparse_weights, keep)
    sparse_ids = tf.sparse.retain(sparse_ids, keep)
    result = embedding_lookup_sparse(params, sparse_ids,
                                     sparse_weights, combiner=combiner,
                                     max_norm=max_norm)
    if default_id is not None:
      counts = tf.math.unsorted_segment_sum(
          tf.ones_like(sparse_ids.values, dtype=tf.int32),
          sparse_ids.indices[:, 0], flat_shape[0])
      default = embedding_lookup(
          params,
          tf.constant(default_id, dtype=sparse_ids.values.dtype),
          max_norm=max_norm)
      result = tf.where(tf.expand_dims(counts > 0, -1), result,
                        tf.broadcast_to(default, tf.shape(result)))
    out_shape = tf.concat(
        [batch_shape, [params.embedding_dim]], axis=0)
    result = tf.reshape(result, out_shape)
    result.set_shape(static_batch.concatenate([params.embedding_dim]))
    return result
