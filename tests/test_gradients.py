"""Gradients of multihash_lookup: IndexedSlices per shard vs a NumPy reference."""

import numpy as np
import pytest
import tensorflow as tf

from mh_testutil import (
    GRAD_TOL,
    ID_DTYPES,
    ID_SHAPES,
    LAYOUTS,
    OPERATIONS,
    ROW_CONFIGS,
    TABLE_DTYPES,
    FWD_TOL,
    assert_close,
    build_tables,
    check_shard_grads,
    flat_shard_grads,
    make_ids,
    normalize_raw_grad,
    out_width,
    random_full_tables,
    ref_grads,
    ref_lookup,
    slices_to_dense,
    split_rows,
    to_dtype_and_back,
    to_f64,
    widths_for,
)

dtype_id = lambda d: d.name  # noqa: E731


def _upstream(rng, ids_shape, width, dtype):
  w = tf.cast(
      tf.constant(rng.standard_normal(tuple(ids_shape) + (width,)), tf.float32),
      dtype,
  )
  return w, to_f64(w)


def _make(kind):
  if kind == "tensor":
    return lambda t: tf.identity(t)
  return lambda t: tf.Variable(t)


def _tape_grads(mh, tables, flat, ids, operation, w, kind):
  with tf.GradientTape() as tape:
    if kind == "tensor":
      for t in flat:
        tape.watch(t)
    y = mh.multihash_lookup(tables, ids, operation=operation)
    loss = tf.reduce_sum(y * w)
  return y, tape.gradient(loss, tables)


@pytest.mark.parametrize("kind", ["tensor", "variable"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("table_dtype", TABLE_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("operation", OPERATIONS)
def test_tape_gradients_eager(mh, rng, operation, table_dtype, layout, kind):
  widths = widths_for(operation)
  for i, rows in enumerate(ROW_CONFIGS):
    id_dtype = ID_DTYPES[i % 2]
    full_t, full_ref = to_dtype_and_back(
        random_full_tables(rng, rows, widths), table_dtype
    )
    tables, flat, sizes = build_tables(full_t, layout, _make(kind))
    ids_np = make_ids(rng, rows[0] * rows[1], (3, 4))
    w, w_ref = _upstream(
        rng, ids_np.shape, out_width(operation, widths), table_dtype
    )
    y, grads = _tape_grads(
        mh, tables, flat, tf.constant(ids_np, id_dtype), operation, w, kind
    )
    ctx = f"{operation} {table_dtype.name} {layout} {kind} rows={rows} ids={ids_np.tolist()}"
    assert_close(
        to_f64(y),
        ref_lookup(full_ref, ids_np, operation),
        FWD_TOL[table_dtype],
        ctx,
    )
    check_shard_grads(
        flat_shard_grads(grads, tables),
        sizes,
        ref_grads(full_ref, ids_np, operation, w_ref),
        GRAD_TOL[table_dtype],
        ctx,
    )


@pytest.mark.parametrize("rank", sorted(ID_SHAPES))
@pytest.mark.parametrize("operation", OPERATIONS)
def test_tape_gradients_id_ranks(mh, rng, operation, rank):
  widths = widths_for(operation)
  rows = (5, 3)
  full_t, full_ref = to_dtype_and_back(
      random_full_tables(rng, rows, widths), tf.float64
  )
  tables, flat, sizes = build_tables(full_t, "mixed", _make("variable"))
  ids_np = make_ids(rng, 15, ID_SHAPES[rank])
  w, w_ref = _upstream(
      rng, ids_np.shape, out_width(operation, widths), tf.float64
  )
  _, grads = _tape_grads(
      mh, tables, flat, tf.constant(ids_np), operation, w, "variable"
  )
  check_shard_grads(
      flat_shard_grads(grads, tables),
      sizes,
      ref_grads(full_ref, ids_np, operation, w_ref),
      GRAD_TOL[tf.float64],
  )


@pytest.mark.parametrize("shape", [(0,), (2, 0, 3)])
@pytest.mark.parametrize("operation", OPERATIONS)
def test_tape_gradients_empty_ids(mh, rng, operation, shape):
  widths = widths_for(operation)
  full_t, _ = to_dtype_and_back(
      random_full_tables(rng, (7, 4), widths), tf.float32
  )
  tables, flat, sizes = build_tables(full_t, "three", _make("variable"))
  w = tf.zeros(shape + (out_width(operation, widths),))
  _, grads = _tape_grads(
      mh, tables, flat, tf.zeros(shape, tf.int64), operation, w, "variable"
  )
  flat_g = flat_shard_grads(grads, tables)
  for g, v in zip(flat_g, flat):
    dense = slices_to_dense(g, v.shape, "empty ids")
    assert not dense.any()


@pytest.mark.parametrize(
    "table_dtype", [tf.float32, tf.float16, tf.bfloat16], ids=dtype_id
)
def test_many_duplicates_accumulate_in_float32(mh, table_dtype):
  """3008 copies of one id with upstream 1: the row gradient is exactly 3008.

  Summing in half precision would stall at 2048 (fp16) / 256 (bf16);
  3008 is exactly representable in fp16 and bf16.
  """
  rows = (3, 5)
  full_t = [tf.ones((3, 2), table_dtype), tf.ones((5, 2), table_dtype)]
  tables = [tf.Variable(t) for t in full_t]
  ids = tf.fill([3008], tf.constant(7, tf.int64))  # q = 1, r = 2
  with tf.GradientTape() as tape:
    y = mh.multihash_lookup(tables, ids, operation="add")
    loss = tf.reduce_sum(y)
  gq, gr = tape.gradient(loss, tables)
  dq = slices_to_dense(gq, (3, 2))
  dr = slices_to_dense(gr, (5, 2))
  expected_q = np.zeros((3, 2))
  expected_q[1] = 3008
  expected_r = np.zeros((5, 2))
  expected_r[2] = 3008
  np.testing.assert_array_equal(dq, expected_q)
  np.testing.assert_array_equal(dr, expected_r)
  # The raw grad op sums the duplicates itself.
  outs = mh.multihash_lookup_grad(
      tf.ones([3008, 2], table_dtype), tables, ids, operation="add"
  )
  pairs = normalize_raw_grad(outs, 2)
  for (idx, vals), row in zip(pairs, (1, 2)):
    np.testing.assert_array_equal(np.asarray(idx), [row])
    np.testing.assert_array_equal(to_f64(vals), [[3008.0, 3008.0]])


@pytest.mark.parametrize("kind", ["tensor", "variable"])
@pytest.mark.parametrize("layout", ["whole", "three", "mixed"])
@pytest.mark.parametrize("operation", OPERATIONS)
def test_tape_gradients_tf_function(mh, rng, operation, layout, kind):
  widths = widths_for(operation)
  rows = (7, 4)
  table_dtype = tf.float32
  full_t, full_ref = to_dtype_and_back(
      random_full_tables(rng, rows, widths), table_dtype
  )
  tables, flat, sizes = build_tables(full_t, layout, _make(kind))
  width = out_width(operation, widths)

  if kind == "tensor":

    @tf.function
    def step(flat_tensors, ids, w):
      it = iter(flat_tensors)
      structured = [
          [next(it) for _ in t] if isinstance(t, list) else next(it)
          for t in tables
      ]
      with tf.GradientTape() as tape:
        tape.watch(flat_tensors)
        y = mh.multihash_lookup(structured, ids, operation=operation)
        loss = tf.reduce_sum(y * w)
      return y, tape.gradient(loss, flat_tensors)

    call = lambda ids, w: step(flat, ids, w)  # noqa: E731
  else:

    @tf.function
    def step(ids, w):
      with tf.GradientTape() as tape:
        y = mh.multihash_lookup(tables, ids, operation=operation)
        loss = tf.reduce_sum(y * w)
      return y, tape.gradient(loss, flat)

    call = step

  for id_dtype in ID_DTYPES:
    ids_np = make_ids(rng, 28, (2, 5))
    w, w_ref = _upstream(rng, ids_np.shape, width, table_dtype)
    y, grads = call(tf.constant(ids_np, id_dtype), w)
    ctx = f"{operation} {layout} {kind} {id_dtype.name} ids={ids_np.tolist()}"
    assert_close(
        y.numpy(),
        ref_lookup(full_ref, ids_np, operation),
        FWD_TOL[table_dtype],
        ctx,
    )
    check_shard_grads(
        list(grads),
        sizes,
        ref_grads(full_ref, ids_np, operation, w_ref),
        GRAD_TOL[table_dtype],
        ctx,
    )

  concrete = (
      step.get_concrete_function(flat, tf.constant(ids_np, id_dtype), w)
      if kind == "tensor"
      else step.get_concrete_function(tf.constant(ids_np, id_dtype), w)
  )
  graph_ops = {op.type for op in concrete.graph.get_operations()}
  assert "MultiHashLookup" in graph_ops, sorted(graph_ops)
  assert "MultiHashLookupGrad" in graph_ops, sorted(graph_ops)


# ----------------------------------------------------------------------------
# TF1 graph mode: tf.compat.v1.gradients with tensors, ref and resource variables.
@pytest.mark.parametrize(
    "var_kind",
    [
        "const",
        "ref",
        "resource",
        "partitioned_ref",
        "partitioned_resource",
        "partitioned_direct",
    ],
)
@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.tf1
def test_tf1_graph_gradients(mh, rng, operation, var_kind):
  widths = widths_for(operation)
  rows = (7, 5)
  width = out_width(operation, widths)
  full32 = random_full_tables(rng, rows, widths)
  with tf.Graph().as_default():
    if var_kind == "const":
      tables = [
          [tf.constant(s) for s in split_rows(full32[0], [3, 2, 2])],
          tf.constant(full32[1]),
      ]
    elif var_kind in ("ref", "resource"):
      use_resource = var_kind == "resource"
      tables = [
          [
              tf.compat.v1.get_variable(
                  f"q{i}", initializer=s, use_resource=use_resource
              )
              for i, s in enumerate(split_rows(full32[0], [3, 2, 2]))
          ],
          tf.compat.v1.get_variable(
              "r", initializer=full32[1], use_resource=use_resource
          ),
      ]
    else:
      use_resource = var_kind != "partitioned_ref"
      init = tf.compat.v1.random_normal_initializer(seed=1)
      pq = tf.compat.v1.get_variable(
          "q",
          shape=[rows[0], widths[0]],
          initializer=init,
          use_resource=use_resource,
          partitioner=tf.compat.v1.fixed_size_partitioner(3),
      )
      pr = tf.compat.v1.get_variable(
          "r",
          shape=[rows[1], widths[1]],
          initializer=init,
          use_resource=use_resource,
          partitioner=tf.compat.v1.fixed_size_partitioner(2),
      )
      tables = [list(pq), list(pr)]
      assert [int(v.shape[0]) for v in tables[0]] == [3, 2, 2]
      assert [int(v.shape[0]) for v in tables[1]] == [3, 2]
    flat = flat_shard_grads(tables, tables)
    sizes = [
        [int(v.shape[0]) for v in (t if isinstance(t, list) else [t])]
        for t in tables
    ]
    ids = tf.compat.v1.placeholder(tf.int64, [None, None])
    w = tf.compat.v1.placeholder(tf.float32, [None, None, width])
    # "partitioned_direct": the PartitionedVariable objects themselves
    # (documented by the wrapper; beyond the list-of-shards contract).
    tables_arg = [pq, pr] if var_kind == "partitioned_direct" else tables
    y = mh.multihash_lookup(tables_arg, ids, operation=operation)
    loss = tf.reduce_sum(y * w)
    grads = tf.compat.v1.gradients(loss, flat)
    for g in grads:
      assert isinstance(
          g, tf.IndexedSlices
      ), f"{var_kind}: got {type(g).__name__}"
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      values = sess.run(flat)
      full_ref = [
          np.concatenate([values[k] for k in range(3)]).astype(np.float64),
          np.concatenate(values[3:]).astype(np.float64),
      ]
      if var_kind in ("const", "ref", "resource"):
        np.testing.assert_array_equal(full_ref[0], full32[0])
      for shape in [(3, 4), (1, 6)]:
        ids_np = make_ids(rng, 35, shape)
        w_np = rng.standard_normal(shape + (width,)).astype(np.float32)
        y_v, g_v = sess.run([y, grads], {ids: ids_np, w: w_np})
        ctx = f"{operation} {var_kind} ids={ids_np.tolist()}"
        assert_close(
            y_v,
            ref_lookup(full_ref, ids_np, operation),
            FWD_TOL[tf.float32],
            ctx,
        )
        check_shard_grads(
            g_v,
            sizes,
            ref_grads(full_ref, ids_np, operation, w_np),
            GRAD_TOL[tf.float32],
            ctx,
        )


# ----------------------------------------------------------------------------
# Numerical vs theoretical Jacobians in float64.
@pytest.mark.parametrize("layout", ["whole", "three", "mixed_rev"])
@pytest.mark.parametrize("operation", OPERATIONS)
def test_compute_gradient_float64(mh, rng, operation, layout):
  widths = widths_for(operation)
  rows = (3, 5)
  full_t, _ = to_dtype_and_back(
      random_full_tables(rng, rows, widths), tf.float64
  )
  tables, flat, _ = build_tables(full_t, layout)
  ids = tf.constant(make_ids(rng, 15, (2, 3)))

  def f(*shards):
    it = iter(shards)
    structured = [
        [next(it) for _ in t] if isinstance(t, list) else next(it)
        for t in tables
    ]
    return mh.multihash_lookup(structured, ids, operation=operation)

  theoretical, numerical = tf.test.compute_gradient(f, flat)
  assert len(theoretical) == len(flat)
  for t, n in zip(theoretical, numerical):
    assert np.abs(n).max() > 0 or np.abs(t).max() == 0
    np.testing.assert_allclose(t, n, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.tf1
def test_compute_gradient_error_tf1(mh, rng, operation):
  widths = widths_for(operation)
  rows = (5, 3)
  full = [a.astype(np.float64) for a in random_full_tables(rng, rows, widths)]
  ids_np = make_ids(rng, 15, (6,))
  with tf.Graph().as_default():
    q = tf.constant(full[0])
    r0, r1 = tf.constant(full[1][:1]), tf.constant(full[1][1:])
    y = mh.multihash_lookup(
        [q, [r0, r1]], tf.constant(ids_np), operation=operation
    )
    with tf.compat.v1.Session():
      for x in (q, r0, r1):
        err = tf.compat.v1.test.compute_gradient_error(
            x, x.shape.as_list(), y, y.shape.as_list(), x_init_value=None
        )
        assert err < 1e-6, (operation, x.name, err)


# ----------------------------------------------------------------------------
# Sparse updates of resource / ref variables are seen by the next lookup.
def test_eager_sparse_update_then_lookup(mh, rng):
  rows, widths = (7, 4), (3, 3)
  full32 = random_full_tables(rng, rows, widths)
  q_shards = [tf.Variable(s) for s in split_rows(full32[0], [3, 2, 2])]
  r_var = tf.Variable(full32[1])
  tables = [q_shards, r_var]
  flat = q_shards + [r_var]
  ref = [a.astype(np.float64) for a in full32]
  lr = 0.5
  for step in range(3):
    ids_np = make_ids(rng, 28, (5,))
    w_np = rng.standard_normal((5, 3)).astype(np.float32)
    with tf.GradientTape() as tape:
      y = mh.multihash_lookup(tables, tf.constant(ids_np), operation="mul")
      loss = tf.reduce_sum(y * w_np)
    assert_close(
        y.numpy(), ref_lookup(ref, ids_np, "mul"), (1e-5, 1e-5), f"step {step}"
    )
    grads = tape.gradient(loss, flat)
    dq, dr = ref_grads(ref, ids_np, "mul", w_np)
    for v, g in zip(flat, grads):
      assert isinstance(g, tf.IndexedSlices), type(g)
      v.scatter_sub(tf.IndexedSlices(lr * g.values, g.indices, g.dense_shape))
    ref = [ref[0] - lr * dq, ref[1] - lr * dr]
    np.testing.assert_allclose(
        np.concatenate([v.numpy() for v in q_shards]),
        ref[0],
        rtol=1e-5,
        atol=1e-5,
    )
  ids_np = np.arange(28)
  y = mh.multihash_lookup(tables, tf.constant(ids_np), operation="mul")
  assert_close(y.numpy(), ref_lookup(ref, ids_np, "mul"), (1e-5, 1e-5))


def test_eager_resource_sparse_apply_adagrad_then_lookup(mh, rng):
  rows, widths = (3, 5), (2, 3)
  full32 = random_full_tables(rng, rows, widths)
  tables = [
      tf.Variable(full32[0]),
      [tf.Variable(s) for s in split_rows(full32[1], [2, 3])],
  ]
  flat = [tables[0]] + tables[1]
  accums = [tf.Variable(tf.fill(v.shape, 0.1)) for v in flat]
  ids_np = np.array([14, 0, 7, 7, 3], np.int64)
  w_np = rng.standard_normal((5, 5)).astype(np.float32)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(
        mh.multihash_lookup(tables, ids_np, operation="concat") * w_np
    )
  grads = tape.gradient(loss, flat)
  for v, a, g in zip(flat, accums, grads):
    assert isinstance(g, tf.IndexedSlices)
    tf.raw_ops.ResourceSparseApplyAdagrad(
        var=v.handle,
        accum=a.handle,
        lr=tf.constant(0.1),
        grad=g.values,
        indices=g.indices,
    )
  ref = [a.astype(np.float64) for a in full32]
  dense = ref_grads(ref, ids_np, "concat", w_np)
  # Adagrad (duplicates in the IndexedSlices are applied one after another,
  # so compare only when indices are unique; else just check the new values
  # are what the next lookup sees).
  new = [
      tables[0].numpy().astype(np.float64),
      np.concatenate([v.numpy() for v in tables[1]]).astype(np.float64),
  ]
  for j in range(2):
    changed = np.any(dense[j] != 0, axis=1)
    assert np.any(new[j][changed] != ref[j][changed]), f"table {j} not updated"
    np.testing.assert_array_equal(new[j][~changed], ref[j][~changed])
  ids_all = np.arange(15)
  y = mh.multihash_lookup(tables, tf.constant(ids_all), operation="concat")
  assert_close(
      y.numpy(), ref_lookup(new, ids_all, "concat"), FWD_TOL[tf.float32]
  )


@pytest.mark.parametrize("use_resource", [False, True])
@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.tf1
def test_tf1_adagrad_minimize_then_lookup(mh, rng, operation, use_resource):
  widths = widths_for(operation)
  rows = (7, 4)
  width = out_width(operation, widths)
  full32 = random_full_tables(rng, rows, widths)
  lr, init_acc = 0.1, 0.1
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
    ids = tf.compat.v1.placeholder(tf.int64, [None])
    w = tf.compat.v1.placeholder(tf.float32, [None, width])
    y = mh.multihash_lookup([q, r], ids, operation=operation)
    loss = tf.reduce_sum(y * w)
    opt = tf.compat.v1.train.AdagradOptimizer(
        lr, initial_accumulator_value=init_acc
    )
    grads_and_vars = opt.compute_gradients(loss, var_list=q + [r])
    for g, v in grads_and_vars:
      assert isinstance(g, tf.IndexedSlices), (v.name, type(g).__name__)
    train = opt.apply_gradients(grads_and_vars)
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      ref = [a.astype(np.float64) for a in full32]
      acc = [np.full_like(ref[0], init_acc), np.full_like(ref[1], init_acc)]
      for step in range(3):
        ids_np = make_ids(rng, 28, (6,))
        w_np = rng.standard_normal((6, width)).astype(np.float32)
        y_v = sess.run(y, {ids: ids_np})
        sess.run(train, {ids: ids_np, w: w_np})
        ctx = f"step {step} ids={ids_np.tolist()}"
        assert_close(y_v, ref_lookup(ref, ids_np, operation), (1e-4, 1e-4), ctx)
        dense = ref_grads(ref, ids_np, operation, w_np)
        for j in range(2):
          acc[j] = acc[j] + dense[j] ** 2
          ref[j] = ref[j] - lr * dense[j] / np.sqrt(acc[j])
        new_q = np.concatenate(sess.run(q))
        np.testing.assert_allclose(
            new_q, ref[0], rtol=1e-4, atol=1e-5, err_msg=ctx
        )
        np.testing.assert_allclose(
            sess.run(r), ref[1], rtol=1e-4, atol=1e-5, err_msg=ctx
        )
      ids_np = np.arange(28)
      y_v = sess.run(y, {ids: ids_np})
      assert_close(y_v, ref_lookup(ref, ids_np, operation), (1e-4, 1e-4))
