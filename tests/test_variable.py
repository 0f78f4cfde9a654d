"""get_multihash_variable / MultiHashVariable (SPEC 2, 3, 4, 7)."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.ops import resource_variable_ops

from mh_apiutil import (  # noqa: F401  (tfmh is a fixture)
    CAPACITY,
    DIMS,
    array_initializer,
    is_partitioned,
    np_lookup,
    out_width,
    sess_value,
    shards,
    eager_value,
    table_arrays,
    tfmh,
)

v1 = tf.compat.v1


def _is_resource(t):
  return isinstance(t, resource_variable_ops.BaseResourceVariable)


# ---------------------------------------------------------------- attributes
@pytest.mark.parametrize("operation", ["add", "mul", "mult", "concat"])
def test_attributes_eager(tfmh, rng, operation):
  dims = DIMS[operation]
  arrays = table_arrays(rng, dims)
  v = tfmh.get_multihash_variable(
      "attr_" + operation,
      dims,
      operation=operation,
      initializer=array_initializer(arrays),
  )
  assert isinstance(v, tfmh.MultiHashVariable)
  assert "attr_" + operation in v.name
  assert [list(d) for d in v.dims] == dims
  assert v.operation == ("mul" if operation == "mult" else operation)
  assert v.complementary_strategy == "Q-R"
  assert v.num_of_partitions == 2
  assert isinstance(v.dtype, tf.DType) and v.dtype == tf.float32
  assert v.capacity == CAPACITY
  assert v.embedding_dim == out_width(operation)
  assert [int(s) for s in v.shape] == [CAPACITY, out_width(operation)]
  assert len(v.tables) == 2
  assert list(v.val_list) == list(v.tables) or all(
      a is b for a, b in zip(v.val_list, v.tables)
  )
  assert [list(d) for d in v.mhvconfig.size] == dims
  assert len(v.variables) == 2 and len(v.trainable_variables) == 2
  for t, a in zip(v.tables, arrays):
    assert isinstance(t, tf.Variable)
    assert [int(s) for s in t.shape] == list(a.shape)
    np.testing.assert_array_equal(t.numpy(), a)


@pytest.mark.parametrize(
    "dtype",
    [tf.float32, tf.float64, tf.float16, tf.bfloat16, float],
    ids=["f32", "f64", "f16", "bf16", "pyfloat"],
)
def test_dtype(tfmh, dtype):
  v = tfmh.get_multihash_variable(
      "dt", [[2, 3], [4, 3]], dtype=dtype, initializer=tf.ones_initializer()
  )
  expected = tf.float32 if dtype is float else dtype
  assert isinstance(v.dtype, tf.DType) and v.dtype == expected
  for t in v.tables:
    assert t.dtype.base_dtype == expected
  y = tfmh.embedding_lookup(v, tf.constant([0, 7], tf.int64))
  assert y.dtype == expected
  np.testing.assert_array_equal(
      tf.cast(y, tf.float64).numpy(), np.full((2, 3), 2.0)
  )


def _check_truncated_normal(x):
  """x looks like a truncated normal (cut at 2 stddev) around 0."""
  x = np.asarray(x, np.float64).ravel()
  assert np.unique(x).size > x.size // 2, "values should be random"
  assert abs(x.mean()) < 0.2 * x.std() + 1e-6
  # The sample std of a normal truncated at 2 stddev is 0.88 stddev.
  stddev = x.std() / 0.8796
  bound = np.abs(x).max()
  assert bound <= 2.0 * stddev * 1.1, (bound, stddev)
  # Shape: P(|x| < stddev) = 0.683 / 0.954 = 0.715 for the truncated normal
  # (bound ~ 2 stddev); a uniform gives 0.5, an untruncated normal ~0.89.
  frac = float(np.mean(np.abs(x) < bound / 2))
  assert (
      0.62 < frac < 0.80
  ), f"not a truncated normal: P(|x| < max/2) = {frac:.3f}"


def test_default_initializer_truncated_normal_eager(tfmh):
  v = tfmh.get_multihash_variable("dflt", [[40, 16], [30, 16]])
  for t in v.tables:
    _check_truncated_normal(t.numpy())


@pytest.mark.tf1
def test_default_initializer_graph(tfmh):
  with tf.Graph().as_default():
    v = tfmh.get_multihash_variable("dflt", [[40, 16], [30, 16]])
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      for t in v.tables:
        _check_truncated_normal(sess_value(sess, t))


# --------------------------------------------------------------- graph mode
@pytest.mark.parametrize("use_resource", [False, True])
@pytest.mark.tf1
def test_graph_names_and_lookup(tfmh, rng, use_resource):
  dims = DIMS["add"]
  arrays = table_arrays(rng, dims)
  with tf.Graph().as_default():
    with v1.variable_scope("outer"):
      v = tfmh.get_multihash_variable(
          "emb",
          dims,
          initializer=array_initializer(arrays),
          use_resource=use_resource,
      )
    names = sorted(x.name for x in v1.trainable_variables())
    assert names == ["outer/emb/multhash_Q:0", "outer/emb/multhash_R:0"]
    assert sorted(x.name for x in v1.global_variables()) == names
    assert [t.name for t in v.tables] == names
    for t in v.tables:
      assert _is_resource(t) == use_resource, type(t)
    ids = np.array([[0, 14, 7], [7, 5, 4]])
    y = tf.nn.embedding_lookup(v, tf.constant(ids, tf.int64))
    assert y.shape.as_list() == [2, 3, 4]
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      np.testing.assert_allclose(
          sess.run(y), np_lookup(arrays, ids, "add"), rtol=1e-6, atol=1e-6
      )


@pytest.mark.tf1
def test_graph_default_use_resource_follows_scope(tfmh):
  with tf.Graph().as_default():
    with v1.variable_scope("r", use_resource=True):
      v = tfmh.get_multihash_variable("emb", DIMS["add"])
    assert all(_is_resource(t) for t in v.tables)
    with v1.variable_scope("nr", use_resource=False):
      w = tfmh.get_multihash_variable("emb", DIMS["add"])
    assert not any(_is_resource(t) for t in w.tables)


@pytest.mark.tf1
def test_scope_reuse(tfmh):
  with tf.Graph().as_default():
    with v1.variable_scope("s"):
      a = tfmh.get_multihash_variable("emb", DIMS["concat"], operation="concat")
    with v1.variable_scope("s", reuse=True):
      b = tfmh.get_multihash_variable("emb", DIMS["concat"], operation="concat")
    assert all(x is y for x, y in zip(a.tables, b.tables))
    with v1.variable_scope("s", reuse=v1.AUTO_REUSE):
      c = tfmh.get_multihash_variable("emb", DIMS["concat"], operation="concat")
    assert all(x is y for x, y in zip(a.tables, c.tables))
    assert len(v1.global_variables()) == 2
    with pytest.raises(ValueError):
      with v1.variable_scope("s"):
        tfmh.get_multihash_variable("emb", DIMS["concat"], operation="concat")
    with pytest.raises(ValueError):  # reuse=True of a missing variable
      with v1.variable_scope("missing", reuse=True):
        tfmh.get_multihash_variable("emb", DIMS["concat"], operation="concat")


@pytest.mark.tf1
def test_trainable_false(tfmh):
  with tf.Graph().as_default():
    v = tfmh.get_multihash_variable("emb", DIMS["add"], trainable=False)
    assert v1.trainable_variables() == []
    assert len(v1.global_variables()) == 2
    assert list(v.trainable_variables) == []
    assert len(v.variables) == 2


def test_trainable_false_eager(tfmh):
  v = tfmh.get_multihash_variable("emb_nt", DIMS["add"], trainable=False)
  assert all(not t.trainable for t in v.tables)
  assert list(v.trainable_variables) == []


@pytest.mark.tf1
def test_collections(tfmh):
  with tf.Graph().as_default():
    tfmh.get_multihash_variable(
        "emb",
        DIMS["add"],
        collections=["my_coll", v1.GraphKeys.GLOBAL_VARIABLES],
    )
    names = sorted(x.name for x in v1.get_collection("my_coll"))
    assert names == ["emb/multhash_Q:0", "emb/multhash_R:0"]
    assert len(v1.global_variables()) == 2


@pytest.mark.tf1
def test_regularizer(tfmh, rng):
  dims = DIMS["add"]
  arrays = table_arrays(rng, dims)
  with tf.Graph().as_default():
    tfmh.get_multihash_variable(
        "emb",
        dims,
        initializer=array_initializer(arrays),
        regularizer=lambda t: 0.5 * tf.reduce_sum(tf.square(t)),
    )
    losses = v1.get_collection(v1.GraphKeys.REGULARIZATION_LOSSES)
    assert len(losses) == 2
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      got = sorted(sess.run(losses))
    want = sorted(
        0.5 * float((a.astype(np.float64) ** 2).sum()) for a in arrays
    )
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.tf1
def test_constraint(tfmh):
  con = lambda t: tf.clip_by_value(t, -0.1, 0.1)  # noqa: E731
  with tf.Graph().as_default():
    v = tfmh.get_multihash_variable("emb", DIMS["add"], constraint=con)
    assert all(t.constraint is con for t in v.tables)
  w = tfmh.get_multihash_variable("emb_c", DIMS["add"], constraint=con)
  assert all(t.constraint is con for t in w.tables)


@pytest.mark.parametrize("where", ["argument", "scope"])
@pytest.mark.tf1
def test_custom_getter(tfmh, where):
  seen = []

  def getter(getter, name, *args, **kwargs):
    seen.append(name)
    return getter(name, *args, **kwargs)

  with tf.Graph().as_default():
    if where == "argument":
      with v1.variable_scope("cg"):
        v = tfmh.get_multihash_variable(
            "emb", DIMS["add"], custom_getter=getter
        )
    else:
      with v1.variable_scope("cg", custom_getter=getter):
        v = tfmh.get_multihash_variable("emb", DIMS["add"])
    assert sorted(seen) == ["cg/emb/multhash_Q", "cg/emb/multhash_R"]
    assert len(v.tables) == 2


@pytest.mark.tf1
def test_caching_device_and_sync_args_accepted(tfmh):
  with tf.Graph().as_default():
    v = tfmh.get_multihash_variable(
        "emb",
        DIMS["add"],
        caching_device="/cpu:0",
        validate_shape=True,
        synchronization=tf.VariableSynchronization.AUTO,
        aggregation=tf.VariableAggregation.NONE,
    )
    assert len(v.tables) == 2


# --------------------------------------------------------------- partitioner
PARTITIONERS = {
    "fixed3": (lambda: v1.fixed_size_partitioner(3), ([1, 1, 1], [2, 2, 1])),
    "minmax": (
        lambda: v1.min_max_variable_partitioner(
            max_partitions=3, min_slice_size=16
        ),
        ([1, 1, 1], [2, 2, 1]),
    ),
    "axis": (
        lambda: v1.variable_axis_size_partitioner(max_shard_bytes=32),
        ([2, 1], [2, 2, 1]),
    ),
}


@pytest.mark.parametrize("where", ["argument", "scope"])
@pytest.mark.parametrize("pname", sorted(PARTITIONERS))
@pytest.mark.parametrize("operation", ["add", "concat"])
@pytest.mark.tf1
def test_partitioned_graph(tfmh, rng, where, pname, operation):
  dims = [[3, 4], [5, 4]]
  if operation == "concat":
    dims = [[3, 4], [5, 2]]
  make, _ = PARTITIONERS[pname]
  arrays = table_arrays(rng, dims)
  ids = np.array([[0, 14, 7, 7], [3, 5, 10, 0]])
  with tf.Graph().as_default():
    kwargs = dict(operation=operation, initializer=array_initializer(arrays))
    if where == "argument":
      v = tfmh.get_multihash_variable("emb", dims, partitioner=make(), **kwargs)
    else:
      with v1.variable_scope("ps", partitioner=make()):
        v = tfmh.get_multihash_variable("emb", dims, **kwargs)
    n_shards = []
    for t, (rows, width) in zip(v.tables, dims):
      assert is_partitioned(t), type(t)
      sizes = [int(s.shape[0]) for s in shards(t)]
      assert sum(sizes) == rows and len(sizes) > 1, sizes
      assert all(int(s.shape[1]) == width for s in shards(t))
      n_shards.append(len(sizes))
    assert len(v.variables) == sum(n_shards)
    assert len(v.trainable_variables) == sum(n_shards)
    assert len(v1.trainable_variables()) == sum(n_shards)
    y = tf.nn.embedding_lookup(v, tf.constant(ids, tf.int32))
    y2 = tfmh.embedding_lookup(v, tf.constant(ids, tf.int64))
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      for t, a in zip(v.tables, arrays):
        np.testing.assert_array_equal(sess_value(sess, t), a)
      want = np_lookup(arrays, ids, operation)
      got, got2 = sess.run([y, y2])
      np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
      np.testing.assert_allclose(got2, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("pname", sorted(PARTITIONERS))
@pytest.mark.tf1
def test_partitioned_shard_sizes(tfmh, pname):
  make, expected = PARTITIONERS[pname]
  with tf.Graph().as_default():
    v = tfmh.get_multihash_variable("emb", [[3, 4], [5, 4]], partitioner=make())
    got = [[int(s.shape[0]) for s in shards(t)] for t in v.tables]
    assert got == [list(e) for e in expected]
    names = sorted(x.name for x in v1.trainable_variables())
    assert all(
        n.startswith("emb/multhash_Q/part_")
        or n.startswith("emb/multhash_R/part_")
        for n in names
    ), names


def test_partitioned_eager(tfmh, rng):
  dims = DIMS["mul"]
  arrays = table_arrays(rng, dims)
  v = tfmh.get_multihash_variable(
      "emb_pe",
      dims,
      operation="mul",
      initializer=array_initializer(arrays),
      partitioner=v1.fixed_size_partitioner(2),
  )
  for t, a in zip(v.tables, arrays):
    np.testing.assert_array_equal(eager_value(t), a)
  ids = np.array([0, 14, 6, 9, 9])
  np.testing.assert_allclose(
      tf.nn.embedding_lookup(v, ids).numpy(),
      np_lookup(arrays, ids, "mul"),
      rtol=1e-6,
      atol=1e-6,
  )


# ---------------------------------------------------- configuration errors
CONFIG_ERRORS = [
    (
        "strategy",
        dict(dims=[[2, 2], [2, 2]], complementary_strategy="X-Y"),
        r"^The strategy X-Y is not supported; complementary_strategy must be one of "
        r'"Q-R", "generalized-Q-R", "CRT"$',
    ),
    (
        "operation",
        dict(dims=[[2, 2], [2, 2]], operation="sub"),
        r'^The operation sub is not supported; operation must be one of "add", "mul", '
        r'"concat"',
    ),
    (
        "qr_three_partitions",
        dict(dims=[[2, 2], [2, 2], [2, 2]], num_of_partitions=3),
        r".",
    ),
    (
        "len_dims_3",
        dict(dims=[[2, 2], [2, 2], [2, 2]], num_of_partitions=2),
        r".",
    ),
    ("len_dims_1", dict(dims=[[2, 2]], num_of_partitions=2), r"."),
    (
        "add_unequal_widths",
        dict(dims=[[3, 4], [5, 3]], operation="add"),
        r"(?i)width",
    ),
    (
        "mul_unequal_widths",
        dict(dims=[[3, 4], [5, 3]], operation="mul"),
        r"(?i)width",
    ),
    (
        "mult_unequal_widths",
        dict(dims=[[3, 4], [5, 3]], operation="mult"),
        r"(?i)width",
    ),
    ("zero_rows", dict(dims=[[0, 2], [2, 2]]), r"(?i)row"),
    ("negative_rows", dict(dims=[[2, 2], [-2, 2]]), r"(?i)row"),
    ("float_rows", dict(dims=[[2.5, 2], [2, 2]]), r"(?i)row"),
    (
        "zero_width",
        dict(dims=[[2, 0], [2, 0]], operation="concat"),
        r"(?i)width",
    ),
    (
        "negative_width",
        dict(dims=[[2, 2], [2, -2]], operation="concat"),
        r"(?i)width",
    ),
    ("float_width", dict(dims=[[2, 2.5], [2, 2.5]]), r"(?i)width"),
    ("string_width", dict(dims=[[2, "2"], [2, "2"]]), r"(?i)width"),
]


@pytest.mark.parametrize(
    "case,kwargs,match", CONFIG_ERRORS, ids=[c[0] for c in CONFIG_ERRORS]
)
@pytest.mark.tf1
def test_config_errors_graph(tfmh, case, kwargs, match):
  with tf.Graph().as_default():
    kwargs = dict(kwargs)
    dims = kwargs.pop("dims")
    with pytest.raises(ValueError, match=match):
      tfmh.get_multihash_variable("bad", dims, **kwargs)
    assert v1.global_variables() == [], "no variable may be created on error"


@pytest.mark.parametrize(
    "case,kwargs,match",
    CONFIG_ERRORS[:4],
    ids=[c[0] for c in CONFIG_ERRORS[:4]],
)
def test_config_errors_eager(tfmh, case, kwargs, match):
  kwargs = dict(kwargs)
  dims = kwargs.pop("dims")
  with pytest.raises(ValueError, match=match):
    tfmh.get_multihash_variable("bad_eager", dims, **kwargs)


def test_mult_alias_lookup_equals_mul(tfmh, rng):
  dims = DIMS["mul"]
  arrays = table_arrays(rng, dims)
  a = tfmh.get_multihash_variable(
      "al_mult", dims, operation="mult", initializer=array_initializer(arrays)
  )
  ids = np.array([0, 3, 14, 9])
  np.testing.assert_allclose(
      tfmh.embedding_lookup(a, ids).numpy(),
      np_lookup(arrays, ids, "mul"),
      rtol=1e-6,
      atol=1e-6,
  )


@pytest.mark.tf1
def test_patched_getter_in_tf_namespaces(tfmh):
  assert callable(tf.get_multihash_variable)
  assert callable(tf.compat.v1.get_multihash_variable)
  with tf.Graph().as_default():
    a = tf.compat.v1.get_multihash_variable("a", DIMS["add"])
    b = tf.get_multihash_variable("b", DIMS["concat"], operation="concat")
    assert isinstance(a, tfmh.MultiHashVariable)
    assert isinstance(b, tfmh.MultiHashVariable)
    assert len(v1.trainable_variables()) == 4
