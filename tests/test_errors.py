"""Out-of-range ids, bad configurations and bad id dtypes."""

import numpy as np
import pytest
import tensorflow as tf

from mh_testutil import (
    FWD_TOL,
    assert_close,
    make_ids,
    random_full_tables,
    ref_lookup,
    split_rows,
)

dtype_id = lambda d: d.name  # noqa: E731
ROWS = (3, 5)
CAPACITY = 15
BAD_IDS = [
    (-1, tf.int32),
    (-3, tf.int64),
    (15, tf.int32),
    (22, tf.int64),
    (1000, tf.int32),
    (-(2**31), tf.int32),
    (2**31 - 1, tf.int32),
    (2**40, tf.int64),
    (2**32 + 3, tf.int64),
    (-(2**63), tf.int64),
]
BAD_IDS_IDS = [f"{b}-{d.name}" for b, d in BAD_IDS]


def _make_var_tables(rng):
  full32 = random_full_tables(rng, ROWS, (2, 2))
  tables = [
      [tf.Variable(s) for s in split_rows(full32[0], [2, 1])],
      tf.Variable(full32[1]),
  ]
  return full32, tables


def _check_message(err, bad):
  msg = str(err)
  assert str(bad) in msg, f"bad id {bad} not in message: {msg}"
  assert str(CAPACITY) in msg, f"capacity {CAPACITY} not in message: {msg}"


def _assert_tables_unchanged(tables, full32):
  np.testing.assert_array_equal(
      np.concatenate([v.numpy() for v in tables[0]]), full32[0]
  )
  np.testing.assert_array_equal(tables[1].numpy(), full32[1])


@pytest.mark.parametrize("bad,id_dtype", BAD_IDS, ids=BAD_IDS_IDS)
def test_bad_id_eager(mh, rng, bad, id_dtype):
  full32, tables = _make_var_tables(rng)
  ref = [a.astype(np.float64) for a in full32]
  for operation in ("add", "concat"):
    ids = tf.constant([[0, 3], [bad, 14]], id_dtype)
    with pytest.raises(tf.errors.InvalidArgumentError) as e:
      mh.multihash_lookup(tables, ids, operation=operation)
    _check_message(e.value, bad)
  # Still works afterwards; tables unchanged.
  good = make_ids(rng, CAPACITY, (5,))
  y = mh.multihash_lookup(tables, tf.constant(good, id_dtype), operation="add")
  assert_close(y.numpy(), ref_lookup(ref, good, "add"), FWD_TOL[tf.float32])
  _assert_tables_unchanged(tables, full32)


@pytest.mark.parametrize("bad", [-1, 15, 2**32 + 3])
def test_bad_id_under_gradient_tape(mh, rng, bad):
  full32, tables = _make_var_tables(rng)
  with pytest.raises(tf.errors.InvalidArgumentError) as e:
    with tf.GradientTape():
      mh.multihash_lookup(
          tables, tf.constant([1, bad], tf.int64), operation="mul"
      )
  _check_message(e.value, bad)
  _assert_tables_unchanged(tables, full32)


@pytest.mark.parametrize("bad", [-2, 15, 2**32 + 3])
def test_bad_id_raw_grad_op(mh, rng, bad):
  full32, tables = _make_var_tables(rng)
  with pytest.raises(tf.errors.InvalidArgumentError) as e:
    mh.multihash_lookup_grad(
        tf.ones([2, 2]),
        tables,
        tf.constant([1, bad], tf.int64),
        operation="add",
    )
  _check_message(e.value, bad)


def test_bad_id_tf_function(mh, rng):
  full32, tables = _make_var_tables(rng)
  ref = [a.astype(np.float64) for a in full32]

  @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
  def lookup(ids):
    return mh.multihash_lookup(tables, ids, operation="concat")

  @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
  def train_step(ids):
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(mh.multihash_lookup(tables, ids, operation="concat"))
    flat = tables[0] + [tables[1]]
    for v, g in zip(flat, tape.gradient(loss, flat)):
      v.scatter_sub(g)
    return loss

  good = make_ids(rng, CAPACITY, (6,))
  assert_close(
      lookup(tf.constant(good)).numpy(),
      ref_lookup(ref, good, "concat"),
      FWD_TOL[tf.float32],
  )
  for bad in (-7, 15, 16, 2**40):
    with pytest.raises(tf.errors.InvalidArgumentError) as e:
      lookup(tf.constant([0, 14, bad, 3], tf.int64))
    _check_message(e.value, bad)
    with pytest.raises(tf.errors.InvalidArgumentError) as e:
      train_step(tf.constant([0, bad], tf.int64))
    _check_message(e.value, bad)
    _assert_tables_unchanged(tables, full32)
  assert_close(
      lookup(tf.constant(good)).numpy(),
      ref_lookup(ref, good, "concat"),
      FWD_TOL[tf.float32],
  )


@pytest.mark.parametrize("use_resource", [False, True])
@pytest.mark.tf1
def test_bad_id_tf1_session(mh, rng, use_resource):
  full32 = random_full_tables(rng, ROWS, (2, 2))
  ref = [a.astype(np.float64) for a in full32]
  with tf.Graph().as_default():
    q = [
        tf.compat.v1.get_variable(
            f"q{i}", initializer=s, use_resource=use_resource
        )
        for i, s in enumerate(split_rows(full32[0], [1, 2]))
    ]
    r = tf.compat.v1.get_variable(
        "r", initializer=full32[1], use_resource=use_resource
    )
    ids = tf.compat.v1.placeholder(tf.int64, [None])
    y = mh.multihash_lookup([q, r], ids, operation="add")
    train = tf.compat.v1.train.AdagradOptimizer(0.5).minimize(tf.reduce_sum(y))
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      good = make_ids(rng, CAPACITY, (5,))
      assert_close(
          sess.run(y, {ids: good}),
          ref_lookup(ref, good, "add"),
          FWD_TOL[tf.float32],
      )
      for bad in (-1, 15, 99, 2**33):
        with pytest.raises(tf.errors.InvalidArgumentError) as e:
          sess.run(y, {ids: [2, bad]})
        _check_message(e.value, bad)
        with pytest.raises(tf.errors.InvalidArgumentError) as e:
          sess.run(train, {ids: [bad, 4, 4]})
        _check_message(e.value, bad)
        np.testing.assert_array_equal(np.concatenate(sess.run(q)), full32[0])
        np.testing.assert_array_equal(sess.run(r), full32[1])
      # The session keeps working.
      assert_close(
          sess.run(y, {ids: good}),
          ref_lookup(ref, good, "add"),
          FWD_TOL[tf.float32],
      )
      sess.run(train, {ids: good})
      assert not np.array_equal(sess.run(r), full32[1])


# ----------------------------------------------------------------------------
CONFIG_ERRORS = (ValueError, tf.errors.InvalidArgumentError)


@pytest.mark.parametrize("operation", ["add", "mul", "mult"])
@pytest.mark.tf1
def test_unequal_widths_rejected_for_add_mul(mh, rng, operation):
  tables = [np.zeros((3, 4), np.float32), np.zeros((5, 3), np.float32)]
  with pytest.raises(CONFIG_ERRORS) as e:
    mh.multihash_lookup(tables, tf.constant([0, 1]), operation=operation)
  assert "width" in str(e.value).lower(), str(e.value)
  with tf.Graph().as_default():
    with pytest.raises(CONFIG_ERRORS) as e:
      mh.multihash_lookup(
          [tf.constant(t) for t in tables],
          tf.constant([0, 1]),
          operation=operation,
      )
    assert "width" in str(e.value).lower(), str(e.value)


def test_unknown_operation(mh):
  tables = [np.zeros((3, 2), np.float32), np.zeros((5, 2), np.float32)]
  with pytest.raises(CONFIG_ERRORS) as e:
    mh.multihash_lookup(tables, tf.constant([0, 1]), operation="foo")
  assert "The operation foo is not supported" in str(e.value), str(e.value)


def test_unknown_strategy(mh):
  tables = [np.zeros((3, 2), np.float32), np.zeros((5, 2), np.float32)]
  with pytest.raises(CONFIG_ERRORS) as e:
    mh.multihash_lookup(
        tables,
        tf.constant([0, 1]),
        operation="add",
        complementary_strategy="no-such-strategy",
    )
  assert "no-such-strategy" in str(e.value), str(e.value)


@pytest.mark.parametrize(
    "case",
    [
        "shard_width",
        "rank1_table",
        "rank3_table",
        "one_table",
        "three_tables_qr",
        "empty_shard_list",
    ],
)
def test_bad_table_configurations(mh, case):
  z = lambda *s: np.zeros(s, np.float32)  # noqa: E731
  tables = {
      "shard_width": [[z(2, 2), z(1, 3)], z(5, 2)],
      "rank1_table": [z(3), z(5, 2)],
      "rank3_table": [z(3, 2, 1), z(5, 2)],
      "one_table": [z(3, 2)],
      "three_tables_qr": [z(3, 2), z(5, 2), z(2, 2)],
      "empty_shard_list": [[], z(5, 2)],
  }[case]
  with pytest.raises(CONFIG_ERRORS):
    mh.multihash_lookup(tables, tf.constant([0, 1]), operation="add")


def test_mixed_table_dtypes_rejected(mh):
  tables = [np.zeros((3, 2), np.float32), np.zeros((5, 2), np.float64)]
  with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
    mh.multihash_lookup(tables, tf.constant([0, 1]), operation="add")


@pytest.mark.parametrize(
    "make_ids_fn",
    [
        lambda: tf.constant([1.0, 2.0]),
        lambda: tf.constant(3.0, tf.float64),
        lambda: np.array([[1.0, 2.0]], np.float32),
        lambda: tf.constant([1.0], tf.float16),
    ],
    ids=["tf_float32", "tf_float64_scalar", "np_float32", "tf_float16"],
)
def test_float_ids_rejected(mh, make_ids_fn):
  tables = [np.zeros((3, 2), np.float32), np.zeros((5, 2), np.float32)]
  with pytest.raises((TypeError, ValueError)):
    mh.multihash_lookup(tables, make_ids_fn(), operation="add")
  ids = make_ids_fn()
  with pytest.raises((TypeError, ValueError)):
    mh.multihash_lookup_grad(
        tf.zeros(tuple(np.shape(ids)) + (2,)), tables, ids, operation="add"
    )


@pytest.mark.tf1
def test_float_ids_rejected_in_graph(mh):
  with tf.Graph().as_default():
    tables = [tf.zeros((3, 2)), tf.zeros((5, 2))]
    ids = tf.compat.v1.placeholder(tf.float32, [None])
    with pytest.raises((TypeError, ValueError)):
      mh.multihash_lookup(tables, ids, operation="add")
