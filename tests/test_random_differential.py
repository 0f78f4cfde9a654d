"""Random differential test of MultiHashLookup and its gradient against a
NumPy reference written here from the definitions.

Every configuration is drawn from a fixed seed: k (2 to 8 tables), the
strategy (Q-R, generalized-Q-R, CRT with pairwise coprime rows, DeepRec's
Q-R mapping), the operation (add, mul, concat), the table dtype (float32,
float64, float16, bfloat16), the id dtype, row counts and widths, each
table's row shards (some empty, some resource variables), and ids of rank 0
to 3 (duplicates and both ends of the range included). The suite runs
TFMH_DIFF_CASES configurations (default 150); set it higher for more, and
TFMH_DIFF_SEED for another draw.
"""

import math
import os

import numpy as np
import pytest
import tensorflow as tf

from tensorflow_multihash import multihash_ops

NUM_CASES = int(os.environ.get("TFMH_DIFF_CASES", "150"))
SEED = int(os.environ.get("TFMH_DIFF_SEED", "20261203"))
DTYPES = (tf.float32, tf.float64, tf.float16, tf.bfloat16)
# Relative to the same sum over absolute values (so cancellation is fine):
# the rounding of one float accumulation and of the final cast to the dtype.
REL_TOL = {
    tf.float64: 1e-12,
    tf.float32: 1e-5,
    tf.float16: 2e-3,
    tf.bfloat16: 1.6e-2,
}
# float16 results below its smallest normal (6.1e-5) are subnormal, with a
# fixed spacing of 2**-24: rounding there is absolute, not relative.
ABS_TOL = {
    tf.float64: 0.0,
    tf.float32: 0.0,
    tf.float16: 2.0**-24,
    tf.bfloat16: 0.0,
}


def ref_rows(ids, rows, strategy):
  """Row of table j for every id, from the definitions."""
  ids = np.asarray(ids, np.int64)
  k = len(rows)
  if strategy == "deeprec":  # DeepRec: q = id // rows_Q, r = id % rows_R
    return [ids // rows[0], ids % rows[1]]
  if strategy == "CRT":
    return [ids % rows[j] for j in range(k)]
  # Q-R (k = 2) and generalized-Q-R: mixed radix, table 0 most significant.
  out = []
  for j in range(k):
    divisor = 1
    for r in rows[j + 1 :]:
      divisor *= r
    out.append((ids // divisor) % rows[j])
  return out


def ref_lookup(arrays, ids, rows, strategy, operation):
  """(output, the same over absolute values) in float64."""
  picked = [
      np.asarray(a, np.float64)[r]
      for a, r in zip(arrays, ref_rows(ids, rows, strategy))
  ]
  if operation == "concat":
    out = np.concatenate(picked, axis=-1)
    return out, np.abs(out)
  out, mag = picked[0], np.abs(picked[0])
  for p in picked[1:]:
    if operation == "add":
      out, mag = out + p, mag + np.abs(p)
    else:
      out, mag = out * p, mag * np.abs(p)
  return out, mag


def ref_grads(arrays, ids, rows, strategy, operation, upstream):
  """Dense gradient of sum(upstream * lookup) per table, and the same sums
  over absolute values."""
  ids = np.asarray(ids, np.int64).reshape(-1)
  up = np.asarray(upstream, np.float64)
  up = up.reshape(ids.size, up.shape[-1])
  tables = [np.asarray(a, np.float64) for a in arrays]
  rws = [r.reshape(-1) for r in ref_rows(ids, rows, strategy)]
  grads = [np.zeros_like(t) for t in tables]
  mags = [np.zeros_like(t) for t in tables]
  offset = 0
  for j, t in enumerate(tables):
    w = t.shape[1]
    for i in range(ids.size):
      if operation == "concat":
        g = up[i, offset : offset + w]
      elif operation == "add":
        g = up[i]
      else:
        g = up[i].copy()
        for o, other in enumerate(tables):
          if o != j:
            g = g * other[rws[o][i]]
      grads[j][rws[j][i]] += g
      mags[j][rws[j][i]] += np.abs(g)
    offset += w if operation == "concat" else 0
  return grads, mags


def _coprime_rows(rng, k):
  while True:
    rows = [int(x) for x in rng.integers(1, 12, size=k)]
    if all(
        math.gcd(a, b) == 1 for i, a in enumerate(rows) for b in rows[i + 1 :]
    ):
      return rows


def draw_case(rng):
  """One random configuration (a dict)."""
  strategy = str(rng.choice(["Q-R", "generalized-Q-R", "CRT", "deeprec"]))
  if strategy in ("Q-R", "deeprec"):
    k = 2
  else:
    k = int(rng.choice([2, 3, 4, 8], p=[0.3, 0.35, 0.25, 0.1]))
  if strategy == "CRT":
    rows = _coprime_rows(rng, k)
  else:
    hi = 3 if k == 8 else 9
    rows = [int(x) for x in rng.integers(1, hi + 1, size=k)]
  capacity = rows[0] ** 2 if strategy == "deeprec" else math.prod(rows)
  operation = str(rng.choice(["add", "mul", "concat"]))
  if operation == "concat":
    widths = [int(x) for x in rng.integers(1, 6, size=k)]
  else:
    widths = [int(rng.integers(1, 10))] * k
  shards = []
  for r in rows:
    cuts = sorted(
        int(c) for c in rng.integers(0, r + 1, size=int(rng.integers(0, 3)))
    )
    bounds = [0] + cuts + [r]
    shards.append([b - a for a, b in zip(bounds, bounds[1:])])
  rank = int(rng.integers(0, 4))
  shape = tuple(
      int(x)
      for x in rng.integers(0 if rng.random() < 0.05 else 1, 5, size=rank)
  )
  ids = rng.integers(0, capacity, size=shape)
  flat = ids.reshape(-1)
  if flat.size >= 2:
    flat[0], flat[-1] = 0, capacity - 1
  if flat.size >= 4:
    flat[1] = flat[2]  # a duplicate
  return dict(
      strategy=strategy,
      rows=rows,
      widths=widths,
      shards=shards,
      operation=operation,
      dtype=DTYPES[int(rng.integers(0, len(DTYPES)))],
      id_dtype=tf.int32 if rng.random() < 0.5 else tf.int64,
      ids=ids.reshape(shape),
      variables=bool(rng.random() < 0.4),
      seed=int(rng.integers(0, 2**31)),
  )


def _cases():
  rng = np.random.default_rng(SEED)
  return [draw_case(rng) for _ in range(NUM_CASES)]


CASES = _cases()


def _describe(c):
  return (
      f"{c['strategy']} {c['operation']} {c['dtype'].name} ids={c['id_dtype'].name}"
      f"{list(c['ids'].shape)} rows={c['rows']} widths={c['widths']} "
      f"shards={c['shards']} variables={c['variables']}"
  )


def _check(got, ref, mag, dtype, what):
  got = np.asarray(tf.cast(got, tf.float64))
  assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
  bound = REL_TOL[dtype] * mag + ABS_TOL[dtype] + 1e-300
  bad = np.abs(got - ref) > bound
  assert not bad.any(), (
      f"{what}: {int(bad.sum())} of {bad.size} elements differ, first at "
      f"{np.argwhere(bad)[0].tolist()}: got {got[bad][0]!r}, expected {ref[bad][0]!r}"
  )


@pytest.mark.parametrize("index", range(len(CASES)))
def test_random_configuration(index):
  c = CASES[index]
  what = f"case {index}: {_describe(c)}"
  rng = np.random.default_rng(c["seed"])
  dtype = c["dtype"]
  # Table values exactly representable in the dtype: the reference sees
  # the same numbers as the kernel.
  arrays = [
      tf.cast(
          tf.cast(rng.uniform(-2, 2, size=(r, w)), dtype), tf.float64
      ).numpy()
      for r, w in zip(c["rows"], c["widths"])
  ]
  make = tf.Variable if c["variables"] else tf.constant
  tables, flat = [], []
  for a, sizes in zip(arrays, c["shards"]):
    parts, start = [], 0
    for n in sizes:
      parts.append(make(tf.cast(a[start : start + n], dtype)))
      start += n
    tables.append(parts)
    flat.extend(parts)
  strategy = "Q-R" if c["strategy"] == "deeprec" else c["strategy"]
  deeprec = c["strategy"] == "deeprec"
  ids = tf.constant(c["ids"], c["id_dtype"])
  y = multihash_ops.multihash_lookup(
      tables, ids, c["operation"], strategy, deeprec_mapping=deeprec
  )
  ref, mag = ref_lookup(
      arrays, c["ids"], c["rows"], c["strategy"], c["operation"]
  )
  assert y.dtype == dtype, what
  _check(y, ref, mag, dtype, what + " forward")

  out_width = ref.shape[-1]
  upstream = tf.cast(
      tf.cast(rng.uniform(-1, 1, size=c["ids"].shape + (out_width,)), dtype),
      tf.float64,
  ).numpy()
  pairs = multihash_ops.multihash_lookup_grad(
      tf.cast(upstream, dtype),
      tables,
      ids,
      c["operation"],
      strategy,
      deeprec_mapping=deeprec,
  )
  assert len(pairs) == len(flat), what
  grads, mags = ref_grads(
      arrays, c["ids"], c["rows"], c["strategy"], c["operation"], upstream
  )
  touched = [
      set(r.reshape(-1).tolist())
      for r in ref_rows(c["ids"], c["rows"], c["strategy"])
  ]
  p = 0
  for j, sizes in enumerate(c["shards"]):
    start = 0
    for s, n in enumerate(sizes):
      idx, vals = pairs[p]
      p += 1
      where = f"{what} grad table {j} shard {s}"
      expected = sorted(r - start for r in touched[j] if start <= r < start + n)
      assert idx.dtype == c["id_dtype"], where
      assert (
          np.asarray(idx).tolist() == expected
      ), f"{where}: rows {np.asarray(idx).tolist()} != {expected}"
      rows_abs = np.asarray(expected, np.int64) + start
      _check(vals, grads[j][rows_abs], mags[j][rows_abs], dtype, where)
      start += n


def test_cases_cover_the_space():
  # The fixed draw covers every strategy, operation, dtype and k class.
  if NUM_CASES < 100:
    pytest.skip("too few cases drawn to cover the space")
  seen = {(c["strategy"], c["operation"]) for c in CASES}
  assert len(seen) == 12, sorted(seen)
  assert {c["dtype"] for c in CASES} == set(DTYPES)
  assert {len(c["rows"]) for c in CASES} >= {2, 3, 4, 8}
  assert any(0 in sizes for c in CASES for sizes in c["shards"])
  assert any(c["variables"] for c in CASES) and any(
      c["ids"].ndim == 0 for c in CASES
  )
