"""Trained SavedModels for the serving tests (test_saved_model.py,
test_serving_c_api.py): a tf.Module and a Keras 3 model, each holding a
multi-hash variable, trained for a few optimizer steps, then exported with
tf.saved_model.save / model.export. Each export returns the numbers the
training process itself serves, which every loader must reproduce.
"""

import numpy as np
import tensorflow as tf

from mh_apiutil import DIMS, array_initializer, np_lookup, table_arrays

IDS = [0, 14, 7, 7, 3]
STEPS = 3


def _train(variables, loss_fn, opt):
  for _ in range(STEPS):
    with tf.GradientTape() as tape:
      loss = loss_fn()
    grads = tape.gradient(loss, variables)
    opt.apply_gradients(zip(grads, variables))


def export_trained_module(tfmh, path, seed=7):
  """A tf.Module (operation "add") trained with Keras Adagrad, exported
  with a serving_default signature {"ids": int64[None]} -> {"emb": ...}."""
  rng = np.random.default_rng(seed)
  arrays = table_arrays(rng, DIMS["add"])
  mod = tf.Module()
  mod.emb = tfmh.get_multihash_variable(
      "trained_emb",
      DIMS["add"],
      operation="add",
      initializer=array_initializer(arrays),
  )
  ids = tf.constant(IDS, tf.int64)
  target = tf.constant(rng.uniform(-1, 1, (len(IDS), 4)).astype(np.float32))
  _train(
      list(mod.emb.trainable_variables),
      lambda: tf.reduce_sum(
          tf.square(tf.nn.embedding_lookup(mod.emb, ids) - target)
      ),
      tf.keras.optimizers.Adagrad(0.5),
  )
  tables = [t.numpy() for t in mod.emb.tables]
  assert not np.allclose(tables[0], arrays[0]), "training changed nothing"

  @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="ids")])
  def serve(ids):
    return {"emb": tf.nn.embedding_lookup(mod.emb, ids)}

  mod.serve = serve
  tf.saved_model.save(mod, path, signatures={"serving_default": serve})
  want = serve(ids)["emb"].numpy()
  np.testing.assert_allclose(
      want, np_lookup(tables, np.array(IDS), "add"), rtol=1e-6, atol=1e-6
  )
  return want


def export_trained_keras(tfmh, path, seed=8):
  """A Keras 3 functional model: a custom layer holding a multi-hash
  variable (operation "concat"), then Dense; trained with Keras SGD on the
  tables and the Dense weights, exported with model.export (signatures
  "serve" and "serving_default", input "ids", output "output_0")."""
  import keras

  rng = np.random.default_rng(seed)
  arrays = table_arrays(rng, DIMS["concat"])

  class MultiHashEmbedding(keras.layers.Layer):

    def __init__(self, **kw):
      super().__init__(**kw)
      self.emb = tfmh.get_multihash_variable(
          "keras_emb",
          DIMS["concat"],
          operation="concat",
          initializer=array_initializer(arrays),
      )

    def call(self, ids):
      return tf.nn.embedding_lookup(self.emb, ids)

  inp = keras.Input(shape=(), dtype="int64", name="ids")
  layer = MultiHashEmbedding()
  out = keras.layers.Dense(3, name="dense")(layer(inp))
  model = keras.Model(inp, out)
  ids = tf.constant(IDS, tf.int64)
  target = tf.constant(rng.uniform(-1, 1, (len(IDS), 3)).astype(np.float32))
  # The tables are tf.Variables in a tf.Module, not Keras weights: train
  # them next to model.trainable_variables.
  variables = list(layer.emb.trainable_variables) + list(
      model.trainable_variables
  )
  _train(
      variables,
      lambda: tf.reduce_sum(tf.square(model(ids) - target)),
      keras.optimizers.SGD(0.1),
  )
  assert not np.allclose(
      layer.emb.tables[0].numpy(), arrays[0]
  ), "training changed nothing"
  want = model(ids).numpy()
  model.export(path, verbose=False)
  return want
