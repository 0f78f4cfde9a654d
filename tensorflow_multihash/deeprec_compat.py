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
import typing

import tensorflow as tf
# `import tensorflow.compat.v1` (done by DeepRec-style code, and by tf_keras)
# may load a module object other than `tf.compat.v1`; both are patched.
import tensorflow.compat.v1 as tf_v1_module
from tensorflow.python.feature_column import feature_column_v2 as fc2
from tensorflow.python.ops import variable_scope
from tensorflow.python.ops.ragged import ragged_embedding_ops
from tensorflow.python.platform import tf_logging as logging
from tensorflow.python.util import dispatch

from tensorflow_multihash import embedding_ops
from tensorflow_multihash import feature_column
from tensorflow_multihash import variable as variable_lib
from tensorflow_multihash.variable import MultiHashVariable
from tensorflow_multihash.variable import get_multihash_variable

dispatch.register_dispatchable_type(MultiHashVariable)

# `params` as TensorFlow takes it: the variable, or a list of exactly one
# (a list of several is refused by embedding_ops with a clear error).
_Params = typing.Union[MultiHashVariable, typing.List[MultiHashVariable]]


# The signatures below must match TensorFlow's exactly (dispatch checks
# them); arguments that only concern plain partitioned tables
# (partition_strategy, validate_indices, allow_fast_lookup) are accepted and
# have nothing to do here.
# pylint: disable=unused-argument


@tf.experimental.dispatch_for_api(tf.nn.embedding_lookup)
def _embedding_lookup_v2(params: _Params, ids, max_norm=None, name=None):
  return embedding_ops.embedding_lookup(
      params, ids, max_norm=max_norm, name=name
  )


def _embedding_lookup_v1(
    params,
    ids,
    partition_strategy="mod",
    name=None,
    validate_indices=True,
    max_norm=None,
):
  if not _is_multihash(params):  # ragged ids of a plain table: TensorFlow's
    return _ragged_targets["embedding_lookup"](
        params,
        ids,
        partition_strategy=partition_strategy,
        name=name,
        validate_indices=validate_indices,
        max_norm=max_norm,
    )
  return embedding_ops.embedding_lookup(
      params, ids, max_norm=max_norm, name=name
  )


@tf.experimental.dispatch_for_api(tf.nn.embedding_lookup_sparse)
def _embedding_lookup_sparse_v2(
    params: _Params,
    sp_ids,
    sp_weights,
    combiner=None,
    max_norm=None,
    name=None,
    allow_fast_lookup=False,
):
  return embedding_ops.embedding_lookup_sparse(
      params,
      sp_ids,
      sp_weights,
      combiner=combiner,
      max_norm=max_norm,
      name=name,
  )


def _embedding_lookup_sparse_v1(
    params,
    sp_ids,
    sp_weights,
    partition_strategy="mod",
    name=None,
    combiner=None,
    max_norm=None,
    allow_fast_lookup=False,
):
  if not _is_multihash(params):
    return _ragged_targets["embedding_lookup_sparse"](
        params,
        sp_ids,
        sp_weights,
        partition_strategy=partition_strategy,
        name=name,
        combiner=combiner,
        max_norm=max_norm,
        allow_fast_lookup=allow_fast_lookup,
    )
  return embedding_ops.embedding_lookup_sparse(
      params,
      sp_ids,
      sp_weights,
      combiner=combiner,
      max_norm=max_norm,
      name=name,
  )


@tf.experimental.dispatch_for_api(tf.nn.safe_embedding_lookup_sparse)
def _safe_embedding_lookup_sparse_v2(
    embedding_weights: _Params,
    sparse_ids,
    sparse_weights=None,
    combiner="mean",
    default_id=None,
    max_norm=None,
    name=None,
    allow_fast_lookup=False,
):
  return embedding_ops.safe_embedding_lookup_sparse(
      embedding_weights,
      sparse_ids,
      sparse_weights,
      combiner=combiner,
      default_id=default_id,
      max_norm=max_norm,
      name=name,
  )


def _safe_embedding_lookup_sparse_v1(
    embedding_weights,
    sparse_ids,
    sparse_weights=None,
    combiner="mean",
    default_id=None,
    name=None,
    partition_strategy="div",
    max_norm=None,
    allow_fast_lookup=False,
):
  if not _is_multihash(embedding_weights):
    return _ragged_targets["safe_embedding_lookup_sparse"](
        embedding_weights,
        sparse_ids,
        sparse_weights,
        combiner=combiner,
        default_id=default_id,
        name=name,
        partition_strategy=partition_strategy,
        max_norm=max_norm,
        allow_fast_lookup=allow_fast_lookup,
    )
  return embedding_ops.safe_embedding_lookup_sparse(
      embedding_weights,
      sparse_ids,
      sparse_weights,
      combiner=combiner,
      default_id=default_id,
      max_norm=max_norm,
      name=name,
  )


def _is_multihash(params):
  return isinstance(params, MultiHashVariable) or (
      isinstance(params, (list, tuple))
      and any(isinstance(p, MultiHashVariable) for p in params)
  )


# TensorFlow's v1 lookups also dispatch ragged ids to its own ragged
# functions; with a multi-hash variable and ragged ids both targets would
# match and TensorFlow refuses the call as ambiguous. So each v1 function
# above is one target for both signatures: a multi-hash `params` (any ids)
# comes here, anything else with ragged ids goes on to TensorFlow's ragged
# function, unchanged.
_ragged_targets = {}


def _register_v1(api, target, params_name, ragged_name):
  signatures = [{params_name: _Params}]
  ragged = getattr(ragged_embedding_ops, ragged_name, None)
  registered = getattr(dispatch, "_TYPE_BASED_DISPATCH_SIGNATURES", {})
  ragged_signatures = list(registered.get(api, {}).get(ragged, []))
  if ragged_signatures:
    tf.experimental.unregister_dispatch_for(ragged)
    _ragged_targets[ragged_name] = ragged
    signatures += ragged_signatures
  tf.experimental.dispatch_for_api(api, *signatures)(target)


_register_v1(
    tf.compat.v1.nn.embedding_lookup,
    _embedding_lookup_v1,
    "params",
    "embedding_lookup",
)
_register_v1(
    tf.compat.v1.nn.embedding_lookup_sparse,
    _embedding_lookup_sparse_v1,
    "params",
    "embedding_lookup_sparse",
)
_register_v1(
    tf.compat.v1.nn.safe_embedding_lookup_sparse,
    _safe_embedding_lookup_sparse_v1,
    "embedding_weights",
    "safe_embedding_lookup_sparse",
)

# pylint: enable=unused-argument

_warned_rows_differ = False


def _warn_if_rows_differ(args, kwargs):
  """Warns once per process when DeepRec's entry point makes k = 2 "Q-R"
  tables with rows_Q != rows_R and no mapping was chosen: DeepRec maps such
  ids differently."""
  global _warned_rows_differ
  if _warned_rows_differ or variable_lib.deeprec_mapping_chosen():
    return
  try:
    bound = variable_lib.bind_arguments(args, kwargs)
    dims = bound["dims"]
    strategy = bound.get("complementary_strategy", "Q-R")
    if (
        bound.get("deeprec_mapping") is not None
        or strategy != "Q-R"
        or len(dims) != 2
        or dims[0][0] == dims[1][0]
    ):
      return
    rows_q, rows_r = int(dims[0][0]), int(dims[1][0])
  except (TypeError, ValueError, IndexError, KeyError):
    return  # a bad call: get_multihash_variable says what is wrong
  _warned_rows_differ = True
  logging.warning(
      "get_multihash_variable: dims have %d quotient rows and %d remainder "
      "rows. tensorflow_multihash maps id x to rows (x // %d, x %% %d), a "
      "unique pair for every id below %d; DeepRec maps it to "
      "(x // %d, x %% %d), where ids collide. A checkpoint trained with "
      "DeepRec gives other embeddings here. To map ids exactly as DeepRec "
      "does, call tensorflow_multihash.set_deeprec_mapping(True) once "
      "before building the model (or pass deeprec_mapping=True); "
      "set_deeprec_mapping(False) keeps this package's mapping and silences "
      "this warning.",
      rows_q,
      rows_r,
      rows_r,
      rows_r,
      rows_q * rows_r,
      rows_q,
      rows_r,
  )


def deeprec_get_multihash_variable(  # pylint: disable=missing-docstring
    *args: typing.Any, **kwargs: typing.Any
) -> MultiHashVariable:
  _warn_if_rows_differ(args, kwargs)
  return get_multihash_variable(*args, **kwargs)


deeprec_get_multihash_variable.__doc__ = get_multihash_variable.__doc__
deeprec_get_multihash_variable.__signature__ = (
    get_multihash_variable.__signature__
)

# DeepRec's own modules call variable_scope.get_multihash_variable.
for _namespace in (tf, tf.compat.v1, tf_v1_module, variable_scope):
  if not hasattr(_namespace, "get_multihash_variable"):
    setattr(
        _namespace, "get_multihash_variable", deeprec_get_multihash_variable
    )


def _wrap_embedding_column(tf_embedding_column):
  """TensorFlow's embedding_column, also taking a multi-hash column with a
  (width_Q, width_R) dimension."""

  @functools.wraps(tf_embedding_column)
  def embedding_column(
      categorical_column,
      dimension,
      combiner="mean",
      initializer=None,
      ckpt_to_load_from=None,
      tensor_name_in_ckpt=None,
      max_norm=None,
      trainable=True,
      use_safe_embedding_lookup=True,
  ):
    if feature_column.multihash_column_of(categorical_column) is None:
      return tf_embedding_column(
          categorical_column,
          dimension,
          combiner=combiner,
          initializer=initializer,
          ckpt_to_load_from=ckpt_to_load_from,
          tensor_name_in_ckpt=tensor_name_in_ckpt,
          max_norm=max_norm,
          trainable=trainable,
          use_safe_embedding_lookup=use_safe_embedding_lookup,
      )
    if ckpt_to_load_from is not None or tensor_name_in_ckpt is not None:
      raise ValueError(
          "ckpt_to_load_from and tensor_name_in_ckpt are not "
          "supported for a multi-hash column; restore its "
          "tables with a Saver or tf.train.Checkpoint"
      )
    return feature_column.embedding_column(
        categorical_column,
        dimension,
        combiner=combiner,
        initializer=initializer,
        max_norm=max_norm,
        trainable=trainable,
    )

  embedding_column.tfmh_wrapped = tf_embedding_column
  return embedding_column


_FEATURE_COLUMN_NAMESPACES = (
    fc2,
    tf.feature_column,
    tf.compat.v1.feature_column,
    tf_v1_module.feature_column,
)
for _namespace in _FEATURE_COLUMN_NAMESPACES:
  if not hasattr(_namespace, "categorical_column_with_multihash"):
    setattr(
        _namespace,
        "categorical_column_with_multihash",
        feature_column.categorical_column_with_multihash,
    )
  _original = getattr(_namespace, "embedding_column")
  if not hasattr(_original, "tfmh_wrapped"):
    setattr(_namespace, "embedding_column", _wrap_embedding_column(_original))
