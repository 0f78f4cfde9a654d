"""One task of the loopback cluster that test_distributed_ps.py starts.

Run as `ps_cluster_task.py <examples/ps_training.py options>`:

- `--job_name=ps`: serves its variables until killed.
- `--job_name=worker`: builds the example's model, opens its
  `MonitoredTrainingSession` (the chief restores or initializes and
  checkpoints) and prints `{"event": "ready", "global_step": g}`; then
  answers one JSON command per stdin line with one JSON line on stdout:

  {"cmd": "train", "seeds": [...]}  one step per seed (the example's batch
      of that seed), a {"progress": i} line after each; replies
      {"global_step", "losses"}
  {"cmd": "eval", "seed": s}        {"loss"} of that batch, no update
  {"cmd": "dump"}                   {"global_step", "tables", "weights"}
  {"cmd": "measure", "seed": s}     bytes one training step moves (3 traced
      steps of that batch)
  {"cmd": "measure_fused", "seed": s}  bytes a fused-op lookup moves
      (reference variables only): every shard, whole
  {"cmd": "quit"}                   closes the session (a final checkpoint)

A failing command replies {"error": "..."}; stdin closing ends the task.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(
    0,
    os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"
    ),
)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import mh_mode  # noqa: E402  the test run's TFMH_TEST_MODE, before any graph

mh_mode.apply()

import ps_training  # noqa: E402
from tensorflow_multihash import multihash_ops  # noqa: E402

v1 = tf.compat.v1


def _say(obj):
  print(json.dumps(obj), flush=True)


def _fused_lookup_bytes(model, args, cluster):
  """A forward-only lookup by the fused op, placed as a naive graph would
  place it (on the worker), for comparison; None with resource variables,
  which the fused op cannot read across tasks at all."""
  if args.use_resource:
    return None
  setter = v1.train.replica_device_setter(
      cluster=cluster, worker_device="/job:worker/task:%d" % args.task_index
  )
  with v1.device(setter):
    return tf.reduce_sum(
        multihash_ops.multihash_lookup(
            model.embedding.tables, model.ids, operation=args.operation
        )
    )


def _traced_bytes(sess, fetch, feed, repeats=3):
  """Bytes sent to the worker by a run of `fetch`, each transfer counted once
  over `repeats` traced runs (see ps_training.measure_step_bytes)."""
  seen = {}
  for _ in range(repeats):
    meta = v1.RunMetadata()
    ps_training.run_step(
        sess,
        fetch,
        feed_dict=feed,
        run_metadata=meta,
        options=v1.RunOptions(trace_level=v1.RunOptions.FULL_TRACE),
    )
    for t in ps_training.traced_transfers(meta):
      seen[(t["tensor"], t["src"], t["dst"])] = t["bytes"]
  return {
      "to_worker": sum(
          b for (_, _, dst), b in seen.items() if "/job:worker/" in dst
      ),
      "largest_transfer": max(seen.values() or [0]),
  }


def _dump(sess, model):
  tables = [multihash_ops._table_shards(t) for t in model.embedding.tables]
  values, weights, step = ps_training.run_step(
      sess, [tables, model.weights, model.global_step]
  )
  return {
      "global_step": int(step),
      "tables": [np.concatenate(v, axis=0).tolist() for v in values],
      "weights": weights.tolist(),
  }


def _serve(sess, model, args, fused):
  for line in sys.stdin:
    cmd = json.loads(line)
    name = cmd["cmd"]
    try:
      if name == "quit":
        return
      if name == "train":
        losses = []
        for i, seed in enumerate(cmd["seeds"]):
          loss, _ = ps_training.run_step(
              sess,
              [model.loss, model.train_op],
              feed_dict=model.feed(seed, args.batch_size),
          )
          losses.append(float(loss))
          _say({"progress": i + 1})
        _say(
            {
                "global_step": int(
                    ps_training.run_step(sess, model.global_step)
                ),
                "losses": losses,
            }
        )
      elif name == "eval":
        _say(
            {
                "loss": float(
                    ps_training.run_step(
                        sess,
                        model.loss,
                        feed_dict=model.feed(cmd["seed"], args.batch_size),
                    )
                )
            }
        )
      elif name == "dump":
        _say(_dump(sess, model))
      elif name == "measure":
        _say(
            ps_training.measure_step_bytes(
                sess, model, model.feed(cmd["seed"], args.batch_size)
            )
        )
      elif name == "measure_fused":
        _say(
            None
            if fused is None
            else _traced_bytes(
                sess, fused, model.feed(cmd["seed"], args.batch_size)
            )
        )
      else:
        _say({"error": "unknown command %r" % (name,)})
    except tf.errors.OpError as e:
      _say({"error": "%s: %s" % (type(e).__name__, e.message[:2000])})


def main(argv):
  args = ps_training.parse_args(argv)
  cluster = ps_training.cluster_spec(args.ps_hosts, args.worker_hosts)
  server = ps_training.start_server(args, cluster)
  if args.job_name == "ps":
    server.join()
    return 0
  with tf.Graph().as_default():
    model = ps_training.build_model(args, cluster, args.task_index)
    fused = _fused_lookup_bytes(model, args, cluster)
    with ps_training.monitored_session(args, server, args.task_index) as sess:
      _say(
          {
              "event": "ready",
              "global_step": int(ps_training.run_step(sess, model.global_step)),
          }
      )
      _serve(sess, model, args, fused)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
