"""embedding_lookup / embedding_lookup_sparse / safe_embedding_lookup_sparse
on a MultiHashVariable, the tf.nn patches and their pass-through for
ordinary arguments (SPEC 2, 3, 5, 7)."""

import numpy as np
import pytest
import tensorflow as tf

from mh_apiutil import (  # noqa: F401  (tfmh is a fixture)
    CAPACITY,
    DIMS,
    OPS,
    array_initializer,
    clip_rows,
    np_lookup,
    np_pool,
    out_width,
    table_arrays,
    tfmh,
)

v1 = tf.compat.v1
TOL = dict(rtol=1e-5, atol=1e-5)


def _mhv(tfmh, rng, operation, name=None, **kw):
  dims = DIMS[operation]
  arrays = table_arrays(rng, dims)
  v = tfmh.get_multihash_variable(
      name or "lk_" + operation,
      dims,
      operation=operation,
      initializer=array_initializer(arrays),
      **kw,
  )
  return v, arrays


LOOKUPS = {
    "tfmh": lambda m, p, ids, **kw: m.embedding_lookup(p, ids, **kw),
    "tf.nn": lambda m, p, ids, **kw: tf.nn.embedding_lookup(p, ids, **kw),
    "v1.nn": lambda m, p, ids, **kw: v1.nn.embedding_lookup(p, ids, **kw),
    "v1.nn_extra": lambda m, p, ids, **kw: v1.nn.embedding_lookup(
        p, ids, partition_strategy="div", validate_indices=False, **kw
    ),
}
ID_CASES = {
    "scalar": np.array(14),
    "vec": np.array([0, 14, 7, 7, 3, 5]),
    "mat": np.array([[0, 1, 2], [12, 13, 14]]),
    "rank3": np.arange(12).reshape(2, 3, 2) % CAPACITY,
}


# ------------------------------------------------------------------- dense
@pytest.mark.parametrize("fn", sorted(LOOKUPS))
@pytest.mark.parametrize("operation", OPS)
def test_dense_lookup_eager(tfmh, rng, fn, operation):
  v, arrays = _mhv(tfmh, rng, operation)
  for case, ids in ID_CASES.items():
    for id_dtype in (tf.int32, tf.int64):
      y = LOOKUPS[fn](tfmh, v, tf.constant(ids, id_dtype))
      assert y.shape.as_list() == list(ids.shape) + [out_width(operation)], case
      np.testing.assert_allclose(
          y.numpy(),
          np_lookup(arrays, ids, operation),
          err_msg=f"{case} {id_dtype.name}",
          **TOL,
      )


@pytest.mark.parametrize("operation", OPS)
def test_dense_lookup_python_list_ids(tfmh, rng, operation):
  v, arrays = _mhv(tfmh, rng, operation)
  y = tf.nn.embedding_lookup(v, [0, 1, 14])
  np.testing.assert_allclose(
      y.numpy(), np_lookup(arrays, [0, 1, 14], operation), **TOL
  )


@pytest.mark.parametrize("operation", OPS)
def test_dense_lookup_tf_function(tfmh, rng, operation):
  v, arrays = _mhv(tfmh, rng, operation)

  @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int64)])
  def f(ids):
    return tf.nn.embedding_lookup(v, ids)

  for ids in (ID_CASES["mat"], np.array([[5, 6]])):
    np.testing.assert_allclose(
        f(tf.constant(ids, tf.int64)).numpy(),
        np_lookup(arrays, ids, operation),
        **TOL,
    )


@pytest.mark.parametrize("fn", ["tf.nn", "v1.nn_extra"])
@pytest.mark.parametrize("operation", OPS)
@pytest.mark.tf1
def test_dense_lookup_graph(tfmh, rng, fn, operation):
  dims = DIMS[operation]
  arrays = table_arrays(rng, dims)
  with tf.Graph().as_default():
    v = tfmh.get_multihash_variable(
        "emb", dims, operation=operation, initializer=array_initializer(arrays)
    )
    ph = v1.placeholder(tf.int64, [None])
    y = LOOKUPS[fn](tfmh, v, ph)
    assert y.shape.as_list() == [None, out_width(operation)]
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      for ids in ([0, 14, 7, 7], [3], []):
        got = sess.run(y, {ph: ids})
        assert got.shape == (len(ids), out_width(operation))
        np.testing.assert_allclose(
            got, np_lookup(arrays, np.array(ids, np.int64), operation), **TOL
        )


@pytest.mark.parametrize("operation", OPS)
def test_empty_ids(tfmh, rng, operation):
  v, _ = _mhv(tfmh, rng, operation)
  y = tfmh.embedding_lookup(v, tf.zeros([0], tf.int64))
  assert y.shape.as_list() == [0, out_width(operation)]
  y = tf.nn.embedding_lookup(v, tf.zeros([2, 0], tf.int32))
  assert y.shape.as_list() == [2, 0, out_width(operation)]


@pytest.mark.parametrize("fn", ["tfmh", "tf.nn", "v1.nn"])
@pytest.mark.parametrize("operation", OPS)
def test_max_norm(tfmh, rng, fn, operation):
  v, arrays = _mhv(tfmh, rng, operation)
  ids = np.array([0, 14, 7, 3])
  raw = np_lookup(arrays, ids, operation)
  max_norm = float(np.median(np.linalg.norm(raw, axis=-1)))
  y = LOOKUPS[fn](tfmh, v, tf.constant(ids), max_norm=max_norm).numpy()
  np.testing.assert_allclose(y, clip_rows(raw, max_norm), **TOL)
  assert np.all(np.linalg.norm(y, axis=-1) <= max_norm * (1 + 1e-5))


# ------------------------------------------------------------------ sparse
SPARSE = dict(
    indices=[[0, 0], [0, 1], [0, 2], [2, 0], [3, 0], [3, 3]],
    values=[0, 14, 0, 7, 3, 12],
    weights=[1.0, 2.0, 0.5, 3.0, 1.5, 0.25],
    dense_shape=[5, 4],  # rows 1 and 4 (trailing) are empty
)


def _sparse(values_dtype=tf.int64, use_weights=True):
  sp_ids = tf.SparseTensor(
      SPARSE["indices"],
      tf.constant(SPARSE["values"], values_dtype),
      SPARSE["dense_shape"],
  )
  sp_w = None
  if use_weights:
    sp_w = tf.SparseTensor(
        SPARSE["indices"],
        tf.constant(SPARSE["weights"], tf.float32),
        SPARSE["dense_shape"],
    )
  return sp_ids, sp_w


SPARSE_FNS = {
    "tfmh": lambda m, p, i, w, c: m.embedding_lookup_sparse(
        p, i, w, combiner=c
    ),
    "tf.nn": lambda m, p, i, w, c: tf.nn.embedding_lookup_sparse(
        p, i, w, combiner=c
    ),
    "v1.nn": lambda m, p, i, w, c: v1.nn.embedding_lookup_sparse(
        p, i, w, combiner=c
    ),
    "tfmh_safe": lambda m, p, i, w, c: m.safe_embedding_lookup_sparse(
        p, i, w, combiner=c
    ),
    "tf.nn_safe": lambda m, p, i, w, c: tf.nn.safe_embedding_lookup_sparse(
        p, i, w, combiner=c
    ),
    "v1.nn_safe": lambda m, p, i, w, c: v1.nn.safe_embedding_lookup_sparse(
        p, i, w, combiner=c
    ),
}


@pytest.mark.parametrize("fn", sorted(SPARSE_FNS))
@pytest.mark.parametrize("combiner", ["sum", "mean", "sqrtn"])
@pytest.mark.parametrize(
    "use_weights", [True, False], ids=["weights", "noweights"]
)
@pytest.mark.parametrize("operation", OPS)
def test_sparse_lookup_eager(tfmh, rng, fn, combiner, use_weights, operation):
  v, arrays = _mhv(tfmh, rng, operation)
  sp_ids, sp_w = _sparse(
      tf.int64 if operation != "mul" else tf.int32, use_weights
  )
  y = SPARSE_FNS[fn](tfmh, v, sp_ids, sp_w, combiner)
  want = np_pool(
      arrays,
      operation,
      SPARSE["indices"],
      SPARSE["values"],
      SPARSE["weights"] if use_weights else None,
      SPARSE["dense_shape"][0],
      combiner,
  )
  assert y.shape.as_list() == [SPARSE["dense_shape"][0], out_width(operation)]
  np.testing.assert_allclose(y.numpy(), want, **TOL)


@pytest.mark.parametrize("fn", ["tf.nn", "tf.nn_safe"])
@pytest.mark.parametrize("operation", ["mul", "concat"])
@pytest.mark.tf1
def test_sparse_lookup_graph(tfmh, rng, fn, operation):
  dims = DIMS[operation]
  arrays = table_arrays(rng, dims)
  with tf.Graph().as_default():
    v = tfmh.get_multihash_variable(
        "emb", dims, operation=operation, initializer=array_initializer(arrays)
    )
    sp_ids, sp_w = _sparse()
    y = SPARSE_FNS[fn](tfmh, v, sp_ids, sp_w, "sqrtn")
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      got = sess.run(y)
  want = np_pool(
      arrays,
      operation,
      SPARSE["indices"],
      SPARSE["values"],
      SPARSE["weights"],
      SPARSE["dense_shape"][0],
      "sqrtn",
  )
  np.testing.assert_allclose(got, want, **TOL)


def test_sparse_default_combiner_is_mean(tfmh, rng):
  v, arrays = _mhv(tfmh, rng, "add")
  sp_ids, sp_w = _sparse()
  want = np_pool(
      arrays,
      "add",
      SPARSE["indices"],
      SPARSE["values"],
      SPARSE["weights"],
      SPARSE["dense_shape"][0],
      "mean",
  )
  for y in (
      tfmh.embedding_lookup_sparse(v, sp_ids, sp_w),
      tf.nn.embedding_lookup_sparse(v, sp_ids, sp_w),
      tfmh.safe_embedding_lookup_sparse(v, sp_ids, sp_w),
      tf.nn.safe_embedding_lookup_sparse(v, sp_ids, sp_w),
  ):
    np.testing.assert_allclose(y.numpy(), want, **TOL)


@pytest.mark.parametrize("fn", ["tfmh", "tf.nn", "v1.nn"])
def test_safe_default_id(tfmh, rng, fn):
  v, arrays = _mhv(tfmh, rng, "concat")
  sp_ids, sp_w = _sparse()
  f = {
      "tfmh": tfmh.safe_embedding_lookup_sparse,
      "tf.nn": tf.nn.safe_embedding_lookup_sparse,
      "v1.nn": v1.nn.safe_embedding_lookup_sparse,
  }[fn]
  y = f(v, sp_ids, sp_w, combiner="sum", default_id=9).numpy()
  want = np_pool(
      arrays,
      "concat",
      SPARSE["indices"],
      SPARSE["values"],
      SPARSE["weights"],
      SPARSE["dense_shape"][0],
      "sum",
  )
  default = np_lookup(arrays, np.array([9]), "concat")[0]
  want[1] = default
  want[4] = default
  np.testing.assert_allclose(y, want, **TOL)


@pytest.mark.parametrize("combiner", ["sum", "mean"])
def test_safe_prunes_invalid_ids_and_weights(tfmh, rng, combiner):
  """As TensorFlow: ids < 0 are dropped, not errors; weights <= 0 are
  dropped only when the combiner is not "sum" (under "sum" row 2, whose
  only id has weight 0, is not empty: zeros, not default_id's row)."""
  v, arrays = _mhv(tfmh, rng, "add")
  sp_ids = tf.SparseTensor(
      [[0, 0], [0, 1], [1, 0], [2, 0]],
      tf.constant([4, -1, 6, 8], tf.int64),
      [3, 2],
  )
  sp_w = tf.SparseTensor(
      [[0, 0], [0, 1], [1, 0], [2, 0]],
      tf.constant([2.0, 1.0, 1.0, 0.0]),
      [3, 2],
  )
  y = tf.nn.safe_embedding_lookup_sparse(
      v, sp_ids, sp_w, combiner=combiner, default_id=9
  ).numpy()
  want = np.zeros((3, 4))
  emb4 = np_lookup(arrays, np.array([4]), "add")[0]
  want[0] = 2.0 * emb4 if combiner == "sum" else emb4
  want[1] = np_lookup(arrays, np.array([6]), "add")[0]
  if combiner != "sum":
    want[2] = np_lookup(arrays, np.array([9]), "add")[0]
  np.testing.assert_allclose(y, want, **TOL)


@pytest.mark.parametrize("fn", ["tfmh", "tf.nn"])
def test_safe_higher_rank(tfmh, rng, fn):
  v, arrays = _mhv(tfmh, rng, "mul")
  indices = [[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 1, 2]]
  values = [1, 13, 5, 14]
  sp_ids = tf.SparseTensor(indices, tf.constant(values, tf.int64), [2, 2, 3])
  f = (
      tfmh.safe_embedding_lookup_sparse
      if fn == "tfmh"
      else tf.nn.safe_embedding_lookup_sparse
  )
  y = f(v, sp_ids, None, combiner="mean").numpy()
  assert y.shape == (2, 2, 4)
  emb = np_lookup(arrays, np.array(values), "mul")
  want = np.zeros((2, 2, 4))
  want[0, 0] = (emb[0] + emb[1]) / 2
  want[0, 1] = emb[2]
  want[1, 1] = emb[3]
  np.testing.assert_allclose(y, want, **TOL)


def test_sparse_max_norm(tfmh, rng):
  v, arrays = _mhv(tfmh, rng, "add")
  sp_ids, sp_w = _sparse()
  raw = np_lookup(arrays, np.array(SPARSE["values"]), "add")
  max_norm = float(np.median(np.linalg.norm(raw, axis=-1)))
  clipped = clip_rows(raw, max_norm)
  y = tf.nn.embedding_lookup_sparse(
      v, sp_ids, sp_w, combiner="sum", max_norm=max_norm
  )
  want = np.zeros((5, 4))
  for (b, _), w, e in zip(SPARSE["indices"], SPARSE["weights"], clipped):
    want[b] += w * e
  np.testing.assert_allclose(y.numpy(), want, **TOL)


def test_sparse_gradients_are_indexed_slices(tfmh, rng):
  v, arrays = _mhv(tfmh, rng, "concat")
  sp_ids, sp_w = _sparse()
  with tf.GradientTape() as tape:
    y = tf.nn.safe_embedding_lookup_sparse(v, sp_ids, sp_w, combiner="mean")
    loss = tf.reduce_sum(y)
  grads = tape.gradient(loss, v.trainable_variables)
  assert all(isinstance(g, tf.IndexedSlices) for g in grads), [
      type(g) for g in grads
  ]


# ------------------------------------------------ ordinary args unchanged
def test_passthrough_dense_plain_variable():
  import tensorflow_multihash  # noqa: F401

  p = np.arange(24, dtype=np.float32).reshape(6, 4)
  var = tf.Variable(p)
  ids = np.array([[5, 0], [2, 2]])
  for f in (tf.nn.embedding_lookup, v1.nn.embedding_lookup):
    np.testing.assert_array_equal(f(var, ids).numpy(), p[ids])
    np.testing.assert_array_equal(f(tf.constant(p), ids).numpy(), p[ids])
  y = tf.nn.embedding_lookup(var, ids, max_norm=1.0).numpy()
  np.testing.assert_allclose(y, clip_rows(p[ids], 1.0), rtol=1e-6)


@pytest.mark.parametrize("strategy", ["mod", "div"])
def test_passthrough_list_of_variables(strategy):
  import tensorflow_multihash  # noqa: F401

  p = np.arange(14, dtype=np.float32).reshape(7, 2)
  if strategy == "div":  # contiguous blocks 3, 2, 2
    parts = [p[0:3], p[3:5], p[5:7]]
  else:  # id % 3
    parts = [p[0::3], p[1::3], p[2::3]]
  vs = [tf.Variable(x) for x in parts]
  ids = np.array([0, 6, 3, 4, 1])
  y = v1.nn.embedding_lookup(vs, ids, partition_strategy=strategy)
  np.testing.assert_array_equal(y.numpy(), p[ids])
  if strategy == "div":  # TF2's embedding_lookup always uses "div"
    np.testing.assert_array_equal(
        tf.nn.embedding_lookup(vs, ids).numpy(), p[ids]
    )


@pytest.mark.tf1
def test_passthrough_graph_ref_variable():
  import tensorflow_multihash  # noqa: F401

  p = np.arange(12, dtype=np.float32).reshape(4, 3)
  with tf.Graph().as_default():
    var = v1.get_variable("plain", initializer=p, use_resource=False)
    y = v1.nn.embedding_lookup(
        var, [3, 1], partition_strategy="div", validate_indices=True
    )
    loss = tf.reduce_sum(y)
    g = tf.gradients(loss, var)[0]
    assert isinstance(g, tf.IndexedSlices)
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      np.testing.assert_array_equal(sess.run(y), p[[3, 1]])


def test_passthrough_sparse_plain_variable():
  """Stock TF 2.21 behaviour, unchanged: embedding_lookup_sparse has
  max(row)+1 rows, safe_embedding_lookup_sparse has dense_shape[0] rows."""
  import tensorflow_multihash  # noqa: F401

  p = np.arange(12, dtype=np.float32).reshape(6, 2)
  var = tf.Variable(p)
  sp = tf.SparseTensor(
      [[0, 0], [0, 1], [2, 0]], tf.constant([1, 2, 3], tf.int64), [4, 3]
  )
  want3 = np.array([[6, 8], [0, 0], [6, 7]], np.float32)
  for f in (tf.nn.embedding_lookup_sparse, v1.nn.embedding_lookup_sparse):
    np.testing.assert_array_equal(
        f(var, sp, None, combiner="sum").numpy(), want3
    )
  for f in (
      tf.nn.safe_embedding_lookup_sparse,
      v1.nn.safe_embedding_lookup_sparse,
  ):
    np.testing.assert_array_equal(
        f(var, sp, None, combiner="sum").numpy(),
        np.concatenate([want3, [[0, 0]]]),
    )
  y = v1.nn.safe_embedding_lookup_sparse(
      [var], sp, None, combiner="sum", default_id=5
  )
  np.testing.assert_array_equal(
      y.numpy(), np.concatenate([want3[:1], [[10, 11]], want3[2:], [[10, 11]]])
  )


def test_passthrough_errors_unchanged():
  import tensorflow_multihash  # noqa: F401

  var = tf.Variable(np.zeros((3, 2), np.float32))
  with pytest.raises(tf.errors.InvalidArgumentError):
    tf.nn.embedding_lookup(var, [7])


# ------------------------------------------------------------------ errors
BAD_ID_DTYPES = [
    ("float", lambda: tf.constant([1.0, 2.0])),
    ("string", lambda: tf.constant(["1", "2"])),
    ("pylist_float", lambda: [1.5, 2.0]),
    ("np_float", lambda: np.array([1.0, 2.0])),
]


@pytest.mark.parametrize(
    "case,make", BAD_ID_DTYPES, ids=[c[0] for c in BAD_ID_DTYPES]
)
@pytest.mark.parametrize("fn", ["tfmh", "tf.nn", "v1.nn"])
def test_bad_id_dtype(tfmh, rng, case, make, fn):
  v, _ = _mhv(tfmh, rng, "add")
  with pytest.raises((TypeError, ValueError)):
    LOOKUPS[fn](tfmh, v, make())


@pytest.mark.parametrize("fn", ["tfmh", "tf.nn"])
def test_bad_sparse_id_dtype(tfmh, rng, fn):
  v, _ = _mhv(tfmh, rng, "add")
  sp = tf.SparseTensor([[0, 0]], tf.constant(["3"]), [1, 1])
  f = (
      tfmh.embedding_lookup_sparse
      if fn == "tfmh"
      else tf.nn.embedding_lookup_sparse
  )
  with pytest.raises((TypeError, ValueError)):
    f(v, sp, None, combiner="sum")


@pytest.mark.tf1
def test_bad_id_dtype_graph_before_kernel(tfmh):
  with tf.Graph().as_default():
    v = tfmh.get_multihash_variable("emb", DIMS["add"])
    ph = v1.placeholder(tf.float32, [None])
    with pytest.raises((TypeError, ValueError)):
      tf.nn.embedding_lookup(v, ph)


def _check_range_message(err, bad):
  msg = str(err)
  assert str(bad) in msg, f"bad id {bad} not in message: {msg}"
  assert str(CAPACITY) in msg, f"capacity {CAPACITY} not in message: {msg}"


@pytest.mark.parametrize("bad", [-1, 15, 99])
@pytest.mark.parametrize("fn", ["tfmh", "tf.nn"])
def test_out_of_range_eager(tfmh, rng, bad, fn):
  v, arrays = _mhv(tfmh, rng, "concat")
  with pytest.raises(tf.errors.InvalidArgumentError) as e:
    LOOKUPS[fn](tfmh, v, tf.constant([0, bad, 3], tf.int64))
  _check_range_message(e.value, bad)
  np.testing.assert_allclose(
      LOOKUPS[fn](tfmh, v, [3]).numpy(), np_lookup(arrays, [3], "concat"), **TOL
  )


@pytest.mark.parametrize("bad", [-1, 15])
def test_out_of_range_sparse_eager(tfmh, rng, bad):
  v, _ = _mhv(tfmh, rng, "add")
  sp = tf.SparseTensor(
      [[0, 0], [1, 0]], tf.constant([2, bad], tf.int64), [2, 1]
  )
  with pytest.raises(tf.errors.InvalidArgumentError) as e:
    tf.nn.embedding_lookup_sparse(v, sp, None, combiner="sum")
  _check_range_message(e.value, bad)


@pytest.mark.parametrize("bad", [-1, 15])
def test_out_of_range_tf_function(tfmh, rng, bad):
  v, arrays = _mhv(tfmh, rng, "mul")

  @tf.function
  def f(ids):
    return tf.nn.embedding_lookup(v, ids)

  with pytest.raises(tf.errors.InvalidArgumentError) as e:
    f(tf.constant([bad], tf.int32))
  _check_range_message(e.value, bad)
  np.testing.assert_allclose(
      f(tf.constant([14], tf.int32)).numpy(),
      np_lookup(arrays, [14], "mul"),
      **TOL,
  )


@pytest.mark.parametrize("bad", [-1, 15, 2**40])
@pytest.mark.tf1
def test_out_of_range_session(tfmh, rng, bad):
  dims = DIMS["add"]
  arrays = table_arrays(rng, dims)
  with tf.Graph().as_default():
    v = tfmh.get_multihash_variable(
        "emb", dims, initializer=array_initializer(arrays)
    )
    ph = v1.placeholder(tf.int64, [None])
    y = tf.nn.embedding_lookup(v, ph)
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      with pytest.raises(tf.errors.InvalidArgumentError) as e:
        sess.run(y, {ph: [1, bad]})
      _check_range_message(e.value, bad)
      np.testing.assert_allclose(
          sess.run(y, {ph: [1, 14]}), np_lookup(arrays, [1, 14], "add"), **TOL
      )


# ------------------------------------------------------- calling conventions
def test_keyword_and_positional_arguments(tfmh, rng):
  v, arrays = _mhv(tfmh, rng, "concat")
  ids = np.array([4, 10])
  want = np_lookup(arrays, ids, "concat")
  for y in (
      tf.nn.embedding_lookup(params=v, ids=ids),
      v1.nn.embedding_lookup(params=v, ids=ids, partition_strategy="mod"),
      v1.nn.embedding_lookup(v, ids, "div", "lk", True, None),
  ):
    np.testing.assert_allclose(y.numpy(), want, **TOL)
  sp_ids, sp_w = _sparse()
  want_sp = np_pool(
      arrays,
      "concat",
      SPARSE["indices"],
      SPARSE["values"],
      SPARSE["weights"],
      SPARSE["dense_shape"][0],
      "sum",
  )
  for y in (
      tf.nn.embedding_lookup_sparse(
          params=v, sp_ids=sp_ids, sp_weights=sp_w, combiner="sum"
      ),
      v1.nn.embedding_lookup_sparse(v, sp_ids, sp_w, "mod", None, "sum"),
      tf.nn.safe_embedding_lookup_sparse(
          embedding_weights=v,
          sparse_ids=sp_ids,
          sparse_weights=sp_w,
          combiner="sum",
      ),
  ):
    np.testing.assert_allclose(y.numpy(), want_sp, **TOL)


def test_bad_combiner(tfmh, rng):
  v, _ = _mhv(tfmh, rng, "add")
  sp_ids, sp_w = _sparse()
  with pytest.raises(ValueError):
    tf.nn.embedding_lookup_sparse(v, sp_ids, sp_w, combiner="max")


def test_multihash_variable_as_tf_function_argument(tfmh, rng):
  v, arrays = _mhv(tfmh, rng, "mul")
  w, arrays_w = _mhv(tfmh, rng, "mul", name="lk_mul_other")

  @tf.function
  def f(params, ids):
    return tf.nn.embedding_lookup(params, ids)

  ids = tf.constant([1, 14], tf.int64)
  np.testing.assert_allclose(
      f(v, ids).numpy(), np_lookup(arrays, [1, 14], "mul"), **TOL
  )
  np.testing.assert_allclose(
      f(w, ids).numpy(), np_lookup(arrays_w, [1, 14], "mul"), **TOL
  )


@pytest.mark.parametrize("safe", [False, True])
@pytest.mark.tf1
def test_sparse_placeholder_graph(tfmh, rng, safe):
  dims = DIMS["add"]
  arrays = table_arrays(rng, dims)
  with tf.Graph().as_default():
    v = tfmh.get_multihash_variable(
        "emb", dims, initializer=array_initializer(arrays)
    )
    sp = v1.sparse_placeholder(tf.int64)
    if safe:
      y = tf.nn.safe_embedding_lookup_sparse(
          v, sp, None, combiner="mean", default_id=2
      )
    else:
      y = tf.nn.embedding_lookup_sparse(v, sp, None, combiner="mean")
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      feed = v1.SparseTensorValue([[0, 0], [0, 1], [2, 0]], [3, 11, 14], [3, 2])
      got = sess.run(y, {sp: feed})
  want = np_pool(arrays, "add", feed.indices, feed.values, None, 3, "mean")
  if safe:
    want[1] = np_lookup(arrays, [2], "add")[0]
  np.testing.assert_allclose(got, want, **TOL)


@pytest.mark.parametrize("fn", ["tf.nn", "tf.nn_safe", "tfmh", "tfmh_safe"])
def test_sparse_all_rows_empty(tfmh, rng, fn):
  v, _ = _mhv(tfmh, rng, "concat")
  sp_ids = tf.SparseTensor(
      tf.zeros([0, 2], tf.int64), tf.zeros([0], tf.int64), [3, 4]
  )
  y = SPARSE_FNS[fn](tfmh, v, sp_ids, None, "mean")
  assert y.shape.as_list() == [3, out_width("concat")]
  np.testing.assert_array_equal(y.numpy(), np.zeros((3, out_width("concat"))))


def test_safe_all_rows_empty_default_id(tfmh, rng):
  v, arrays = _mhv(tfmh, rng, "add")
  sp_ids = tf.SparseTensor(
      tf.zeros([0, 2], tf.int64), tf.zeros([0], tf.int64), [2, 4]
  )
  y = tf.nn.safe_embedding_lookup_sparse(v, sp_ids, None, default_id=13)
  np.testing.assert_allclose(
      y.numpy(), np.repeat(np_lookup(arrays, [13], "add"), 2, 0), **TOL
  )
