"""categorical_column_with_multihash / embedding_column (SPEC 6, with 3, 7, 8).

References are NumPy (np_pool below: compose each id first, then pool
the bag). TF1 tests build their own `tf.Graph()`; no global v1 switch.
"""

import re

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.feature_column import feature_column_v2 as fc2
from tensorflow.python.ops import variables as tf_variables

from mh_apiutil import array_initializer, clip_rows, np_lookup
from mh_testutil import ref_grads

v1 = tf.compat.v1
TOL = dict(rtol=1e-5, atol=1e-5)

# Unequal row counts on purpose: capacity 15, q = id // 5, r = id % 5
# (id // rows_Q would collide and run past the R table).
ROWS = (3, 5)
CAPACITY = ROWS[0] * ROWS[1]
WIDTHS = {"add": (4, 4), "mul": (4, 4), "concat": (3, 2)}
OPS = ("add", "mul", "concat")
COMBINERS = ("sum", "mean", "sqrtn")
KEY = "col_ids"
WKEY = "col_weights"

# A bag per row: repeated ids, boundaries 0 and 14, empty rows (one in the
# middle, one trailing: dense_shape says 6 rows, the last has no entries).
BAGS = [[14, 0, 14], [], [7], [3, 5, 9, 3, 12], [1, 1], []]
BATCH = len(BAGS)


def out_width(operation):
  w = WIDTHS[operation]
  return w[0] + w[1] if operation == "concat" else w[0]


@pytest.fixture(scope="session")
def tfmh():
  """The package; fails (not skips) while the feature column is missing."""
  import tensorflow_multihash as m

  for name in ("categorical_column_with_multihash", "embedding_column"):
    assert hasattr(m, name), f"tensorflow_multihash.{name} is missing"
  return m


def bag_arrays(bags, rng=None):
  indices, values = [], []
  for b, bag in enumerate(bags):
    for j, x in enumerate(bag):
      indices.append([b, j])
      values.append(x)
  weights = None
  if rng is not None:
    weights = rng.uniform(0.25, 2.0, size=len(values)).astype(np.float32)
  width = max([len(b) for b in bags] + [1])
  return (
      np.array(indices, np.int64).reshape(-1, 2),
      np.array(values, np.int64),
      weights,
      [len(bags), width],
  )


def sparse(indices, values, dense_shape, dtype=tf.int64):
  return tf.SparseTensor(
      indices=tf.constant(indices, tf.int64),
      values=tf.constant(values, dtype),
      dense_shape=tf.constant(dense_shape, tf.int64),
  )


def make_features(bags, weights_rng=None, id_dtype=tf.int64):
  """(features dict, np indices, np values, np weights or None)."""
  idx, vals, w, shape = bag_arrays(bags, weights_rng)
  feats = {KEY: sparse(idx, vals, shape, id_dtype)}
  if w is not None:
    feats[WKEY] = sparse(idx, w, shape, tf.float32)
  return feats, idx, vals, w


def make_columns(
    tfmh,
    operation,
    combiner="mean",
    weighted=False,
    partition_num=None,
    arrays=None,
    key=KEY,
    **emb_kw,
):
  cat = tfmh.categorical_column_with_multihash(
      key, dims=ROWS, operation=operation, partition_num=partition_num
  )
  if weighted:
    cat = tf.feature_column.weighted_categorical_column(cat, WKEY)
  if arrays is not None:
    emb_kw.setdefault("initializer", array_initializer(arrays))
  emb = tfmh.embedding_column(
      cat, dimension=WIDTHS[operation], combiner=combiner, **emb_kw
  )
  return emb


def random_tables(rng, operation, rows=ROWS):
  w = WIDTHS[operation]
  return [
      rng.uniform(-1.0, 1.0, size=(rows[0], w[0])).astype(np.float32),
      rng.uniform(-1.0, 1.0, size=(rows[1], w[1])).astype(np.float32),
  ]


def np_pool(arrays, operation, indices, values, weights, n_rows, combiner):
  """Compose each id's embedding, then pool each row (weighted)."""
  emb = np_lookup(arrays, np.asarray(values, np.int64), operation)
  width = (
      arrays[0].shape[1] + arrays[1].shape[1]
      if operation == "concat"
      else arrays[0].shape[1]
  )
  w = (
      np.ones(len(values))
      if weights is None
      else np.asarray(weights, np.float64)
  )
  out = np.zeros((n_rows, width))
  rows = np.asarray(indices).reshape(-1, 2)[:, 0]
  for b in range(n_rows):
    sel = rows == b
    if not sel.any():
      continue
    s = (w[sel, None] * emb[sel]).sum(axis=0)
    norm = {
        "sum": 1.0,
        "mean": w[sel].sum(),
        "sqrtn": np.sqrt((w[sel] ** 2).sum()),
    }[combiner]
    out[b] = s / norm
  return out


def ref_out(arrays, operation, idx, vals, w, combiner, n_rows=BATCH):
  return np_pool(arrays, operation, idx, vals, w, n_rows, combiner)


def ref_pooled_grads(arrays, operation, idx, vals, w, combiner, upstream):
  """Dense [dQ, dR] of sum(out * upstream): out[b] = sum_i c_i emb_i."""
  w = np.ones(len(vals)) if w is None else np.asarray(w, np.float64)
  rows = idx[:, 0]
  c = np.zeros(len(vals))
  for b in np.unique(rows):
    sel = rows == b
    norm = {
        "sum": 1.0,
        "mean": w[sel].sum(),
        "sqrtn": np.sqrt((w[sel] ** 2).sum()),
    }[combiner]
    c[sel] = w[sel] / norm
  per_id = c[:, None] * np.asarray(upstream, np.float64)[rows]
  return ref_grads(
      [np.asarray(a, np.float64) for a in arrays], vals, operation, per_id
  )


# ------------------------------------------------------------ variable lookup
def table_vars(which, key=KEY, variables=None):
  """The shards (in part order) of table `which` ('q' or 'r') of column `key`."""
  variables = v1.global_variables() if variables is None else variables
  pat = re.compile(r".*/embedding_weights_%s(/part_(\d+))?:0$" % which)
  found = []
  for v in variables:
    m = pat.match(v.name)
    if m and key in v.name:
      found.append((int(m.group(2)) if m.group(2) else -1, v))
  assert (
      found
  ), f"no embedding_weights_{which} for {key} in {[v.name for v in variables]}"
  return [v for _, v in sorted(found, key=lambda t: t[0])]


def check_table_layout(shards, which, full_shape, partition_num):
  names = [s.name for s in shards]
  if partition_num is None:
    assert len(shards) == 1, names
    assert names[0].endswith(f"/embedding_weights_{which}:0"), names
  else:
    assert (
        len(shards) == partition_num
    ), f"table {which}: expected {partition_num} shards, got {names}"
    for i, s in enumerate(shards):
      assert s.name.endswith(f"/embedding_weights_{which}/part_{i}:0"), names
      info = s._get_save_slice_info()  # pylint: disable=protected-access
      assert info is not None, f"{s.name} is not a partitioned-variable shard"
      assert info.full_name.endswith(
          f"/embedding_weights_{which}"
      ), info.full_name
      assert list(info.full_shape) == list(full_shape), info.full_shape
  rows = sum(int(s.shape[0]) for s in shards)
  assert [rows, int(shards[0].shape[1])] == list(full_shape), [
      s.shape for s in shards
  ]
  for s in shards:
    assert int(s.shape[1]) == full_shape[1]


# ======================================================= TF1 graph: the grid
@pytest.mark.parametrize("partition_num", [None, 2])
@pytest.mark.parametrize(
    "weighted", [False, True], ids=["unweighted", "weighted"]
)
@pytest.mark.parametrize("combiner", COMBINERS)
@pytest.mark.parametrize("operation", OPS)
@pytest.mark.tf1
def test_input_layer_forward_and_gradients(
    tfmh, rng, operation, combiner, weighted, partition_num
):
  arrays = random_tables(rng, operation)
  with tf.Graph().as_default():
    feats, idx, vals, w = make_features(BAGS, rng if weighted else None)
    col = make_columns(
        tfmh, operation, combiner, weighted, partition_num, arrays
    )
    out = v1.feature_column.input_layer(feats, [col])
    assert out.shape.as_list() == [BATCH, out_width(operation)]
    q_shards, r_shards = table_vars("q"), table_vars("r")
    check_table_layout(
        q_shards, "q", [ROWS[0], WIDTHS[operation][0]], partition_num
    )
    check_table_layout(
        r_shards, "r", [ROWS[1], WIDTHS[operation][1]], partition_num
    )
    trainable = set(v1.trainable_variables())
    assert all(s in trainable for s in q_shards + r_shards)

    upstream = rng.standard_normal((BATCH, out_width(operation))).astype(
        np.float32
    )
    loss = tf.reduce_sum(out * upstream)
    grads = v1.gradients(loss, q_shards + r_shards)
    for g, s in zip(grads, q_shards + r_shards):
      assert isinstance(g, tf.IndexedSlices), f"{s.name}: {type(g).__name__}"
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      got, qv, rv, gv = sess.run([out, q_shards, r_shards, grads])
  np.testing.assert_allclose(np.concatenate(qv), arrays[0], **TOL)
  np.testing.assert_allclose(np.concatenate(rv), arrays[1], **TOL)
  np.testing.assert_allclose(
      got,
      ref_out(arrays, operation, idx, vals, w, combiner),
      err_msg=f"{operation} {combiner} weighted={weighted}",
      **TOL,
  )
  for b in (1, 5):
    np.testing.assert_array_equal(got[b], 0.0, err_msg=f"empty row {b}")
  # Gradients: per-shard IndexedSlices, summed to dense, concatenated.
  dense = []
  for g in gv:
    d = np.zeros(g.dense_shape, np.float64)
    np.add.at(d, np.asarray(g.indices, np.int64), g.values)
    dense.append(d)
  nq = len(q_shards)
  ref_dq, ref_dr = ref_pooled_grads(
      arrays, operation, idx, vals, w, combiner, upstream
  )
  np.testing.assert_allclose(
      np.concatenate(dense[:nq]), ref_dq, err_msg="dQ", **TOL
  )
  np.testing.assert_allclose(
      np.concatenate(dense[nq:]), ref_dr, err_msg="dR", **TOL
  )


@pytest.mark.parametrize("operation", OPS)
@pytest.mark.tf1
def test_partitioned_three_shards_same_numbers(tfmh, rng, operation):
  arrays = random_tables(rng, operation)
  results = []
  for p in (None, 3):
    with tf.Graph().as_default():
      feats, idx, vals, w = make_features(BAGS)
      col = make_columns(
          tfmh, operation, "sqrtn", partition_num=p, arrays=arrays
      )
      out = v1.feature_column.input_layer(feats, [col])
      q, r = table_vars("q"), table_vars("r")
      check_table_layout(q, "q", [ROWS[0], WIDTHS[operation][0]], p)
      check_table_layout(r, "r", [ROWS[1], WIDTHS[operation][1]], p)
      with v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        results.append(sess.run(out))
  np.testing.assert_allclose(results[0], results[1], **TOL)
  np.testing.assert_allclose(
      results[1], ref_out(arrays, operation, idx, vals, None, "sqrtn"), **TOL
  )


@pytest.mark.tf1
def test_partitioned_variable_object(tfmh):
  """With partition_num both tables are PartitionedVariables in the scope."""
  with tf.Graph().as_default():
    feats, *_ = make_features(BAGS)
    col = make_columns(tfmh, "concat", partition_num=2)
    v1.feature_column.input_layer(feats, [col])
    q = table_vars("q")[0]
    scope = q.name[: q.name.index("/embedding_weights_q")]
    for which, shape in (("q", [ROWS[0], 3]), ("r", [ROWS[1], 2])):
      with v1.variable_scope(scope, reuse=True):
        t = v1.get_variable(
            "embedding_weights_" + which,
            shape=shape,
            partitioner=v1.fixed_size_partitioner(2),
        )
      assert isinstance(t, tf_variables.PartitionedVariable), type(t)
      assert len(list(t)) == 2
      assert list(t) == table_vars(which)


# =============================================================== namespaces
CAT_CTORS = {
    "tfmh": lambda m: m.categorical_column_with_multihash,
    "tf.feature_column": lambda m: tf.feature_column.categorical_column_with_multihash,
    "v1.feature_column": lambda m: v1.feature_column.categorical_column_with_multihash,
    "fc2": lambda m: fc2.categorical_column_with_multihash,
}
EMB_CTORS = {
    "tfmh": lambda m: m.embedding_column,
    "tf.feature_column": lambda m: tf.feature_column.embedding_column,
    "v1.feature_column": lambda m: v1.feature_column.embedding_column,
    "fc2": lambda m: fc2.embedding_column,
}


@pytest.mark.parametrize("emb_ctor", sorted(EMB_CTORS))
@pytest.mark.parametrize("cat_ctor", sorted(CAT_CTORS))
@pytest.mark.tf1
def test_every_namespace(tfmh, rng, cat_ctor, emb_ctor):
  operation = "mul"
  arrays = random_tables(rng, operation)
  with tf.Graph().as_default():
    feats, idx, vals, w = make_features(BAGS, rng)
    cat = CAT_CTORS[cat_ctor](tfmh)(KEY, dims=ROWS, operation=operation)
    wcat = tf.feature_column.weighted_categorical_column(cat, WKEY)
    col = EMB_CTORS[emb_ctor](tfmh)(
        wcat,
        dimension=WIDTHS[operation],
        combiner="sum",
        initializer=array_initializer(arrays),
    )
    out = v1.feature_column.input_layer(feats, [col])
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      got = sess.run(out)
  np.testing.assert_allclose(
      got, ref_out(arrays, operation, idx, vals, w, "sum"), **TOL
  )


@pytest.mark.parametrize("emb_ctor", sorted(set(EMB_CTORS) - {"tfmh"}))
@pytest.mark.tf1
def test_embedding_column_unchanged_for_other_columns(tfmh, emb_ctor):
  """TF's patched embedding_column still behaves as before for identity
  columns (tfmh.embedding_column itself may reject them)."""
  ctor = EMB_CTORS[emb_ctor](tfmh)
  ident = tf.feature_column.categorical_column_with_identity(
      KEY, num_buckets=CAPACITY
  )
  table = np.arange(CAPACITY * 4, dtype=np.float32).reshape(CAPACITY, 4) / 10.0
  col = ctor(
      ident,
      dimension=4,
      combiner="sum",
      initializer=tf.constant_initializer(table),
  )
  assert type(col).__name__ == "EmbeddingColumn", type(col)
  assert col.dimension == 4
  with tf.Graph().as_default():
    feats, idx, vals, _ = make_features(BAGS)
    out = v1.feature_column.input_layer(feats, [col])
    names = [v.name for v in v1.global_variables()]
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      got = sess.run(out)
  assert names == [f"input_layer/{KEY}_embedding/embedding_weights:0"], names
  ref = np.zeros((BATCH, 4))
  for (b, _), x in zip(idx, vals):
    ref[b] += table[x]
  np.testing.assert_allclose(got, ref, **TOL)
  # A pair dimension for a non-multihash column keeps TF's own failure.
  with pytest.raises((ValueError, TypeError)):
    ctor(ident, dimension=(2, 3))


# ======================================================== naming and init
@pytest.mark.tf1
def test_variable_names_shapes_and_key(tfmh):
  with tf.Graph().as_default():
    feats, *_ = make_features(BAGS)
    feats["other_ids"] = feats[KEY]
    a = make_columns(tfmh, "concat")
    b = make_columns(tfmh, "add", key="other_ids")
    v1.feature_column.input_layer(feats, [a, b])
    names = sorted(v.name for v in v1.global_variables())
    assert len(names) == 4, names
    for key, op in ((KEY, "concat"), ("other_ids", "add")):
      (q,), (r,) = table_vars("q", key), table_vars("r", key)
      assert q.shape.as_list() == [ROWS[0], WIDTHS[op][0]], q
      assert r.shape.as_list() == [ROWS[1], WIDTHS[op][1]], r
      assert q.name.startswith("input_layer/"), q.name
      assert q.name.rsplit("/", 1)[0] == r.name.rsplit("/", 1)[0], (
          q.name,
          r.name,
      )
    # No extra (e.g. DeepRec multhash_Q) or full-capacity tables.
    assert not any(CAPACITY == v.shape[0] for v in v1.global_variables())


@pytest.mark.parametrize(
    "operation,widths", [("concat", (6, 10)), ("add", (9, 9)), ("mul", (9, 9))]
)
@pytest.mark.tf1
def test_default_initializer_truncated_normal(tfmh, operation, widths):
  rows = (40, 50)
  stddev = 1.0 / np.sqrt(
      widths[0] + widths[1] if operation == "concat" else widths[0]
  )
  with tf.Graph().as_default():
    feats, *_ = make_features(BAGS)
    cat = tfmh.categorical_column_with_multihash(
        KEY, dims=rows, operation=operation
    )
    col = tfmh.embedding_column(cat, dimension=widths)
    v1.feature_column.input_layer(feats, [col])
    q, r = table_vars("q")[0], table_vars("r")[0]
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      qv, rv = sess.run([q, r])
  for name, t in (("Q", qv), ("R", rv)):
    assert np.all(
        np.abs(t) <= 2 * stddev * (1 + 1e-6)
    ), f"{name}: max |v| {np.abs(t).max()} > 2 * stddev {stddev}"
    assert np.unique(t).size > t.size // 2, f"{name} looks constant"
    # A normal truncated at 2 sigma has std ~= 0.88 sigma.
    assert 0.7 * stddev < t.std() < 1.0 * stddev, (name, t.std(), stddev)
    assert abs(t.mean()) < 0.2 * stddev, (name, t.mean())


@pytest.mark.tf1
def test_list_dims_and_dimension(tfmh, rng):
  """Lists work like tuples for dims and dimension (the seed uses tuples)."""
  arrays = random_tables(rng, "concat")
  with tf.Graph().as_default():
    feats, idx, vals, _ = make_features(BAGS)
    cat = tfmh.categorical_column_with_multihash(KEY, dims=list(ROWS))
    col = tf.feature_column.embedding_column(
        cat,
        dimension=list(WIDTHS["concat"]),
        initializer=array_initializer(arrays),
    )
    out = v1.feature_column.input_layer(feats, [col])
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      got = sess.run(out)
  np.testing.assert_allclose(
      got, ref_out(arrays, "concat", idx, vals, None, "mean"), **TOL
  )


@pytest.mark.tf1
def test_trainable_false(tfmh):
  with tf.Graph().as_default():
    feats, *_ = make_features(BAGS)
    col = make_columns(tfmh, "concat", trainable=False)
    v1.feature_column.input_layer(feats, [col])
    tabs = table_vars("q") + table_vars("r")
    assert not set(tabs) & set(
        v1.trainable_variables()
    ), v1.trainable_variables()


@pytest.mark.parametrize("operation", OPS)
@pytest.mark.tf1
def test_max_norm_clips_each_composed_embedding(tfmh, rng, operation):
  """Same convention as embedding_lookup(max_norm=): clip each id's composed
  embedding, then pool."""
  arrays = random_tables(rng, operation)
  idx, vals, _, shape = bag_arrays(BAGS)
  raw = np_lookup(arrays, np.arange(CAPACITY), operation)
  max_norm = float(np.median(np.linalg.norm(raw, axis=-1)))
  with tf.Graph().as_default():
    feats = {KEY: sparse(idx, vals, shape)}
    col = make_columns(
        tfmh, operation, "mean", arrays=arrays, max_norm=max_norm
    )
    out = v1.feature_column.input_layer(feats, [col])
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      got = sess.run(out)
  clipped = clip_rows(raw, max_norm)
  ref = np.zeros((BATCH, out_width(operation)))
  for b, bag in enumerate(BAGS):
    if bag:
      ref[b] = clipped[bag].mean(axis=0)
  np.testing.assert_allclose(got, ref, **TOL)


# ============================================================ input forms
@pytest.mark.parametrize("id_dtype", [tf.int64, tf.int32])
@pytest.mark.tf1
def test_dense_batch_by_one_input(tfmh, rng, id_dtype):
  """A dense [batch, 1] int tensor works like the SparseTensor of it."""
  operation = "concat"
  arrays = random_tables(rng, operation)
  ids = np.array([[14], [0], [7], [3]], np.int64)
  with tf.Graph().as_default():
    col = make_columns(tfmh, operation, "mean", arrays=arrays)
    out = v1.feature_column.input_layer(
        {KEY: tf.constant(ids, id_dtype)}, [col]
    )
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      got = sess.run(out)
  idx = np.c_[np.arange(4), np.zeros(4)].astype(np.int64)
  np.testing.assert_allclose(
      got,
      ref_out(arrays, operation, idx, ids[:, 0], None, "mean", n_rows=4),
      **TOL,
  )


@pytest.mark.tf1
def test_int32_sparse_ids(tfmh, rng):
  operation = "add"
  arrays = random_tables(rng, operation)
  with tf.Graph().as_default():
    feats, idx, vals, _ = make_features(BAGS, id_dtype=tf.int32)
    col = make_columns(tfmh, operation, "sum", arrays=arrays)
    out = v1.feature_column.input_layer(feats, [col])
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      got = sess.run(out)
  np.testing.assert_allclose(
      got, ref_out(arrays, operation, idx, vals, None, "sum"), **TOL
  )


@pytest.mark.tf1
def test_placeholder_feed_and_all_empty_batch(tfmh, rng):
  operation = "concat"
  arrays = random_tables(rng, operation)
  with tf.Graph().as_default():
    ph = v1.sparse_placeholder(tf.int64, shape=[None, None])
    col = make_columns(tfmh, operation, "mean", arrays=arrays)
    out = v1.feature_column.input_layer({KEY: ph}, [col])
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      for bags in (BAGS, [[], [], []], [[4, 4, 4, 4]]):
        idx, vals, _, shape = bag_arrays(bags)
        got = sess.run(out, {ph: v1.SparseTensorValue(idx, vals, shape)})
        np.testing.assert_allclose(
            got,
            ref_out(
                arrays, operation, idx, vals, None, "mean", n_rows=len(bags)
            ),
            err_msg=str(bags),
            **TOL,
        )


@pytest.mark.tf1
def test_with_other_columns_in_input_layer(tfmh, rng):
  """input_layer orders columns by name: 'a_num' < 'b_ids_...'"""
  operation = "concat"
  arrays = random_tables(rng, operation)
  with tf.Graph().as_default():
    feats, idx, vals, _ = make_features(BAGS)
    feats["b_ids"] = feats.pop(KEY)
    num = rng.standard_normal((BATCH, 2)).astype(np.float32)
    feats["a_num"] = tf.constant(num)
    col = make_columns(tfmh, operation, "sum", arrays=arrays, key="b_ids")
    out = v1.feature_column.input_layer(
        feats, [col, tf.feature_column.numeric_column("a_num", shape=(2,))]
    )
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      got = sess.run(out)
  ref = np.concatenate(
      [num, ref_out(arrays, operation, idx, vals, None, "sum")], axis=1
  )
  np.testing.assert_allclose(got, ref, **TOL)


def test_parse_example_spec(tfmh):
  cat = tfmh.categorical_column_with_multihash(KEY, dims=ROWS)
  col = tfmh.embedding_column(cat, dimension=(2, 3))
  spec = tf.feature_column.make_parse_example_spec([col])
  assert spec == {KEY: tf.io.VarLenFeature(tf.int64)}, spec


# ================================================================ training
def _adagrad(x, g, acc, lr=0.1):
  acc = acc + g * g
  return x - lr * g / np.sqrt(acc), acc


@pytest.mark.parametrize("partition_num", [None, 2])
@pytest.mark.parametrize("operation", OPS)
@pytest.mark.tf1
def test_adagrad_training_matches_numpy(tfmh, rng, operation, partition_num):
  arrays = random_tables(rng, operation)
  with tf.Graph().as_default():
    feats, idx, vals, w = make_features(BAGS, rng)
    col = make_columns(tfmh, operation, "mean", True, partition_num, arrays)
    out = v1.feature_column.input_layer(feats, [col])
    upstream = rng.standard_normal((BATCH, out_width(operation))).astype(
        np.float32
    )
    loss = tf.reduce_sum(out * upstream)
    opt = v1.train.AdagradOptimizer(0.1)
    g_v = opt.compute_gradients(loss)
    assert len(g_v) == 2 * (partition_num or 1), g_v
    for g, v in g_v:
      assert isinstance(g, tf.IndexedSlices), (v.name, type(g).__name__)
    train = opt.apply_gradients(g_v)
    q, r = table_vars("q"), table_vars("r")
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      outs = []
      for _ in range(3):
        o, _ = sess.run([out, train])
        outs.append(o)
      qv, rv = sess.run([q, r])
  ref = [a.astype(np.float64) for a in arrays]
  accs = [np.full_like(a, 0.1) for a in ref]
  for step in range(3):
    np.testing.assert_allclose(
        outs[step],
        ref_out(ref, operation, idx, vals, w, "mean"),
        err_msg=f"step {step}",
        rtol=1e-4,
        atol=1e-4,
    )
    grads = ref_pooled_grads(ref, operation, idx, vals, w, "mean", upstream)
    for j in range(2):
      ref[j], accs[j] = _adagrad(ref[j], grads[j], accs[j])
  np.testing.assert_allclose(np.concatenate(qv), ref[0], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.concatenate(rv), ref[1], rtol=1e-4, atol=1e-4)


SEQ = [1.0, 0.9003111, 0.8297106, 0.7720356]


@pytest.mark.parametrize("via", ["tf.feature_column", "fc2"])
@pytest.mark.tf1
def test_seed_example_2_in_graph(tfmh, via):
  """Seed example 2, in a private graph (no disable_v2_behavior)."""
  with tf.Graph().as_default():
    columns = fc2.categorical_column_with_multihash("col_emb", dims=(2, 2))
    emb_ctor = (
        tf.feature_column.embedding_column
        if via == "tf.feature_column"
        else fc2.embedding_column
    )
    W = emb_ctor(
        categorical_column=columns,
        dimension=(2, 3),
        initializer=v1.ones_initializer(tf.dtypes.float32),
    )
    ids = {
        "col_emb": tf.SparseTensor(
            indices=[[0, 0], [1, 1], [2, 2], [3, 3]],
            values=tf.cast([0, 1, 2, 3], tf.dtypes.int64),
            dense_shape=[4, 4],
        )
    }
    emb = v1.feature_column.input_layer(ids, [W])
    loss1 = tf.reduce_sum(tf.multiply(emb, 2.0))
    opt = v1.train.AdagradOptimizer(0.1)
    train_op = opt.apply_gradients(opt.compute_gradients(loss1))
    tabs = table_vars("q", "col_emb") + table_vars("r", "col_emb")
    assert [t.shape.as_list() for t in tabs] == [[2, 2], [2, 3]]
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      for step in range(3):
        e, _ = sess.run([emb, train_op])
        assert e.shape == (4, 5)
        np.testing.assert_allclose(
            e, SEQ[step], rtol=0, atol=5e-7, err_msg=f"step {step}"
        )
      for t in sess.run(tabs):
        np.testing.assert_allclose(t, SEQ[3], rtol=0, atol=5e-7)


# ================================================================== Keras
@pytest.fixture(scope="module")
def tf_keras():
  return pytest.importorskip("tf_keras")


@pytest.mark.parametrize(
    "weighted", [False, True], ids=["unweighted", "weighted"]
)
@pytest.mark.parametrize("operation", OPS)
def test_dense_features_eager(tfmh, tf_keras, rng, operation, weighted):
  combiner = "sqrtn" if weighted else "mean"
  arrays = random_tables(rng, operation)
  feats, idx, vals, w = make_features(BAGS, rng if weighted else None)
  col = make_columns(tfmh, operation, combiner, weighted, arrays=arrays)
  layer = tf_keras.layers.DenseFeatures([col])
  upstream = rng.standard_normal((BATCH, out_width(operation))).astype(
      np.float32
  )
  with tf.GradientTape() as tape:
    out = layer(feats)
    loss = tf.reduce_sum(out * upstream)
  ref = ref_out(arrays, operation, idx, vals, w, combiner)
  np.testing.assert_allclose(out.numpy(), ref, **TOL)
  tvars = layer.trainable_variables
  assert len(tvars) == 2, [v.name for v in tvars]
  q, r = table_vars("q", variables=tvars), table_vars("r", variables=tvars)
  assert q[0].shape.as_list() == [ROWS[0], WIDTHS[operation][0]]
  assert r[0].shape.as_list() == [ROWS[1], WIDTHS[operation][1]]
  gq, gr = tape.gradient(loss, [q[0], r[0]])
  ref_dq, ref_dr = ref_pooled_grads(
      arrays, operation, idx, vals, w, combiner, upstream
  )
  for g, ref_g, name in ((gq, ref_dq, "dQ"), (gr, ref_dr, "dR")):
    assert isinstance(g, tf.IndexedSlices), (name, type(g).__name__)
    d = tf.convert_to_tensor(g).numpy()
    np.testing.assert_allclose(d, ref_g, err_msg=name, **TOL)

  @tf.function
  def f(x):
    return layer(x)

  np.testing.assert_allclose(f(feats).numpy(), ref, **TOL)


def test_dense_features_keras_training_step(tfmh, tf_keras, rng):
  operation = "concat"
  arrays = random_tables(rng, operation)
  feats, idx, vals, _ = make_features(BAGS)
  layer = tf_keras.layers.DenseFeatures(
      [make_columns(tfmh, operation, "sum", arrays=arrays)]
  )
  opt = tf_keras.optimizers.SGD(0.5)
  upstream = rng.standard_normal((BATCH, out_width(operation))).astype(
      np.float32
  )
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(layer(feats) * upstream)
  tvars = layer.trainable_variables
  opt.apply_gradients(zip(tape.gradient(loss, tvars), tvars))
  dq, dr = ref_pooled_grads(arrays, operation, idx, vals, None, "sum", upstream)
  q, r = (
      table_vars("q", variables=tvars)[0],
      table_vars("r", variables=tvars)[0],
  )
  np.testing.assert_allclose(q.numpy(), arrays[0] - 0.5 * dq, **TOL)
  np.testing.assert_allclose(r.numpy(), arrays[1] - 0.5 * dr, **TOL)


# ============================================================== bad input
@pytest.mark.parametrize("dtype", [tf.string, tf.float32, tf.float64])
def test_non_integer_column_dtype(tfmh, dtype):
  with pytest.raises((ValueError, TypeError)):
    tfmh.categorical_column_with_multihash(KEY, dims=ROWS, dtype=dtype)


@pytest.mark.parametrize(
    "values,dtype", [(["a", "b"], tf.string), ([1.0, 2.0], tf.float32)]
)
@pytest.mark.tf1
def test_non_integer_input_at_build(tfmh, values, dtype):
  with tf.Graph().as_default():
    feats = {KEY: sparse([[0, 0], [1, 0]], values, [2, 1], dtype)}
    col = make_columns(tfmh, "concat")
    with pytest.raises((ValueError, TypeError)):
      v1.feature_column.input_layer(feats, [col])


@pytest.mark.parametrize("dimension", [4, (4,), [4], (2, 3, 4), None, "ab"])
def test_dimension_not_a_pair(tfmh, dimension):
  cat = tfmh.categorical_column_with_multihash(KEY, dims=ROWS)
  for ctor in (
      tfmh.embedding_column,
      tf.feature_column.embedding_column,
      v1.feature_column.embedding_column,
  ):
    with pytest.raises(ValueError, match="MultiHashVariable dimension error"):
      ctor(cat, dimension=dimension)


@pytest.mark.parametrize("operation", ["add", "mul"])
@pytest.mark.tf1
def test_unequal_widths_for_add_mul(tfmh, operation):
  with tf.Graph().as_default():
    feats, *_ = make_features(BAGS)
    with pytest.raises(ValueError):
      cat = tfmh.categorical_column_with_multihash(
          KEY, dims=ROWS, operation=operation
      )
      col = tfmh.embedding_column(cat, dimension=(3, 2))
      v1.feature_column.input_layer(feats, [col])


@pytest.mark.parametrize(
    "dims", [(0, 5), (3, 0), (-1, 5), (3,), (3, 5, 2), (2.5, 3), (3, "5"), 15]
)
def test_bad_dims(tfmh, dims):
  with pytest.raises((ValueError, TypeError)):
    tfmh.categorical_column_with_multihash(KEY, dims=dims)


def test_bad_operation_strategy_combiner(tfmh):
  with pytest.raises(ValueError, match="not supported"):
    tfmh.categorical_column_with_multihash(KEY, dims=ROWS, operation="max")
  with pytest.raises(ValueError, match="not supported"):
    tfmh.categorical_column_with_multihash(
        KEY, dims=ROWS, complementary_strategy="mod"
    )
  cat = tfmh.categorical_column_with_multihash(KEY, dims=ROWS)
  with pytest.raises(ValueError):
    tfmh.embedding_column(cat, dimension=(2, 3), combiner="max")


@pytest.mark.parametrize("bad", [CAPACITY, 100])
@pytest.mark.tf1
def test_out_of_range_id_at_run_time(tfmh, rng, bad):
  operation = "concat"
  arrays = random_tables(rng, operation)
  with tf.Graph().as_default():
    ph = v1.sparse_placeholder(tf.int64, shape=[None, None])
    col = make_columns(tfmh, operation, "sum", arrays=arrays)
    out = v1.feature_column.input_layer({KEY: ph}, [col])
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      bad_bags = [[1, 2], [bad, 4]]
      idx, vals, _, shape = bag_arrays(bad_bags)
      with pytest.raises(
          tf.errors.InvalidArgumentError, match=re.escape(str(bad))
      ):
        sess.run(out, {ph: v1.SparseTensorValue(idx, vals, shape)})
      # Nothing corrupted: a good batch afterwards gives the right numbers.
      idx, vals, _, shape = bag_arrays(BAGS)
      got = sess.run(out, {ph: v1.SparseTensorValue(idx, vals, shape)})
  np.testing.assert_allclose(
      got, ref_out(arrays, operation, idx, vals, None, "sum"), **TOL
  )


@pytest.mark.tf1
def test_negative_id_is_an_error(tfmh, rng):
  """A negative id in a SparseTensor is an InvalidArgumentError naming it
  (SPEC 7), never a read of some other row nor silently dropped; the
  session keeps working afterwards."""
  operation = "add"
  arrays = random_tables(rng, operation)
  bags = [[1, -3], [-3], [4, 4]]
  good = [[1, 2], [3], [4, 4]]
  with tf.Graph().as_default():
    ph = v1.sparse_placeholder(tf.int64)
    col = make_columns(tfmh, operation, "mean", arrays=arrays)
    out = v1.feature_column.input_layer({KEY: ph}, [col])
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      idx, vals, _, shape = bag_arrays(bags)
      with pytest.raises(tf.errors.InvalidArgumentError, match="-3"):
        sess.run(out, {ph: v1.SparseTensorValue(idx, vals, shape)})
      idx, vals, _, shape = bag_arrays(good)
      got = sess.run(out, {ph: v1.SparseTensorValue(idx, vals, shape)})
  np.testing.assert_allclose(
      got, ref_out(arrays, operation, idx, vals, None, "mean", n_rows=3), **TOL
  )


_ALIASES_CODE = r"""
import importlib
FIRST, SECOND = %r
for name in (FIRST, SECOND):
    importlib.import_module(name)
import tensorflow as tf
import tensorflow.compat.v1 as t1
from tensorflow.python.feature_column import feature_column_v2 as fc2
missing = []
for label, ns, attr in [
        ("tf", tf, "get_multihash_variable"),
        ("tf.compat.v1", tf.compat.v1, "get_multihash_variable"),
        ("tensorflow.compat.v1", t1, "get_multihash_variable"),
        ("tf.feature_column", tf.feature_column, "categorical_column_with_multihash"),
        ("tf.compat.v1.feature_column", tf.compat.v1.feature_column,
         "categorical_column_with_multihash"),
        ("tensorflow.compat.v1.feature_column", t1.feature_column,
         "categorical_column_with_multihash"),
        ("fc2", fc2, "categorical_column_with_multihash")]:
    if not hasattr(ns, attr):
        missing.append(label + "." + attr)
cat = fc2.categorical_column_with_multihash("k", dims=(3, 5))
for label, ctor in [("tf.compat.v1.feature_column", tf.compat.v1.feature_column.embedding_column),
                    ("tensorflow.compat.v1.feature_column", t1.feature_column.embedding_column),
                    ("tf.feature_column", tf.feature_column.embedding_column)]:
    try:
        ctor(cat, dimension=(2, 3))
    except Exception as e:
        missing.append(label + ".embedding_column: " + repr(e)[:200])
print("MISSING", missing)
"""


@pytest.mark.parametrize(
    "order",
    [
        ("tensorflow_multihash", "tf_keras"),
        ("tf_keras", "tensorflow_multihash"),
    ],
    ids=["tfmh_then_tf_keras", "tf_keras_then_tfmh"],
)
def test_aliases_survive_tf_keras_import(tfmh, order):
  """Importing tf_keras (which swaps tf.compat.v1 for a module wrapper) before
  or after tensorflow_multihash keeps every DeepRec alias (SPEC 5)."""
  pytest.importorskip("tf_keras")
  import os
  import subprocess
  import sys

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  p = subprocess.run(
      [sys.executable, "-c", _ALIASES_CODE % (order,)],
      cwd=root,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert p.returncode == 0, p.stderr[-3000:]
  line = [x for x in p.stdout.splitlines() if x.startswith("MISSING ")]
  assert line and line[-1] == "MISSING []", p.stdout
