"""The colocated lookup (tensorflow_multihash/distributed_lookup.py) in one
process: shards forced onto two CPU devices of one session give the fused
op's numbers (identical bits forward), sparse gradients per shard, gathers
placed on the shards' devices, and the same training; the lookup picks the
fused op whenever the shards share the lookup's device.
"""

import numpy as np
import pytest
import tensorflow as tf

from mh_apiutil import tfmh  # noqa: F401  (fixture)
from tensorflow_multihash import distributed_lookup, multihash_ops

v1 = tf.compat.v1
CPU = ["/job:localhost/replica:0/task:0/device:CPU:%d" % i for i in range(2)]
CONFIG = v1.ConfigProto(device_count={"CPU": 2})

# (strategy, rows per table); ids cover 0, capacity - 1 and repeats.
LAYOUTS = {
    "Q-R": [7, 5],
    "generalized-Q-R": [3, 4, 5],
    "CRT": [3, 4, 5],
}


def widths(operation, k):
  return [3, 2, 4][:k] if operation == "concat" else [4] * k


def make_ids(capacity, rng, shape=(2, 9)):
  ids = rng.integers(0, capacity, size=shape)
  ids.flat[:3] = [0, capacity - 1, capacity - 1]
  return ids.astype(np.int64)


def split(n, parts):
  """TF's partitioner layout: the first shards get one row more."""
  base, extra = divmod(n, parts)
  return [base + (1 if i < extra else 0) for i in range(parts)]


def sharded_tables(arrays, use_resource, dtype=tf.float32):
  """Each table in up to 3 row shards, alternating over the 2 CPUs."""
  tables, k = [], 0
  for j, a in enumerate(arrays):
    shards, start = [], 0
    for s, n in enumerate(split(a.shape[0], min(3, a.shape[0]))):
      with tf.device(CPU[k % 2]):
        shards.append(
            v1.get_variable(
                "t%d/part_%d" % (j, s),
                initializer=tf.constant(a[start : start + n], dtype),
                use_resource=use_resource,
            )
        )
      start, k = start + n, k + 1
    tables.append(shards)
  return tables


def dense_grads(sess, grads, shards):
  """Per table: the summed gradient of every row, shards concatenated."""
  out = []
  for g_list, s_list in zip(grads, shards):
    parts = []
    for g, s in zip(g_list, s_list):
      gv = sess.run(g)
      d = np.zeros(s.shape.as_list(), np.float64)
      np.add.at(d, gv.indices, gv.values)
      parts.append(d)
    out.append(np.concatenate(parts))
  return out


@pytest.mark.parametrize("use_resource", [True, False], ids=["resource", "ref"])
@pytest.mark.parametrize("operation", ["add", "mul", "concat"])
@pytest.mark.parametrize("strategy", sorted(LAYOUTS))
@pytest.mark.tf1
def test_matches_fused_op(strategy, operation, use_resource, rng):
  rows = LAYOUTS[strategy]
  arrays = [
      rng.uniform(-1, 1, (r, w)).astype(np.float32)
      for r, w in zip(rows, widths(operation, len(rows)))
  ]
  ids = make_ids(int(np.prod(rows)), rng)
  upstream = rng.uniform(
      -1,
      1,
      ids.shape
      + (sum(widths(operation, len(rows))) if operation == "concat" else 4,),
  )
  with tf.Graph().as_default() as g:
    shards = sharded_tables(arrays, use_resource)
    with tf.device(CPU[0]):
      got = distributed_lookup.colocated_lookup(
          shards, ids, operation=operation, complementary_strategy=strategy
      )
      got_grads = tf.gradients(
          tf.reduce_sum(got * upstream), [s for t in shards for s in t]
      )
      whole = [tf.constant(a) for a in arrays]
      want = multihash_ops.multihash_lookup(
          whole, ids, operation=operation, complementary_strategy=strategy
      )
      want_grads = tf.gradients(tf.reduce_sum(want * upstream), whole)
    assert "MultiHashLookup" not in {
        op.type
        for op in g.get_operations()
        if op.name.startswith("multihash_colocated")
    }
    it = iter(got_grads)
    got_grads = [[next(it) for _ in t] for t in shards]
    assert all(isinstance(x, tf.IndexedSlices) for t in got_grads for x in t)
    with v1.Session(config=CONFIG) as sess:
      sess.run(v1.global_variables_initializer())
      got_v, want_v = sess.run([got, want])
      np.testing.assert_array_equal(got_v, want_v)  # identical bits
      assert got_v.shape == ids.shape + want_v.shape[-1:]
      for a, b in zip(
          dense_grads(sess, got_grads, shards),
          [sess.run(tf.convert_to_tensor(x)) for x in want_grads],
      ):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "dtype", [tf.float64, tf.float16, tf.bfloat16], ids=lambda d: d.name
)
@pytest.mark.parametrize("operation", ["add", "mul"])
@pytest.mark.tf1
def test_other_dtypes_identical(dtype, operation, rng):
  arrays = [rng.uniform(-1, 1, (r, 4)) for r in (7, 5)]
  ids = make_ids(35, rng).astype(np.int32)
  with tf.Graph().as_default():
    shards = sharded_tables(arrays, True, dtype)
    with tf.device(CPU[0]):
      got = distributed_lookup.colocated_lookup(
          shards, ids, operation=operation
      )
      want = multihash_ops.multihash_lookup(
          [tf.constant(a, dtype) for a in arrays], ids, operation=operation
      )
    with v1.Session(config=CONFIG) as sess:
      sess.run(v1.global_variables_initializer())
      got_v, want_v = sess.run(
          [tf.cast(got, tf.float64), tf.cast(want, tf.float64)]
      )
      np.testing.assert_array_equal(got_v, want_v)


@pytest.mark.tf1
def test_gathers_run_where_the_shards_live(rng):
  arrays = [rng.uniform(-1, 1, (r, 4)).astype(np.float32) for r in (7, 5)]
  with tf.Graph().as_default():
    shards = sharded_tables(arrays, False)
    with tf.device(CPU[0]):
      out = distributed_lookup.colocated_lookup(shards, make_ids(35, rng))
    meta = v1.RunMetadata()
    with v1.Session(config=CONFIG) as sess:
      sess.run(v1.global_variables_initializer())
      sess.run(
          out,
          options=v1.RunOptions(output_partition_graphs=True),
          run_metadata=meta,
      )
  placed = {n.name: n.device for pg in meta.partition_graphs for n in pg.node}
  for j, table in enumerate(shards):
    for s, shard in enumerate(table):
      name = "multihash_colocated_lookup/table_%d/gather_shard_%d" % (j, s)
      assert placed[name] == shard.device, (name, placed[name], shard.device)
  # Only row ids go to a shard and only gathered rows come back: every
  # cross-device transfer is one of those (or the ids' shard split).
  sends = [
      n for pg in meta.partition_graphs for n in pg.node if n.op == "_Send"
  ]
  assert sends and all(
      "gather_shard" in n.attr["tensor_name"].s.decode()
      or "DynamicPartition" in n.attr["tensor_name"].s.decode()
      for n in sends
  )


@pytest.mark.tf1
def test_errors_and_edge_cases(rng):
  arrays = [rng.uniform(-1, 1, (r, 4)).astype(np.float32) for r in (7, 5)]
  with tf.Graph().as_default():
    shards = sharded_tables(arrays, True)
    ids = v1.placeholder(tf.int64, [None])
    with tf.device(CPU[0]):
      out = distributed_lookup.colocated_lookup(shards, ids)
      wrapped = distributed_lookup.colocated_lookup(
          shards, ids, out_of_range="wrap"
      )
      fused = multihash_ops.multihash_lookup(
          [tf.constant(a) for a in arrays], tf.math.floormod(ids, 35)
      )
      empty = distributed_lookup.colocated_lookup(
          shards, tf.zeros([2, 0], tf.int32)
      )
    with v1.Session(config=CONFIG) as sess:
      sess.run(v1.global_variables_initializer())
      with pytest.raises(
          tf.errors.InvalidArgumentError,
          match=r"ids\[1\] = 35 is out of range: ids must be in \[0, 35\)",
      ):
        sess.run(out, {ids: [3, 35, 4]})
      with pytest.raises(tf.errors.InvalidArgumentError, match="out of range"):
        sess.run(out, {ids: [-1]})
      wild = [-1, 35, 70, 3, -36]
      np.testing.assert_array_equal(*sess.run([wrapped, fused], {ids: wild}))
      assert sess.run(empty).shape == (2, 0, 4)
  with pytest.raises(ValueError, match="equal table widths"):
    distributed_lookup.colocated_lookup(
        [tf.zeros([3, 2]), tf.zeros([3, 4])], [0], operation="add"
    )
  with pytest.raises(ValueError, match="out_of_range"):
    distributed_lookup.colocated_lookup(
        [tf.zeros([3, 2])] * 2, [0], out_of_range="clip"
    )
  with pytest.raises(TypeError, match="int32 or int64"):
    distributed_lookup.colocated_lookup([tf.zeros([3, 2])] * 2, [0.5])


def _device_function(devices):
  """Places variables round-robin over `devices`, nothing else."""
  it = iter(range(1000))

  def fn(op):
    if op.type in ("VariableV2", "VarHandleOp"):
      return devices[next(it) % len(devices)]
    return ""

  return fn


def _op_types(graph):
  return {op.type for op in graph.get_operations()}


@pytest.mark.tf1
def test_embedding_lookup_picks_the_path(tfmh):
  part = v1.fixed_size_partitioner(2)
  # Shards on two devices: colocated.
  with tf.Graph().as_default() as g:
    with v1.device(_device_function(CPU)):
      v = tfmh.get_multihash_variable("e", [[7, 4], [5, 4]], partitioner=part)
    tf.nn.embedding_lookup(v, [1, 2])
    assert "MultiHashLookup" not in _op_types(g) and "GatherV2" in _op_types(g)
  # No devices, or one device that the lookup shares: fused.
  for scope in ("", CPU[1]):
    with tf.Graph().as_default() as g, tf.device(scope):
      v = tfmh.get_multihash_variable("e", [[7, 4], [5, 4]], partitioner=part)
      tf.nn.embedding_lookup(v, [1, 2])
      assert "MultiHashLookup" in _op_types(g)
  # Eager: fused (the eager kernel reads the variables in place).
  v = tfmh.get_multihash_variable("e_eager", [[7, 4], [5, 4]])
  assert not distributed_lookup.needs_colocated_lookup(v.tables)


@pytest.mark.tf1
def test_parameter_server_placement(tfmh):
  """replica_device_setter: shards on two ps tasks, lookup on the worker."""
  cluster = tf.train.ClusterSpec(
      {"ps": ["127.0.0.1:1", "127.0.0.1:2"], "worker": ["127.0.0.1:3"]}
  )
  with tf.Graph().as_default() as g:
    with v1.device(
        v1.train.replica_device_setter(
            cluster=cluster, worker_device="/job:worker/task:0"
        )
    ):
      v = tfmh.get_multihash_variable(
          "e",
          [[8, 4], [6, 4]],
          operation="mul",
          partitioner=v1.fixed_size_partitioner(2),
      )
      out = tf.nn.embedding_lookup(v, v1.placeholder(tf.int64, [None]))
      grads = tf.gradients(tf.reduce_sum(out), list(v.variables))
  assert {s.device for s in v.variables} == {"/job:ps/task:0", "/job:ps/task:1"}
  assert "MultiHashLookup" not in _op_types(g)
  shard_device = {s.op.name: s.device for s in v.variables}
  gathers = [
      op
      for op in g.get_operations()
      if "gather_shard" in op.name and op.type in ("GatherV2", "ResourceGather")
  ]
  assert len(gathers) == 4
  for op in gathers:
    # Colocated with its shard (the variable's op, or its read snapshot).
    loc = [c.decode()[len("loc:@") :] for c in op.colocation_groups()]
    assert any(shard_device.get(name) for name in loc), (op.name, loc)
  assert out.device == "/job:worker/task:0"
  assert all(isinstance(x, tf.IndexedSlices) for x in grads)
  # One ps task, lookup elsewhere: still colocated.
  with tf.Graph().as_default():
    with tf.device("/job:ps/task:0"):
      one = tfmh.get_multihash_variable("e", [[8, 4], [6, 4]])
    with tf.device("/job:worker/task:0"):
      assert distributed_lookup.needs_colocated_lookup(one.tables)
    with tf.device("/job:ps/task:0"):
      assert not distributed_lookup.needs_colocated_lookup(one.tables)


@pytest.mark.tf1
def test_training_matches_fused(tfmh, rng):
  """3 Adagrad steps: shards on 2 devices (colocated) = one device (fused)."""
  values = [rng.uniform(0.5, 1.5, (r, 4)).astype(np.float32) for r in (9, 7)]

  def init(shape, dtype=None, partition_info=None):
    full = values[0] if partition_info.full_shape[0] == 9 else values[1]
    o = partition_info.var_offset[0]
    return tf.constant(full[o : o + shape[0]])

  batches = [make_ids(63, rng, (16,)) for _ in range(3)]
  results = []
  for devices in (CPU, None):
    with tf.Graph().as_default():
      with v1.device(_device_function(devices) if devices else None):
        v = tfmh.get_multihash_variable(
            "e",
            [[9, 4], [7, 4]],
            operation="mul",
            initializer=init,
            partitioner=v1.fixed_size_partitioner(3),
        )
      ids = v1.placeholder(tf.int64, [None])
      loss = tf.reduce_sum(tf.square(tf.nn.embedding_lookup(v, ids) - 1.0))
      train = v1.train.AdagradOptimizer(0.1).minimize(loss)
      with v1.Session(config=CONFIG) as sess:
        sess.run(v1.global_variables_initializer())
        for b in batches:
          sess.run(train, {ids: b})
        results.append(sess.run(list(v.variables)))
  for a, b in zip(*results):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
