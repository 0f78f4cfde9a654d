"""k-way complementary partitions (Q-R, generalized-Q-R, CRT), sizing with
multihash_dims, and out_of_range="wrap".

The references are NumPy (mh_testutil's np_rows, np_lookup and np_grads),
written from the definitions:
  generalized-Q-R: table j uses (x // prod(rows[j+1:])) % rows[j];
  CRT:             table j uses x % rows[j] (rows pairwise coprime);
  capacity = prod(rows) for both; Q-R is the k = 2 generalized-Q-R.
"""

import itertools
import math

import numpy as np
import pytest
import tensorflow as tf

from mh_apiutil import array_initializer
from mh_testutil import np_grads, np_lookup, np_rows

v1 = tf.compat.v1
TOL = dict(rtol=1e-5, atol=1e-6)
OPS = ("add", "mul", "concat")

# Row counts per (strategy, k): unequal and, for CRT, pairwise coprime.
ROWS = {
    ("Q-R", 2): [3, 5],
    ("generalized-Q-R", 2): [4, 3],
    ("generalized-Q-R", 3): [3, 4, 2],
    ("generalized-Q-R", 4): [2, 3, 2, 4],
    ("CRT", 2): [4, 3],
    ("CRT", 3): [3, 5, 2],
    ("CRT", 4): [3, 5, 7, 4],
}
CASES = sorted(ROWS)


@pytest.fixture(scope="module")
def tfmh():
  import tensorflow_multihash as m

  return m


def dims_for(rows, operation):
  if operation == "concat":
    return [[r, 2 + j] for j, r in enumerate(rows)]
  return [[r, 3] for r in rows]


def random_arrays(rng, dims):
  return [rng.uniform(-1, 1, size=(r, w)).astype(np.float32) for r, w in dims]


def all_ids(rows):
  return np.arange(math.prod(rows), dtype=np.int64)


# -- the mapping itself -----------------------------------------------------


@pytest.mark.parametrize(
    "strategy,rows",
    [
        ("Q-R", [3, 5]),
        ("Q-R", [5, 3]),
        ("Q-R", [1, 4]),
        ("generalized-Q-R", [3, 4, 2]),
        ("generalized-Q-R", [2, 3, 2, 4]),
        ("generalized-Q-R", [5, 1, 3]),
        ("generalized-Q-R", [2, 2, 2, 2, 2]),
        ("CRT", [4, 3]),
        ("CRT", [3, 5, 2]),
        ("CRT", [3, 5, 7, 4]),
        ("CRT", [9, 2, 5, 7]),
        ("CRT", [1, 6, 5]),
    ],
)
@pytest.mark.parametrize("id_dtype", [np.int32, np.int64])
def test_row_tuples_unique_over_whole_capacity(tfmh, strategy, rows, id_dtype):
  """Exhaustive: every id in [0, capacity) gets its own row tuple, and the
  op picks exactly the rows of the definition."""
  # Table j's row r holds the value r, so a concat lookup reads the tuple.
  tables = [np.arange(r, dtype=np.float32).reshape(r, 1) for r in rows]
  ids = all_ids(rows).astype(id_dtype)
  got = tfmh.multihash_lookup(
      tables, ids, operation="concat", complementary_strategy=strategy
  ).numpy()
  expected = np.stack(np_rows(ids, rows, strategy), axis=-1)
  np.testing.assert_array_equal(got.astype(np.int64), expected)
  tuples = {tuple(t) for t in got.astype(np.int64)}
  assert len(tuples) == math.prod(rows)


def test_generalized_qr_k2_is_qr(tfmh, rng):
  arrays = [
      rng.normal(size=(4, 3)).astype(np.float32),
      rng.normal(size=(6, 3)).astype(np.float32),
  ]
  ids = rng.integers(0, 24, size=50)
  for op in OPS:
    a = tfmh.multihash_lookup(arrays, ids, op, "Q-R")
    b = tfmh.multihash_lookup(arrays, ids, op, "generalized-Q-R")
    np.testing.assert_array_equal(a.numpy(), b.numpy())


# -- forward and gradients, every strategy x operation x k -----------------


@pytest.mark.parametrize("operation", OPS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "%s-k%d" % c)
@pytest.mark.parametrize("partitioned", [False, True])
def test_eager_variable_forward_and_grad(
    tfmh, rng, case, operation, partitioned
):
  strategy, k = case
  rows = ROWS[case]
  dims = dims_for(rows, operation)
  arrays = random_arrays(rng, dims)
  if partitioned:
    # Tables as lists of row shards (the layout partitioners make).
    tables = []
    for a in arrays:
      cut = (a.shape[0] + 1) // 2
      shards = [a[:cut], a[cut:]] if a.shape[0] > 1 else [a]
      tables.append([tf.Variable(s) for s in shards if s.shape[0] > 0])
  else:
    tables = [tf.Variable(a) for a in arrays]
  cap = math.prod(rows)
  ids = rng.integers(0, cap, size=(4, 7))
  ids[0, 0], ids[0, 1], ids[1, 0] = 0, cap - 1, ids[0, 2]
  upstream = rng.normal(
      size=ids.shape
      + (sum(w for _, w in dims) if operation == "concat" else dims[0][1],)
  )
  with tf.GradientTape() as tape:
    out = tfmh.multihash_lookup(tables, ids, operation, strategy)
    loss = tf.reduce_sum(out * tf.constant(upstream, tf.float32))
  np.testing.assert_allclose(
      out.numpy(), np_lookup(arrays, ids, rows, strategy, operation), **TOL
  )
  flat = [v for t in tables for v in (t if isinstance(t, list) else [t])]
  grads = tape.gradient(loss, flat)
  expected = np_grads(arrays, ids, rows, strategy, operation, upstream)
  i = 0
  for j, t in enumerate(tables):
    shard_list = t if isinstance(t, list) else [t]
    dense = []
    for s in shard_list:
      g = grads[i]
      i += 1
      assert isinstance(g, tf.IndexedSlices)
      dense.append(tf.convert_to_tensor(g).numpy())
    np.testing.assert_allclose(
        np.concatenate(dense), expected[j], rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize(
    "case",
    [("generalized-Q-R", 3), ("CRT", 3), ("generalized-Q-R", 4), ("CRT", 4)],
    ids=lambda c: "%s-k%d" % c,
)
@pytest.mark.parametrize("operation", OPS)
@pytest.mark.tf1
def test_tf1_partitioned_variable_training(tfmh, rng, case, operation):
  """get_multihash_variable with k > 2, partitioned, in a v1 Session: the
  lookup and one Adagrad step equal NumPy."""
  strategy, k = case
  rows = ROWS[case]
  dims = dims_for(rows, operation)
  arrays = random_arrays(rng, dims)
  # array_initializer picks arrays by shape; with repeated shapes the
  # tables keep their random initial values, read back below.
  distinct = len({tuple(a.shape) for a in arrays}) == len(arrays)
  cap = math.prod(rows)
  ids = rng.integers(0, cap, size=12)
  lr, acc0 = 0.1, 0.1
  with tf.Graph().as_default():
    if distinct:
      init = array_initializer(arrays)
    else:
      init = None
    v = tfmh.get_multihash_variable(
        "emb",
        dims,
        num_of_partitions=k,
        complementary_strategy=strategy,
        operation=operation,
        initializer=init,
        partitioner=v1.fixed_size_partitioner(2),
    )
    names = sorted(x.op.name for x in v1.global_variables())
    assert names == sorted(
        "emb/multhash_%d/part_%d" % (j, p) for j in range(k) for p in range(2)
    ), names
    out = tfmh.embedding_lookup(v, tf.constant(ids))
    loss = tf.reduce_sum(out)
    train = v1.train.AdagradOptimizer(
        lr, initial_accumulator_value=acc0
    ).minimize(loss)
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      if not distinct:
        arrays = [sess.run(tf.concat(list(t), 0)) for t in v.tables]
      np.testing.assert_allclose(
          sess.run(out),
          np_lookup(arrays, ids, rows, strategy, operation),
          **TOL,
      )
      sess.run(train)
      after = [sess.run(tf.concat(list(t), 0)) for t in v.tables]
  upstream = np.ones((ids.size, out.shape[-1]))
  grads = np_grads(arrays, ids, rows, strategy, operation, upstream)
  for a, g, got in zip(arrays, grads, after):
    acc = acc0 + g * g
    np.testing.assert_allclose(
        got, a - lr * g / np.sqrt(acc), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("dtype", [tf.float64, tf.float16, tf.bfloat16])
def test_k3_other_dtypes(tfmh, rng, dtype):
  rows = [3, 5, 2]
  arrays = [rng.uniform(-1, 1, size=(r, 4)) for r in rows]
  ids = rng.integers(0, 30, size=40)
  for strategy in ("generalized-Q-R", "CRT"):
    for op in OPS:
      tables = [tf.constant(a, dtype) for a in arrays]
      ref_tables = [
          t.numpy().astype(np.float64)
          for t in [tf.cast(t, tf.float64) for t in tables]
      ]
      got = tfmh.multihash_lookup(tables, ids, op, strategy)
      assert got.dtype == dtype
      tol = 1e-12 if dtype == tf.float64 else 2e-2
      np.testing.assert_allclose(
          tf.cast(got, tf.float64).numpy(),
          np_lookup(ref_tables, ids, rows, strategy, op),
          rtol=tol,
          atol=tol,
      )


def test_k3_out_of_range_error(tfmh):
  tables = [tf.ones([3, 2]), tf.ones([5, 2]), tf.ones([2, 2])]
  for strategy in ("generalized-Q-R", "CRT"):
    for bad in (30, -1):
      with pytest.raises(
          tf.errors.InvalidArgumentError,
          match=r"ids\[1\] = %d is out of range.*" r"\[0, 30\)" % bad,
      ):
        tfmh.multihash_lookup(tables, [0, bad], "add", strategy)


# -- variable API ------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["generalized-Q-R", "CRT"])
@pytest.mark.tf1
def test_names_k2_keep_q_r(tfmh, strategy):
  with tf.Graph().as_default():
    v = tfmh.get_multihash_variable(
        "e", [[3, 2], [5, 2]], complementary_strategy=strategy
    )
    assert [t.op.name for t in v.tables] == ["e/multhash_Q", "e/multhash_R"]
    assert v.complementary_strategy == strategy
    assert v.capacity == 15


def test_eager_variable_k4_attributes(tfmh):
  v = tfmh.get_multihash_variable(
      "e4",
      [[3, 8], [5, 8], [7, 8], [2, 8]],
      num_of_partitions=4,
      complementary_strategy="CRT",
      operation="mul",
  )
  assert [t.name for t in v.tables] == [
      "e4/multhash_%d:0" % j for j in range(4)
  ]
  assert v.capacity == 210 and v.embedding_dim == 8
  assert v.shape.as_list() == [210, 8]
  assert v.num_of_partitions == 4
  assert v.mhvconfig.size == [[3, 8], [5, 8], [7, 8], [2, 8]]
  assert len(v.trainable_variables) == 4


def test_checkpoint_round_trip_k3(tfmh, tmp_path, rng):
  v = tfmh.get_multihash_variable(
      "ck",
      [[3, 4], [5, 4], [2, 4]],
      num_of_partitions=3,
      complementary_strategy="generalized-Q-R",
      operation="add",
  )
  ids = np.arange(30)
  before = tfmh.embedding_lookup(v, ids).numpy()
  path = tf.train.Checkpoint(emb=v).save(str(tmp_path / "ck"))
  for t in v.tables:
    t.assign(tf.zeros_like(t))
  tf.train.Checkpoint(emb=v).restore(path).assert_consumed()
  np.testing.assert_array_equal(tfmh.embedding_lookup(v, ids).numpy(), before)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (
            dict(dims=[[3, 2], [6, 2]], complementary_strategy="CRT"),
            r"CRT strategy needs pairwise coprime.*table 0 has 3 rows and table 1 "
            r"has 6",
        ),
        (
            dict(
                dims=[[3, 2], [5, 2], [10, 2]],
                num_of_partitions=3,
                complementary_strategy="CRT",
            ),
            r"table 1 has 5 rows and table 2 has 10 \(common factor 5\)",
        ),
        (
            dict(dims=[[3, 2], [5, 2], [2, 2]], num_of_partitions=3),
            r"Q-R strategy needs num_of_partitions = 2, got 3",
        ),
        (
            dict(
                dims=[[2, 2]] * 9,
                num_of_partitions=9,
                complementary_strategy="generalized-Q-R",
            ),
            r"num_of_partitions must be in \[2, 8\], got 9",
        ),
        (
            dict(
                dims=[[3, 2], [5, 2], [2, 2]],
                num_of_partitions=2,
                complementary_strategy="CRT",
            ),
            r"dims has 3 entries but num_of_partitions is 2",
        ),
        (
            dict(dims=[[3, 2], [5, 2]], complementary_strategy="crt"),
            r"The strategy crt is not supported",
        ),
        (
            dict(dims=[[3, 2], [5, 2]], out_of_range="clip"),
            r"out_of_range must be one of \"error\", \"wrap\", got 'clip'",
        ),
    ],
)
def test_bad_configs(tfmh, kwargs, match):
  with pytest.raises(ValueError, match=match):
    tfmh.get_multihash_variable("bad", **kwargs)


def test_raw_op_rejects_non_coprime_crt(tfmh):
  from tensorflow_multihash import multihash_ops

  with pytest.raises(
      tf.errors.InvalidArgumentError, match="pairwise coprime.*common factor 2"
  ):
    multihash_ops._gen.multi_hash_lookup(
        tables=[tf.ones([4, 2]), tf.ones([6, 2])],
        ids=tf.constant([1]),
        T=tf.float32,
        operation="add",
        complementary_strategy="CRT",
        table_rows=[4, 6],
        table_widths=[2, 2],
        num_shards=[1, 1],
    )


# -- out_of_range="wrap" -----------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda c: "%s-k%d" % c)
@pytest.mark.parametrize("id_dtype", [np.int32, np.int64])
def test_wrap_folds_ids_by_floor_mod(tfmh, rng, case, id_dtype):
  strategy, k = case
  rows = ROWS[case]
  dims = dims_for(rows, "mul")
  v = tfmh.get_multihash_variable(
      "w",
      dims,
      num_of_partitions=k,
      complementary_strategy=strategy,
      operation="mul",
      out_of_range="wrap",
  )
  arrays = [t.numpy() for t in v.tables]
  cap = math.prod(rows)
  ids = np.concatenate(
      [
          rng.integers(-5 * cap, 5 * cap, size=30),
          [-1, -cap, cap, 2**31 - 1, -(2**31)],
      ]
  ).astype(id_dtype)
  got = tfmh.embedding_lookup(v, ids).numpy()
  folded = np.mod(ids.astype(np.int64), cap)  # floor-mod
  np.testing.assert_allclose(
      got, np_lookup(arrays, folded, rows, strategy, "mul"), **TOL
  )
  assert "out_of_range=wrap" in repr(v)


def test_wrap_large_capacity_int32_ids(tfmh):
  """A capacity beyond int32: int32 ids >= 0 are in range, negative ones
  fold into [capacity - 2**31, capacity)."""
  rows = [70000, 70000]  # capacity 4.9e9 > 2**31
  tables = [
      tf.Variable(tf.zeros([70000, 1])),
      tf.Variable(tf.zeros([70000, 1])),
  ]
  tables[0].scatter_update(
      tf.IndexedSlices(
          tf.reshape(tf.range(70000, dtype=tf.float32), [-1, 1]),
          tf.range(70000),
      )
  )
  ids = np.array([5, -1, -70000, 2**31 - 1], np.int32)
  got = tfmh.multihash_lookup(tables, ids, "add", out_of_range="wrap")
  cap = 70000 * 70000
  q = (np.mod(ids.astype(np.int64), cap) // 70000).astype(np.float32)
  np.testing.assert_array_equal(got.numpy()[:, 0], q)


def test_wrap_in_sparse_lookups_and_default_error(tfmh, rng):
  dims = [[3, 2], [5, 2]]
  v = tfmh.get_multihash_variable("sp", dims, out_of_range="wrap")
  strict = tfmh.MultiHashVariable(
      "strict", dims, 2, "Q-R", "add", tf.float32, v.tables
  )
  arrays = [t.numpy() for t in v.tables]
  sp = tf.SparseTensor(
      [[0, 0], [0, 1], [2, 0]], tf.constant([17, -3, 44], tf.int64), [3, 2]
  )
  got = tfmh.embedding_lookup_sparse(v, sp, None, combiner="sum").numpy()
  ref = np_lookup(arrays, np.mod([17, -3, 44], 15), [3, 5], "Q-R", "add")
  np.testing.assert_allclose(got[0], ref[0] + ref[1], **TOL)
  np.testing.assert_allclose(got[1], 0, **TOL)
  np.testing.assert_allclose(got[2], ref[2], **TOL)
  with pytest.raises(tf.errors.InvalidArgumentError, match="out of range"):
    tfmh.embedding_lookup(strict, [17])
  with pytest.raises(tf.errors.InvalidArgumentError, match="out of range"):
    tf.nn.embedding_lookup(strict, [15])


def test_wrap_gradient_reaches_folded_rows(tfmh):
  v = tfmh.get_multihash_variable(
      "g",
      [[3, 1], [5, 1]],
      operation="add",
      out_of_range="wrap",
      initializer=tf.zeros_initializer(),
  )
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(tfmh.embedding_lookup(v, [16, -1]))
  gq, gr = [
      tf.convert_to_tensor(g).numpy()[:, 0]
      for g in tape.gradient(loss, v.tables)
  ]
  # 16 -> 1: q 0, r 1;  -1 -> 14: q 2, r 4.
  np.testing.assert_array_equal(gq, [1, 0, 1])
  np.testing.assert_array_equal(gr, [0, 1, 0, 0, 1])


# -- multihash_dims ------------------------------------------------------------


def _brute_min_sum(n, k, coprime):
  best = None
  for rows in itertools.combinations_with_replacement(range(1, n + 2), k):
    if math.prod(rows) < n:
      continue
    if coprime and any(
        math.gcd(a, b) != 1 for a, b in itertools.combinations(rows, 2)
    ):
      continue
    s = sum(rows)
    best = s if best is None else min(best, s)
  return best


@pytest.mark.parametrize(
    "k,strategy", [(2, "Q-R"), (2, "CRT"), (3, "generalized-Q-R"), (3, "CRT")]
)
def test_multihash_dims_fewest_rows(tfmh, k, strategy):
  for n in range(1, 70):
    dims = tfmh.multihash_dims(
        n, 8, num_of_partitions=k, complementary_strategy=strategy
    )
    rows = [r for r, _ in dims]
    assert len(dims) == k and all(w == 8 for _, w in dims)
    assert math.prod(rows) >= n, (n, rows)
    assert sum(rows) == _brute_min_sum(n, k, strategy == "CRT"), (n, rows)
    # The dims make a valid variable of that strategy.
    tfmh.variable.validate_config(dims, k, strategy, "mul")


@pytest.mark.parametrize("n", [10**6, 10**8, 10**10])
@pytest.mark.parametrize(
    "k,strategy", [(2, "Q-R"), (3, "generalized-Q-R"), (4, "CRT")]
)
def test_multihash_dims_large(tfmh, n, k, strategy):
  dims = tfmh.multihash_dims(n, 64, k, strategy, operation="concat")
  rows = [r for r, _ in dims]
  assert math.prod(rows) >= n
  assert sum(w for _, w in dims) == 64
  # Near the k-th root: within k rows of k * n ** (1/k) (+ coprime slack).
  assert sum(rows) <= k * math.ceil(n ** (1.0 / k)) + 4 * k


def test_multihash_dims_num_collisions_and_concat(tfmh):
  assert tfmh.multihash_dims(1000, 16, num_collisions=4) == [[250, 16], [4, 16]]
  assert tfmh.multihash_dims(1001, 16, num_collisions=4) == [[251, 16], [4, 16]]
  assert tfmh.multihash_dims(100, 10, 3, "generalized-Q-R", "concat") == [
      [5, 4],
      [5, 3],
      [4, 3],
  ]
  assert tfmh.multihash_dims(100, 7, operation="mult") == [[10, 7], [10, 7]]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (
            dict(num_ids=0, width=4),
            r"num_ids must be a positive integer, got 0",
        ),
        (dict(num_ids=10, width=2.0), r"width must be a positive integer"),
        (
            dict(num_ids=10, width=4, num_of_partitions=3),
            r"Q-R strategy needs num_of_partitions = 2, got 3",
        ),
        (
            dict(
                num_ids=10,
                width=2,
                num_of_partitions=3,
                complementary_strategy="CRT",
                operation="concat",
            ),
            r"width must be at least num_of_partitions \(3\) for concat, got 2",
        ),
        (
            dict(num_ids=10, width=4, num_collisions=0),
            r"num_collisions must be a positive integer, got 0",
        ),
        (
            dict(
                num_ids=10,
                width=4,
                complementary_strategy="CRT",
                num_collisions=3,
            ),
            r"num_collisions needs num_of_partitions = 2",
        ),
        (
            dict(num_ids=10, width=4, operation="max"),
            r"The operation max is not supported",
        ),
    ],
)
def test_multihash_dims_errors(tfmh, kwargs, match):
  with pytest.raises(ValueError, match=match):
    tfmh.multihash_dims(**kwargs)


# -- feature column ------------------------------------------------------------


def _column_output(tfmh, cat, dimension, features, arrays=None):
  col = tfmh.embedding_column(
      cat,
      dimension=dimension,
      combiner="sum",
      initializer=(array_initializer(arrays) if arrays else None),
  )
  with tf.Graph().as_default():
    out = v1.feature_column.input_layer(features, [col])
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      names = sorted(x.op.name for x in v1.global_variables())
      return sess.run(out), names


@pytest.mark.parametrize(
    "strategy,rows", [("generalized-Q-R", (3, 4, 2)), ("CRT", (3, 5, 2))]
)
@pytest.mark.parametrize("operation", OPS)
def test_feature_column_k3(tfmh, rng, strategy, rows, operation):
  widths = (2, 3, 4) if operation == "concat" else (3, 3, 3)
  arrays = [
      rng.uniform(-1, 1, size=(r, w)).astype(np.float32)
      for r, w in zip(rows, widths)
  ]
  cat = tfmh.categorical_column_with_multihash(
      "ids", dims=rows, complementary_strategy=strategy, operation=operation
  )
  assert cat.num_buckets == math.prod(rows)
  ids = np.array([[0, 7], [23, 23], [5, 1]], np.int64)
  out, names = _column_output(tfmh, cat, widths, {"ids": ids}, arrays)
  assert [n.split("/")[-1] for n in names] == [
      "embedding_weights_0",
      "embedding_weights_1",
      "embedding_weights_2",
  ]
  ref = np_lookup(arrays, ids, list(rows), strategy, operation).sum(axis=1)
  np.testing.assert_allclose(out, ref, **TOL)


def test_feature_column_k3_dimension_error(tfmh):
  cat = tfmh.categorical_column_with_multihash(
      "ids", dims=(3, 5, 2), complementary_strategy="CRT", operation="add"
  )
  with pytest.raises(
      ValueError,
      match=r"MultiHashVariable dimension error" r".*3 widths, one per table",
  ):
    tfmh.embedding_column(cat, dimension=(4, 4))
  with pytest.raises(ValueError, match="pairwise coprime"):
    tfmh.categorical_column_with_multihash(
        "ids", dims=(4, 6), complementary_strategy="CRT"
    )


def test_feature_column_wrap(tfmh, rng):
  rows, widths = (3, 5), (2, 3)
  arrays = [
      rng.uniform(-1, 1, size=(r, w)).astype(np.float32)
      for r, w in zip(rows, widths)
  ]
  cat = tfmh.categorical_column_with_multihash(
      "ids", dims=rows, out_of_range="wrap"
  )
  ids = np.array([[16, 100], [-7, 3]], np.int64)
  out, _ = _column_output(tfmh, cat, widths, {"ids": ids}, arrays)
  ref = np_lookup(arrays, np.mod(ids, 15), list(rows), "Q-R", "concat").sum(
      axis=1
  )
  np.testing.assert_allclose(out, ref, **TOL)
  strict = tfmh.categorical_column_with_multihash("ids", dims=rows)
  with pytest.raises(tf.errors.InvalidArgumentError, match="out of range"):
    _column_output(tfmh, strict, widths, {"ids": ids}, arrays)


def test_feature_column_hashes_strings(tfmh, rng):
  rows, widths = (4, 7), (2, 2)
  arrays = [
      rng.uniform(-1, 1, size=(r, w)).astype(np.float32)
      for r, w in zip(rows, widths)
  ]
  cat = tfmh.categorical_column_with_multihash(
      "s", dims=rows, dtype=tf.string, hash_strings=True, operation="add"
  )
  words = np.array([["apple", "pear"], ["kiwi", ""]], object)
  out, _ = _column_output(tfmh, cat, widths, {"s": words}, arrays)
  # TensorFlow's string hash (FarmHash fingerprint) mod the capacity.
  hashed = tf.strings.to_hash_bucket_fast(["apple", "pear", "kiwi"], 28).numpy()
  ref = np_lookup(arrays, hashed, list(rows), "Q-R", "add")
  np.testing.assert_allclose(out[0], ref[0] + ref[1], **TOL)
  np.testing.assert_allclose(out[1], ref[2], **TOL)  # "" is padding
  plain = tfmh.categorical_column_with_multihash(
      "s", dims=rows, operation="add"
  )
  with pytest.raises(ValueError, match="hash_strings=True"):
    _column_output(tfmh, plain, widths, {"s": words}, arrays)
  with pytest.raises(ValueError, match="tf.string with hash_strings=True"):
    tfmh.categorical_column_with_multihash("s", dims=rows, dtype=tf.string)


def test_feature_column_config_round_trip(tfmh):
  from tensorflow.python.feature_column import serialization

  cat = tfmh.categorical_column_with_multihash(
      "s",
      dims=(3, 5, 2),
      complementary_strategy="CRT",
      dtype=tf.string,
      hash_strings=True,
      out_of_range="wrap",
      operation="mul",
  )
  col = tfmh.embedding_column(cat, dimension=(4, 4, 4))
  back = serialization.deserialize_feature_column(
      serialization.serialize_feature_column(col)
  )
  assert back == col


def test_saved_model_k3_crt_wrap(tfmh, tmp_path):
  """The strategy and the wrap travel in the SavedModel's graph."""
  v = tfmh.get_multihash_variable(
      "sm",
      [[3, 4], [5, 4], [2, 4]],
      num_of_partitions=3,
      complementary_strategy="CRT",
      operation="mul",
      out_of_range="wrap",
  )
  module = tf.Module()
  module.emb = v
  module.lookup = tf.function(
      lambda ids: tfmh.embedding_lookup(v, ids),
      input_signature=[tf.TensorSpec([None], tf.int64)],
  )
  ids = tf.constant([0, 13, 29, 30, -1, 1000], tf.int64)
  expected = module.lookup(ids).numpy()
  tf.saved_model.save(module, str(tmp_path / "sm"))
  loaded = tf.saved_model.load(str(tmp_path / "sm"))
  np.testing.assert_array_equal(loaded.lookup(ids).numpy(), expected)
  arrays = [t.numpy() for t in v.tables]
  np.testing.assert_allclose(
      expected,
      np_lookup(arrays, np.mod(ids.numpy(), 30), [3, 5, 2], "CRT", "mul"),
      **TOL,
  )
