"""Independent NumPy reference and helpers for the multi-hash tests.

Nothing here uses tensorflow_multihash: the reference is written from the
contract only.

Q-R strategy, k = 2 tables: capacity = rows0 * rows1,
  q = id // rows1 (row of table 0), r = id % rows1 (row of table 1).
"""

import math

import numpy as np
import tensorflow as tf
from tensorflow.python.framework.indexed_slices import IndexedSlicesValue

OPERATIONS = ("add", "mul", "concat")
TABLE_DTYPES = (tf.float32, tf.float64, tf.float16, tf.bfloat16)
ID_DTYPES = (tf.int32, tf.int64)
# Unequal row counts on purpose: x // rows0 would collide / go out of range.
ROW_CONFIGS = ((3, 5), (5, 3), (7, 4))

# (rtol, atol) per table dtype for forward results.
FWD_TOL = {
    tf.float32: (1e-6, 1e-6),
    tf.float64: (1e-12, 1e-12),
    tf.float16: (1e-3, 1e-3),
    tf.bfloat16: (1e-2, 1e-2),
}
# Gradients may sum several rounded terms in the table dtype.
GRAD_TOL = {
    tf.float32: (1e-5, 1e-5),
    tf.float64: (1e-12, 1e-12),
    tf.float16: (4e-3, 4e-3),
    tf.bfloat16: (3e-2, 3e-2),
}


def widths_for(operation, k=2):
  """Widths of k tables for an operation (concat gets unequal widths)."""
  return (
      tuple((3, 2, 4)[j % 3] for j in range(k))
      if operation == "concat"
      else (4,) * k
  )


def out_width(operation, widths):
  return sum(widths) if operation == "concat" else widths[0]


# --------------------------------------------------------------------------
# Shard layouts: per table, a list of row counts, or None for "one bare
# 2-D tensor (not a list)".
def _split_half(n):  # later shard larger: [1, 2], [2, 3], [3, 4], [2, 2]
  return [n // 2, n - n // 2]


def _partitioner(n, parts=3):  # TF partitioner layout: first shards get +1
  base, extra = divmod(n, parts)
  return [base + (1 if i < extra else 0) for i in range(parts)]


def shard_sizes(layout, table_index, n):
  if layout == "whole":
    return None
  if layout == "one":
    return [n]
  if layout == "two":
    return _split_half(n)
  if layout == "three":
    return _partitioner(n, 3)
  if layout == "mixed":  # table 0 sharded in 3, table 1 a bare tensor
    return _partitioner(n, 3) if table_index == 0 else None
  if layout == "mixed_rev":  # table 0 bare, table 1 in 2 shards
    return None if table_index == 0 else _split_half(n)
  raise ValueError(layout)


LAYOUTS = ("whole", "one", "two", "three", "mixed", "mixed_rev")


def random_full_tables(rng, rows, widths):
  return [
      rng.standard_normal((r, w)).astype(np.float32)
      for r, w in zip(rows, widths)
  ]


def to_dtype_and_back(full_f32, dtype):
  """Rounds float32 arrays to `dtype`; returns (tf tensors, float64 arrays)."""
  tensors = [tf.cast(tf.constant(a), dtype) for a in full_f32]
  ref = [tf.cast(t, tf.float64).numpy() for t in tensors]
  return tensors, ref


def split_rows(x, sizes):
  """Splits a 2-D array/tensor into contiguous row blocks of `sizes`."""
  out, start = [], 0
  for s in sizes:
    out.append(x[start : start + s])
    start += s
  assert start == x.shape[0]
  return out


def build_tables(full_tensors, layout, make=lambda t: t):
  """Returns (tables argument, flat list of shard objects, per-table sizes).

  `make` turns one shard tensor into what is passed (identity, np array,
  tf.Variable ...).
  """
  tables, flat, sizes_all = [], [], []
  for j, full in enumerate(full_tensors):
    n = int(full.shape[0])
    sizes = shard_sizes(layout, j, n)
    if sizes is None:
      obj = make(full)
      tables.append(obj)
      flat.append(obj)
      sizes_all.append([n])
    else:
      shards = [make(s) for s in split_rows(full, sizes)]
      tables.append(shards)
      flat.extend(shards)
      sizes_all.append(list(sizes))
  return tables, flat, sizes_all


def flat_shard_grads(grads_structure, tables):
  """Flattens tape.gradient(loss, tables) like build_tables' flat list."""
  flat = []
  for g, t in zip(grads_structure, tables):
    if isinstance(t, (list, tuple)):
      assert isinstance(g, (list, tuple)) and len(g) == len(t), g
      flat.extend(g)
    else:
      flat.append(g)
  return flat


# --------------------------------------------------------------------------
def make_ids(rng, capacity, shape, include_boundaries=True, duplicates=True):
  """Random ids in [0, capacity) of `shape`, with 0, capacity-1 and repeats."""
  size = int(np.prod(shape, dtype=np.int64))
  ids = rng.integers(0, capacity, size=size, dtype=np.int64)
  if include_boundaries and size >= 1:
    ids[0] = capacity - 1
  if include_boundaries and size >= 2:
    ids[1] = 0
  if duplicates and size >= 4:
    ids[-1] = ids[2]
    ids[-2] = ids[0]
  return ids.reshape(shape)


ID_SHAPES = {0: (), 1: (7,), 2: (2, 4), 3: (2, 3, 2)}


def ref_rows(ids, rows):
  ids = np.asarray(ids, dtype=np.int64)
  assert np.all(ids >= 0) and np.all(ids < rows[0] * rows[1])
  return ids // rows[1], ids % rows[1]


def ref_lookup(full_ref, ids, operation):
  """float64 NumPy reference forward; full_ref = [Q, R] float64 arrays."""
  q_tab, r_tab = full_ref
  q, r = ref_rows(ids, (q_tab.shape[0], r_tab.shape[0]))
  qv, rv = q_tab[q], r_tab[r]
  if operation == "add":
    return qv + rv
  if operation in ("mul", "mult"):
    return qv * rv
  if operation == "concat":
    return np.concatenate([qv, rv], axis=-1)
  raise ValueError(operation)


def ref_grads(full_ref, ids, operation, upstream):
  """float64 dense gradients of sum(y * upstream) w.r.t. [Q, R]."""
  q_tab, r_tab = full_ref
  w0 = q_tab.shape[1]
  q, r = ref_rows(ids, (q_tab.shape[0], r_tab.shape[0]))
  q, r = q.reshape(-1), r.reshape(-1)
  g = np.asarray(upstream, np.float64).reshape(q.shape[0], -1)
  dq, dr = np.zeros_like(q_tab), np.zeros_like(r_tab)
  if operation == "add":
    np.add.at(dq, q, g)
    np.add.at(dr, r, g)
  elif operation in ("mul", "mult"):
    np.add.at(dq, q, g * r_tab[r])
    np.add.at(dr, r, g * q_tab[q])
  elif operation == "concat":
    np.add.at(dq, q, g[:, :w0])
    np.add.at(dr, r, g[:, w0:])
  else:
    raise ValueError(operation)
  return [dq, dr]


# Any k and strategy (the references above are the k = 2 Q-R case):
#   generalized-Q-R: table j uses (x // prod(rows[j+1:])) % rows[j];
#   CRT:             table j uses x % rows[j] (rows pairwise coprime);
#   "deeprec":       DeepRec's k = 2 mapping, x // rows[0] and x % rows[1].
def np_rows(ids, rows, strategy):
  """Row of every table for every id: [k, ...ids.shape]."""
  ids = np.asarray(ids, np.int64)
  if strategy == "deeprec":
    return [ids // rows[0], ids % rows[1]]
  out = []
  for j, r in enumerate(rows):
    if strategy == "CRT":
      out.append(ids % r)
    else:
      out.append((ids // math.prod(rows[j + 1 :])) % r)
  return out


def np_lookup(arrays, ids, rows, strategy, operation):
  parts = [
      np.asarray(a, np.float64)[r]
      for a, r in zip(arrays, np_rows(ids, rows, strategy))
  ]
  if operation == "concat":
    return np.concatenate(parts, axis=-1)
  acc = parts[0]
  for p in parts[1:]:
    acc = acc + p if operation == "add" else acc * p
  return acc


def np_grads(arrays, ids, rows, strategy, operation, upstream):
  """Dense gradient of sum(upstream * lookup) for every table."""
  ids = np.asarray(ids, np.int64).reshape(-1)
  up = np.asarray(upstream, np.float64).reshape(ids.size, -1)
  rws = [r.reshape(-1) for r in np_rows(ids, rows, strategy)]
  grads = [np.zeros(np.shape(a), np.float64) for a in arrays]
  off = 0
  for j, a in enumerate(arrays):
    a = np.asarray(a, np.float64)
    width = a.shape[1]
    for i in range(ids.size):
      if operation == "concat":
        g = up[i, off : off + width]
      elif operation == "add":
        g = up[i]
      else:
        g = up[i].copy()
        for t, other in enumerate(arrays):
          if t != j:
            g = g * np.asarray(other, np.float64)[rws[t][i]]
      grads[j][rws[j][i]] += g
    if operation == "concat":
      off += width
  return grads


def to_f64(x):
  if isinstance(x, (tf.Tensor, tf.Variable)):
    return tf.cast(x, tf.float64).numpy()
  return np.asarray(x).astype(np.float64)


def slices_to_dense(g, shard_shape, context=""):
  """Checks g is IndexedSlices(-Value) for a shard; returns float64 dense."""
  assert isinstance(
      g, (tf.IndexedSlices, IndexedSlicesValue)
  ), f"{context}: gradient must be IndexedSlices, got {type(g).__name__}"
  assert g.dense_shape is not None, f"{context}: dense_shape is None"
  dense_shape = [int(v) for v in np.asarray(g.dense_shape)]
  assert dense_shape == list(
      shard_shape
  ), f"{context}: dense_shape {dense_shape} != shard shape {list(shard_shape)}"
  idx = np.asarray(g.indices).astype(np.int64).reshape(-1)
  vals = to_f64(g.values)
  assert vals.shape == (
      idx.shape[0],
      shard_shape[1],
  ), f"{context}: values shape {vals.shape}, indices {idx.shape}"
  if idx.size:
    assert (
        idx.min() >= 0 and idx.max() < shard_shape[0]
    ), f"{context}: indices {idx} not shard-local for shape {shard_shape}"
  dense = np.zeros(shard_shape, np.float64)
  np.add.at(dense, idx, vals)
  return dense


def assert_close(actual, expected, tol, context=""):
  rtol, atol = tol
  np.testing.assert_allclose(
      actual, expected, rtol=rtol, atol=atol, err_msg=context
  )


def check_shard_grads(flat_grads, sizes_all, ref_dense, tol, context=""):
  """Compares per-shard IndexedSlices grads with the dense reference."""
  n_shards = sum(len(s) for s in sizes_all)
  assert len(flat_grads) == n_shards, (len(flat_grads), n_shards)
  k = 0
  for j, sizes in enumerate(sizes_all):
    full = ref_dense[j]
    for s, block in enumerate(split_rows(full, sizes)):
      ctx = f"{context} table {j} shard {s} (sizes {sizes})"
      dense = slices_to_dense(flat_grads[k], block.shape, ctx)
      scale = max(1.0, float(np.abs(block).max(initial=0.0)))
      assert_close(dense, block, (tol[0], tol[1] * scale), ctx)
      k += 1


def normalize_raw_grad(outs, n_shards):
  """multihash_lookup_grad output -> list of (indices, values) per shard.

  Accepts a list of pairs, a flat interleaved list [i0, v0, i1, v1, ...]
  or the raw op order [i0, i1, ..., v0, v1, ...] (told apart by dtype).
  """
  outs = list(outs)
  if len(outs) == n_shards and all(
      isinstance(o, (tuple, list)) and len(o) == 2 for o in outs
  ):
    return [tuple(o) for o in outs]
  assert (
      len(outs) == 2 * n_shards
  ), f"expected {n_shards} pairs, got {len(outs)} outputs"
  if outs[1].dtype.is_integer:
    return list(zip(outs[:n_shards], outs[n_shards:]))
  return [(outs[2 * i], outs[2 * i + 1]) for i in range(n_shards)]
