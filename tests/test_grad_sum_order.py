"""The CPU gradient's sums, bit for bit.

Every summed row is the sum over the ids that touch it, in increasing id
position, of grad_i (times the other tables' rows for mul), in the table's
dtype for float32: exactly what NumPy's unbuffered, in-order `np.add.at`
computes. These cases reach every path of the CPU gradient kernel: tables
few rows relative to the ids (one pass over the ids for every table, split
by columns, and by slot blocks when the rows are narrow), tables with many
rows (grouped by sorting), sharded tables, k = 2 and k = 3, and batches
below and above the size where the work is split among threads.
"""

import numpy as np
import pytest
import tensorflow as tf

from tensorflow_multihash import multihash_ops as mh


def _rows_of(ids, rows):
  """Mixed-radix rows (Q-R / generalized Q-R) of every id, per table."""
  out, divisor = [], 1
  divisors = []
  for r in reversed(rows):
    divisors.append(divisor)
    divisor *= r
  divisors = divisors[::-1]
  for d, r in zip(divisors, rows):
    out.append((ids // d) % r)
  return out


def _reference(tables, ids, grad, operation):
  """In-order float32 sums: {table j: (unique rows, summed rows)}."""
  rows = [t.shape[0] for t in tables]
  table_rows = _rows_of(ids, rows)
  result = []
  col = 0
  for j, t in enumerate(tables):
    width = t.shape[1]
    if operation == "concat":
      g = grad[:, col : col + width]
      col += width
    else:
      g = grad
    if operation == "mul":
      partial = None
      for o, other in enumerate(tables):
        if o == j:
          continue
        e = other[table_rows[o]]
        partial = e if partial is None else partial * e
      contrib = g * partial
    else:
      contrib = g
    acc = np.zeros_like(t)
    np.add.at(acc, table_rows[j], contrib)
    unique = np.unique(table_rows[j])
    result.append((unique, acc[unique]))
  return result


def _split(table, shards):
  bounds = np.linspace(0, table.shape[0], shards + 1).astype(int)
  return [tf.constant(table[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


CASES = [
    # (rows per table, width, n, shards per table)
    ([40, 30], 8, 50, 1),  # one task
    ([300, 250], 64, 4096, 1),  # column split, 4 groups of 16
    ([300, 250], 16, 8192, 1),  # too narrow for columns: slot blocks
    ([300, 250], 24, 8192, 1),  # a ragged last column group
    ([90000, 7], 32, 64, 1),  # table 0 grouped by sorting
    ([300, 250], 32, 4096, 3),  # sharded: sums through a buffer
    ([90000, 7], 8, 64, 2),  # sharded, table 0 grouped by sorting
    ([20, 17, 13], 32, 4096, 1),  # k = 3
]


@pytest.mark.parametrize("operation", ["add", "mul", "concat"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[0])))
def test_sums_are_in_order_float32_sums(operation, case):
  rows, width, n, shards = case
  rng = np.random.default_rng(sum(rows) + width + n)
  k = len(rows)
  widths = [width] * k
  tables = [
      rng.normal(size=(r, w)).astype(np.float32) for r, w in zip(rows, widths)
  ]
  capacity = int(np.prod(rows))
  # Zipf-like skew: a few hot ids, the rest spread out.
  ids = np.where(
      rng.random(n) < 0.3,
      rng.integers(0, 5, n),
      rng.integers(0, capacity, n),
  ).astype(np.int64)
  out_width = sum(widths) if operation == "concat" else width
  grad = rng.normal(size=(n, out_width)).astype(np.float32)
  strategy = "Q-R" if k == 2 else "generalized-Q-R"
  inputs = [_split(t, shards) if shards > 1 else tf.constant(t) for t in tables]
  got = mh.multihash_lookup_grad(
      tf.constant(grad),
      inputs,
      tf.constant(ids),
      operation=operation,
      complementary_strategy=strategy,
  )
  want = _reference(tables, ids, grad, operation)
  for j in range(k):
    pairs = got[j * shards : (j + 1) * shards]
    starts = np.linspace(0, rows[j], shards + 1).astype(int)[:-1]
    indices = np.concatenate(
        [p[0].numpy().astype(np.int64) + s for p, s in zip(pairs, starts)]
    )
    values = np.concatenate([p[1].numpy() for p in pairs])
    np.testing.assert_array_equal(indices, want[j][0])
    # Bit-identical: the same operations in the same order.
    np.testing.assert_array_equal(
        values.view(np.int32), want[j][1].view(np.int32)
    )


def test_same_bits_every_run_and_in_a_graph():
  rng = np.random.default_rng(7)
  tables = [
      tf.constant(rng.normal(size=(500, 64)).astype(np.float32))
      for _ in range(2)
  ]
  ids = tf.constant(rng.integers(0, 250000, 20000), tf.int64)
  grad = tf.constant(rng.normal(size=(20000, 64)).astype(np.float32))

  def raw():
    return mh.multihash_lookup_grad(grad, tables, ids, operation="mul")

  first = [v.numpy() for _, v in raw()]
  graph = tf.function(raw)
  for _ in range(3):
    for a, (_, b) in zip(first, raw()):
      np.testing.assert_array_equal(a, b.numpy())
    for a, (_, b) in zip(first, graph()):
      np.testing.assert_array_equal(a, b.numpy())


def _bf16_bits(rng, shape):
  """Every kind of bfloat16: normal, subnormal, zero, inf, NaN, both signs."""
  bits = rng.integers(0, 1 << 16, size=shape, dtype=np.uint32)
  special = np.array(
      [0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0xFFC1, 0x0001, 0x807F, 0x3F80],
      np.uint32,
  )
  mask = rng.random(shape) < 0.1
  bits[mask] = rng.choice(special, size=int(mask.sum()))
  return bits.astype(np.uint16)


def _bf16_to_f32(bits):
  return (bits.astype(np.uint32) << 16).view(np.float32)


def _flush(x):
  """Float32 subnormals to zero of the same sign."""
  tiny = np.finfo(np.float32).tiny
  return np.where(np.abs(x) < tiny, np.copysign(np.float32(0), x), x).astype(
      np.float32
  )


def _f32_to_bf16_bits(x):
  """Round to nearest even; a NaN becomes the quiet NaN of its sign."""
  bits = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
  rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF
  nan = np.isnan(x)
  quiet = np.where((bits >> 31) == 1, 0xFFC0, 0x7FC0)
  return np.where(nan, quiet, rounded).astype(np.uint16)


@pytest.mark.parametrize("operation", ["add", "mul"])
@pytest.mark.parametrize("width", [4, 7, 64])
def test_bfloat16_forward_rounds_each_element(operation, width):
  rng = np.random.default_rng(width)
  rows = [37, 29]
  bits = [_bf16_bits(rng, (r, width)) for r in rows]
  tables = [tf.bitcast(tf.constant(b), tf.bfloat16) for b in bits]
  ids = rng.integers(0, rows[0] * rows[1], 3000)
  got = mh.multihash_lookup(tables, tf.constant(ids), operation=operation)
  got_bits = tf.bitcast(got, tf.uint16).numpy()
  q, r = ids // rows[1], ids % rows[1]
  # TensorFlow runs kernels with denormals flushed (inputs read as zero,
  # results flushed to zero), in the scalar and the vector code alike.
  a, b = _flush(_bf16_to_f32(bits[0])[q]), _flush(_bf16_to_f32(bits[1])[r])
  with np.errstate(all="ignore"):
    want = _f32_to_bf16_bits(_flush(a * b if operation == "mul" else a + b))
  # A NaN result is a quiet NaN; IEEE leaves its sign to the operand order
  # (NaN + -NaN), so only that it is NaN is compared.
  nan = (want & 0x7FFF) == 0x7FC0
  np.testing.assert_array_equal((got_bits & 0x7FFF)[nan], 0x7FC0)
  np.testing.assert_array_equal(got_bits[~nan], want[~nan])


@pytest.mark.parametrize("operation", ["add", "mul"])
def test_bfloat16_sums_are_in_order_float_sums(operation):
  rng = np.random.default_rng(3)
  rows, width, n = [300, 250], 64, 4096
  bits = [
      (
          rng.normal(size=(r, width)).astype(np.float32).view(np.uint32) >> 16
      ).astype(np.uint16)
      for r in rows
  ]
  grad_bits = (
      rng.normal(size=(n, width)).astype(np.float32).view(np.uint32) >> 16
  ).astype(np.uint16)
  ids = rng.integers(0, rows[0] * rows[1], n)
  got = mh.multihash_lookup_grad(
      tf.bitcast(tf.constant(grad_bits), tf.bfloat16),
      [tf.bitcast(tf.constant(b), tf.bfloat16) for b in bits],
      tf.constant(ids),
      operation=operation,
  )
  tables = [_bf16_to_f32(b) for b in bits]
  want = _reference(tables, ids, _bf16_to_f32(grad_bits), operation)
  for (indices, values), (want_rows, want_sums) in zip(got, want):
    np.testing.assert_array_equal(indices.numpy(), want_rows)
    np.testing.assert_array_equal(
        tf.bitcast(values, tf.uint16).numpy(), _f32_to_bf16_bits(want_sums)
    )
