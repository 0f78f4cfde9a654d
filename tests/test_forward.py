"""Forward multihash_lookup vs an independent NumPy reference."""

import numpy as np
import pytest
import tensorflow as tf

from mh_testutil import (
    FWD_TOL,
    ID_DTYPES,
    ID_SHAPES,
    LAYOUTS,
    OPERATIONS,
    ROW_CONFIGS,
    TABLE_DTYPES,
    assert_close,
    build_tables,
    make_ids,
    out_width,
    random_full_tables,
    ref_lookup,
    split_rows,
    to_dtype_and_back,
    to_f64,
    widths_for,
)

dtype_id = lambda d: d.name  # noqa: E731


@pytest.mark.parametrize("rank", sorted(ID_SHAPES))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("table_dtype", TABLE_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("id_dtype", ID_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("operation", OPERATIONS)
def test_forward_matches_reference(
    mh, rng, operation, id_dtype, table_dtype, layout, rank
):
  widths = widths_for(operation)
  for rows in ROW_CONFIGS:
    capacity = rows[0] * rows[1]
    full_t, full_ref = to_dtype_and_back(
        random_full_tables(rng, rows, widths), table_dtype
    )
    tables, _, sizes = build_tables(full_t, layout)
    ids_np = make_ids(rng, capacity, ID_SHAPES[rank])
    y = mh.multihash_lookup(
        tables, tf.constant(ids_np, dtype=id_dtype), operation=operation
    )
    ctx = f"rows={rows} shards={sizes} ids={ids_np.tolist()}"
    assert y.dtype == table_dtype, ctx
    assert tuple(y.shape) == ID_SHAPES[rank] + (
        out_width(operation, widths),
    ), ctx
    assert_close(
        to_f64(y),
        ref_lookup(full_ref, ids_np, operation),
        FWD_TOL[table_dtype],
        ctx,
    )


@pytest.mark.parametrize("layout", ["whole", "three", "mixed"])
@pytest.mark.parametrize("operation", OPERATIONS)
def test_every_id_of_capacity(mh, rng, operation, layout):
  """Exhaustive: every id in [0, capacity) maps to the right (q, r) rows."""
  widths = widths_for(operation)
  for rows in ROW_CONFIGS + ((1, 6), (6, 1), (2, 9)):
    capacity = rows[0] * rows[1]
    full_t, full_ref = to_dtype_and_back(
        random_full_tables(rng, rows, widths), tf.float64
    )
    if layout != "whole" and min(rows) < 3:
      layout_used = "whole"
    else:
      layout_used = layout
    tables, _, sizes = build_tables(full_t, layout_used)
    ids_np = np.arange(capacity, dtype=np.int64)
    y = mh.multihash_lookup(tables, tf.constant(ids_np), operation=operation)
    assert_close(
        y.numpy(),
        ref_lookup(full_ref, ids_np, operation),
        FWD_TOL[tf.float64],
        f"rows={rows} shards={sizes}",
    )


def test_q_uses_rows_of_table_1_not_table_0(mh):
  """Hand-written case: rows (3, 5); id 7 -> q = 7 // 5 = 1, r = 7 % 5 = 2."""
  q_tab = np.array([[0.0], [10.0], [20.0]])
  r_tab = np.array([[0.0], [1.0], [2.0], [3.0], [4.0]])
  ids = tf.constant([7, 0, 14, 5, 4], tf.int64)
  y = mh.multihash_lookup([q_tab, r_tab], ids, operation="add")
  np.testing.assert_array_equal(y.numpy()[:, 0], [12.0, 0.0, 24.0, 10.0, 4.0])
  y = mh.multihash_lookup([q_tab, r_tab], ids, operation="concat")
  np.testing.assert_array_equal(
      y.numpy(), [[10, 2], [0, 0], [20, 4], [10, 0], [0, 4]]
  )


@pytest.mark.parametrize("id_dtype", ID_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize(
    "shape,layout",
    [((0,), "whole"), ((2, 0), "three"), ((0, 3), "mixed"), ((2, 0, 4), "two")],
)
def test_empty_ids(mh, rng, operation, id_dtype, shape, layout):
  widths = widths_for(operation)
  full_t, _ = to_dtype_and_back(
      random_full_tables(rng, (7, 4), widths), tf.float32
  )
  tables, _, _ = build_tables(full_t, layout)
  ids = tf.zeros(shape, id_dtype)
  y = mh.multihash_lookup(tables, ids, operation=operation)
  assert y.dtype == tf.float32
  assert tuple(y.shape) == shape + (out_width(operation, widths),)


@pytest.mark.parametrize("operation", OPERATIONS)
def test_duplicate_and_boundary_ids(mh, rng, operation):
  widths = widths_for(operation)
  rows = (5, 3)
  capacity = 15
  full_t, full_ref = to_dtype_and_back(
      random_full_tables(rng, rows, widths), tf.float32
  )
  tables, _, _ = build_tables(full_t, "three")
  ids_np = np.array(
      [capacity - 1, 0, capacity - 1, 0, 7, 7, 7, capacity - 1], np.int32
  )
  y = mh.multihash_lookup(
      tables, tf.constant(ids_np), operation=operation
  ).numpy()
  assert_close(y, ref_lookup(full_ref, ids_np, operation), FWD_TOL[tf.float32])
  np.testing.assert_array_equal(y[0], y[2])
  np.testing.assert_array_equal(y[4], y[6])


def test_mult_is_alias_of_mul(mh, rng):
  full_t, full_ref = to_dtype_and_back(
      random_full_tables(rng, (3, 5), (4, 4)), tf.float32
  )
  ids = make_ids(rng, 15, (9,))
  a = mh.multihash_lookup(full_t, ids, operation="mult")
  b = mh.multihash_lookup(full_t, ids, operation="mul")
  np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert_close(a.numpy(), ref_lookup(full_ref, ids, "mul"), FWD_TOL[tf.float32])


def test_default_operation_is_add_and_strategy_qr(mh, rng):
  full_t, full_ref = to_dtype_and_back(
      random_full_tables(rng, (7, 4), (2, 2)), tf.float32
  )
  ids = make_ids(rng, 28, (6,))
  y = mh.multihash_lookup(full_t, ids)
  assert_close(y.numpy(), ref_lookup(full_ref, ids, "add"), FWD_TOL[tf.float32])
  y = mh.multihash_lookup(
      full_t,
      ids,
      operation="add",
      complementary_strategy="Q-R",
      name="my_lookup",
  )
  assert_close(y.numpy(), ref_lookup(full_ref, ids, "add"), FWD_TOL[tf.float32])


@pytest.mark.parametrize(
    "kind", ["numpy", "variable", "variable_shards", "mixed_shards"]
)
@pytest.mark.parametrize("operation", OPERATIONS)
def test_table_input_kinds(mh, rng, operation, kind):
  widths = widths_for(operation)
  rows = (7, 4)
  full32 = random_full_tables(rng, rows, widths)
  full_ref = [a.astype(np.float64) for a in full32]
  ids_np = make_ids(rng, 28, (3, 4))
  if kind == "numpy":
    tables = list(full32)
  elif kind == "variable":
    tables = [tf.Variable(a) for a in full32]
  elif kind == "variable_shards":
    tables = [
        [tf.Variable(s) for s in split_rows(full32[0], [3, 2, 2])],
        [tf.Variable(s) for s in split_rows(full32[1], [1, 3])],
    ]
  else:  # a list mixing variables, tensors and numpy arrays
    q0, q1, q2 = split_rows(full32[0], [2, 4, 1])
    tables = [[tf.Variable(q0), tf.constant(q1), q2], tf.Variable(full32[1])]
  y = mh.multihash_lookup(
      tables, tf.constant(ids_np, tf.int64), operation=operation
  )
  assert y.dtype == tf.float32
  assert_close(
      y.numpy(),
      ref_lookup(full_ref, ids_np, operation),
      FWD_TOL[tf.float32],
      kind,
  )


def test_large_capacity_int64_ids(mh, rng):
  """capacity = 50000 * 50000 > 2**31: int64 ids beyond int32 must map right."""
  rows, widths = (50000, 50000), (2, 2)
  full32 = random_full_tables(rng, rows, widths)
  full_ref = [a.astype(np.float64) for a in full32]
  ids_np = np.array(
      [2_499_999_999, 2**31, 2**31 - 1, 1_234_567_890, 49_999, 50_000, 0],
      np.int64,
  )
  for operation in OPERATIONS:
    y = mh.multihash_lookup(full32, tf.constant(ids_np), operation=operation)
    assert_close(
        y.numpy(),
        ref_lookup(full_ref, ids_np, operation),
        FWD_TOL[tf.float32],
        operation,
    )
  # int32 ids below 2**31 with the same huge capacity.
  ids32 = np.array([2**31 - 1, 123_456_789, 0], np.int32)
  y = mh.multihash_lookup(full32, tf.constant(ids32), operation="add")
  assert_close(
      y.numpy(), ref_lookup(full_ref, ids32, "add"), FWD_TOL[tf.float32]
  )


def test_forward_in_tf_function_uses_custom_op(mh, rng):
  rows, widths = (3, 5), (3, 2)
  full32 = random_full_tables(rng, rows, widths)
  full_ref = [a.astype(np.float64) for a in full32]
  tables = [
      [tf.Variable(s) for s in split_rows(full32[0], [2, 1])],
      tf.Variable(full32[1]),
  ]

  @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.int64)])
  def f(ids):
    return mh.multihash_lookup(tables, ids, operation="concat")

  concrete = f.get_concrete_function()
  op_types = {op.type for op in concrete.graph.get_operations()}
  assert "MultiHashLookup" in op_types, sorted(op_types)
  # Static shape inference: ids.shape + [out_width].
  assert concrete.structured_outputs.shape.as_list() == [None, 3, 5]
  for n in (1, 4):
    ids_np = make_ids(rng, 15, (n, 3))
    assert_close(
        f(tf.constant(ids_np)).numpy(),
        ref_lookup(full_ref, ids_np, "concat"),
        FWD_TOL[tf.float32],
    )


@pytest.mark.parametrize("use_resource", [False, True])
@pytest.mark.tf1
def test_forward_tf1_session(mh, rng, use_resource):
  rows, widths = (7, 4), (2, 2)
  full32 = random_full_tables(rng, rows, widths)
  full_ref = [a.astype(np.float64) for a in full32]
  with tf.Graph().as_default():
    q = [
        tf.compat.v1.get_variable(
            f"q{i}", initializer=s, use_resource=use_resource
        )
        for i, s in enumerate(split_rows(full32[0], [3, 2, 2]))
    ]
    r = tf.compat.v1.get_variable(
        "r", initializer=full32[1], use_resource=use_resource
    )
    ids = tf.compat.v1.placeholder(tf.int32, [None])
    y = mh.multihash_lookup([q, r], ids, operation="mul")
    assert y.shape.as_list() == [None, 2]
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      for n in (5, 1, 0):
        ids_np = make_ids(rng, 28, (n,)).astype(np.int32)
        out = sess.run(y, {ids: ids_np})
        assert out.shape == (n, 2)
        assert_close(
            out, ref_lookup(full_ref, ids_np, "mul"), FWD_TOL[tf.float32]
        )
