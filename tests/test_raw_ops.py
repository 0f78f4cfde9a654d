"""Library loading, kernel registrations and the raw MultiHashLookupGrad op."""

import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import kernels

from mh_testutil import (
    ID_DTYPES,
    LAYOUTS,
    OPERATIONS,
    ROW_CONFIGS,
    GRAD_TOL,
    assert_close,
    build_tables,
    make_ids,
    normalize_raw_grad,
    out_width,
    random_full_tables,
    ref_grads,
    ref_rows,
    split_rows,
    to_dtype_and_back,
    to_f64,
    widths_for,
)

dtype_id = lambda d: d.name  # noqa: E731
OP_NAMES = ("MultiHashLookup", "MultiHashLookupGrad")


def test_package_imports_and_library_path(mh):
  import tensorflow_multihash as tfmh

  assert tfmh is not None
  path = mh.LIBRARY_PATH
  assert isinstance(path, str) and os.path.isabs(path), path
  assert os.path.isfile(path), path
  assert path.endswith(".so"), path
  assert isinstance(mh.BUILT_WITH_CUDA, bool)


def _kernels(op_name):
  return list(kernels.get_registered_kernels_for_op(op_name).kernel)


def _type_constraint(kernel, attr):
  for c in kernel.constraint:
    if c.name == attr:
      return set(c.allowed_values.list.type)
  return None  # unconstrained


@pytest.mark.parametrize("op_name", OP_NAMES)
def test_cpu_kernels_registered_for_all_dtypes(mh, op_name):
  cpu = [k for k in _kernels(op_name) if k.device_type == "CPU"]
  assert cpu, f"no CPU kernel for {op_name}: {_kernels(op_name)}"
  covered = set()
  for k in cpu:
    allowed = _type_constraint(k, "T")
    if allowed is None:
      covered |= {
          tf.float32.as_datatype_enum,
          tf.float64.as_datatype_enum,
          tf.float16.as_datatype_enum,
          tf.bfloat16.as_datatype_enum,
      }
    else:
      covered |= allowed
  for d in (tf.float32, tf.float64, tf.float16, tf.bfloat16):
    assert (
        d.as_datatype_enum in covered
    ), f"{op_name}: no CPU kernel for {d.name}"


@pytest.mark.parametrize("op_name", OP_NAMES)
def test_gpu_kernels_registered_when_built_with_cuda(mh, op_name):
  if not mh.BUILT_WITH_CUDA:
    pytest.skip("library built without CUDA")
  gpu = [k for k in _kernels(op_name) if k.device_type == "GPU"]
  assert gpu, f"BUILT_WITH_CUDA but no GPU kernel for {op_name}"


# ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "table_dtype", [tf.float32, tf.float64, tf.float16], ids=dtype_id
)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("id_dtype", ID_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("operation", OPERATIONS)
def test_raw_grad_op(mh, rng, operation, id_dtype, layout, table_dtype):
  widths = widths_for(operation)
  width = out_width(operation, widths)
  for rows in ROW_CONFIGS:
    full_t, full_ref = to_dtype_and_back(
        random_full_tables(rng, rows, widths), table_dtype
    )
    tables, flat, sizes = build_tables(full_t, layout)
    ids_np = make_ids(rng, rows[0] * rows[1], (3, 4))
    grad = tf.cast(
        tf.constant(rng.standard_normal((3, 4, width)), tf.float32), table_dtype
    )
    outs = mh.multihash_lookup_grad(
        grad, tables, tf.constant(ids_np, id_dtype), operation=operation
    )
    pairs = normalize_raw_grad(outs, len(flat))
    dense = ref_grads(full_ref, ids_np, operation, to_f64(grad))
    q, r = ref_rows(ids_np, rows)
    touched = [set(q.reshape(-1).tolist()), set(r.reshape(-1).tolist())]
    k = 0
    for j in range(2):
      start = 0
      for s, n in enumerate(sizes[j]):
        ctx = (
            f"{operation} {table_dtype.name} rows={rows} shards={sizes} "
            f"table {j} shard {s} ids={ids_np.tolist()}"
        )
        idx_t, vals_t = pairs[k]
        assert idx_t.dtype.is_integer, ctx
        assert vals_t.dtype == table_dtype, ctx
        idx = np.asarray(idx_t).astype(np.int64)
        vals = to_f64(vals_t)
        assert idx.ndim == 1 and vals.shape == (idx.size, widths[j]), (
            ctx,
            idx,
            vals.shape,
        )
        assert np.all(
            np.diff(idx) > 0
        ), f"{ctx}: indices not unique ascending: {idx}"
        expected_rows = sorted(
            x - start for x in touched[j] if start <= x < start + n
        )
        assert (
            idx.tolist() == expected_rows
        ), f"{ctx}: {idx.tolist()} != {expected_rows}"
        block = dense[j][start : start + n]
        scale = max(1.0, float(np.abs(block).max(initial=0.0)))
        tol = GRAD_TOL[table_dtype]
        assert_close(vals, block[idx], (tol[0], tol[1] * scale), ctx)
        start += n
        k += 1
    assert k == len(pairs)


@pytest.mark.parametrize("operation", OPERATIONS)
def test_raw_grad_op_with_variables_and_empty_ids(mh, rng, operation):
  widths = widths_for(operation)
  width = out_width(operation, widths)
  full32 = random_full_tables(rng, (7, 4), widths)
  tables = [
      [tf.Variable(s) for s in split_rows(full32[0], [3, 2, 2])],
      tf.Variable(full32[1]),
  ]
  ids_np = np.array([[27, 0], [13, 13]], np.int64)
  grad = tf.constant(rng.standard_normal((2, 2, width)).astype(np.float32))
  pairs = normalize_raw_grad(
      mh.multihash_lookup_grad(
          grad, tables, tf.constant(ids_np), operation=operation
      ),
      4,
  )
  ref = [a.astype(np.float64) for a in full32]
  dense = ref_grads(ref, ids_np, operation, grad.numpy())
  # q rows: 27 // 4 = 6, 0, 13 // 4 = 3 -> shard rows: s0 {0}, s1 {3 -> 0}, s2 {6 -> 1}
  # r rows: 27 % 4 = 3, 0, 13 % 4 = 1
  expected = [[0], [0], [1], [0, 1, 3]]
  starts = [0, 3, 5, 0]
  tabs = [0, 0, 0, 1]
  for (idx, vals), exp, st, j in zip(pairs, expected, starts, tabs):
    assert np.asarray(idx).tolist() == exp
    assert_close(vals.numpy(), dense[j][st + np.array(exp)], (1e-5, 1e-5))
  # Empty ids: every shard gets zero rows.
  pairs = normalize_raw_grad(
      mh.multihash_lookup_grad(
          tf.zeros([0, width]),
          tables,
          tf.zeros([0], tf.int32),
          operation=operation,
      ),
      4,
  )
  for (idx, vals), w in zip(pairs, [widths[0]] * 3 + [widths[1]]):
    assert tuple(idx.shape) == (0,)
    assert tuple(vals.shape) == (0, w)


def test_raw_grad_op_rejects_wrong_grad_width(mh, rng):
  full32 = random_full_tables(rng, (3, 5), (2, 2))
  with pytest.raises((ValueError, tf.errors.InvalidArgumentError)):
    mh.multihash_lookup_grad(
        tf.zeros([4, 3]), full32, tf.constant([0, 1, 2, 3]), operation="add"
    )


# ----------------------------------------------------------------------------
# The registered op itself, called through the generated wrapper.
@pytest.fixture(scope="module")
def raw(mh):
  return tf.load_op_library(mh.LIBRARY_PATH)


def test_raw_op_rejects_shards_not_adding_up_to_table_rows(mh, raw):
  a = tf.zeros([2, 2])
  b = tf.zeros([2, 2])
  r = tf.zeros([5, 2])
  with pytest.raises((ValueError, tf.errors.InvalidArgumentError)) as e:
    raw.multi_hash_lookup(
        tables=[a, b, r],
        ids=tf.constant([0, 1], tf.int64),
        operation="add",
        table_rows=[3, 5],
        table_widths=[2, 2],
        num_shards=[2, 1],
        T=tf.float32,
    )
  msg = str(e.value)
  assert "rows" in msg and "3" in msg and "4" in msg, msg
  with pytest.raises((ValueError, tf.errors.InvalidArgumentError)) as e:
    raw.multi_hash_lookup_grad(
        grad=tf.zeros([2, 2]),
        tables=[a, b, r],
        ids=tf.constant([0, 1], tf.int64),
        operation="add",
        table_rows=[3, 5],
        table_widths=[2, 2],
        num_shards=[2, 1],
        N=3,
    )
  assert "rows" in str(e.value), str(e.value)


def test_raw_op_matches_wrapper(mh, raw, rng):
  full32 = random_full_tables(rng, (3, 5), (3, 2))
  q0, q1 = split_rows(full32[0], [1, 2])
  ids = tf.constant(make_ids(rng, 15, (4,)), tf.int32)
  y_raw = raw.multi_hash_lookup(
      tables=[q0, q1, full32[1]],
      ids=ids,
      operation="concat",
      table_rows=[3, 5],
      table_widths=[3, 2],
      num_shards=[2, 1],
      T=tf.float32,
  )
  y = mh.multihash_lookup([[q0, q1], full32[1]], ids, operation="concat")
  np.testing.assert_array_equal(y_raw.numpy(), y.numpy())
