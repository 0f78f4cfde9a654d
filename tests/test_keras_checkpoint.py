"""Issue #20, point 1: every way Keras and TensorFlow save a model keeps the
tables of `tfmh.keras.MultiHashEmbedding`, and restores them into a NEW
model in a NEW process: `tf.train.Checkpoint` (before and after the
optimizer is built, and deferred, before the layer is built), `.keras`,
`.weights.h5`, `BackupAndRestore`, `model.export` and
`tf.saved_model.save`.

The tables are set to random values (not what any initializer gives) and
trained a step, so a restore that misses them shows. The saving runs here;
one fresh interpreter then restores every format and prints what it got,
compared here with the values saved."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import tensorflow_multihash as tfmh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
MHE = tfmh.keras.MultiHashEmbedding
X = np.array([[0, 14, 7], [7, 3, 10], [1, 2, 29], [28, 5, 0]], np.int64)


def build_model():
  """A functional model with a Q-R mul layer and a k = 3 add layer."""
  ids = keras.Input(shape=(3,), dtype="int64", name="ids")
  a = MHE(dims=[[3, 4], [5, 4]], operation="mul", name="mh_mul")(ids % 15)
  b = MHE(
      dims=[[2, 4], [3, 4], [5, 4]],
      operation="add",
      complementary_strategy="generalized-Q-R",
      name="mh_add3",
  )(ids)
  h = keras.layers.Concatenate()(
      [keras.layers.Flatten()(a), keras.layers.Flatten()(b)]
  )
  return keras.Model(ids, keras.layers.Dense(1, name="dense")(h))


class SubModel(keras.Model):
  """A subclassed model: its layer is built by the model's first call,
  which Keras runs symbolically first (in a stateless scope, where new
  variables have no value yet). Only the multi-hash layer holds weights:
  Keras 3.15's own layers (Dense, Embedding) lose a restore deferred
  through that symbolic build."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.emb = MHE(
        dims=[[3, 4], [5, 4]], operation="concat", out_of_range="wrap"
    )

  def call(self, ids):
    return keras.ops.sum(
        self.emb(ids) * keras.ops.arange(1, 9, dtype="float32"), axis=-1
    )


def tables_of(model):
  return {
      layer.name: [t.numpy() for t in layer.tables]
      for layer in model.layers
      if isinstance(layer, MHE)
  }


def slots_of(optimizer):
  """Optimizer variables by path without the optimizer's own (numbered)
  name (the slots of the tables among them)."""
  return {v.path.split("/", 1)[-1]: v.numpy() for v in optimizer.variables}


def _randomize(model, rng):
  for layer in model.layers:
    if isinstance(layer, MHE):
      layer.set_weights(
          [
              rng.uniform(-1, 1, w.shape).astype(np.float32)
              for w in layer.weights
          ]
      )


class _StopAfterEpoch(keras.callbacks.Callback):
  """Raises at the end of epoch `epoch` (0-based), as a killed job would."""

  def __init__(self, epoch):
    super().__init__()
    self.epoch = epoch

  def on_epoch_end(self, epoch, logs=None):
    if epoch == self.epoch:
      raise KeyboardInterrupt("stopped at epoch %d" % epoch)


def _to_lists(tree):
  if isinstance(tree, dict):
    return {k: _to_lists(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_to_lists(v) for v in tree]
  if isinstance(tree, (np.ndarray, np.generic)):
    return tree.tolist()
  return tree


RESTORE = textwrap.dedent(
    """\
    import json, os, sys
    sys.path.insert(0, sys.argv[1])   # the repository
    sys.path.insert(0, sys.argv[2])   # tests/ (the model builders)
    import numpy as np
    import tensorflow as tf
    import keras
    import tensorflow_multihash  # the op library; registers the layer
    import test_keras_checkpoint as t

    d = sys.argv[3]
    out = {}

    def matched(status):
        status.assert_existing_objects_matched()
        return True

    # tf.train.Checkpoint, optimizer not built yet: the tables come back at
    # once, the slots when the optimizer builds them.
    m = t.build_model()
    opt = keras.optimizers.Adam(0.01)
    status = tf.train.Checkpoint(model=m, optimizer=opt).restore(d + "/ckpt/c-1")
    matched(status)
    before_build = t.tables_of(m)
    opt.build(m.trainable_variables)
    status.assert_consumed()
    out["ckpt_optimizer_unbuilt"] = {"tables": before_build, "slots": t.slots_of(opt)}

    # tf.train.Checkpoint, optimizer built first.
    m = t.build_model()
    opt = keras.optimizers.Adam(0.01)
    opt.build(m.trainable_variables)
    tf.train.Checkpoint(model=m, optimizer=opt).restore(d + "/ckpt/c-1").assert_consumed()
    out["ckpt_optimizer_built"] = {"tables": t.tables_of(m), "slots": t.slots_of(opt)}
    out["ckpt_predict"] = m.predict(t.X, verbose=0)

    # A checkpoint of an untrained model (no optimizer at all).
    m = t.build_model()
    tf.train.Checkpoint(model=m).restore(d + "/untrained/c-1").assert_consumed()
    out["untrained"] = t.tables_of(m)

    # Deferred: restored before the layers exist, applied when they build.
    sub = t.SubModel()
    status = tf.train.Checkpoint(model=sub).restore(d + "/sub/c-1")
    assert not sub.emb.built
    out["deferred_predict"] = sub(t.X).numpy()
    status.assert_consumed()
    out["deferred"] = [w.numpy() for w in sub.emb.tables]
    layer = tensorflow_multihash.keras.MultiHashEmbedding(
        dims=[[3, 4], [5, 4]], operation="mul")
    tf.train.Checkpoint(layer=layer).restore(d + "/layer/c-1")
    layer.build()
    out["deferred_layer"] = [w.numpy() for w in layer.tables]

    # .keras and .weights.h5
    out["keras"] = t.tables_of(keras.saving.load_model(d + "/m.keras"))
    m = t.build_model()
    m.load_weights(d + "/m.weights.h5")
    out["weights_h5"] = t.tables_of(m)

    # BackupAndRestore: fit resumes from the backup of the interrupted job.
    m = t.build_model()
    m.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    seen = {}
    record = keras.callbacks.LambdaCallback(
        on_train_begin=lambda logs: seen.update(t.tables_of(m)))
    m.fit(t.X, np.zeros((4, 1)), epochs=2, verbose=0, callbacks=[
        keras.callbacks.BackupAndRestore(d + "/backup"), record])
    out["backup"] = seen

    # model.export: served, and its variables hold the tables.
    served = tf.saved_model.load(d + "/export")
    out["export_serve"] = served.serve(tf.constant(t.X)).numpy()
    out["export_variables"] = [v.numpy() for v in served.variables]

    # tf.saved_model.save: served, and restored into a new Keras model.
    loaded = tf.saved_model.load(d + "/saved_model")
    sig = loaded.signatures["serving_default"]
    out["saved_model_serve"] = list(sig(inputs=tf.constant(t.X)).values())[0].numpy()
    m = t.build_model()
    # The SavedModel's variables are a checkpoint rooted at the model (its
    # save_counter is the only object they lack).
    tf.train.Checkpoint(m).restore(d + "/saved_model/variables/variables").expect_partial()
    out["saved_model_restore"] = t.tables_of(m)

    print("RESULT " + json.dumps(t._to_lists(out)))
    """
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """Saves every format here; restores them all in one fresh process."""
  d = str(tmp_path_factory.mktemp("keras_ckpt"))
  rng = np.random.default_rng(20)
  keras.utils.set_random_seed(20)
  want = {}

  untrained = build_model()
  _randomize(untrained, rng)
  tf.train.Checkpoint(model=untrained).save(d + "/untrained/c")
  want["untrained"] = tables_of(untrained)

  m = build_model()
  _randomize(m, rng)
  opt = keras.optimizers.Adam(0.01)
  m.compile(optimizer=opt, loss="mse")
  y = rng.uniform(-1, 1, (4, 1)).astype(np.float32)
  m.fit(X, y, epochs=2, batch_size=2, shuffle=False, verbose=0)
  tf.train.Checkpoint(model=m, optimizer=opt).save(d + "/ckpt/c")
  m.save(d + "/m.keras")
  m.save_weights(d + "/m.weights.h5")
  m.export(d + "/export", verbose=False)
  tf.saved_model.save(m, d + "/saved_model")
  want["tables"] = tables_of(m)
  want["slots"] = slots_of(opt)
  want["predict"] = m.predict(X, verbose=0)

  sub = SubModel()
  sub(X)
  sub.emb.set_weights(
      [rng.uniform(-1, 1, w.shape).astype(np.float32) for w in sub.emb.weights]
  )
  tf.train.Checkpoint(model=sub).save(d + "/sub/c")
  want["sub"] = [w.numpy() for w in sub.emb.tables]
  want["sub_predict"] = sub(X).numpy()

  layer = MHE(dims=[[3, 4], [5, 4]], operation="mul")
  layer.build()
  layer.set_weights(
      [rng.uniform(-1, 1, w.shape).astype(np.float32) for w in layer.weights]
  )
  tf.train.Checkpoint(layer=layer).save(d + "/layer/c")
  want["layer"] = [w.numpy() for w in layer.tables]

  # BackupAndRestore: a job killed after its second epoch's backup.
  b = build_model()
  _randomize(b, rng)
  b.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
  with pytest.raises(KeyboardInterrupt):
    b.fit(
        X,
        y,
        epochs=5,
        verbose=0,
        callbacks=[
            keras.callbacks.BackupAndRestore(d + "/backup"),
            _StopAfterEpoch(1),
        ],
    )
  want["backup"] = tables_of(b)

  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  env.pop("PYTHONPATH", None)
  p = subprocess.run(
      [sys.executable, "-c", RESTORE, ROOT, HERE, d],
      cwd="/",
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert p.returncode == 0, p.stderr[-6000:]
  got = json.loads(
      [x for x in p.stdout.splitlines() if x.startswith("RESULT ")][-1][7:]
  )
  return want, got


def _assert_tables(got, want):
  assert sorted(got) == sorted(want)
  for name in want:
    assert len(got[name]) == len(want[name])
    for g, w in zip(got[name], want[name]):
      np.testing.assert_array_equal(np.asarray(g, np.float32), w)


def test_checkpoint_keys_name_the_tables(tmp_path):
  layer = MHE(dims=[[3, 4], [5, 4]])
  layer.build()
  path = tf.train.Checkpoint(layer=layer).save(str(tmp_path / "c"))
  names = [n for n, _ in tf.train.list_variables(path)]
  assert "layer/multhash_Q/.ATTRIBUTES/VARIABLE_VALUE" in names
  assert "layer/multhash_R/.ATTRIBUTES/VARIABLE_VALUE" in names
  layer3 = MHE(dims=[[2, 4], [3, 4], [5, 4]], complementary_strategy="CRT")
  layer3.build()
  path = tf.train.Checkpoint(layer=layer3).save(str(tmp_path / "d"))
  names = [n for n, _ in tf.train.list_variables(path)]
  for j in range(3):
    assert "layer/multhash_%d/.ATTRIBUTES/VARIABLE_VALUE" % j in names
  # The tables are the layer's weights, in order, and nothing else.
  assert [w.name for w in layer3.weights] == [
      "multhash_0",
      "multhash_1",
      "multhash_2",
  ]
  assert layer3.tables == [
      layer3.multhash_0,
      layer3.multhash_1,
      layer3.multhash_2,
  ]


def test_checkpoint_restores_tables_and_slots_in_new_process(saved):
  want, got = saved
  for case in ("ckpt_optimizer_unbuilt", "ckpt_optimizer_built"):
    _assert_tables(got[case]["tables"], want["tables"])
    slots = got[case]["slots"]
    assert sorted(slots) == sorted(want["slots"])
    # The tables' Adam moments are among them, and not zeros.
    table_slots = [p for p in slots if "multhash" in p]
    assert len(table_slots) == 2 * (2 + 3), sorted(slots)
    for path, value in want["slots"].items():
      np.testing.assert_array_equal(np.asarray(slots[path], np.float32), value)
      if "multhash" in path:
        assert np.any(value != 0), path
  np.testing.assert_allclose(
      got["ckpt_predict"], want["predict"], rtol=1e-6, atol=1e-6
  )


def test_checkpoint_of_untrained_model_in_new_process(saved):
  want, got = saved
  _assert_tables(got["untrained"], want["untrained"])


def test_deferred_restore_before_build_in_new_process(saved):
  want, got = saved
  for g, w in zip(got["deferred"], want["sub"]):
    np.testing.assert_array_equal(np.asarray(g, np.float32), w)
  np.testing.assert_allclose(
      got["deferred_predict"], want["sub_predict"], rtol=1e-6, atol=1e-6
  )
  assert len(got["deferred_layer"]) == 2
  for g, w in zip(got["deferred_layer"], want["layer"]):
    np.testing.assert_array_equal(np.asarray(g, np.float32), w)


def test_keras_file_and_weights_h5_in_new_process(saved):
  want, got = saved
  _assert_tables(got["keras"], want["tables"])
  _assert_tables(got["weights_h5"], want["tables"])


def test_backup_and_restore_resumes_in_new_process(saved):
  want, got = saved
  _assert_tables(got["backup"], want["backup"])


def test_export_and_saved_model_in_new_process(saved):
  want, got = saved
  np.testing.assert_allclose(
      got["export_serve"], want["predict"], rtol=1e-6, atol=1e-6
  )
  np.testing.assert_allclose(
      got["saved_model_serve"], want["predict"], rtol=1e-6, atol=1e-6
  )
  exported = [np.asarray(v, np.float32) for v in got["export_variables"]]
  for tables in want["tables"].values():
    for w in tables:
      assert any(e.shape == w.shape and np.array_equal(e, w) for e in exported)
  _assert_tables(got["saved_model_restore"], want["tables"])
