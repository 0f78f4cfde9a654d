"""TF2 distribution strategies with a multi-hash variable, each in a fresh
process (test_distributed_tf2.py): devices and clusters must be configured
before TensorFlow initializes. Prints one line `RESULT <json>`.

  tf2_strategy_task.py mirrored   MirroredStrategy over 2 logical CPUs
                                  against one device, same global batches
  tf2_strategy_task.py ps         ParameterServerStrategy, in-process
                                  cluster of 2 workers and 2 ps tasks on
                                  127.0.0.1, variable_partitioner
"""

import json
import os
import socket
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

DIMS = [[7, 4], [5, 4]]  # capacity 35
STEPS = 3
# Two replicas of 4 ids each; both replicas touch Q rows 0 and 3, R rows 2
# and 4, so the replicas' IndexedSlices overlap and must be summed.
GLOBAL_IDS = np.array([0, 17, 17, 34, 2, 19, 32, 4], np.int64)


def _init(seed):
  def init(shape, dtype=None, partition_info=None):
    del partition_info
    rng = np.random.default_rng(seed + int(shape[0]))
    return tf.constant(
        rng.uniform(0.5, 1.5, [int(s) for s in shape]),
        dtype=dtype or tf.float32,
    )

  return init


def _lookup_graph_ops(fn, *args):
  """The op types of a tf.function's graph, nested functions included."""
  graph = fn.get_concrete_function(*args).graph
  types = {op.type for op in graph.get_operations()}
  for f in graph._functions.values():  # pylint: disable=protected-access
    types.update(node.op for node in f.definition.node_def)
  return types


def mirrored():
  """3 Adagrad steps on 2 replicas and on one device: same tables."""
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration()] * 2
  )
  import tensorflow_multihash as tfmh

  def train(strategy, replicas):
    with strategy.scope():
      emb = tfmh.get_multihash_variable(
          "emb", DIMS, operation="mul", initializer=_init(3)
      )
      opt = tf.compat.v1.train.AdagradOptimizer(0.1)
    kinds = []

    def replica_step(ids):
      with tf.GradientTape() as tape:
        rows = tf.nn.embedding_lookup(emb, ids)
        # Mean over the global batch, so that summed replica gradients equal
        # the one-device gradient.
        loss = tf.reduce_sum(tf.square(rows - 1.0)) / len(GLOBAL_IDS)
      variables = emb.trainable_variables
      grads = tape.gradient(loss, variables)
      kinds.extend(type(g).__name__ for g in grads)
      opt.apply_gradients(zip(grads, variables))
      return loss

    @tf.function
    def step(ids):
      losses = strategy.run(replica_step, args=(ids,))
      return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    per_replica = len(GLOBAL_IDS) // replicas
    ids = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(
            GLOBAL_IDS[
                ctx.replica_id_in_sync_group
                * per_replica : (ctx.replica_id_in_sync_group + 1)
                * per_replica
            ]
        )
    )
    losses = [float(step(ids)) for _ in range(STEPS)]
    # Every replica's copy of every table.
    copies = [
        [c.numpy().tolist() for c in strategy.experimental_local_results(t)]
        for t in emb.tables
    ]
    return {
        "losses": losses,
        "tables": copies,
        "grad_kinds": sorted(set(kinds)),
        "ops": sorted(
            _lookup_graph_ops(step, ids)
            & {"MultiHashLookup", "ResourceGather", "GatherV2"}
        ),
    }

  two = train(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), 2)
  one = train(tf.distribute.OneDeviceStrategy("/cpu:0"), 1)
  return {"two": two, "one": one}


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def parameter_server():
  """A small model (multi-hash embedding, linear layer) trained by 2
  workers with the tables split over 2 ps tasks."""
  import tf_keras
  import tensorflow_multihash as tfmh
  from tensorflow_multihash import multihash_ops

  spec = tf.train.ClusterSpec(
      {
          "worker": ["127.0.0.1:%d" % _free_port() for _ in range(2)],
          "ps": ["127.0.0.1:%d" % _free_port() for _ in range(2)],
      }
  )
  # In-process servers share this process's threads: give each enough
  # inter-op threads that blocked receives cannot starve the senders.
  config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=8)
  servers = [
      tf.distribute.Server(
          spec, job_name=job, task_index=i, config=config, start=True
      )
      for job in ("worker", "ps")
      for i in range(2)
  ]
  strategy = tf.distribute.experimental.ParameterServerStrategy(
      tf.distribute.cluster_resolver.SimpleClusterResolver(
          spec, rpc_layer="grpc"
      ),
      variable_partitioner=(
          tf.distribute.experimental.partitioners.FixedShardsPartitioner(2)
      ),
  )
  coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(
      strategy
  )
  with strategy.scope():
    emb = tfmh.get_multihash_variable(
        "emb", [[40, 8], [30, 8]], operation="add", initializer=_init(5)
    )
    dense = tf.Variable(tf.fill([8, 1], 0.1), name="dense")
    opt = tf_keras.optimizers.Adagrad(0.2)
  variables = list(emb.trainable_variables) + list(dense.variables)
  capacity = 40 * 30
  rng = np.random.default_rng(0)
  ids = tf.constant(rng.integers(0, capacity, 64), tf.int64)
  labels = tf.sin(tf.cast(ids, tf.float32) * 0.01)[:, None]

  def replica_step():
    with tf.GradientTape() as tape:
      pred = tf.matmul(tf.nn.embedding_lookup(emb, ids), dense)
      loss = tf.reduce_mean(tf.square(pred - labels))
    grads = tape.gradient(loss, variables)
    opt.apply_gradients(zip(grads, variables))
    return loss

  @tf.function
  def step():
    return strategy.run(replica_step)

  @tf.function
  def lookup():
    return strategy.run(lambda: tf.nn.embedding_lookup(emb, ids))

  @tf.function
  def evaluate():
    def replica_loss():
      pred = tf.matmul(tf.nn.embedding_lookup(emb, ids), dense)
      return tf.reduce_mean(tf.square(pred - labels))

    return strategy.run(replica_loss)

  # Before training: the lookup gives the numbers of the tables' values.
  first = coordinator.schedule(lookup)
  before = coordinator.schedule(evaluate)
  coordinator.join()
  tables = [
      np.concatenate([s.numpy() for s in multihash_ops._table_shards(t)])
      for t in emb.tables
  ]
  n = ids.numpy()
  want = tables[0][n // 30] + tables[1][n % 30]
  lookup_error = float(np.abs(first.fetch() - want).max())
  losses = [coordinator.schedule(step) for _ in range(40)]
  coordinator.join()
  after = coordinator.schedule(evaluate)
  coordinator.join()
  losses = [float(l.fetch()) for l in losses]
  del servers
  return {
      "table_types": [type(t).__name__ for t in emb.tables],
      "shard_devices": [
          s.device for t in emb.tables for s in multihash_ops._table_shards(t)
      ],
      "lookup_error": lookup_error,
      "ops": sorted(
          _lookup_graph_ops(step)
          & {"MultiHashLookup", "ResourceGather", "GatherV2"}
      ),
      "loss_before": float(before.fetch()),
      "loss_after": float(after.fetch()),
      "steps": len(losses),
  }


if __name__ == "__main__":
  mode = sys.argv[1]
  result = {"mirrored": mirrored, "ps": parameter_server}[mode]()
  print("RESULT " + json.dumps(result), flush=True)
  # In-process servers do not shut down cleanly; skip interpreter teardown.
  os._exit(0)
