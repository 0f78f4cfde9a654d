"""Saving and restoring a MultiHashVariable (SPEC 4): tf.compat.v1.train.Saver
in graph mode, tf.train.Checkpoint in eager, and DeepRec-named checkpoints."""

import numpy as np
import pytest
import tensorflow as tf

from mh_apiutil import (  # noqa: F401  (tfmh is a fixture)
    DIMS,
    array_initializer,
    eager_value,
    np_lookup,
    sess_value,
    shards,
    table_arrays,
    tfmh,
)

v1 = tf.compat.v1
TOL = dict(rtol=1e-6, atol=1e-6)
IDS = np.array([0, 14, 7, 3, 3])


def _ckpt_keys(path):
  return {name: shape for name, shape in tf.train.list_variables(path)}


@pytest.mark.parametrize("use_resource", [False, True], ids=["ref", "resource"])
@pytest.mark.parametrize("operation", ["add", "concat"])
@pytest.mark.tf1
def test_saver_round_trip(tfmh, rng, tmp_path, operation, use_resource):
  dims = DIMS[operation]
  arrays = table_arrays(rng, dims)
  prefix = str(tmp_path / "model")
  with tf.Graph().as_default():
    with v1.variable_scope("sc"):
      v = tfmh.get_multihash_variable(
          "emb",
          dims,
          operation=operation,
          initializer=array_initializer(arrays),
          use_resource=use_resource,
      )
    saver = v1.train.Saver()
    zero = [v1.assign(t, tf.zeros_like(t)) for t in v.tables]
    y = tf.nn.embedding_lookup(v, IDS)
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      path = saver.save(sess, prefix)
      sess.run(zero)
      assert np.all(sess.run(y) == 0)
      saver.restore(sess, path)
      for t, a in zip(v.tables, arrays):
        np.testing.assert_array_equal(sess_value(sess, t), a)
      np.testing.assert_allclose(
          sess.run(y), np_lookup(arrays, IDS, operation), **TOL
      )
  keys = _ckpt_keys(path)
  assert keys.get("sc/emb/multhash_Q") == dims[0], keys
  assert keys.get("sc/emb/multhash_R") == dims[1], keys
  # A fresh graph, other initial values: restores by name.
  with tf.Graph().as_default():
    with v1.variable_scope("sc"):
      w = tfmh.get_multihash_variable(
          "emb",
          dims,
          operation=operation,
          initializer=tf.ones_initializer(),
          use_resource=not use_resource,
      )
    y = tf.nn.embedding_lookup(w, IDS)
    with v1.Session() as sess:
      v1.train.Saver().restore(sess, path)
      np.testing.assert_allclose(
          sess.run(y), np_lookup(arrays, IDS, operation), **TOL
      )


@pytest.mark.tf1
def test_saver_var_list_of_multihash_tables(tfmh, rng, tmp_path):
  dims = DIMS["mul"]
  arrays = table_arrays(rng, dims)
  with tf.Graph().as_default():
    v = tfmh.get_multihash_variable(
        "emb", dims, operation="mul", initializer=array_initializer(arrays)
    )
    other = v1.get_variable("other", initializer=tf.constant([1.0, 2.0]))
    saver = v1.train.Saver(var_list=list(v.variables))
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      path = saver.save(sess, str(tmp_path / "m"))
  assert set(_ckpt_keys(path)) == {"emb/multhash_Q", "emb/multhash_R"}
  del other


@pytest.mark.tf1
def test_saver_partitioned_round_trip(tfmh, rng, tmp_path):
  dims = DIMS["add"]
  arrays = table_arrays(rng, dims)
  with tf.Graph().as_default():
    v = tfmh.get_multihash_variable(
        "emb",
        dims,
        initializer=array_initializer(arrays),
        partitioner=v1.fixed_size_partitioner(3),
    )
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      path = v1.train.Saver().save(sess, str(tmp_path / "p"))
  keys = _ckpt_keys(path)
  # Partitioned variables are saved whole under their full name.
  assert (
      keys.get("emb/multhash_Q") == dims[0]
      and keys.get("emb/multhash_R") == dims[1]
  ), keys
  # Restore into an unpartitioned and into a differently partitioned variable.
  for partitioner in (None, v1.fixed_size_partitioner(2)):
    with tf.Graph().as_default():
      w = tfmh.get_multihash_variable(
          "emb",
          dims,
          initializer=tf.zeros_initializer(),
          partitioner=partitioner,
      )
      y = tf.nn.embedding_lookup(w, IDS)
      with v1.Session() as sess:
        v1.train.Saver().restore(sess, path)
        for t, a in zip(w.tables, arrays):
          np.testing.assert_array_equal(sess_value(sess, t), a)
        np.testing.assert_allclose(
            sess.run(y), np_lookup(arrays, IDS, "add"), **TOL
        )


@pytest.mark.parametrize("partitioned", [False, True])
@pytest.mark.tf1
def test_restore_deeprec_named_checkpoint(tfmh, rng, tmp_path, partitioned):
  """DeepRec writes the tables as plain variables <name>/multhash_Q|R."""
  dims = DIMS["concat"]
  arrays = table_arrays(rng, dims)
  with tf.Graph().as_default():
    q = v1.get_variable(
        "user/var-dist/multhash_Q",
        initializer=tf.constant(arrays[0]),
        use_resource=False,
    )
    r = v1.get_variable(
        "user/var-dist/multhash_R",
        initializer=tf.constant(arrays[1]),
        use_resource=False,
    )
    step = v1.train.get_or_create_global_step()
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      path = v1.train.Saver([q, r, step]).save(sess, str(tmp_path / "deeprec"))
  with tf.Graph().as_default():
    with v1.variable_scope("user"):
      v = tfmh.get_multihash_variable(
          "var-dist",
          dims,
          complementary_strategy="Q-R",
          operation="concat",
          initializer=tf.ones_initializer,
          partitioner=v1.fixed_size_partitioner(2) if partitioned else None,
      )
    y = tf.nn.embedding_lookup(v, IDS)
    with v1.Session() as sess:
      v1.train.Saver().restore(sess, path)  # by name, default var list
      for t, a in zip(v.tables, arrays):
        np.testing.assert_array_equal(sess_value(sess, t), a)
      np.testing.assert_allclose(
          sess.run(y), np_lookup(arrays, IDS, "concat"), **TOL
      )


@pytest.mark.tf1
def test_v1_saver_after_training_continues(tfmh, rng, tmp_path):
  """Optimizer slots are saved too: training resumes with the same numbers."""
  dims = DIMS["add"]
  arrays = table_arrays(rng, dims)

  def build():
    v = tfmh.get_multihash_variable(
        "emb", dims, initializer=array_initializer(arrays)
    )
    loss = tf.reduce_sum(tf.square(tf.nn.embedding_lookup(v, IDS) - 0.5))
    train = v1.train.AdagradOptimizer(0.1).minimize(loss)
    return v, train

  with tf.Graph().as_default():
    v, train = build()
    saver = v1.train.Saver()
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      sess.run(train)
      path = saver.save(sess, str(tmp_path / "t"))
      sess.run(train)
      want = [sess_value(sess, t) for t in v.tables]
  assert any("Adagrad" in k for k in _ckpt_keys(path))
  with tf.Graph().as_default():
    v, train = build()
    with v1.Session() as sess:
      v1.train.Saver().restore(sess, path)
      sess.run(train)
      for t, w in zip(v.tables, want):
        np.testing.assert_allclose(sess_value(sess, t), w, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("operation", ["mul", "concat"])
def test_tf2_checkpoint_round_trip(tfmh, rng, tmp_path, operation):
  dims = DIMS[operation]
  arrays = table_arrays(rng, dims)
  v = tfmh.get_multihash_variable(
      "emb_ck", dims, operation=operation, initializer=array_initializer(arrays)
  )
  ckpt = tf.train.Checkpoint(emb=v)
  path = ckpt.save(str(tmp_path / "ck"))
  for t in v.tables:
    t.assign(tf.zeros_like(t))
  assert np.all(tf.nn.embedding_lookup(v, IDS).numpy() == 0)
  ckpt.restore(path).assert_consumed()
  for t, a in zip(v.tables, arrays):
    np.testing.assert_array_equal(eager_value(t), a)
  # Into a fresh variable with a different name and initial values.
  w = tfmh.get_multihash_variable(
      "emb_other", dims, operation=operation, initializer=tf.ones_initializer()
  )
  tf.train.Checkpoint(emb=w).restore(path).assert_consumed()
  np.testing.assert_allclose(
      tf.nn.embedding_lookup(w, IDS).numpy(),
      np_lookup(arrays, IDS, operation),
      **TOL,
  )


def test_tf2_checkpoint_with_keras_optimizer(tfmh, rng, tmp_path):
  dims = DIMS["add"]
  arrays = table_arrays(rng, dims)

  def make():
    v = tfmh.get_multihash_variable(
        "emb_ko", dims, initializer=array_initializer(arrays)
    )
    return v, tf.keras.optimizers.Adagrad(0.1)

  def step(v, opt):
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(tf.square(tf.nn.embedding_lookup(v, IDS) - 0.5))
    opt.apply_gradients(
        zip(tape.gradient(loss, v.trainable_variables), v.trainable_variables)
    )

  v, opt = make()
  step(v, opt)
  path = tf.train.Checkpoint(emb=v, opt=opt).save(str(tmp_path / "ko"))
  step(v, opt)
  want = [eager_value(t) for t in v.tables]
  w, opt2 = make()
  opt2.build(w.trainable_variables)
  tf.train.Checkpoint(emb=w, opt=opt2).restore(path)
  step(w, opt2)
  for t, x in zip(w.tables, want):
    np.testing.assert_allclose(eager_value(t), x, rtol=1e-6, atol=1e-6)


def test_tf2_checkpoint_partitioned(tfmh, rng, tmp_path):
  dims = DIMS["add"]
  arrays = table_arrays(rng, dims)
  v = tfmh.get_multihash_variable(
      "emb_ckp",
      dims,
      initializer=array_initializer(arrays),
      partitioner=v1.fixed_size_partitioner(2),
  )
  ckpt = tf.train.Checkpoint(emb=v)
  path = ckpt.save(str(tmp_path / "ckp"))
  for t in v.tables:
    for s in shards(t):
      s.assign(tf.zeros_like(s))
  ckpt.restore(path)
  for t, a in zip(v.tables, arrays):
    np.testing.assert_array_equal(eager_value(t), a)


@pytest.mark.tf1
def test_saver_var_list_with_multihash_variable_itself(tfmh, rng, tmp_path):
  """Saver(var_list=[v]) with the MultiHashVariable object (SPEC 4: the
  Saver saves and restores it), keys as DeepRec writes them."""
  dims = DIMS["add"]
  arrays = table_arrays(rng, dims)
  with tf.Graph().as_default():
    v = tfmh.get_multihash_variable(
        "emb", dims, initializer=array_initializer(arrays)
    )
    v1.get_variable("other", initializer=tf.constant([1.0]))
    saver = v1.train.Saver(var_list=[v])
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      path = saver.save(sess, str(tmp_path / "obj"))
      sess.run([v1.assign(t, tf.zeros_like(t)) for t in v.tables])
      saver.restore(sess, path)
      for t, a in zip(v.tables, arrays):
        np.testing.assert_array_equal(sess_value(sess, t), a)
  assert set(_ckpt_keys(path)) == {"emb/multhash_Q", "emb/multhash_R"}
