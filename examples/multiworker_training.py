"""Data-parallel training of a multi-hash embedding with
`tf.distribute.MultiWorkerMirroredStrategy` (TensorFlow's collective runtime).

Every worker holds a full copy of the small tables; each step every worker
computes the gradient of its share of the global batch and the workers sum
their gradients with collectives, so all copies stay equal and the result is
the one of a single process on the global batch.

Two training paths, both over a model `ids -> multi-hash embedding (mul) ->
linear layer -> squared error`, trained with Adagrad:

  --mode=custom  a `tf.function` step: `strategy.run`, `tf.GradientTape`,
                 the tables from `tfmh.get_multihash_variable` created in the
                 strategy's scope, checkpoints by `tf.train.CheckpointManager`;
  --mode=fit     `model.fit` of tf_keras (Keras 2), with a small tf_keras
                 layer over `tfmh.get_multihash_variable` defined below, and
                 `tf_keras.callbacks.BackupAndRestore` (Keras 3's `fit`
                 fails under this strategy for any embedding, see
                 docs/distributed.md).

The gradient of a small table is a `tf.IndexedSlices` of the distinct rows a
worker's ids touched. `reduce_gradients` sums it over the workers either by
gathering every worker's rows (bytes grow with the rows touched) or by a
dense all-reduce of the whole table (bytes grow with the table), choosing
each step the one that moves fewer bytes (`--reduction=auto`, the default).

On real machines, start the same command on every machine with its own
TF_CONFIG (the cluster's workers, this task's index), worker 0 first or not:

  TF_CONFIG='{"cluster": {"worker": ["host0:2222", "host1:2222"]},
              "task": {"type": "worker", "index": 0}}' \\
      python examples/multiworker_training.py --checkpoint_dir=/shared/mh

Locally, `--local` starts 2 workers on free loopback ports and stops them at
the end; `--single` trains in this one process (the reference):

  python examples/multiworker_training.py --local --mode=fit
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tensorflow_multihash as tfmh  # noqa: E402

REDUCTIONS = ("auto", "sparse", "dense", "tf")


# ---------------------------------------------------------------------------
# Data: the global batch of step t is a function of t only, so every worker
# (and the single-process reference) sees the same global batches.
# ---------------------------------------------------------------------------
def global_batch(step, batch_size, capacity, seed=0, zipf=1.2):
  """Ids (int64; Zipf with exponent `zipf`, or uniform if it is 0) and labels
  of the global batch of `step`."""
  rng = np.random.default_rng([seed, step])
  if zipf:
    ids = (rng.zipf(zipf, batch_size) - 1) % capacity
  else:
    ids = rng.integers(0, capacity, batch_size)
  labels = np.sin(0.37 * ids).astype(np.float32)
  return ids.astype(np.int64), labels


def table_initializer(seed):
  """A deterministic initializer (the same values in every process)."""

  def init(shape, dtype=None, partition_info=None):
    del partition_info
    rng = np.random.default_rng([seed] + [int(s) for s in shape])
    return tf.constant(
        rng.uniform(0.5, 1.5, [int(s) for s in shape]),
        dtype=dtype or tf.float32,
    )

  return init


# ---------------------------------------------------------------------------
# Gradient reduction across workers.
# ---------------------------------------------------------------------------
# Bytes of protocol (gRPC, collective headers) per message a worker sends,
# measured on loopback with benchmarks/multiworker_bytes.py (about 300).
MESSAGE_BYTES = 300


def wire_bytes(
    rows,
    row_bytes,
    touched_rows,
    num_workers,
    index_bytes=8,
    message_bytes=MESSAGE_BYTES,
):
  """Bytes one worker sends per step to sum one table's gradient.

  Args:
    rows: rows of the table.
    row_bytes: bytes of one row (width times the dtype's size).
    touched_rows: the largest number of distinct rows any worker's ids
      touched (the gather pads every worker to it).
    num_workers: workers in the all-reduce.
    index_bytes: bytes of one row index (int64).
    message_bytes: protocol bytes per message.

  Returns:
    A dict: "sparse", TensorFlow's all-gather of every worker's rows and
    indices (3 ring all-gathers: row counts, rows, indices; N - 1 messages
    each): (N - 1) * (touched_rows * (row_bytes + index_bytes) +
    3 * message_bytes); and "dense", a ring all-reduce of the whole table
    (2 (N - 1) messages): 2 (N - 1) / N * rows * row_bytes +
    2 (N - 1) * message_bytes.
  """
  n = num_workers
  return {
      "sparse": (n - 1)
      * (touched_rows * (row_bytes + index_bytes) + 3 * message_bytes),
      "dense": 2.0 * (n - 1) / n * rows * row_bytes
      + 2 * (n - 1) * message_bytes,
  }


def _replica_all_reduce(ctx):
  """An all-reduce usable inside tf.cond: ReplicaContext.all_reduce goes
  through merge_call, which a cond branch refuses; the strategy's
  replica-context all-reduce launches the collectives directly (in a
  tf.function; eagerly the merge_call path is used, and eager conds are
  Python branches)."""
  direct = getattr(ctx.strategy.extended, "_replica_ctx_all_reduce", None)
  if direct is None or tf.executing_eagerly():
    return ctx.all_reduce
  return direct


def reduce_gradients(grads, variables, reduction="auto"):
  """Sums gradients over all replicas (call in a replica context).

  Args:
    grads: the replica's gradients, tensors or tf.IndexedSlices.
    variables: their variables (static shapes size the dense all-reduce).
    reduction: how an IndexedSlices gradient is summed: "sparse" (all-gather
      every replica's rows, then sum rows of equal index), "dense" (scatter
      into a table-sized tensor and all-reduce it), "auto" (per step and
      table, the one of the two that sends fewer bytes by `wire_bytes`, from
      the largest row count of any replica; the row counts of all tables
      are exchanged in one small all-reduce), or "tf"
      (`ReplicaContext.all_reduce`, TensorFlow's own choice: an all-gather,
      repeated indices kept). Dense gradients are always all-reduced.

  Returns:
    The sums over replicas, the same on every replica: a tensor for a dense
    gradient; for an IndexedSlices gradient an IndexedSlices without
    repeated indices ("tf" excepted). "sparse" gives the rows some replica
    touched, "dense" every row of the table (rows no replica touched have
    zero gradient; Adagrad and SGD leave them as they are).

  Raises:
    ValueError: for an unknown `reduction`.
  """
  if reduction not in REDUCTIONS:
    raise ValueError("reduction=%r is not one of %s" % (reduction, REDUCTIONS))
  ctx = tf.distribute.get_replica_context()
  n = ctx.num_replicas_in_sync
  sparse_at = [
      i for i, g in enumerate(grads) if isinstance(g, tf.IndexedSlices)
  ]
  max_rows = {}
  if reduction == "auto" and n > 1 and sparse_at:
    # Every replica's row counts, one row per replica: 4 bytes per table.
    local = tf.stack([tf.shape(grads[i].indices)[0] for i in sparse_at])
    counts = _replica_all_reduce(ctx)(
        tf.distribute.ReduceOp.SUM,
        tf.scatter_nd(
            [[ctx.replica_id_in_sync_group]], local[None], [n, len(sparse_at)]
        ),
    )
    most = tf.reduce_max(counts, axis=0)
    max_rows = {i: most[j] for j, i in enumerate(sparse_at)}
  return [
      reduce_gradient(g, v, reduction, max_rows.get(i))
      for i, (g, v) in enumerate(zip(grads, variables))
  ]


def reduce_gradient(grad, variable, reduction="auto", max_rows=None):
  """Sums one gradient over all replicas (call in a replica context).

  Args:
    grad: the replica's gradient of `variable`, a tensor or tf.IndexedSlices.
    variable: the variable.
    reduction: as in `reduce_gradients`.
    max_rows: for "auto", the largest row count of any replica's `grad`
      (the same scalar on every replica); None exchanges the counts here.

  Returns:
    The sum over replicas, as in `reduce_gradients`.

  Raises:
    ValueError: for an unknown `reduction`.
  """
  if reduction not in REDUCTIONS:
    raise ValueError("reduction=%r is not one of %s" % (reduction, REDUCTIONS))
  ctx = tf.distribute.get_replica_context()
  n = ctx.num_replicas_in_sync
  sum_op = tf.distribute.ReduceOp.SUM
  if not isinstance(grad, tf.IndexedSlices) or reduction == "tf":
    return ctx.all_reduce(sum_op, grad)
  if n == 1:
    return grad
  all_reduce = _replica_all_reduce(ctx)
  rows = int(variable.shape[0])
  width = int(np.prod(variable.shape[1:]))
  row_bytes = width * variable.dtype.size
  shape = tf.constant(variable.shape.as_list(), tf.int64)
  indices = tf.cast(grad.indices, tf.int64)

  def sparse():
    # An all-gather of every replica's rows and indices (TensorFlow pads
    # them to the largest count), then rows of equal index summed.
    gathered = all_reduce(sum_op, tf.IndexedSlices(grad.values, indices, shape))
    unique, pos = tf.unique(tf.cast(gathered.indices, tf.int64))
    summed = tf.math.unsorted_segment_sum(
        gathered.values, pos, tf.shape(unique)[0]
    )
    return tf.IndexedSlices(summed, unique, shape)

  def dense():
    table = tf.math.unsorted_segment_sum(grad.values, indices, rows)
    return tf.IndexedSlices(
        all_reduce(sum_op, table), tf.range(rows, dtype=tf.int64), shape
    )

  if reduction == "dense":
    return dense()
  if reduction == "sparse":
    return sparse()
  if max_rows is None:
    counts = all_reduce(
        sum_op,
        tf.one_hot(
            ctx.replica_id_in_sync_group, n, on_value=tf.shape(indices)[0]
        ),
    )
    max_rows = tf.reduce_max(counts)
  cost = wire_bytes(rows, row_bytes, tf.cast(max_rows, tf.float64), n)
  return tf.cond(cost["sparse"] < cost["dense"], sparse, dense)


# ---------------------------------------------------------------------------
# The cluster.
# ---------------------------------------------------------------------------
def make_strategy(single):
  """MultiWorkerMirroredStrategy from TF_CONFIG, or the default strategy."""
  if single:
    return tf.distribute.get_strategy()
  return tf.distribute.MultiWorkerMirroredStrategy()


def task_info(strategy):
  """(is_chief, task index) of this process."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.cluster_spec().as_dict():
    return True, 0
  index = resolver.task_id or 0
  return (
      resolver.task_type in (None, "chief")
      or (resolver.task_type == "worker" and index == 0)
  ), index


# ---------------------------------------------------------------------------
# Path 1: a custom training loop.
# ---------------------------------------------------------------------------
def train_custom(strategy, args, on_step=None):
  """Trains with strategy.run; checkpoints every `args.checkpoint_every`
  steps and resumes from the latest checkpoint. Returns the final state."""
  dims = args.dims
  capacity = dims[0][0] * dims[1][0]
  width = dims[0][1]
  is_chief, index = task_info(strategy)
  workers = strategy.num_replicas_in_sync
  per_worker = args.global_batch // workers
  with strategy.scope():
    if args.layer == "keras3":
      # The Keras 3 layer used as a plain layer: its tables are Keras
      # variables over mirrored tf.Variables.
      emb = tfmh.keras.MultiHashEmbedding(
          dims=dims,
          operation="mul",
          embeddings_initializer=table_initializer(1),
      )
      emb.build()
      tables = [t.value for t in emb.tables]
      lookup = emb
    else:
      emb = tfmh.get_multihash_variable(
          "emb", dims, operation="mul", initializer=table_initializer(1)
      )
      tables = list(emb.trainable_variables)
      lookup = lambda ids: tfmh.embedding_lookup(emb, ids)  # noqa: E731
    dense = tf.Variable(table_initializer(2)([width, 1]), name="dense")
    import tf_keras  # pylint: disable=g-import-not-at-top

    opt = tf_keras.optimizers.Adagrad(args.learning_rate)
    step = tf.Variable(0, dtype=tf.int64, name="step")
  variables = tables + [dense]
  ckpt = tf.train.Checkpoint(emb=emb, dense=dense, optimizer=opt, step=step)
  manager = None
  restored = 0
  if args.checkpoint_dir:
    # All workers save (the checkpoint's collectives need them); only the
    # chief's copy is kept. All restore the chief's (a shared directory).
    write_dir = (
        args.checkpoint_dir
        if is_chief
        else os.path.join(args.checkpoint_dir, "worker%d_tmp" % index)
    )
    manager = tf.train.CheckpointManager(ckpt, write_dir, max_to_keep=2)
    latest = tf.train.latest_checkpoint(args.checkpoint_dir)
    if latest:
      ckpt.restore(latest).assert_existing_objects_matched()
      restored = int(step.numpy())

  def replica_step(ids, labels):
    with tf.GradientTape() as tape:
      pred = tf.squeeze(tf.matmul(lookup(ids), dense), -1)
      loss = tf.reduce_sum(tf.square(pred - labels)) / args.global_batch
    grads = reduce_gradients(
        tape.gradient(loss, variables), variables, args.reduction
    )
    opt.apply_gradients(zip(grads, variables), skip_gradients_aggregation=True)
    step.assign_add(1)
    return tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, loss
    )

  @tf.function
  def train_step(ids, labels):
    return strategy.run(replica_step, args=(ids, labels))

  losses = []
  while int(step.numpy()) < args.steps:
    t = int(step.numpy())
    ids, labels = global_batch(
        t, args.global_batch, capacity, args.seed, args.zipf
    )
    lo, hi = index * per_worker, (index + 1) * per_worker
    loss = train_step(tf.constant(ids[lo:hi]), tf.constant(labels[lo:hi]))
    losses.append(float(strategy.experimental_local_results(loss)[0]))
    t += 1
    if manager is not None and t % args.checkpoint_every == 0:
      manager.save(checkpoint_number=t)
      if not is_chief:
        tf.io.gfile.rmtree(manager.directory)
    if on_step is not None:
      on_step(t)
  return {
      "restored_step": restored,
      "losses": losses,
      "tables": [local_value(strategy, t) for t in tables],
      "dense": local_value(strategy, dense),
  }


def local_value(strategy, variable):
  return strategy.experimental_local_results(variable)[0].numpy().tolist()


# ---------------------------------------------------------------------------
# Path 2: tf_keras model.fit.
# ---------------------------------------------------------------------------
def fit_classes():
  """The tf_keras layer and model (imported on use: tf_keras is optional)."""
  import tf_keras  # pylint: disable=g-import-not-at-top

  class MultiHashLayer(tf_keras.layers.Layer):
    """A tf_keras layer over `tfmh.get_multihash_variable` (Keras 3's
    `tfmh.keras.MultiHashEmbedding` is a Keras 3 layer: tf_keras models
    cannot hold it)."""

    def __init__(self, dims, operation="mul", seed=1, **kwargs):
      super().__init__(**kwargs)
      self.dims = [list(d) for d in dims]
      self.operation = operation
      self.seed = seed

    def build(self, input_shape):
      self.embedding = tfmh.get_multihash_variable(
          self.name + "/emb",
          self.dims,
          operation=self.operation,
          initializer=table_initializer(self.seed),
      )
      # Tracked as weights: trainable_weights, checkpoints, BackupAndRestore.
      self.tables = list(self.embedding.tables)
      super().build(input_shape)

    def call(self, ids):
      return tfmh.embedding_lookup(self.embedding, ids)

    def get_config(self):
      return dict(
          super().get_config(),
          dims=self.dims,
          operation=self.operation,
          seed=self.seed,
      )

  class ReducingModel(tf_keras.Model):
    """A tf_keras model whose train step sums the gradients with
    `reduce_gradients` (fewer bytes on the wire) instead of the optimizer's
    own aggregation; reduction="tf" keeps tf_keras's own train step."""

    def __init__(self, *args, reduction="auto", **kwargs):
      super().__init__(*args, **kwargs)
      self.reduction = reduction

    def train_step(self, data):
      if self.reduction == "tf":
        return super().train_step(data)
      x, y = data
      with tf.GradientTape() as tape:
        pred = self(x, training=True)
        loss = self.compute_loss(x, y, pred)
      variables = self.trainable_variables
      grads = reduce_gradients(
          tape.gradient(loss, variables), variables, self.reduction
      )
      self.optimizer.apply_gradients(
          zip(grads, variables), skip_gradients_aggregation=True
      )
      return self.compute_metrics(x, y, pred, None)

  return MultiHashLayer, ReducingModel


def train_fit(strategy, args, callbacks=()):
  """Trains with tf_keras fit; BackupAndRestore in `args.checkpoint_dir`
  (saved at the end of every epoch). Returns the final state."""
  import tf_keras  # pylint: disable=g-import-not-at-top

  MultiHashLayer, ReducingModel = fit_classes()
  dims = args.dims
  capacity = dims[0][0] * dims[1][0]
  width = dims[0][1]
  with strategy.scope():
    inputs = tf_keras.Input(shape=(), dtype=tf.int64)
    layer = MultiHashLayer(dims, name="mh")
    out = tf_keras.layers.Dense(
        1,
        use_bias=False,
        name="dense",
        kernel_initializer=tf_keras.initializers.Constant(
            table_initializer(2)([width, 1]).numpy()
        ),
    )(layer(inputs))
    model = ReducingModel(inputs, tf.squeeze(out, -1), reduction=args.reduction)
    model.compile(tf_keras.optimizers.Adagrad(args.learning_rate), "mse")
  batches = [
      global_batch(t, args.global_batch, capacity, args.seed, args.zipf)
      for t in range(args.steps_per_epoch)
  ]
  ids = np.concatenate([b[0] for b in batches])
  labels = np.concatenate([b[1] for b in batches])
  # The same global batches every epoch; MultiWorkerMirroredStrategy hands
  # worker i the i-th slice of each global batch.
  data = tf.data.Dataset.from_tensor_slices((ids, labels)).batch(
      args.global_batch
  )
  callbacks = list(callbacks)
  if args.checkpoint_dir:
    callbacks.insert(
        0, tf_keras.callbacks.BackupAndRestore(args.checkpoint_dir)
    )
  history = model.fit(data, epochs=args.epochs, callbacks=callbacks, verbose=0)
  return {
      "losses": [float(x) for x in history.history["loss"]],
      "epochs_run": list(history.epoch),
      "tables": [local_value(strategy, t) for t in layer.tables],
      "dense": local_value(strategy, model.get_layer("dense").kernel),
  }


# ---------------------------------------------------------------------------
# Launching.
# ---------------------------------------------------------------------------
def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def tf_config(hosts, index):
  return json.dumps(
      {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}
  )


def launch_local(argv, num_workers=2, timeout=600):
  """Runs this script as `num_workers` workers on free loopback ports;
  waits at most `timeout` seconds, and stops every worker in the end."""
  hosts = ["127.0.0.1:%d" % free_port() for _ in range(num_workers)]
  procs = []
  try:
    for i in range(num_workers):
      env = dict(os.environ, TF_CONFIG=tf_config(hosts, i))
      procs.append(
          subprocess.Popen(
              [sys.executable, __file__] + argv, env=env, start_new_session=True
          )
      )
    deadline = time.time() + timeout
    for p in procs:
      p.wait(timeout=max(1, deadline - time.time()))
    return max(p.returncode for p in procs)
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=30)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--mode", choices=("custom", "fit"), default="custom")
  p.add_argument(
      "--local",
      action="store_true",
      help="start 2 workers on loopback and wait for them",
  )
  p.add_argument(
      "--single",
      action="store_true",
      help="train in this process alone (no TF_CONFIG)",
  )
  p.add_argument(
      "--dims",
      type=json.loads,
      default=[[64, 8], [32, 8]],
      help="the small tables' [rows, width] (JSON)",
  )
  p.add_argument("--global_batch", type=int, default=64)
  p.add_argument("--steps", type=int, default=20, help="custom loop steps")
  p.add_argument("--epochs", type=int, default=4, help="fit epochs")
  p.add_argument("--steps_per_epoch", type=int, default=5)
  p.add_argument("--learning_rate", type=float, default=0.1)
  p.add_argument("--reduction", choices=REDUCTIONS, default="auto")
  p.add_argument(
      "--layer",
      choices=("variable", "keras3"),
      default="variable",
      help="custom loop: tfmh.get_multihash_variable, or the Keras "
      "3 layer tfmh.keras.MultiHashEmbedding used as a plain layer",
  )
  p.add_argument("--checkpoint_dir", default="")
  p.add_argument("--checkpoint_every", type=int, default=5)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument(
      "--zipf",
      type=float,
      default=1.2,
      help="Zipf exponent of the ids; 0 for uniform ids",
  )
  p.add_argument(
      "--result",
      default="",
      help="write the final state (JSON) here (chief only)",
  )
  p.add_argument("--timeout", type=float, default=600)
  return p.parse_args(argv)


def run(args, on_step=None, callbacks=()):
  """Trains as `args` say in this process; returns the final state."""
  strategy = make_strategy(args.single)
  if args.mode == "custom":
    return train_custom(strategy, args, on_step=on_step)
  return train_fit(strategy, args, callbacks=callbacks)


def main():
  args = parse_args()
  if args.local:
    argv = [a for a in sys.argv[1:] if a != "--local"]
    sys.exit(launch_local(argv, timeout=args.timeout))
  if not args.single and "TF_CONFIG" not in os.environ:
    sys.exit(
        "TF_CONFIG is not set: give it (see the top of this file), "
        "or use --local or --single"
    )
  out = run(args)
  is_chief = (
      args.single or json.loads(os.environ["TF_CONFIG"])["task"]["index"] == 0
  )
  if is_chief:
    print("losses", " ".join("%.5f" % x for x in out["losses"]))
    if args.result:
      with open(args.result, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
  main()
