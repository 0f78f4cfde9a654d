"""The TensorFlow behaviour a test process runs under, chosen by the
environment variable TFMH_TEST_MODE before anything builds a graph:

  tf2    (default) TensorFlow 2 behaviour: eager, tf.function, Keras.
  v1     `tf.compat.v1.disable_v2_behavior()`: what DeepRec users run (graph
         mode, reference variables by default, shapes of `Dimension`s).
  graph  `tf.compat.v1.disable_eager_execution()` only (TF2 behaviour
         otherwise: resource variables, int shapes).

In v1 and graph mode only the tests marked `tf1` run. Subprocesses that a
test starts (cluster tasks, examples) call `apply()` too, so they run in the
same mode.
"""

import os

import tensorflow as tf

MODES = ("tf2", "v1", "graph")


def current():
  mode = os.environ.get("TFMH_TEST_MODE", "tf2") or "tf2"
  if mode not in MODES:
    raise ValueError(
        "TFMH_TEST_MODE must be one of %s, got %r" % (", ".join(MODES), mode)
    )
  return mode


def apply():
  """Switches this process to the mode; returns the mode's name."""
  mode = current()
  if mode == "v1":
    tf.compat.v1.disable_v2_behavior()
  elif mode == "graph":
    tf.compat.v1.disable_eager_execution()
  return mode
