"""The TensorFlow GPU kernels, run inside TensorFlow on a machine without a GPU.

`cc/kernels/multihash_kernels_gpu.cc` is what runs MultiHashLookup and
MultiHashLookupGrad on a GPU: it resolves and validates the tables,
allocates outputs, workspace and pinned host buffers with TensorFlow's
allocators, calls the CUDA launchers of `gpu_kernels/`, brings the row counts
back to size the gradient's outputs, and turns the device-side range check
into the op's error. `gpu_kernels/emu/build_tf_emulation.sh` builds that same
file into a test library in which the launchers run over the CPU emulation of
CUDA (`gpu_kernels/emu`) and the kernels register on the CPU device under the
kernel label "gpu_emulation". Graphs built under that label run the GPU code
path end to end; these tests check it against an independent NumPy reference
and against the CPU kernels. What they cannot check: real streams, device
memory and speed (`gpu_kernels/device_check.sh` on a GPU does).
"""

import contextlib
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import rewriter_config_pb2
from tensorflow.python.framework import config as tf_config
from tensorflow.python.framework import kernels

from mh_testutil import (
    FWD_TOL,
    GRAD_TOL,
    ID_DTYPES,
    LAYOUTS,
    OPERATIONS,
    ROW_CONFIGS,
    assert_close,
    build_tables,
    make_ids,
    normalize_raw_grad,
    np_grads,
    np_lookup,
    np_rows,
    out_width,
    random_full_tables,
    split_rows,
    to_f64,
    widths_for,
)

pytestmark = (
    pytest.mark.slow
)  # builds the emulation library: not in the fast loop

ROOT = Path(__file__).resolve().parents[1]
LABEL = "gpu_emulation"
OP_NAMES = ("MultiHashLookup", "MultiHashLookupGrad")
# What the GPU kernels are registered for.
GPU_DTYPES = (tf.float32, tf.float16, tf.bfloat16)
dtype_id = lambda d: d.name  # noqa: E731


@pytest.fixture(scope="module")
def emulated(mh):
  """Builds (or reuses) the emulation library and loads its kernels."""
  env = dict(os.environ, PYTHON=sys.executable)
  r = subprocess.run(
      ["bash", str(ROOT / "gpu_kernels/emu/build_tf_emulation.sh")],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=1200,
  )
  # No skip: without a toolkit the build uses the CUDA headers TensorFlow's
  # wheel carries, so a missing prerequisite is a failure.
  assert (
      r.returncode == 0
  ), f"build_tf_emulation.sh failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
  path = r.stdout.strip().splitlines()[-1]
  tf.load_op_library(path)
  return path


def _no_constant_folding():
  # Both graph optimizers would otherwise evaluate ops whose inputs are all
  # constants once, while optimizing, and every run would return that value.
  config = tf.compat.v1.ConfigProto()
  config.graph_options.rewrite_options.constant_folding = (
      rewriter_config_pb2.RewriterConfig.OFF
  )
  config.graph_options.optimizer_options.opt_level = (
      tf.compat.v1.OptimizerOptions.L0
  )
  config.graph_options.optimizer_options.do_constant_folding = False
  return config


NO_FOLDING = _no_constant_folding()


@contextlib.contextmanager
def session(build, label=LABEL):
  """Builds a graph with `build()`; yields (session, what build returned).

  Every MultiHashLookup(Grad) op in the graph gets the kernel `label`
  (None: the CPU kernels). Variables are initialized.
  """
  g = tf.Graph()
  with g.as_default():
    labels = (
        g._kernel_label_map({op: label for op in OP_NAMES})
        if label
        else contextlib.nullcontext()
    )
    with labels:
      built = build()
    ours = [op for op in g.get_operations() if op.type in OP_NAMES]
    assert ours, "the graph has no multi-hash op"
    for op in ours:
      got = op.get_attr("_kernel").decode() if label else None
      assert got == label, f"{op.name} has kernel label {got!r}, not {label!r}"
    init = tf.compat.v1.global_variables_initializer()
    with tf.compat.v1.Session(graph=g, config=NO_FOLDING) as sess:
      sess.run(init)
      yield sess, built


def run(build, label=LABEL, times=1):
  """Runs the fetches that `build()` returns `times` times; their results."""
  with session(build, label) as (sess, fetches):
    return [sess.run(fetches) for _ in range(times)]


def rounded(arrays, dtype):
  """float32 copies of `arrays` holding values exactly representable in dtype."""
  return [tf.cast(tf.cast(a, dtype), tf.float32).numpy() for a in arrays]


def const(a, dtype):
  return tf.cast(tf.constant(a, tf.float32), dtype)


def check_raw_grads(
    pairs,
    full,
    ids,
    operation,
    upstream,
    sizes,
    dtype,
    strategy="Q-R",
    context="",
):
  """Per shard: the distinct touched rows ascending, and their summed gradient."""
  table_rows = [t.shape[0] for t in full]
  dense = np_grads(full, ids, table_rows, strategy, operation, upstream)
  rows = [r.reshape(-1) for r in np_rows(ids, table_rows, strategy)]
  k = 0
  for j, shard_sizes in enumerate(sizes):
    touched = set(rows[j].tolist())
    start = 0
    for s, n in enumerate(shard_sizes):
      ctx = f"{context} table {j} shard {s} of {shard_sizes}"
      idx, vals = pairs[k]
      idx = np.asarray(idx).astype(np.int64)
      vals = to_f64(vals)
      expected = sorted(x - start for x in touched if start <= x < start + n)
      assert (
          idx.tolist() == expected
      ), f"{ctx}: rows {idx.tolist()} != {expected}"
      assert vals.shape == (len(expected), full[j].shape[1]), (ctx, vals.shape)
      block = dense[j][start : start + n][idx]
      scale = max(1.0, float(np.abs(block).max(initial=0.0)))
      tol = GRAD_TOL[dtype]
      assert_close(vals, block, (tol[0], tol[1] * scale), ctx)
      start += n
      k += 1
  assert k == len(pairs)


# ----------------------------------------------------------------------------
def _registered(op_name, device, label):
  out = set()
  for kd in kernels.get_registered_kernels_for_op(op_name).kernel:
    if kd.device_type != device or kd.label != label:
      continue
    cons = {c.name: tuple(c.allowed_values.list.type) for c in kd.constraint}
    assert len(cons["T"]) == 1 and len(cons["Tidx"]) == 1, kd
    out.add((cons["T"][0], cons["Tidx"][0]))
  return out


@pytest.mark.parametrize("op_name", OP_NAMES)
def test_registered_for_every_gpu_type(mh, emulated, op_name):
  want = {
      (d.as_datatype_enum, i.as_datatype_enum)
      for d in GPU_DTYPES
      for i in ID_DTYPES
  }
  assert _registered(op_name, "CPU", LABEL) == want
  if mh.BUILT_WITH_CUDA:  # the library's own GPU kernels: the same types
    assert _registered(op_name, "GPU", "") == want


def test_an_unknown_label_finds_no_kernel(mh, emulated):
  # The label is what selects the kernel: a graph that asks for another
  # label fails to find one, so the passing runs below ran ours.
  with pytest.raises((tf.errors.NotFoundError, tf.errors.InvalidArgumentError)):
    run(
        lambda: mh.multihash_lookup(
            [tf.ones([2, 2]), tf.ones([3, 2])],
            tf.constant([0, 5]),
            operation="add",
        ),
        label="no_such_label",
    )


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("id_dtype", ID_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("operation", OPERATIONS)
def test_forward(mh, emulated, rng, operation, dtype, id_dtype, layout):
  widths = widths_for(operation)
  cases = []
  for rows, shape in zip(ROW_CONFIGS, [(7,), (2, 3, 2), ()]):
    full = rounded(random_full_tables(rng, rows, widths), dtype)
    cases.append((full, make_ids(rng, rows[0] * rows[1], shape)))

  def build():
    outs = []
    for full, ids in cases:  # one graph: the lookups may run concurrently
      tables, _, _ = build_tables(full, layout, make=lambda a: const(a, dtype))
      outs.append(
          mh.multihash_lookup(
              tables, tf.constant(ids, id_dtype), operation=operation
          )
      )
    return outs

  (got,) = run(build)
  for (full, ids), y in zip(cases, got):
    assert y.dtype == dtype.as_numpy_dtype
    expected = np_lookup(
        full, ids, [t.shape[0] for t in full], "Q-R", operation
    )
    assert y.shape == expected.shape
    assert_close(
        to_f64(y), expected, FWD_TOL[dtype], f"{operation} ids={ids.tolist()}"
    )


def _check_forward_and_grad(
    mh, rng, operation, strategy, full, sizes, fwd_tol, context
):
  """Forward and raw gradient of float32 tables `full`, table j cut into
  shards of sizes[j] rows, on random ids (duplicates and both ends)."""
  rows = [t.shape[0] for t in full]
  # "deeprec": DeepRec's mapping (q = id // rows_0), ids in [0, rows_0^2).
  deeprec = strategy == "deeprec"
  ids = make_ids(rng, rows[0] ** 2 if deeprec else math.prod(rows), (6, 7))
  width = out_width(operation, [t.shape[1] for t in full])
  upstream = rng.standard_normal(ids.shape + (width,)).astype(np.float32)
  kwargs = dict(
      operation=operation,
      complementary_strategy="Q-R" if deeprec else strategy,
      deeprec_mapping=deeprec,
  )

  def build():
    tables = [
        split_rows(const(t, tf.float32), sz)
        if len(sz) > 1
        else const(t, tf.float32)
        for t, sz in zip(full, sizes)
    ]
    ids_t = tf.constant(ids, tf.int64)
    y = mh.multihash_lookup(tables, ids_t, **kwargs)
    g = mh.multihash_lookup_grad(tf.constant(upstream), tables, ids_t, **kwargs)
    return y, g

  ((y, g),) = run(build)
  assert_close(
      y, np_lookup(full, ids, rows, strategy, operation), fwd_tol, context
  )
  pairs = normalize_raw_grad(g, sum(len(s) for s in sizes))
  check_raw_grads(
      pairs,
      full,
      ids,
      operation,
      upstream,
      sizes,
      tf.float32,
      strategy,
      context,
  )


@pytest.mark.parametrize(
    "strategy,rows",
    [
        ("generalized-Q-R", (3, 4, 5)),
        ("CRT", (3, 4, 5)),
        ("generalized-Q-R", (2, 9)),
        ("deeprec", (5, 3)),
        ("deeprec", (3, 7)),
    ],
)
@pytest.mark.parametrize("operation", OPERATIONS)
def test_strategies_forward_and_grad(
    mh, emulated, rng, operation, strategy, rows
):
  widths = widths_for(operation, len(rows))
  full = [
      rng.standard_normal((r, w)).astype(np.float32)
      for r, w in zip(rows, widths)
  ]
  sizes = [[r] for r in rows]
  sizes[-1] = [1, rows[-1] - 1]  # shard the last table
  _check_forward_and_grad(
      mh,
      rng,
      operation,
      strategy,
      full,
      sizes,
      FWD_TOL[tf.float32],
      f"{strategy} {rows} {operation}",
  )


@pytest.mark.parametrize(
    "case", ["eight-tables", "capacity-over-2^32", "64-shards"]
)
@pytest.mark.parametrize("operation", OPERATIONS)
def test_limits_forward_and_grad(mh, emulated, rng, operation, case):
  # The edges of the layout: the most tables (8), a capacity above 2^32
  # (int64 division of the ids on the device), the most shards (64).
  if case == "eight-tables":
    rows, strategy, shards = (2, 3, 2, 3, 2, 3, 2, 3), "generalized-Q-R", None
  elif case == "capacity-over-2^32":
    rows, strategy, shards = (70001, 70003), "Q-R", None
  else:
    rows, strategy, shards = (40, 30), "Q-R", [[1] * 33 + [7], [1] * 30]
  k = len(rows)
  widths = (
      (2,) * k if operation != "concat" else tuple(1 + j % 3 for j in range(k))
  )
  full = [
      rng.standard_normal((r, w)).astype(np.float32)
      for r, w in zip(rows, widths)
  ]
  if operation == "mul":  # keep a product of 8 normals away from 0 and inf
    full = [1.0 + 0.1 * t for t in full]
  _check_forward_and_grad(
      mh,
      rng,
      operation,
      strategy,
      full,
      shards or [[r] for r in rows],
      (1e-5, 1e-5),
      f"{case} {operation}",
  )


def _grad_case(
    mh,
    rng,
    operation,
    dtype,
    id_dtype,
    layout,
    rows,
    shape,
    times=1,
    label=LABEL,
):
  widths = widths_for(operation)
  full = rounded(random_full_tables(rng, rows, widths), dtype)
  ids = make_ids(rng, rows[0] * rows[1], shape)
  width = out_width(operation, widths)
  upstream = rounded([rng.standard_normal(shape + (width,))], dtype)[0]
  holder = {}

  def build():
    tables, flat, sizes = build_tables(
        full, layout, make=lambda a: const(a, dtype)
    )
    holder["sizes"] = sizes
    return mh.multihash_lookup_grad(
        const(upstream, dtype),
        tables,
        tf.constant(ids, id_dtype),
        operation=operation,
    )

  results = run(build, label=label, times=times)
  n_shards = sum(len(s) for s in holder["sizes"])
  return (
      [normalize_raw_grad(r, n_shards) for r in results],
      full,
      ids,
      upstream,
      holder["sizes"],
  )


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("id_dtype", ID_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("operation", OPERATIONS)
def test_grad_small_tables(
    mh, emulated, rng, operation, dtype, id_dtype, layout
):
  # Tables under 64 rows: the launcher's automatic choice is the sorted sum.
  for rows in ROW_CONFIGS:
    (pairs,), full, ids, upstream, sizes = _grad_case(
        mh, rng, operation, dtype, id_dtype, layout, rows, (3, 4)
    )
    for idx, vals in pairs:
      assert (
          idx.dtype == id_dtype.as_numpy_dtype
          and vals.dtype == dtype.as_numpy_dtype
      )
    check_raw_grads(
        pairs,
        full,
        ids,
        operation,
        upstream,
        sizes,
        dtype,
        context=f"{operation} {dtype.name} rows={rows}",
    )


@pytest.mark.parametrize("id_dtype", ID_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("operation", OPERATIONS)
def test_grad_dense_accumulator(mh, emulated, rng, operation, dtype, id_dtype):
  # Tables of at least 64 rows and fewer than 2^18 ids: the automatic
  # choice is the dense accumulator (atomic adds), for every operation.
  (pairs,), full, ids, upstream, sizes = _grad_case(
      mh, rng, operation, dtype, id_dtype, "mixed", (70, 90), (40, 75)
  )
  check_raw_grads(
      pairs,
      full,
      ids,
      operation,
      upstream,
      sizes,
      dtype,
      context=f"dense {operation} {dtype.name}",
  )


@contextlib.contextmanager
def op_determinism():
  tf_config.enable_op_determinism()
  try:
    yield
  finally:
    tf_config.disable_op_determinism()


@contextlib.contextmanager
def env(name, value):
  old = os.environ.get(name)
  if value is None:
    os.environ.pop(name, None)
  else:
    os.environ[name] = value
  try:
    yield
  finally:
    if old is None:
      os.environ.pop(name, None)
    else:
      os.environ[name] = old


@pytest.mark.parametrize(
    "merge", [None, "0", "1"], ids=["merge-auto", "merge-never", "merge-always"]
)
@pytest.mark.parametrize(
    "rows", [(7, 9), (70, 90)], ids=["tiny", "dense-sized"]
)
@pytest.mark.parametrize("operation", OPERATIONS)
def test_grad_with_op_determinism_is_sorted_and_repeatable(
    mh, emulated, rng, operation, rows, merge
):
  # enable_op_determinism() makes the kernel ask for the sorted algorithm
  # (also where the automatic choice would be the dense one). With 4000 ids
  # on tiny tables the ids repeat, so add and mul merge them first unless
  # TFMH_GPU_SORTED_MERGE says otherwise. Two runs give the same bits.
  with op_determinism(), env("TFMH_GPU_SORTED_MERGE", merge):
    (first, second), full, ids, upstream, sizes = _grad_case(
        mh, rng, operation, tf.float32, tf.int64, "two", rows, (50, 80), times=2
    )
  for (i1, v1), (i2, v2) in zip(first, second):
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(v1, v2)
  check_raw_grads(
      first,
      full,
      ids,
      operation,
      upstream,
      sizes,
      tf.float32,
      context=f"sorted {operation} merge={merge}",
  )


@pytest.mark.parametrize("id_dtype", ID_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("bad", [-1, 15, 2**31 - 1, -(2**31)])
def test_out_of_range_error_as_on_cpu(mh, emulated, id_dtype, bad):
  # The id is checked on the device; the first bad position and its id come
  # back to the host, and the message is the CPU kernel's, word for word.
  ids = np.array([3, 14, 0, bad, 7, bad, -5], np.int64)

  def build():
    return mh.multihash_lookup(
        [tf.ones([3, 2]), tf.ones([5, 2])],
        tf.constant(ids, id_dtype),
        operation="mul",
    )

  messages = []
  for label in (LABEL, None):
    with pytest.raises(tf.errors.InvalidArgumentError) as e:
      run(build, label=label)
    lines = [ln.strip() for ln in e.value.message.splitlines() if "ids[" in ln]
    assert lines, e.value.message
    messages.append(lines[0])
  assert f"ids[3] = {bad} " in messages[0], messages[0]
  assert "[0, 15)" in messages[0], messages[0]
  assert messages[0] == messages[1]


@pytest.mark.parametrize("id_dtype", ID_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("bad", [-1, 15, 2**31 - 1, -(2**31)])
def test_grad_out_of_range_error_as_on_cpu(mh, emulated, id_dtype, bad):
  # The gradient checks the ids on the device too (its sums would only
  # skip a bad id): the same InvalidArgumentError, word for word, as the
  # CPU gradient kernel.
  ids = np.array([3, 14, 0, 7, bad, 2, bad], np.int64)

  def build():
    return mh.multihash_lookup_grad(
        tf.ones([7, 2]),
        [tf.ones([3, 2]), tf.ones([5, 2])],
        tf.constant(ids, id_dtype),
        operation="mul",
    )

  messages = []
  for label in (LABEL, None):
    with pytest.raises(tf.errors.InvalidArgumentError) as e:
      run(build, label=label)
    lines = [ln.strip() for ln in e.value.message.splitlines() if "ids[" in ln]
    assert lines, e.value.message
    messages.append(lines[0])
  assert f"ids[4] = {bad} is out of range" in messages[0], messages[0]
  assert "[0, 15)" in messages[0], messages[0]
  assert messages[0] == messages[1]


@pytest.mark.parametrize("operation", OPERATIONS)
def test_empty_ids(mh, emulated, rng, operation):
  widths = widths_for(operation)
  width = out_width(operation, widths)

  def build():
    tables = [
        [tf.ones([2, widths[0]]), tf.ones([1, widths[0]])],
        tf.ones([4, widths[1]]),
    ]
    y = mh.multihash_lookup(
        tables, tf.zeros([2, 0], tf.int64), operation=operation
    )
    g = mh.multihash_lookup_grad(
        tf.zeros([0, width]),
        tables,
        tf.zeros([0], tf.int32),
        operation=operation,
    )
    return y, g

  ((y, g),) = run(build)
  assert y.shape == (2, 0, width)
  pairs = normalize_raw_grad(g, 3)
  for (idx, vals), w in zip(pairs, [widths[0], widths[0], widths[1]]):
    assert idx.shape == (0,) and vals.shape == (0, w)


@pytest.mark.parametrize("use_resource", [True, False], ids=["resource", "ref"])
@pytest.mark.parametrize("operation", OPERATIONS)
def test_training_matches_cpu_kernels(mh, emulated, operation, use_resource):
  # TF1 training through the public API, partitioned variables and Adagrad:
  # the emulated GPU kernels give the CPU kernels' results.
  import tensorflow_multihash  # noqa: F401  (tf.get_multihash_variable)

  data = np.random.default_rng(7)
  ids = data.integers(0, 90, size=(6, 5)).astype(np.int64)
  width = 8 if operation == "concat" else 4
  target = data.standard_normal((6, 5, width)).astype(np.float32)

  def build():
    tf.compat.v1.set_random_seed(3)
    var = tf.compat.v1.get_multihash_variable(
        "emb",
        [[9, 4], [10, 4]],
        operation=operation,
        use_resource=use_resource,
        initializer=tf.compat.v1.random_normal_initializer(seed=5),
        partitioner=tf.compat.v1.fixed_size_partitioner(2),
    )
    y = tf.compat.v1.nn.embedding_lookup(var, tf.constant(ids))
    loss = tf.reduce_sum(tf.square(y - target))
    step = tf.compat.v1.train.AdagradOptimizer(0.1).minimize(loss)
    tables = [tf.convert_to_tensor(t) for t in var.tables]
    return loss, step, tables

  def train(label):
    with session(build, label) as (sess, (loss, step, tables)):
      out = []
      for _ in range(3):
        out.append(sess.run([loss, step])[0])
        out.extend(sess.run(tables))
      return out

  got, want = train(LABEL), train(None)
  assert len(got) == len(want) == 9
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert got[6] < got[0]


@pytest.mark.parametrize("operation", OPERATIONS)
def test_tf2_function_training_matches_cpu_kernels(mh, emulated, operation):
  # TF2: a tf.function with a GradientTape over sharded tf.Variables and
  # sparse Adagrad updates; the labels apply inside the traced graph.
  data = np.random.default_rng(11)
  widths = widths_for(operation)
  width = out_width(operation, widths)
  init = [
      data.standard_normal((r, w)).astype(np.float32)
      for r, w in zip((8, 11), widths)
  ]
  batches = [
      data.integers(0, 88, size=(16,)).astype(np.int64) for _ in range(3)
  ]
  targets = [
      data.standard_normal((16, width)).astype(np.float32) for _ in range(3)
  ]

  def train(label):
    tables = [
        [tf.Variable(s) for s in split_rows(init[0], [3, 5])],
        tf.Variable(init[1]),
    ]
    flat = tables[0] + [tables[1]]
    opt = tf.compat.v1.train.AdagradOptimizer(0.1)
    labels = {op: label for op in OP_NAMES} if label else {}

    @tf.function
    def step(ids, target):
      with tf.compat.v1.get_default_graph()._kernel_label_map(labels):
        with tf.GradientTape() as tape:
          y = mh.multihash_lookup(tables, ids, operation=operation)
          loss = tf.reduce_sum(tf.square(y - target))
        grads = tape.gradient(loss, flat)
      opt.apply_gradients(zip(grads, flat))
      return loss

    losses = [
        float(step(tf.constant(b), tf.constant(t)))
        for b, t in zip(batches, targets)
    ]
    graph = step.get_concrete_function(
        tf.TensorSpec([16], tf.int64), tf.TensorSpec([16, width], tf.float32)
    ).graph
    kinds = {
        op.type: op.get_attr("_kernel").decode() if label else None
        for op in graph.get_operations()
        if op.type in OP_NAMES
    }
    assert kinds == {name: label for name in OP_NAMES}, kinds
    return losses, [v.numpy() for v in flat]

  got, want = train(LABEL), train(None)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  for a, b in zip(got[1], want[1]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_seed_example_numbers(mh, emulated):
  # The seed example (concat, Adagrad 0.1, ones) on the emulated GPU kernels:
  # every output element goes 1.0 -> 0.9003111 -> 0.8297106, and the tables
  # end at 0.7720356.
  import tensorflow_multihash  # noqa: F401

  def build():
    emb = tf.compat.v1.get_multihash_variable(
        "var-dist",
        [[2, 2], [2, 2]],
        complementary_strategy="Q-R",
        operation="concat",
        initializer=tf.compat.v1.ones_initializer,
    )
    var = tf.compat.v1.nn.embedding_lookup(emb, [0, 1, 2, 3])
    loss = tf.reduce_sum(tf.multiply(var, 2.0))
    opt = tf.compat.v1.train.AdagradOptimizer(0.1)
    train = opt.apply_gradients(opt.compute_gradients(loss))
    return var, train, [tf.convert_to_tensor(t) for t in emb.tables]

  with session(build) as (sess, (var, train, tables)):
    for value in (1.0, 0.9003111, 0.8297106):
      np.testing.assert_allclose(
          sess.run(var), np.full((4, 4), value, np.float32), rtol=1e-6
      )
      sess.run(train)
    for t in sess.run(tables):
      np.testing.assert_allclose(
          t, np.full(t.shape, 0.7720356, np.float32), rtol=1e-6
      )
