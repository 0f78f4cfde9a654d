"""Parameter-server training of a multi-hash embedding on TensorFlow's own
distributed runtime (TF1 graphs, between-graph replication).

The two small tables are split into row blocks by a partitioner and the
blocks are placed on the parameter-server (ps) tasks by
`replica_device_setter`; every worker builds the same graph, looks rows up
(each block's rows are gathered on its ps task, combined on the worker) and
trains with Adagrad through `MonitoredTrainingSession`, whose chief (worker
0) initializes or restores the model and writes checkpoints.

Launch one process per task (any order; workers wait for the ps tasks):

  PS=127.0.0.1:2222,127.0.0.1:2223 WK=127.0.0.1:2224,127.0.0.1:2225
  python examples/ps_training.py --ps_hosts=$PS --worker_hosts=$WK \\
      --job_name=ps --task_index=0 &
  python examples/ps_training.py --ps_hosts=$PS --worker_hosts=$WK \\
      --job_name=ps --task_index=1 &
  python examples/ps_training.py --ps_hosts=$PS --worker_hosts=$WK \\
      --job_name=worker --task_index=0 --checkpoint_dir=/tmp/mh_ps &
  python examples/ps_training.py --ps_hosts=$PS --worker_hosts=$WK \\
      --job_name=worker --task_index=1 --checkpoint_dir=/tmp/mh_ps

or all of them on free loopback ports with `--local` (the ps tasks are
stopped when the workers finish):

  python examples/ps_training.py --local --checkpoint_dir=/tmp/mh_ps
"""

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tensorflow_multihash as tfmh  # noqa: E402

v1 = tf.compat.v1


def parse_args(argv=None):
  """The command line (see the module docstring)."""
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--ps_hosts", default="", help="host:port,... of ps tasks")
  p.add_argument(
      "--worker_hosts", default="", help="host:port,... of worker tasks"
  )
  p.add_argument("--job_name", choices=("ps", "worker"), default="worker")
  p.add_argument("--task_index", type=int, default=0)
  p.add_argument(
      "--checkpoint_dir",
      default=None,
      help="where the chief saves and restores checkpoints",
  )
  p.add_argument(
      "--steps", type=int, default=200, help="global steps to train to"
  )
  p.add_argument("--batch_size", type=int, default=256)
  p.add_argument(
      "--rows",
      type=int,
      nargs=2,
      default=(1000, 1000),
      metavar=("ROWS_Q", "ROWS_R"),
  )
  p.add_argument("--width", type=int, default=16)
  p.add_argument("--operation", default="mul", choices=("add", "mul", "concat"))
  p.add_argument("--learning_rate", type=float, default=0.1)
  p.add_argument("--save_checkpoint_steps", type=int, default=50)
  p.add_argument(
      "--use_resource",
      type=int,
      default=1,
      help="1: resource variables, 0: reference variables",
  )
  p.add_argument(
      "--timeout_s",
      type=float,
      default=60.0,
      help="bound on every wait (RPCs, session creation)",
  )
  p.add_argument(
      "--report_bytes",
      action="store_true",
      help="print the bytes one step moves between tasks "
      "(traced over 3 steps of one batch)",
  )
  p.add_argument(
      "--local",
      action="store_true",
      help="launch 2 ps tasks and 2 workers on 127.0.0.1",
  )
  return p.parse_args(argv)


def cluster_spec(ps_hosts, worker_hosts):
  """A `tf.train.ClusterSpec` from comma-separated host:port lists.

  Raises:
    ValueError: an empty list.
  """
  ps = [h for h in ps_hosts.split(",") if h]
  workers = [h for h in worker_hosts.split(",") if h]
  if not ps or not workers:
    raise ValueError(
        "--ps_hosts and --worker_hosts need at least one "
        "host:port each, got %r and %r" % (ps_hosts, worker_hosts)
    )
  return tf.train.ClusterSpec({"ps": ps, "worker": workers})


def session_config(task_index, timeout_s):
  """Worker session options.

  A worker only talks to the ps tasks and itself (so it neither waits for
  nor depends on the other workers), and no RPC waits longer than
  `timeout_s`.
  """
  return v1.ConfigProto(
      device_filters=["/job:ps", "/job:worker/task:%d" % task_index],
      operation_timeout_in_ms=int(timeout_s * 1000),
  )


def table_initializer(seed):
  """Initial values that depend only on a row's place in the whole table,
  so any partitioning (or none) starts from the same numbers."""

  def init(shape, dtype=None, partition_info=None):
    rows, width = int(shape[0]), int(shape[1])
    offset = 0 if partition_info is None else int(partition_info.var_offset[0])
    r = np.arange(offset, offset + rows, dtype=np.float64)[:, None]
    c = np.arange(width, dtype=np.float64)[None, :]
    value = 0.5 + 0.25 * np.sin(seed + 0.37 * r + 1.3 * c)
    return tf.constant(value, dtype=dtype or tf.float32)

  return init


def make_batch(seed, batch_size, capacity):
  """A synthetic batch: skewed ids (popular items repeat, as real traffic
  does) and a label that is a fixed function of the id."""
  rng = np.random.default_rng(seed)
  ids = np.minimum(rng.zipf(1.3, batch_size) - 1, capacity - 1)
  ids = (ids * 7919) % capacity
  labels = np.sin(ids * 0.01).astype(np.float32)
  return ids.astype(np.int64), labels


class Model(object):
  """The training graph: placeholders, loss, train op, variables."""

  def __init__(self, args, num_ps):
    self.capacity = args.rows[0] * args.rows[1]
    self.global_step = v1.train.get_or_create_global_step()
    dims = [[args.rows[0], args.width], [args.rows[1], args.width]]
    partitioner = v1.fixed_size_partitioner(num_ps) if num_ps > 1 else None
    self.embedding = tfmh.get_multihash_variable(
        "item_embedding",
        dims,
        operation=args.operation,
        initializer=table_initializer(1.0),
        partitioner=partitioner,
        use_resource=bool(args.use_resource),
    )
    out_width = self.embedding.embedding_dim
    self.weights = v1.get_variable(
        "weights",
        [out_width],
        initializer=v1.constant_initializer(0.1),
        use_resource=bool(args.use_resource),
    )
    self.ids = v1.placeholder(tf.int64, [None], name="ids")
    self.labels = v1.placeholder(tf.float32, [None], name="labels")
    rows = tf.nn.embedding_lookup(self.embedding, self.ids)
    prediction = tf.reduce_sum(rows * self.weights, axis=-1)
    self.loss = tf.reduce_mean(tf.square(prediction - self.labels))
    self.train_op = v1.train.AdagradOptimizer(args.learning_rate).minimize(
        self.loss, global_step=self.global_step
    )

  def feed(self, seed, batch_size):
    ids, labels = make_batch(seed, batch_size, self.capacity)
    return {self.ids: ids, self.labels: labels}

  def table_shards(self):
    """Every shard variable of the small tables, table by table."""
    return list(self.embedding.variables)


def build_model(args, cluster=None, task_index=0):
  """The model, its variables on the ps tasks of `cluster` (if any).

  Args:
    args: parsed options (rows, width, operation, ...).
    cluster: a `tf.train.ClusterSpec`, or None for one process.
    task_index: this worker's index.

  Returns:
    A `Model`.
  """
  if cluster is None:
    return Model(args, num_ps=1)
  setter = v1.train.replica_device_setter(
      cluster=cluster, worker_device="/job:worker/task:%d" % task_index
  )
  with v1.device(setter):
    return Model(args, num_ps=cluster.num_tasks("ps"))


def monitored_session(args, server, task_index, hooks=None):
  """A `MonitoredTrainingSession`: the chief restores the latest checkpoint
  (or initializes) and saves every `save_checkpoint_steps`; recoverable
  errors (a ps task restarted) recreate the session, restoring again."""
  return v1.train.MonitoredTrainingSession(
      hooks=hooks,
      master=server.target,
      is_chief=(task_index == 0),
      checkpoint_dir=args.checkpoint_dir,
      save_checkpoint_steps=(
          args.save_checkpoint_steps if args.checkpoint_dir else None
      ),
      save_checkpoint_secs=None,
      save_summaries_steps=None,
      save_summaries_secs=None,
      log_step_count_steps=None,
      config=session_config(task_index, args.timeout_s),
      max_wait_secs=args.timeout_s,
  )


# One cross-task tensor transfer in a traced step's stats: a node named
# "RecvTensor" labelled "[<bytes>B] [<rate>] edge_<n>_<tensor> from <src> to
# <dst>".
_TRANSFER = re.compile(r"^\[(\d+)B\].* edge_\d+_(\S+) from (\S+) to (\S+)")


def traced_transfers(run_metadata):
  """The tensors one step moved between tasks.

  Args:
    run_metadata: the `RunMetadata` of a run with
      `trace_level=FULL_TRACE`.

  Returns:
    A list of dicts: tensor (graph name), src, dst (devices), bytes.
  """
  out = []
  for dev in run_metadata.step_stats.dev_stats:
    for node in dev.node_stats:
      m = _TRANSFER.search(node.timeline_label)
      if node.node_name == "RecvTensor" and m:
        out.append(
            {
                "tensor": m.group(2),
                "src": m.group(3),
                "dst": m.group(4),
                "bytes": int(m.group(1)),
            }
        )
  return out


def _kind(transfer):
  """Classifies a transfer: lookup rows, lookup row ids, gradient rows, or
  anything else (dense weights, control edges)."""
  name = transfer["tensor"]
  to_ps = "/job:ps/" in transfer["dst"]
  if "multihash" not in name:
    return "other"
  if name.startswith("gradients/"):
    return "gradient_rows_to_ps" if to_ps else "other"
  return "row_ids_to_ps" if to_ps else "rows_from_ps"


def measure_step_bytes(sess, model, feed_dict, repeats=3):
  """Runs traced training steps of one batch; returns the bytes one step
  moves per kind beside the size of the tables.

  The step stats of a traced step now and then lack a transfer whose stats
  were recorded late, so `repeats` steps of the same batch (which move the
  same tensors) are traced and every transfer is counted once, with its
  size, from whichever step recorded it.

  Returns:
    A dict: rows_from_ps, row_ids_to_ps, gradient_rows_to_ps, other (bytes
    moved by one step), table_bytes (all shards together),
    largest_transfer, smallest_shard_bytes, transfers (the list).
  """
  seen = {}
  for _ in range(repeats):
    meta = v1.RunMetadata()
    run_step(
        sess,
        model.train_op,
        feed_dict=feed_dict,
        run_metadata=meta,
        options=v1.RunOptions(trace_level=v1.RunOptions.FULL_TRACE),
    )
    for t in traced_transfers(meta):
      seen[(t["tensor"], t["src"], t["dst"])] = t
  transfers = list(seen.values())
  summary = {
      k: 0
      for k in ("rows_from_ps", "row_ids_to_ps", "gradient_rows_to_ps", "other")
  }
  for t in transfers:
    summary[_kind(t)] += t["bytes"]
  shard_bytes = [
      v.shape.num_elements() * v.dtype.base_dtype.size
      for v in model.table_shards()
  ]
  summary.update(
      table_bytes=sum(shard_bytes),
      smallest_shard_bytes=min(shard_bytes),
      largest_transfer=max([t["bytes"] for t in transfers] or [0]),
      transfers=transfers,
  )
  return summary


def run_step(sess, fetches, feed_dict=None, retries=3, **kwargs):
  """`sess.run` that runs a step again if it was cancelled by a restart.

  `MonitoredTrainingSession` recreates its session (the chief restoring the
  last checkpoint) when a run fails with `AbortedError` or
  `UnavailableError`. When a ps task restarts, the runtime may report the
  step as `CancelledError` instead (the step's work on the other tasks was
  cancelled first); the next run then meets the `AbortedError` and
  recovers, so a cancelled step is run again, at most `retries` times.

  Raises:
    tf.errors.CancelledError: still cancelled after `retries` retries.
  """
  for attempt in range(retries + 1):
    try:
      return sess.run(fetches, feed_dict=feed_dict, **kwargs)
    except tf.errors.CancelledError:
      if attempt == retries:
        raise


def start_server(args, cluster):
  return v1.train.Server(
      cluster, job_name=args.job_name, task_index=args.task_index
  )


def run_worker(args, cluster):
  """Trains until the global step reaches `args.steps`; prints progress."""
  server = start_server(args, cluster)
  with tf.Graph().as_default():
    model = build_model(args, cluster, args.task_index)
    hooks = [v1.train.StopAtStepHook(last_step=args.steps)]
    with monitored_session(args, server, args.task_index, hooks) as sess:
      local_step = 0
      while not sess.should_stop():
        seed = args.task_index * 1000003 + local_step
        if args.report_bytes and local_step == 5:
          report = measure_step_bytes(
              sess, model, model.feed(seed, args.batch_size)
          )
          report.pop("transfers")
          print(
              json.dumps({"task": args.task_index, "bytes_per_step": report}),
              flush=True,
          )
        loss, step, _ = run_step(
            sess,
            [model.loss, model.global_step, model.train_op],
            feed_dict=model.feed(seed, args.batch_size),
        )
        local_step += 1
        if local_step % 20 == 0:
          print(
              json.dumps(
                  {
                      "task": args.task_index,
                      "global_step": int(step),
                      "loss": float(loss),
                  }
              ),
              flush=True,
          )


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_local(args):
  """Runs 2 ps tasks and 2 workers as child processes on 127.0.0.1."""
  hosts = ["127.0.0.1:%d" % _free_port() for _ in range(4)]
  common = [
      sys.executable,
      os.path.abspath(__file__),
      "--ps_hosts=" + ",".join(hosts[:2]),
      "--worker_hosts=" + ",".join(hosts[2:]),
      "--steps=%d" % args.steps,
      "--operation=" + args.operation,
      "--timeout_s=%g" % args.timeout_s,
      "--batch_size=%d" % args.batch_size,
      "--rows",
      str(args.rows[0]),
      str(args.rows[1]),
      "--width=%d" % args.width,
      "--learning_rate=%g" % args.learning_rate,
      "--save_checkpoint_steps=%d" % args.save_checkpoint_steps,
      "--use_resource=%d" % args.use_resource,
  ]
  if args.report_bytes:
    common.append("--report_bytes")
  if args.checkpoint_dir:
    common.append("--checkpoint_dir=" + args.checkpoint_dir)
  children = []
  try:
    for job, index in (("ps", 0), ("ps", 1), ("worker", 0), ("worker", 1)):
      children.append(
          subprocess.Popen(
              common + ["--job_name=" + job, "--task_index=%d" % index],
              start_new_session=True,
          )
      )
    deadline = time.time() + max(120.0, args.steps * 2.0)
    for worker in children[2:]:
      worker.wait(timeout=max(1.0, deadline - time.time()))
    return max(w.returncode for w in children[2:])
  finally:
    # Stop every child's process group: ps tasks never exit on their own.
    for child in children:
      if child.poll() is None:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=30)


def main(argv=None):
  args = parse_args(argv)
  if args.local:
    return run_local(args)
  cluster = cluster_spec(args.ps_hosts, args.worker_hosts)
  if args.job_name == "ps":
    start_server(args, cluster).join()
    return 0
  run_worker(args, cluster)
  return 0


if __name__ == "__main__":
  sys.exit(main())
