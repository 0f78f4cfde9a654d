"""The public entry points carry type hints that resolve.

Every function the package exports, the Keras layer's and the variable's
constructors annotate each parameter and the return value, and
`typing.get_type_hints` evaluates those annotations (they name real types:
a misspelt one fails here, not in a user's type checker).
"""

import inspect
import typing

import pytest

import tensorflow_multihash as tfmh
from tensorflow_multihash import multihash_ops


def _entry_points():
  points = {}
  for name in tfmh.__all__:
    obj = getattr(tfmh, name)
    if inspect.isfunction(obj):
      points[name] = obj
  points["MultiHashVariable.__init__"] = tfmh.MultiHashVariable.__init__
  points["multihash_ops.multihash_lookup_grad"] = (
      multihash_ops.multihash_lookup_grad
  )
  points["keras.MultiHashEmbedding.__init__"] = (
      tfmh.keras.MultiHashEmbedding.__init__
  )
  return points


ENTRY_POINTS = _entry_points()


def test_the_exported_functions_are_covered():
  # The functions of __all__ (the rest are modules and classes).
  assert {
      "categorical_column_with_multihash",
      "embedding_column",
      "embedding_lookup",
      "embedding_lookup_sparse",
      "get_multihash_variable",
      "multihash_dims",
      "multihash_lookup",
      "safe_embedding_lookup_sparse",
      "set_deeprec_mapping",
  } <= set(ENTRY_POINTS)


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_every_parameter_and_the_return_are_annotated(name):
  function = ENTRY_POINTS[name]
  # get_multihash_variable binds DeepRec's argument orders itself; its
  # signature is that of the function it calls.
  signature = inspect.signature(function)
  hints = typing.get_type_hints(inspect.unwrap(function))
  if name == "get_multihash_variable":
    hints = typing.get_type_hints(
        tfmh.variable._get_multihash_variable  # pylint: disable=protected-access
    )
  for parameter in signature.parameters:
    if parameter != "self":
      assert parameter in hints, (name, parameter)
  assert "return" in hints, name
