"""Lets DeepRec code run unchanged on stock TensorFlow once this package is
imported: `get_multihash_variable` appears in `tf` and `tf.compat.v1`, and
TensorFlow's own embedding lookups accept a `MultiHashVariable`.

The lookups go through TensorFlow's type-based dispatch
(`tf.experimental.dispatch_for_api`), which only ever fires when an argument
is a `MultiHashVariable`: every other call runs TensorFlow's code untouched.
"""

import tensorflow as tf
from tensorflow.python.util import dispatch

from tensorflow_multihash import embedding_ops
from tensorflow_multihash.variable import MultiHashVariable
from tensorflow_multihash.variable import get_multihash_variable

dispatch.register_dispatchable_type(MultiHashVariable)


# The signatures below must match TensorFlow's exactly (dispatch checks
# them); arguments that only concern plain partitioned tables
# (partition_strategy, validate_indices, allow_fast_lookup) are accepted and
# have nothing to do here.
# pylint: disable=unused-argument


@tf.experimental.dispatch_for_api(tf.nn.embedding_lookup)
def _embedding_lookup_v2(params: MultiHashVariable, ids, max_norm=None,
                         name=None):
  return embedding_ops.embedding_lookup(params, ids, max_norm=max_norm,
                                        name=name)


@tf.experimental.dispatch_for_api(tf.compat.v1.nn.embedding_lookup)
def _embedding_lookup_v1(params: MultiHashVariable, ids,
                         partition_strategy="mod", name=None,
                         validate_indices=True, max_norm=None):
  return embedding_ops.embedding_lookup(params, ids, max_norm=max_norm,
                                        name=name)


@tf.experimental.dispatch_for_api(tf.nn.embedding_lookup_sparse)
def _embedding_lookup_sparse_v2(params: MultiHashVariable, sp_ids, sp_weights,
                                combiner=None, max_norm=None, name=None,
                                allow_fast_lookup=False):
  return embedding_ops.embedding_lookup_sparse(
      params, sp_ids, sp_weights, combiner=combiner, max_norm=max_norm,
      name=name)


@tf.experimental.dispatch_for_api(tf.compat.v1.nn.embedding_lookup_sparse)
def _embedding_lookup_sparse_v1(params: MultiHashVariable, sp_ids, sp_weights,
                                partition_strategy="mod", name=None,
                                combiner=None, max_norm=None,
                                allow_fast_lookup=False):
  return embedding_ops.embedding_lookup_sparse(
      params, sp_ids, sp_weights, combiner=combiner, max_norm=max_norm,
      name=name)


@tf.experimental.dispatch_for_api(tf.nn.safe_embedding_lookup_sparse)
def _safe_embedding_lookup_sparse_v2(embedding_weights: MultiHashVariable,
                                     sparse_ids, sparse_weights=None,
                                     combiner="mean", default_id=None,
                                     max_norm=None, name=None,
                                     allow_fast_lookup=False):
  return embedding_ops.safe_embedding_lookup_sparse(
      embedding_weights, sparse_ids, sparse_weights, combiner=combiner,
      default_id=default_id, max_norm=max_norm, name=name)


@tf.experimental.dispatch_for_api(tf.compat.v1.nn.safe_embedding_lookup_sparse)
def _safe_embedding_lookup_sparse_v1(embedding_weights: MultiHashVariable,
                                     sparse_ids, sparse_weights=None,
                                     combiner="mean", default_id=None,
                                     name=None, partition_strategy="div",
                                     max_norm=None, allow_fast_lookup=False):
  return embedding_ops.safe_embedding_lookup_sparse(
      embedding_weights, sparse_ids, sparse_weights, combiner=combiner,
      default_id=default_id, max_norm=max_norm, name=name)

# pylint: enable=unused-argument

for _namespace in (tf, tf.compat.v1):
  if not hasattr(_namespace, "get_multihash_variable"):
    setattr(_namespace, "get_multihash_variable", get_multihash_variable)
