"""Training a MultiHashVariable gives the same numbers as the same model on
plain variables with stock ops (tf.gather / floordiv / floormod), in TF1
Sessions with tf.compat.v1.train optimizers and in TF2 eager / tf.function
with GradientTape and Keras optimizers (SPEC 3, 5)."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.ops import resource_variable_ops

from mh_apiutil import (  # noqa: F401  (tfmh is a fixture)
    DIMS,
    OPS,
    dedup_slices,
    array_initializer,
    eager_value,
    np_lookup,
    out_width,
    sess_value,
    shards,
    table_arrays,
    tf_ref_lookup,
    tfmh,
)

v1 = tf.compat.v1
STEPS = 3
TOL = dict(rtol=2e-5, atol=2e-5)
# Duplicates on purpose: 7 three times, 0 twice; 0, 14 boundaries.
IDS = np.array([[0, 14, 7, 7], [3, 7, 0, 12]], np.int64)

V1_OPTIMIZERS = {
    "adagrad": lambda: v1.train.AdagradOptimizer(0.1),
    "sgd": lambda: v1.train.GradientDescentOptimizer(0.1),
    "momentum": lambda: v1.train.MomentumOptimizer(0.1, momentum=0.9),
    "adam": lambda: v1.train.AdamOptimizer(0.05),
    "ftrl": lambda: v1.train.FtrlOptimizer(
        0.1, l1_regularization_strength=0.001, l2_regularization_strength=0.01
    ),
    "rmsprop": lambda: v1.train.RMSPropOptimizer(0.05),
}


def _loss(emb, upstream):
  # Non-linear in emb so gradients depend on the current values.
  return tf.reduce_sum(emb * upstream) + 0.25 * tf.reduce_sum(tf.square(emb))


def _upstream(rng, operation):
  return rng.standard_normal(IDS.shape + (out_width(operation),)).astype(
      np.float32
  )


def _assert_sparse_grads(grads_and_vars, n_expected):
  assert len(grads_and_vars) == n_expected
  for g, var in grads_and_vars:
    assert g is not None, var.name
    assert isinstance(g, tf.IndexedSlices), f"{var.name}: {type(g).__name__}"


# ----------------------------------------------------------------- TF1 graph
def _graph_train(
    tfmh,
    rng,
    operation,
    make_opt,
    use_resource,
    partitioner=None,
    default_var_list=False,
):
  dims = DIMS[operation]
  arrays = table_arrays(rng, dims)
  upstream = _upstream(rng, operation)
  with tf.Graph().as_default():
    v = tfmh.get_multihash_variable(
        "emb",
        dims,
        operation=operation,
        initializer=array_initializer(arrays),
        use_resource=use_resource,
        partitioner=partitioner,
    )
    mh_vars = list(v.trainable_variables)
    with v1.variable_scope("ref"):
      ref = [
          v1.get_variable(
              n, initializer=tf.constant(a), use_resource=use_resource
          )
          for n, a in zip("QR", arrays)
      ]
    ids = tf.constant(IDS)
    emb = tf.nn.embedding_lookup(v, ids)
    emb_ref = tf_ref_lookup(ref[0], ref[1], ids, operation)
    opt, opt_ref = make_opt(), make_opt()
    gv = opt.compute_gradients(
        _loss(emb, upstream), var_list=None if default_var_list else mh_vars
    )
    if default_var_list:  # the seed's way: every trainable variable
      gv = [(g, x) for g, x in gv if g is not None]
    _assert_sparse_grads(gv, len(mh_vars))
    assert {id(x) for _, x in gv} == {id(x) for x in mh_vars}
    train = opt.apply_gradients(gv)
    gv_ref = opt_ref.compute_gradients(_loss(emb_ref, upstream), var_list=ref)
    train_ref = opt_ref.apply_gradients(gv_ref)
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      for step in range(STEPS):
        got, want = sess.run([emb, emb_ref])
        np.testing.assert_allclose(
            got, want, err_msg=f"emb before step {step}", **TOL
        )
        sess.run(train)
        sess.run(train_ref)
      for j, (t, r) in enumerate(zip(v.tables, ref)):
        np.testing.assert_allclose(
            sess_value(sess, t),
            sess.run(r),
            err_msg=f"table {j} after {STEPS} steps",
            **TOL,
        )
        assert not np.allclose(
            sess_value(sess, t), arrays[j]
        ), "no training happened"
      return v


@pytest.mark.parametrize("use_resource", [False, True], ids=["ref", "resource"])
@pytest.mark.parametrize("operation", OPS)
@pytest.mark.parametrize("opt_name", sorted(V1_OPTIMIZERS))
@pytest.mark.tf1
def test_v1_optimizers_session(tfmh, rng, opt_name, operation, use_resource):
  _graph_train(tfmh, rng, operation, V1_OPTIMIZERS[opt_name], use_resource)


@pytest.mark.tf1
def test_v1_default_var_list(tfmh, rng):
  _graph_train(
      tfmh, rng, "concat", V1_OPTIMIZERS["adagrad"], True, default_var_list=True
  )


PARTITIONERS = {
    "fixed3": lambda: v1.fixed_size_partitioner(3),
    "minmax": lambda: v1.min_max_variable_partitioner(
        max_partitions=3, min_slice_size=8
    ),
    "axis": lambda: v1.variable_axis_size_partitioner(max_shard_bytes=24),
}


@pytest.mark.parametrize("use_resource", [False, True], ids=["ref", "resource"])
@pytest.mark.parametrize("operation", OPS)
@pytest.mark.parametrize("pname", sorted(PARTITIONERS))
@pytest.mark.tf1
def test_partitioned_training_session(
    tfmh, rng, pname, operation, use_resource
):
  v = _graph_train(
      tfmh,
      rng,
      operation,
      V1_OPTIMIZERS["adagrad"],
      use_resource,
      partitioner=PARTITIONERS[pname](),
  )
  assert all(len(shards(t)) > 1 for t in v.tables)


@pytest.mark.parametrize("opt_name", ["adam", "momentum"])
@pytest.mark.tf1
def test_partitioned_training_other_optimizers(tfmh, rng, opt_name):
  _graph_train(
      tfmh,
      rng,
      "mul",
      V1_OPTIMIZERS[opt_name],
      True,
      partitioner=PARTITIONERS["fixed3"](),
  )


@pytest.mark.tf1
def test_session_failed_step_leaves_tables_unchanged(tfmh, rng):
  dims = DIMS["add"]
  arrays = table_arrays(rng, dims)
  with tf.Graph().as_default():
    v = tfmh.get_multihash_variable(
        "emb", dims, initializer=array_initializer(arrays)
    )
    ref = [tf.Variable(a) for a in arrays]
    ph = v1.placeholder(tf.int64, [None])
    loss = tf.reduce_sum(tf.square(tf.nn.embedding_lookup(v, ph)))
    loss_ref = tf.reduce_sum(
        tf.square(tf_ref_lookup(ref[0], ref[1], ph, "add"))
    )
    opt, opt_ref = v1.train.AdagradOptimizer(0.1), v1.train.AdagradOptimizer(
        0.1
    )
    train = opt.minimize(loss, var_list=list(v.trainable_variables))
    train_ref = opt_ref.minimize(loss_ref, var_list=ref)
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      for bad in ([0, 15], [-1], [3, 7, 2**33]):
        with pytest.raises(tf.errors.InvalidArgumentError) as e:
          sess.run(train, {ph: bad})
        assert str(bad[-1]) in str(e.value) and "15" in str(e.value)
        for t, a in zip(v.tables, arrays):
          np.testing.assert_array_equal(sess_value(sess, t), a)
      good = [0, 14, 7, 7]
      for _ in range(2):
        sess.run(train, {ph: good})
        sess.run(train_ref, {ph: good})
      for t, r in zip(v.tables, ref):
        np.testing.assert_allclose(sess_value(sess, t), sess.run(r), **TOL)


# ------------------------------------------------------------------ TF2
def _sgd_apply(lr):
  def apply(grads, variables):
    for g, var in zip(grads, variables):
      var.scatter_sub(tf.IndexedSlices(g.values * lr, g.indices, g.dense_shape))

  return apply


def _v1_adagrad():
  opt = v1.train.AdagradOptimizer(0.1)
  return lambda grads, variables: opt.apply_gradients(
      list(zip(grads, variables))
  )


def _keras(cls, **kw):
  opt = cls(**kw)
  return lambda grads, variables: opt.apply_gradients(
      list(zip(grads, variables))
  )


TF2_OPTIMIZERS = {
    "v1_adagrad": _v1_adagrad,
    "plain_sgd": lambda: _sgd_apply(0.1),
    "keras_sgd": lambda: _keras(tf.keras.optimizers.SGD, learning_rate=0.1),
    "keras_sgd_momentum": lambda: _keras(
        tf.keras.optimizers.SGD, learning_rate=0.1, momentum=0.9
    ),
    "keras_adagrad": lambda: _keras(
        tf.keras.optimizers.Adagrad, learning_rate=0.1
    ),
    "keras_adam": lambda: _keras(tf.keras.optimizers.Adam, learning_rate=0.05),
}


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("operation", OPS)
@pytest.mark.parametrize("opt_name", sorted(TF2_OPTIMIZERS))
def test_tf2_training(tfmh, rng, opt_name, operation, mode):
  dims = DIMS[operation]
  arrays = table_arrays(rng, dims)
  upstream = tf.constant(_upstream(rng, operation))
  v = tfmh.get_multihash_variable(
      "emb_tf2",
      dims,
      operation=operation,
      initializer=array_initializer(arrays),
  )
  mh_vars = list(v.trainable_variables)
  assert len(mh_vars) == 2
  ref = [tf.Variable(a) for a in arrays]
  apply_mh, apply_ref = TF2_OPTIMIZERS[opt_name](), TF2_OPTIMIZERS[opt_name]()
  ids = tf.constant(IDS)
  seen_types = []

  def step_mh():
    with tf.GradientTape() as tape:
      emb = tf.nn.embedding_lookup(v, ids)
      loss = _loss(emb, upstream)
    grads = tape.gradient(loss, mh_vars)
    seen_types.extend(type(g) for g in grads)
    apply_mh(grads, mh_vars)
    return emb

  def step_ref():
    with tf.GradientTape() as tape:
      emb = tf_ref_lookup(ref[0], ref[1], ids, operation)
      loss = _loss(emb, upstream)
    grads = [dedup_slices(g) for g in tape.gradient(loss, ref)]
    apply_ref(grads, ref)
    return emb

  if mode == "function":
    step_mh, step_ref = tf.function(step_mh), tf.function(step_ref)
  for step in range(STEPS):
    got, want = step_mh(), step_ref()
    np.testing.assert_allclose(
        got.numpy(), want.numpy(), err_msg=f"emb at step {step}", **TOL
    )
  assert seen_types and all(
      issubclass(t, tf.IndexedSlices) for t in seen_types
  ), seen_types
  for j, (t, r) in enumerate(zip(v.tables, ref)):
    np.testing.assert_allclose(
        eager_value(t), r.numpy(), err_msg=f"table {j}", **TOL
    )
    assert not np.allclose(eager_value(t), arrays[j])


def test_tf2_partitioned_training(tfmh, rng):
  dims = DIMS["concat"]
  arrays = table_arrays(rng, dims)
  upstream = tf.constant(_upstream(rng, "concat"))
  v = tfmh.get_multihash_variable(
      "emb_tf2p",
      dims,
      operation="concat",
      initializer=array_initializer(arrays),
      partitioner=v1.fixed_size_partitioner(2),
  )
  mh_vars = list(v.trainable_variables)
  assert len(mh_vars) == 4
  ref = [tf.Variable(a) for a in arrays]
  opt, opt_ref = tf.keras.optimizers.Adagrad(0.1), tf.keras.optimizers.Adagrad(
      0.1
  )
  ids = tf.constant(IDS)
  for _ in range(STEPS):
    with tf.GradientTape() as tape:
      loss = _loss(tf.nn.embedding_lookup(v, ids), upstream)
    grads = tape.gradient(loss, mh_vars)
    assert all(isinstance(g, tf.IndexedSlices) for g in grads)
    opt.apply_gradients(zip(grads, mh_vars))
    with tf.GradientTape() as tape:
      loss = _loss(tf_ref_lookup(ref[0], ref[1], ids, "concat"), upstream)
    opt_ref.apply_gradients(
        zip([dedup_slices(g) for g in tape.gradient(loss, ref)], ref)
    )
  for t, r in zip(v.tables, ref):
    np.testing.assert_allclose(eager_value(t), r.numpy(), **TOL)


def test_tf2_sparse_lookup_training(tfmh, rng):
  dims = DIMS["mul"]
  arrays = table_arrays(rng, dims)
  v = tfmh.get_multihash_variable(
      "emb_sp", dims, operation="mul", initializer=array_initializer(arrays)
  )
  ref = [tf.Variable(a) for a in arrays]
  indices = [[0, 0], [0, 1], [1, 0], [2, 0], [2, 1]]
  values = tf.constant([3, 3, 14, 0, 9], tf.int64)
  w = tf.constant([1.0, 2.0, 0.5, 1.0, 3.0])
  sp_ids = tf.SparseTensor(indices, values, [3, 2])
  sp_w = tf.SparseTensor(indices, w, [3, 2])
  rows = tf.constant([i[0] for i in indices], tf.int64)
  opt, opt_ref = v1.train.AdagradOptimizer(0.1), v1.train.AdagradOptimizer(0.1)
  for _ in range(STEPS):
    with tf.GradientTape() as tape:
      y = tf.nn.embedding_lookup_sparse(v, sp_ids, sp_w, combiner="sqrtn")
      loss = tf.reduce_sum(tf.square(y - 0.3))
    grads = tape.gradient(loss, v.trainable_variables)
    assert all(isinstance(g, tf.IndexedSlices) for g in grads)
    opt.apply_gradients(zip(grads, v.trainable_variables))
    with tf.GradientTape() as tape:
      e = tf_ref_lookup(ref[0], ref[1], values, "mul") * w[:, None]
      s = tf.math.unsorted_segment_sum(e, rows, 3)
      n = tf.sqrt(tf.math.unsorted_segment_sum(w * w, rows, 3))
      y_ref = s / n[:, None]
      loss = tf.reduce_sum(tf.square(y_ref - 0.3))
    opt_ref.apply_gradients(zip(tape.gradient(loss, ref), ref))
    np.testing.assert_allclose(y.numpy(), y_ref.numpy(), **TOL)
  for t, r in zip(v.tables, ref):
    np.testing.assert_allclose(eager_value(t), r.numpy(), **TOL)


def test_eager_tables_are_variables(tfmh):
  v = tfmh.get_multihash_variable("emb_ev", DIMS["add"])
  for t in v.tables:
    assert isinstance(t, tf.Variable)
    assert isinstance(t, resource_variable_ops.BaseResourceVariable)
    assert t.trainable
