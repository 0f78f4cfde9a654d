"""Lets DeepRec code run unchanged on stock TensorFlow once this package is
imported: `get_multihash_variable` appears in `tf` and `tf.compat.v1`,
`categorical_column_with_multihash` in the feature-column namespaces, and
TensorFlow's own embedding lookups and `embedding_column` accept the
multi-hash objects.

The lookups go through TensorFlow's type-based dispatch
(`tf.experimental.dispatch_for_api`), which only ever fires when an argument
is a `MultiHashVariable`. `embedding_column` has no dispatch, so it is
wrapped: the wrapper hands a multi-hash column to this package and every
other call, unchanged, to TensorFlow's function.
"""

import functools

import tensorflow as tf
# `import tensorflow.compat.v1` (done by DeepRec-style code, and by tf_keras)
# may load a module object other than `tf.compat.v1`; both are patched.
import tensorflow.compat.v1 as tf_v1_module
from tensorflow.python.feature_column import feature_column_v2 as fc2
from tensorflow.python.util import dispatch

from tensorflow_multihash import embedding_ops
from tensorflow_multihash import feature_column
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

for _namespace in (tf, tf.compat.v1, tf_v1_module):
  if not hasattr(_namespace, "get_multihash_variable"):
    setattr(_namespace, "get_multihash_variable", get_multihash_variable)


def _wrap_embedding_column(tf_embedding_column):
  """TensorFlow's embedding_column, also taking a multi-hash column with a
  (width_Q, width_R) dimension."""

  @functools.wraps(tf_embedding_column)
  def embedding_column(categorical_column, dimension, combiner="mean",
                       initializer=None, ckpt_to_load_from=None,
                       tensor_name_in_ckpt=None, max_norm=None,
                       trainable=True, use_safe_embedding_lookup=True):
    if feature_column.multihash_column_of(categorical_column) is None:
      return tf_embedding_column(
          categorical_column, dimension, combiner=combiner,
          initializer=initializer, ckpt_to_load_from=ckpt_to_load_from,
          tensor_name_in_ckpt=tensor_name_in_ckpt, max_norm=max_norm,
          trainable=trainable,
          use_safe_embedding_lookup=use_safe_embedding_lookup)
    if ckpt_to_load_from is not None or tensor_name_in_ckpt is not None:
      raise ValueError("ckpt_to_load_from and tensor_name_in_ckpt are not "
                       "supported for a multi-hash column; restore its "
                       "tables with a Saver or tf.train.Checkpoint")
    return feature_column.embedding_column(
        categorical_column, dimension, combiner=combiner,
        initializer=initializer, max_norm=max_norm, trainable=trainable)

  embedding_column.tfmh_wrapped = tf_embedding_column
  return embedding_column


_FEATURE_COLUMN_NAMESPACES = (fc2, tf.feature_column,
                              tf.compat.v1.feature_column,
                              tf_v1_module.feature_column)
for _namespace in _FEATURE_COLUMN_NAMESPACES:
  if not hasattr(_namespace, "categorical_column_with_multihash"):
    setattr(_namespace, "categorical_column_with_multihash",
            feature_column.categorical_column_with_multihash)
  _original = getattr(_namespace, "embedding_column")
  if not hasattr(_original, "tfmh_wrapped"):
    setattr(_namespace, "embedding_column", _wrap_embedding_column(_original))
