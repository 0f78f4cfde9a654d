"""Issue #20, point 2: XLA. Inside `tf.function(jit_compile=True)` (and so
Keras's `jit_compile=True`) the lookup is computed from stock ops, with the
numbers of the fused op (forward and gradient) and of the NumPy reference;
outside XLA the fused op runs as before. Keras `fit` with
`jit_compile=True` trains to the weights of `jit_compile=False`."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tensorflow_multihash as tfmh
from tensorflow_multihash import multihash_ops
from tensorflow_multihash import xla_lookup
from mh_testutil import GRAD_TOL, np_grads, np_lookup

MHE = tfmh.keras.MultiHashEmbedding
# (strategy, rows): unequal rows so that a quotient/remainder mix-up shows.
# Every dtype on one layout, the others with float32 and one half type (each
# case compiles its own XLA program, about a second on the CPU).
CASES = [
    ("Q-R", [5, 3], d)
    for d in (tf.float32, tf.float64, tf.float16, tf.bfloat16)
] + [
    ("Q-R", [3, 7], tf.float32),
    ("generalized-Q-R", [2, 3, 4], tf.float32),
    ("generalized-Q-R", [2, 3, 4], tf.float16),
    ("CRT", [3, 4, 5], tf.float32),
    ("CRT", [3, 4, 5], tf.bfloat16),
]


def _widths(operation, k):
  return [2 + j for j in range(k)] if operation == "concat" else [3] * k


def _tables(rng, rows, widths, dtype):
  return [
      tf.Variable(tf.cast(rng.uniform(-1, 1, (r, w)), dtype))
      for r, w in zip(rows, widths)
  ]


def _graph_op_types(fn, *args):
  return {
      op.type for op in fn.get_concrete_function(*args).graph.get_operations()
  }


def _lookup_and_grads(tables, ids, upstream, kinds, **kw):
  """Forward and dense gradients; `kinds` gets the gradients' types."""
  with tf.GradientTape() as tape:
    out = multihash_ops.multihash_lookup(tables, ids, **kw)
    loss = tf.reduce_sum(tf.cast(out, tf.float32) * upstream)
  grads = tape.gradient(loss, tables)
  kinds[:] = [type(g).__name__ for g in grads]
  return out, [tf.convert_to_tensor(g) for g in grads]


def _as_f64(x):
  return tf.cast(x, tf.float64).numpy()


@pytest.mark.parametrize("operation", ["add", "mul", "concat"])
@pytest.mark.parametrize("strategy, rows, dtype", CASES)
def test_jit_lookup_matches_fused_op_and_reference(
    strategy, rows, operation, dtype, rng
):
  widths = _widths(operation, len(rows))
  tables = _tables(rng, rows, widths, dtype)
  capacity = int(np.prod(rows))
  ids = tf.constant(
      np.concatenate(
          [[0, capacity - 1], rng.integers(0, capacity, 30), [1, 1, 1]]
      ).reshape(5, 7),
      tf.int64,
  )
  out_width = sum(widths) if operation == "concat" else widths[0]
  upstream = tf.constant(rng.uniform(-1, 1, (5, 7, out_width)), tf.float32)
  kw = dict(operation=operation, complementary_strategy=strategy)

  kinds_fused, kinds_xla = [], []
  fused = _lookup_and_grads(tables, ids, upstream, kinds_fused, **kw)
  jit = tf.function(
      lambda i, u: _lookup_and_grads(tables, i, u, kinds_xla, **kw),
      jit_compile=True,
  )
  xla = jit(ids, upstream)

  # The same numbers as the fused op: the combine runs in the same order,
  # half types in float32 rounded once.
  np.testing.assert_array_equal(_as_f64(xla[0]), _as_f64(fused[0]))
  rtol, atol = GRAD_TOL[dtype]
  for g_xla, g_fused in zip(xla[1], fused[1]):
    np.testing.assert_allclose(
        _as_f64(g_xla), _as_f64(g_fused), rtol=rtol, atol=atol
    )
  # ... and of the NumPy reference, from the table values as stored.
  arrays = [_as_f64(t) for t in tables]
  ref_strategy = "Q-R" if strategy == "Q-R" else strategy
  want = np_lookup(arrays, ids.numpy(), rows, ref_strategy, operation)
  tol = {
      tf.float32: 1e-6,
      tf.float64: 1e-12,
      tf.float16: 2e-3,
      tf.bfloat16: 1.6e-2,
  }[dtype]
  np.testing.assert_allclose(_as_f64(xla[0]), want, rtol=tol, atol=tol)
  want_grads = np_grads(
      arrays, ids.numpy(), rows, ref_strategy, operation, upstream.numpy()
  )
  for g, w in zip(xla[1], want_grads):
    np.testing.assert_allclose(_as_f64(g), w, rtol=rtol * 4, atol=atol * 4)
  # Gradients are sparse (IndexedSlices) on both paths.
  assert kinds_xla == kinds_fused == ["IndexedSlices"] * len(rows)
  # The XLA graph uses stock ops only, and compiles.
  assert "MultiHashLookup" not in _graph_op_types(jit, ids, upstream)
  assert "MultiHashLookup" in _graph_op_types(
      tf.function(lambda i, u: _lookup_and_grads(tables, i, u, [], **kw)),
      ids,
      upstream,
  )
  assert "gather" in jit.experimental_get_compiler_ir(ids, upstream)(
      stage="hlo"
  )


def test_the_fused_op_itself_does_not_compile(rng):
  """Why the stock path exists: XLA has no kernel for the custom op."""
  tables = _tables(rng, [3, 5], [2, 2], tf.float32)
  raw = tf.function(
      lambda ids: multihash_ops._gen.multi_hash_lookup(  # pylint: disable=protected-access
          tables=[t.handle for t in tables],
          ids=ids,
          T=tf.float32,
          operation="add",
          complementary_strategy="Q-R",
          table_rows=[3, 5],
          table_widths=[2, 2],
          num_shards=[1, 1],
      ),
      jit_compile=True,
  )
  with pytest.raises(
      (
          tf.errors.InvalidArgumentError,
          tf.errors.UnimplementedError,
          tf.errors.NotFoundError,
      ),
      match="MultiHashLookup",
  ):
    raw(tf.constant([1, 2], tf.int64))


@pytest.mark.parametrize("lookup", ["tfmh", "tf.nn"])
def test_jit_embedding_lookup_on_a_variable(lookup, rng):
  var = tfmh.get_multihash_variable(
      "xla_emb_" + lookup, dims=[[4, 3], [6, 3]], operation="mul"
  )
  for t in var.tables:
    t.assign(rng.uniform(-1, 1, t.shape))
  fn = tfmh.embedding_lookup if lookup == "tfmh" else tf.nn.embedding_lookup
  ids = tf.constant([[0, 23, 7], [7, 6, 12]], tf.int32)
  upstream = tf.constant(rng.uniform(-1, 1, (2, 3, 3)), tf.float32)

  def step(i, u):
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(fn(var, i) * u)
    return fn(var, i), [
        tf.convert_to_tensor(g) for g in tape.gradient(loss, var.tables)
    ]

  fused, xla = step(ids, upstream), tf.function(step, jit_compile=True)(
      ids, upstream
  )
  np.testing.assert_array_equal(xla[0].numpy(), fused[0].numpy())
  for a, b in zip(xla[1], fused[1]):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)
  arrays = [t.numpy() for t in var.tables]
  np.testing.assert_allclose(
      xla[0].numpy(),
      np_lookup(arrays, ids.numpy(), [4, 6], "Q-R", "mul"),
      rtol=1e-6,
      atol=1e-6,
  )


def test_jit_sharded_tables(rng):
  """A table given as row shards (contiguous blocks), under XLA."""
  q = rng.uniform(-1, 1, (7, 2)).astype(np.float32)
  r = rng.uniform(-1, 1, (4, 2)).astype(np.float32)
  shards = [tf.Variable(q[:3]), tf.Variable(q[3:5]), tf.Variable(q[5:])]
  r_var = tf.Variable(r)
  tables = [shards, r_var]
  ids = tf.constant([0, 27, 12, 11, 12, 20, 8], tf.int64)
  upstream = tf.constant(rng.uniform(-1, 1, (7, 2)), tf.float32)

  def step(i, u):
    with tf.GradientTape() as tape:
      out = multihash_ops.multihash_lookup(tables, i, operation="add")
      loss = tf.reduce_sum(out * u)
    grads = tape.gradient(loss, shards + [r_var])
    return out, [tf.convert_to_tensor(g) for g in grads]

  fused, xla = step(ids, upstream), tf.function(step, jit_compile=True)(
      ids, upstream
  )
  np.testing.assert_array_equal(xla[0].numpy(), fused[0].numpy())
  np.testing.assert_allclose(
      xla[0].numpy(),
      np_lookup([q, r], ids.numpy(), [7, 4], "Q-R", "add"),
      rtol=1e-6,
  )
  for a, b in zip(xla[1], fused[1]):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("id_dtype", [tf.int32, tf.int64])
def test_jit_wrap(id_dtype, rng):
  tables = _tables(rng, [3, 5], [2, 2], tf.float32)
  ids = tf.constant([-1, -16, 15, 29, 30, 2**31 - 1, 7], id_dtype)
  kw = dict(operation="mul", out_of_range="wrap")
  fused = multihash_ops.multihash_lookup(tables, ids, **kw)
  xla = tf.function(
      lambda i: multihash_ops.multihash_lookup(tables, i, **kw),
      jit_compile=True,
  )(ids)
  np.testing.assert_array_equal(xla.numpy(), fused.numpy())
  want = np_lookup(
      [t.numpy() for t in tables], np.asarray(ids) % 15, [3, 5], "Q-R", "mul"
  )
  np.testing.assert_allclose(xla.numpy(), want, rtol=1e-6)


def test_jit_deeprec_mapping(rng):
  tables = _tables(rng, [4, 3], [2, 2], tf.float32)
  ids = tf.constant([0, 15, 5, 9, 4], tf.int64)  # capacity rows_Q ** 2 = 16
  kw = dict(operation="add", deeprec_mapping=True)
  fused = multihash_ops.multihash_lookup(tables, ids, **kw)
  xla = tf.function(
      lambda i: multihash_ops.multihash_lookup(tables, i, **kw),
      jit_compile=True,
  )(ids)
  np.testing.assert_array_equal(xla.numpy(), fused.numpy())
  want = np_lookup(
      [t.numpy() for t in tables], ids.numpy(), [4, 3], "deeprec", "add"
  )
  np.testing.assert_allclose(xla.numpy(), want, rtol=1e-6)
  bad = tf.function(
      lambda i: multihash_ops.multihash_lookup(tables, i, **kw),
      jit_compile=True,
  )(tf.constant([16, 3], tf.int64)).numpy()
  assert np.all(np.isnan(bad[0])) and not np.any(np.isnan(bad[1]))


def test_jit_out_of_range_id_is_nan_not_clamped(rng):
  """XLA cannot fail at run time (it drops assertions and its gather clamps
  indices): an out-of-range id's embedding is NaN, the others are right,
  and no table row gets a gradient from the bad id."""
  tables = _tables(rng, [3, 5], [2, 2], tf.float32)
  ids = tf.constant([3, 15, -1, 14, 2**40], tf.int64)
  upstream = tf.ones((5, 2))

  def step(i, u):
    with tf.GradientTape() as tape:
      out = multihash_ops.multihash_lookup(tables, i, operation="mul")
      loss = tf.reduce_sum(tf.where(tf.math.is_nan(out), 0.0, out) * u)
    return out, [tf.convert_to_tensor(g) for g in tape.gradient(loss, tables)]

  out, grads = tf.function(step, jit_compile=True)(ids, upstream)
  out = out.numpy()
  assert np.all(np.isnan(out[[1, 2, 4]]))
  arrays = [t.numpy() for t in tables]
  np.testing.assert_allclose(
      out[[0, 3]], np_lookup(arrays, [3, 14], [3, 5], "Q-R", "mul"), rtol=1e-6
  )
  want = np_grads(arrays, [3, 14], [3, 5], "Q-R", "mul", np.ones((2, 2)))
  for g, w in zip(grads, want):
    np.testing.assert_allclose(g.numpy(), w, rtol=1e-6, atol=1e-7)
  # Outside XLA the same ids are an error, as always.
  with pytest.raises(tf.errors.InvalidArgumentError):
    multihash_ops.multihash_lookup(tables, ids, operation="mul")


def test_in_xla_context():
  seen = {}

  def probe(key):
    seen[key] = xla_lookup.in_xla_context()
    return tf.constant(0)

  probe("eager")
  tf.function(lambda: probe("function"))()
  tf.function(lambda: probe("jit"), jit_compile=True)()
  inner = tf.function(lambda: probe("nested"))
  tf.function(lambda: inner(), jit_compile=True)()
  with tf.Graph().as_default():
    probe("tf1_graph")
  assert seen == {
      "eager": False,
      "function": False,
      "jit": True,
      "nested": True,
      "tf1_graph": False,
  }


def _keras_model(seed, tables):
  keras.utils.set_random_seed(seed)
  ids = keras.Input(shape=(3,), dtype="int64")
  a = MHE(dims=[[5, 4], [3, 4]], operation="mul", name="mul")(ids)
  b = MHE(dims=[[3, 2], [5, 3]], operation="concat", name="concat")(ids)
  c = MHE(
      dims=[[2, 4], [3, 4], [5, 4]],
      operation="add",
      complementary_strategy="generalized-Q-R",
      name="add3",
  )(ids % 30)
  h = keras.layers.Concatenate()([keras.layers.Flatten()(x) for x in (a, b, c)])
  model = keras.Model(ids, keras.layers.Dense(1, name="out")(h))
  if tables is not None:
    model.set_weights(tables)
  return model


# Adam squares the gradient's entries: it checks that repeated rows reach it
# summed, as from the fused op. Each case compiles a Keras train step twice.
@pytest.mark.parametrize(
    "optimizer",
    [
        "adam",
        pytest.param("sgd", marks=pytest.mark.slow),
        pytest.param("adagrad", marks=pytest.mark.slow),
    ],
)
def test_keras_fit_jit_compile_matches_fused(optimizer, rng):
  x = rng.integers(0, 15, (64, 3)).astype(np.int64)
  y = rng.uniform(-1, 1, (64, 1)).astype(np.float32)
  shapes = [w.shape for w in _keras_model(0, None).weights]
  init = [rng.uniform(-0.5, 0.5, s).astype(np.float32) for s in shapes]
  results = {}
  for jit in (False, True):
    model = _keras_model(0, init)  # both runs start from the same weights
    opt = {
        "sgd": keras.optimizers.SGD(0.1),
        "adam": keras.optimizers.Adam(0.01),
        "adagrad": keras.optimizers.Adagrad(0.1),
    }[optimizer]
    model.compile(optimizer=opt, loss="mse", jit_compile=jit)
    assert model.jit_compile is jit
    hist = model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
    results[jit] = (
        hist.history["loss"],
        [w.numpy() for w in model.weights],
        model.predict(x, verbose=0),
    )
  (loss_f, w_f, p_f), (loss_x, w_x, p_x) = results[False], results[True]
  assert loss_f[-1] < loss_f[0]
  np.testing.assert_allclose(loss_x, loss_f, rtol=2e-5)
  for a, b in zip(w_x, w_f):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(p_x, p_f, rtol=2e-5, atol=2e-6)


def test_keras_auto_jit_would_pick_xla_on_a_gpu():
  """Keras's jit_compile="auto" uses XLA on a GPU when every layer
  supports it; the layer says it does (and does, above)."""
  from keras.src.trainers.trainer import model_supports_jit

  model = _keras_model(0, None)
  assert all(layer.supports_jit for layer in model.layers)
  assert model_supports_jit(model)


def test_keras_jit_num_ids_bound_gives_nan(rng):
  ids = keras.Input(shape=(2,), dtype="int64")
  layer = MHE(1000, 4, name="mh")
  model = keras.Model(ids, layer(ids))
  model.compile(loss="mse", jit_compile=True)
  out = model.predict(np.array([[1, 1000], [999, 5]]), verbose=0)
  assert np.all(np.isnan(out[0, 1])) and not np.any(
      np.isnan(out[[0, 1, 1], [0, 0, 1]])
  )
  np.testing.assert_allclose(
      out[1], layer(np.array([999, 5])).numpy(), rtol=1e-6
  )
