"""Parity with TensorFlow's own embedding functions.

A multi-hash variable with dims [[V, D], [1, D]], operation add and an R
table of zeros composes exactly the plain [V, D] table Q (id x reads row
x // 1 = x of Q and row 0 of R). So every case of TensorFlow's
`tf.nn.embedding_lookup`, `embedding_lookup_sparse` and
`safe_embedding_lookup_sparse` must give the same numbers on this stand-in
as TensorFlow gives on the plain table: the cases and expected values of
TensorFlow 2.21's own tests (written here as facts), each function in its v1
and v2 signature, plus a differential test that calls TensorFlow's function
on the plain table and ours on the stand-in for random inputs.

The graph tests run in every TFMH_TEST_MODE (tf2, v1, graph); the eager
differential test runs in tf2 mode.
"""

import numpy as np
import pytest
import tensorflow as tf

import tensorflow_multihash as tfmh

v1 = tf.compat.v1
_V2 = {
    "embedding_lookup": tf.nn.embedding_lookup,
    "embedding_lookup_sparse": tf.nn.embedding_lookup_sparse,
    "safe_embedding_lookup_sparse": tf.nn.safe_embedding_lookup_sparse,
}
_V1 = {
    "embedding_lookup": v1.nn.embedding_lookup,
    "embedding_lookup_sparse": v1.nn.embedding_lookup_sparse,
    "safe_embedding_lookup_sparse": v1.nn.safe_embedding_lookup_sparse,
}
APIS = {"v1": _V1, "v2": _V2}


def _standin(table, name="standin", partitioner=None, use_resource=None):
  """The multi-hash stand-in of a plain [V, D] table, and its assign ops."""
  vocab, dim = table.shape
  v = tfmh.get_multihash_variable(
      name,
      [[vocab, dim], [1, dim]],
      operation="add",
      dtype=tf.as_dtype(table.dtype),
      partitioner=partitioner,
      use_resource=use_resource,
      initializer=tf.zeros_initializer(),
  )
  q = v.tables[0]
  shards = list(q) if partitioner else [q]
  assigns, start = [], 0
  for s in shards:
    n = s.shape.as_list()[0]
    assigns.append(s.assign(table[start : start + n]))
    start += n
  return v, assigns


def _run(build):
  """Builds `build()` in a new graph and evaluates it in a session after
  initializing variables and running the returned assign ops."""
  with tf.Graph().as_default():
    out, assigns = build()
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      sess.run(assigns)
      return sess.run(out)


def _table(rng, vocab=4, dim=4, dtype=np.float32):
  return rng.standard_normal((vocab, dim)).astype(dtype)


# ------------------------------------------- TensorFlow's cases, as facts
# Safe lookup, 2-D (TF 2.21's `_ids_and_weights_2d`): row 0 valid ids and an
# invalid one (weighted mean), row 1 only invalid ids, row 2 no ids, row 3 a
# single id, row 4 only weights <= 0.
IDS_2D = dict(
    indices=[[0, 0], [0, 1], [0, 2], [1, 0], [3, 0], [4, 0], [4, 1]],
    ids=[0, 1, -1, -1, 2, 0, 1],
    weights=[1.0, 2.0, 1.0, 1.0, 3.0, 0.0, -0.5],
    shape=[5, 4],
)
# 3-D (`_ids_and_weights_3d`): the same cases at [0, 0] ... [1, 2].
IDS_3D = dict(
    indices=[
        [0, 0, 0],
        [0, 0, 1],
        [0, 0, 2],
        [0, 1, 0],
        [1, 0, 0],
        [1, 1, 0],
        [1, 1, 1],
    ],
    ids=[0, 1, -1, -1, 2, 0, 1],
    weights=[1.0, 2.0, 1.0, 1.0, 3.0, 0.0, -0.5],
    shape=[2, 3, 4],
)


def _sparse(case, with_weights=True):
  ids = tf.SparseTensor(
      case["indices"], tf.constant(case["ids"], tf.int64), case["shape"]
  )
  w = (
      tf.SparseTensor(
          case["indices"],
          tf.constant(case["weights"], tf.float32),
          case["shape"],
      )
      if with_weights
      else None
  )
  return ids, w


def _safe_expected(w, case, weighted, default):
  """TF's expected values for the safe lookup cases above."""
  zero = np.zeros(w.shape[1]) if default is None else w[default]
  if weighted:
    rows = [(1.0 * w[0] + 2.0 * w[1]) / 3.0, zero, zero, w[2], zero]
  else:
    rows = [(w[0] + w[1]) / 2.0, zero, zero, w[2], (w[0] + w[1]) / 2.0]
  if len(case["shape"]) == 3:
    return np.stack([rows[:3], [rows[3], rows[4], zero]])
  return np.stack(rows)


@pytest.mark.tf1
@pytest.mark.parametrize("api", ["v1", "v2"])
@pytest.mark.parametrize("case_name", ["2d", "3d"])
@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("default", [None, 3])
@pytest.mark.parametrize("num_shards", [1, 3])
def test_safe_lookup_tf_cases(
    rng, api, case_name, weighted, default, num_shards
):
  case = IDS_2D if case_name == "2d" else IDS_3D
  w = _table(rng)

  def build():
    part = v1.fixed_size_partitioner(num_shards) if num_shards > 1 else None
    v, assigns = _standin(w, partitioner=part)
    ids, weights = _sparse(case, weighted)
    out = APIS[api]["safe_embedding_lookup_sparse"](
        v, ids, weights, default_id=default
    )
    return out, assigns

  np.testing.assert_allclose(
      _run(build),
      _safe_expected(w, case, weighted, default),
      rtol=1e-6,
      atol=1e-6,
  )


@pytest.mark.tf1
@pytest.mark.parametrize("api", ["v1", "v2"])
@pytest.mark.parametrize("ragged", [False, True])
def test_safe_lookup_sum_keeps_non_positive_weights(api, ragged):
  """Under "sum" TensorFlow prunes no weight: negative weights count and a
  row whose ids all have weight 0 is not empty (no default_id)."""
  q = (np.arange(8).reshape(4, 2) + 1).astype(np.float32)

  def build():
    v, assigns = _standin(q)
    if ragged:
      ids = tf.ragged.constant([[1, 2], [3]], dtype=tf.int64)
      weights = tf.ragged.constant([[2.0, -0.5], [0.0]])
    else:
      ids = tf.SparseTensor(
          [[0, 0], [0, 1], [1, 0]], tf.constant([1, 2, 3], tf.int64), [2, 2]
      )
      weights = tf.SparseTensor(
          [[0, 0], [0, 1], [1, 0]], [2.0, -0.5, 0.0], [2, 2]
      )
    out = APIS[api]["safe_embedding_lookup_sparse"](
        v, ids, weights, combiner="sum", default_id=0
    )
    return out, assigns

  np.testing.assert_array_equal(_run(build), [[3.5, 5.0], [0.0, 0.0]])


@pytest.mark.tf1
@pytest.mark.parametrize("api", ["v1", "v2"])
@pytest.mark.parametrize("combiner", ["mean", "sqrtn"])
def test_safe_lookup_prunes_non_positive_weights_otherwise(api, combiner):
  q = (np.arange(8).reshape(4, 2) + 1).astype(np.float32)

  def build():
    v, assigns = _standin(q)
    ids = tf.SparseTensor(
        [[0, 0], [0, 1], [1, 0]], tf.constant([1, 2, 3], tf.int64), [2, 2]
    )
    weights = tf.SparseTensor(
        [[0, 0], [0, 1], [1, 0]], [2.0, -0.5, 0.0], [2, 2]
    )
    out = APIS[api]["safe_embedding_lookup_sparse"](
        v, ids, weights, combiner=combiner, default_id=0
    )
    return out, assigns

  # Row 0 keeps only id 1 (weight 2): mean -> q[1], sqrtn -> 2 q[1] / 2.
  np.testing.assert_allclose(_run(build), [q[1], q[0]], rtol=1e-6)


@pytest.mark.tf1
@pytest.mark.parametrize("api", ["v1", "v2"])
def test_safe_lookup_weight_dtype_must_match(api):
  """float32 weights with a float64 table: ValueError, as TensorFlow."""
  with tf.Graph().as_default():
    v, _ = _standin(np.ones((4, 2)))
    ids, weights = _sparse(IDS_2D)
    with pytest.raises(ValueError, match="float32.*float64"):
      APIS[api]["safe_embedding_lookup_sparse"](v, ids, weights)
    # Without weights, nothing to match.
    APIS[api]["safe_embedding_lookup_sparse"](v, ids, None)


@pytest.mark.tf1
@pytest.mark.parametrize("api", ["v1", "v2"])
def test_lookup_sparse_casts_weights_as_tensorflow(rng, api):
  """embedding_lookup_sparse (not the safe one) casts the weights to the
  table's dtype in TensorFlow: so here too."""
  w = _table(rng, dtype=np.float64)
  indices = [[0, 0], [0, 1], [1, 0]]

  def build():
    v, assigns = _standin(w)
    ids = tf.SparseTensor(indices, tf.constant([0, 3, 2], tf.int64), [2, 2])
    weights = tf.SparseTensor(
        indices, tf.constant([0.5, 2.0, 1.0], tf.float32), [2, 2]
    )
    return (
        APIS[api]["embedding_lookup_sparse"](v, ids, weights, combiner="sum"),
        assigns,
    )

  np.testing.assert_allclose(
      _run(build), [0.5 * w[0] + 2.0 * w[3], w[2]], rtol=1e-12
  )


@pytest.mark.tf1
@pytest.mark.parametrize("api", ["v1", "v2"])
@pytest.mark.parametrize("container", [list, tuple])
def test_params_as_a_list_of_one(rng, api, container):
  w = _table(rng)

  def build():
    v, assigns = _standin(w)
    ids = tf.constant([[3, 0], [1, 1]], tf.int64)
    sp = tf.SparseTensor(
        [[0, 0], [0, 1], [1, 0]], tf.constant([3, 0, 2], tf.int64), [2, 2]
    )
    fns = APIS[api]
    return [
        fns["embedding_lookup"](container([v]), ids),
        fns["embedding_lookup_sparse"](
            container([v]), sp, None, combiner="sum"
        ),
        fns["safe_embedding_lookup_sparse"](
            container([v]), sp, None, combiner="sum"
        ),
    ], assigns

  dense, sparse, safe = _run(build)
  np.testing.assert_array_equal(dense, w[[[3, 0], [1, 1]]])
  np.testing.assert_allclose(sparse, [w[3] + w[0], w[2]], rtol=1e-6)
  np.testing.assert_allclose(safe, [w[3] + w[0], w[2]], rtol=1e-6)


@pytest.mark.tf1
@pytest.mark.parametrize("api", ["v1", "v2"])
def test_params_list_of_several_is_refused(api):
  with tf.Graph().as_default():
    a, _ = _standin(np.ones((4, 2), np.float32), name="a")
    b, _ = _standin(np.ones((4, 2), np.float32), name="b")
    with pytest.raises(ValueError, match="exactly one"):
      APIS[api]["embedding_lookup"]([a, b], [0])
    sp = tf.SparseTensor([[0, 0]], tf.constant([1], tf.int64), [1, 1])
    with pytest.raises(ValueError, match="exactly one"):
      APIS[api]["embedding_lookup_sparse"]([a, b], sp, None)
    with pytest.raises(ValueError, match="exactly one"):
      APIS[api]["safe_embedding_lookup_sparse"]([a, b], sp, None)


@pytest.mark.tf1
@pytest.mark.parametrize("api", ["v1", "v2"])
@pytest.mark.parametrize("id_dtype", [tf.int32, tf.int64])
def test_ragged_ids_dense_lookup(rng, api, id_dtype):
  """A RaggedTensor of ids gives a ragged result, as in TensorFlow."""
  w = _table(rng, vocab=6, dim=3)
  rows = [[5, 0, 2], [], [1], [4, 4]]

  def build():
    v, assigns = _standin(w)
    ids = tf.ragged.constant(rows, dtype=id_dtype)
    out = APIS[api]["embedding_lookup"](v, ids, max_norm=1.0)
    assert isinstance(out, tf.RaggedTensor)
    ref = APIS[api]["embedding_lookup"](tf.constant(w), ids, max_norm=1.0)
    return [
        out.flat_values,
        out.row_splits,
        ref.flat_values,
        ref.row_splits,
    ], assigns

  got, splits, ref, ref_splits = _run(build)
  np.testing.assert_array_equal(splits, ref_splits)
  np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)


@pytest.mark.tf1
@pytest.mark.parametrize("api", ["v1", "v2"])
@pytest.mark.parametrize("combiner", ["sum", "mean", "sqrtn"])
@pytest.mark.parametrize("weighted", [True, False])
def test_ragged_sparse_lookups(rng, api, combiner, weighted):
  w = _table(rng, vocab=6, dim=3)
  rows = [[5, 0, 2], [1], [-1, 3], [4, 4]]
  wts = [[1.0, 0.5, -2.0], [0.0], [1.0, 3.0], [0.25, 2.0]]

  def build():
    v, assigns = _standin(w)
    plain = tf.constant(w)
    valid = tf.ragged.constant(
        [[x for x in r if x >= 0] for r in rows], dtype=tf.int64
    )
    valid_w = tf.ragged.constant(
        [[x for x, i in zip(wr, r) if i >= 0] for wr, r in zip(wts, rows)]
    )
    ids = tf.ragged.constant(rows, dtype=tf.int64)
    weights = tf.ragged.constant(wts) if weighted else None
    fns = APIS[api]
    outs = [
        fns["embedding_lookup_sparse"](
            v, valid, valid_w if weighted else None, combiner=combiner
        ),
        fns["embedding_lookup_sparse"](
            plain, valid, valid_w if weighted else None, combiner=combiner
        ),
        fns["safe_embedding_lookup_sparse"](
            v, ids, weights, combiner=combiner, default_id=1
        ),
        fns["safe_embedding_lookup_sparse"](
            plain, ids, weights, combiner=combiner, default_id=1
        ),
    ]
    return outs, assigns

  ours, theirs, ours_safe, theirs_safe = _run(build)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ours_safe, theirs_safe, rtol=1e-5, atol=1e-6)


@pytest.mark.tf1
def test_ragged_weights_must_be_ragged():
  with tf.Graph().as_default():
    v, _ = _standin(np.ones((4, 2), np.float32))
    ids = tf.ragged.constant([[1, 2], [3]], dtype=tf.int64)
    sp_w = tf.SparseTensor([[0, 0]], [1.0], [2, 2])
    with pytest.raises(TypeError, match="RaggedTensor"):
      tf.nn.embedding_lookup_sparse(v, ids, sp_w)


@pytest.mark.tf1
def test_plain_tables_keep_tensorflow_ragged_dispatch(rng):
  """Importing the package changes nothing for plain tables with ragged ids
  (TensorFlow's own ragged functions still serve them)."""
  w = _table(rng, vocab=5, dim=2)

  def build():
    ids = tf.ragged.constant([[0, 4], [2]], dtype=tf.int64)
    out = v1.nn.embedding_lookup(tf.constant(w), ids)
    pooled = v1.nn.embedding_lookup_sparse(
        tf.constant(w), ids, None, combiner="sum"
    )
    safe = v1.nn.safe_embedding_lookup_sparse(
        tf.constant(w), ids, None, combiner="sum"
    )
    return [out.flat_values, pooled, safe], []

  flat, pooled, safe = _run(build)
  np.testing.assert_array_equal(flat, w[[0, 4, 2]])
  np.testing.assert_allclose(pooled, [w[0] + w[4], w[2]], rtol=1e-6)
  np.testing.assert_allclose(safe, [w[0] + w[4], w[2]], rtol=1e-6)


# ------------------------------------------------------ differential test
def _random_case(rng, vocab, dim, rank):
  batch = tuple(rng.integers(1, 4, rank - 1))
  bag = int(rng.integers(1, 5))
  dense_shape = batch + (bag,)
  cells = [
      np.unravel_index(i, dense_shape) for i in range(int(np.prod(dense_shape)))
  ]
  keep = rng.random(len(cells)) < 0.6
  indices = np.array([c for c, k in zip(cells, keep) if k], np.int64).reshape(
      -1, rank
  )
  ids = rng.integers(-1, vocab, len(indices))
  weights = rng.choice([-1.0, 0.0, 0.5, 1.0, 2.0], len(indices)).astype(
      np.float32
  )
  return indices, ids, weights, dense_shape


DIFF_CASES = 24


@pytest.mark.tf1
@pytest.mark.parametrize("seed", range(DIFF_CASES))
def test_differential_against_tensorflow(seed):
  """Random ids (with -1), weights (negative, zero, positive), combiners,
  default ids, max_norm and partitioning: TensorFlow's function on the
  plain table and ours on the stand-in agree, values and gradients."""
  rng = np.random.default_rng(1000 + seed)
  vocab, dim = int(rng.integers(2, 9)), int(rng.integers(1, 5))
  w = _table(rng, vocab, dim)
  rank = int(rng.choice([2, 2, 3]))
  indices, ids, weights, dense_shape = _random_case(rng, vocab, dim, rank)
  combiner = str(rng.choice(["sum", "mean", "sqrtn"]))
  default = None if rng.random() < 0.5 else int(rng.integers(0, vocab))
  max_norm = None if rng.random() < 0.6 else 0.7
  weighted = rng.random() < 0.7
  api = APIS["v1" if seed % 2 else "v2"]
  num_shards = int(rng.choice([1, 2])) if vocab >= 2 else 1

  def build():
    part = v1.fixed_size_partitioner(num_shards) if num_shards > 1 else None
    v, assigns = _standin(w, partitioner=part, use_resource=True)
    plain = tf.Variable(w)
    sp_ids = tf.SparseTensor(indices, tf.constant(ids, tf.int64), dense_shape)
    sp_w = (
        tf.SparseTensor(indices, tf.constant(weights), dense_shape)
        if weighted
        else None
    )
    ours = api["safe_embedding_lookup_sparse"](
        v,
        sp_ids,
        sp_w,
        combiner=combiner,
        default_id=default,
        max_norm=max_norm,
    )
    theirs = api["safe_embedding_lookup_sparse"](
        plain,
        sp_ids,
        sp_w,
        combiner=combiner,
        default_id=default,
        max_norm=max_norm,
    )
    up = tf.constant(
        rng.standard_normal(dense_shape[:-1] + (dim,)).astype(np.float32)
    )
    q_shards = list(v.tables[0]) if part else [v.tables[0]]
    g_ours = [
        tf.convert_to_tensor(g)
        for g in tf.gradients(tf.reduce_sum(ours * up), q_shards)
    ]
    g_theirs = tf.convert_to_tensor(
        tf.gradients(tf.reduce_sum(theirs * up), [plain])[0]
    )
    return [ours, theirs, tf.concat(g_ours, 0), g_theirs], assigns

  ours, theirs, g_ours, g_theirs = _run(build)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(g_ours, g_theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", range(8))
def test_differential_eager(seed):
  """The same comparison eagerly and in tf.function (TF2 only)."""
  if not tf.executing_eagerly():
    pytest.skip("eager only")
  rng = np.random.default_rng(2000 + seed)
  vocab, dim = int(rng.integers(2, 9)), int(rng.integers(1, 5))
  w = _table(rng, vocab, dim)
  indices, ids, weights, dense_shape = _random_case(rng, vocab, dim, 2)
  combiner = str(rng.choice(["sum", "mean", "sqrtn"]))
  default = None if seed % 2 else int(rng.integers(0, vocab))
  v, _ = _standin(w)
  plain = tf.constant(w)
  sp_ids = tf.SparseTensor(indices, tf.constant(ids, tf.int64), dense_shape)
  sp_w = tf.SparseTensor(indices, tf.constant(weights), dense_shape)
  ragged_ids = tf.RaggedTensor.from_value_rowids(
      tf.constant(ids, tf.int64), indices[:, 0], nrows=dense_shape[0]
  )
  ragged_w = tf.RaggedTensor.from_value_rowids(
      tf.constant(weights), indices[:, 0], nrows=dense_shape[0]
  )

  def both(fn):
    return (
        fn(v, sp_ids, sp_w),
        fn(plain, sp_ids, sp_w),
        fn(v, ragged_ids, ragged_w),
        fn(plain, ragged_ids, ragged_w),
    )

  def safe(p, i, wt):
    return tf.nn.safe_embedding_lookup_sparse(
        p, i, wt, combiner=combiner, default_id=default
    )

  for run in (lambda: both(safe), tf.function(lambda: both(safe))):
    a, b, c, d = run()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c, d, rtol=1e-5, atol=1e-6)
