"""Parameter-server training on TensorFlow's own runtime, with real processes
on 127.0.0.1: 2 ps tasks hold the partitioned tables (placed by
replica_device_setter), 2 workers train with Adagrad through
MonitoredTrainingSession and checkpoint (examples/ps_training.py, driven
step by step by ps_cluster_task.py).

- synchronous steps (one worker at a time) give the tables of a
  single-process run of the same steps;
- a step moves only the rows it uses (traced bytes against shard sizes);
- asynchronous workers lower the loss;
- a killed worker, a killed chief and a killed ps task are restarted and
  training goes on from the live model or the last checkpoint.
"""

import os
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from mh_cluster import ROOT, Cluster
from tensorflow_multihash import multihash_ops

sys.path.insert(0, os.path.join(ROOT, "examples"))
import ps_training  # noqa: E402

pytestmark = (
    pytest.mark.slow
)  # starts processes or builds: not in the fast loop

v1 = tf.compat.v1
MODEL = [
    "--rows",
    "1000",
    "1000",
    "--width",
    "16",
    "--operation",
    "mul",
    "--batch_size",
    "256",
    "--timeout_s",
    "60",
]
SYNC_SEEDS = [11, 12, 13, 14, 15, 16, 17, 18]


def single_process_run(options, seeds):
  """The same model and steps in one process, no cluster (fused op)."""
  args = ps_training.parse_args(options)
  with tf.Graph().as_default():
    model = ps_training.build_model(args)
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      for seed in seeds:
        sess.run(model.train_op, feed_dict=model.feed(seed, args.batch_size))
      tables = [
          np.concatenate(sess.run(multihash_ops._table_shards(t)), axis=0)
          for t in model.embedding.tables
      ]
      return tables, sess.run(model.weights)


def wait_progress(worker, steps, timeout=120):
  """Waits until `worker` reports `steps` finished steps of a train command."""
  deadline = time.time() + timeout
  while True:
    item = worker.next(max(0.1, deadline - time.time()))
    if isinstance(item, dict) and item.get("progress", 0) >= steps:
      return


def checkpoint_tables(ckpt_dir):
  """(global step, [Q, R], weights) of the latest checkpoint."""
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(ckpt_dir))
  tables = [reader.get_tensor("item_embedding/multhash_%s" % t) for t in "QR"]
  return (
      int(reader.get_tensor("global_step")),
      tables,
      reader.get_tensor("weights"),
  )


def checkpoint_steps(ckpt_dir):
  state = tf.train.get_checkpoint_state(ckpt_dir)
  return [int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths]


# --------------------------------------------------------------------------
# Reference variables (TF1's classic PS setup), checkpoints every 4 steps.
@pytest.fixture(scope="class")
def sync_cluster(tmp_path_factory):
  base = tmp_path_factory.mktemp("ps_sync")
  options = MODEL + [
      "--use_resource=0",
      "--save_checkpoint_steps=4",
      "--checkpoint_dir=" + str(base / "ckpt"),
  ]
  cluster = Cluster(str(base), options)
  cluster.options = options
  yield cluster
  cluster.close()


@pytest.mark.tf1
class TestTraining:

  def test_sync_steps_match_single_process(self, sync_cluster):
    assert [r["global_step"] for r in sync_cluster.ready] == [0, 0]
    for i, seed in enumerate(SYNC_SEEDS):
      out = sync_cluster.workers[i % 2].ask({"cmd": "train", "seeds": [seed]})
      assert out["global_step"] == i + 1
    got = sync_cluster.workers[1].ask({"cmd": "dump"})
    want_tables, want_weights = single_process_run(
        sync_cluster.options, SYNC_SEEDS
    )
    assert got["global_step"] == len(SYNC_SEEDS)
    for g, w in zip(got["tables"], want_tables):
      np.testing.assert_allclose(np.array(g), w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        got["weights"], want_weights, rtol=1e-5, atol=1e-6
    )
    # The steps did train: the tables left their initial values.
    start, _ = single_process_run(sync_cluster.options, [])
    assert not np.allclose(np.array(got["tables"][0]), start[0])

  def test_step_moves_rows_not_shards(self, sync_cluster):
    seed, width = 21, 16
    out = sync_cluster.workers[0].ask({"cmd": "measure", "seed": seed})
    ids, _ = ps_training.make_batch(seed, 256, 1000 * 1000)
    rows = len(np.unique(ids // 1000)) + len(np.unique(ids % 1000))
    # Each distinct row of each table crosses once each way; its shard-local
    # index once (and is reused for the update).
    assert out["rows_from_ps"] == rows * width * 4
    assert out["gradient_rows_to_ps"] == rows * width * 4
    assert out["row_ids_to_ps"] == rows * 8
    assert out["largest_transfer"] < out["smallest_shard_bytes"]
    fused = sync_cluster.workers[0].ask({"cmd": "measure_fused", "seed": seed})
    # The fused kernel on the worker would pull every shard whole.
    assert fused["to_worker"] >= out["table_bytes"]
    print(
        "\nbytes per step (batch 256, %d distinct rows): rows from ps %d, "
        "row ids to ps %d, gradient rows to ps %d, other %d; tables %d "
        "(smallest shard %d); a fused-op lookup on the worker: %d"
        % (
            rows,
            out["rows_from_ps"],
            out["row_ids_to_ps"],
            out["gradient_rows_to_ps"],
            out["other"],
            out["table_bytes"],
            out["smallest_shard_bytes"],
            fused["to_worker"],
        )
    )

  def test_async_workers_lower_the_loss(self, sync_cluster):
    w0, w1 = sync_cluster.workers
    before = w0.ask({"cmd": "eval", "seed": 999})["loss"]
    step0 = w0.ask({"cmd": "dump"})["global_step"]
    w0.send({"cmd": "train", "seeds": list(range(100, 140))})
    w1.send({"cmd": "train", "seeds": list(range(200, 240))})
    r0, r1 = w0.reply(), w1.reply()
    assert "error" not in r0 and "error" not in r1, (r0, r1)
    after = w0.ask({"cmd": "eval", "seed": 999})["loss"]
    assert max(r0["global_step"], r1["global_step"]) == step0 + 80
    assert after < 0.9 * before, (before, after)


# --------------------------------------------------------------------------
# Resource variables, checkpoints every 5 steps.
@pytest.fixture(scope="class")
def fault_cluster(tmp_path_factory):
  base = tmp_path_factory.mktemp("ps_faults")
  ckpt = str(base / "ckpt")
  cluster = Cluster(
      str(base),
      MODEL
      + [
          "--use_resource=1",
          "--save_checkpoint_steps=5",
          "--checkpoint_dir=" + ckpt,
      ],
  )
  cluster.ckpt = ckpt
  cluster.workers[0].ask({"cmd": "train", "seeds": list(range(7))})
  yield cluster
  cluster.close()


class TestFaults:

  def test_worker_killed_and_restarted(self, fault_cluster):
    w0, w1 = fault_cluster.workers
    w1.send({"cmd": "train", "seeds": list(range(1000, 3000))})
    wait_progress(w1, 3)
    fault_cluster.restart("worker", 1)  # SIGKILL mid-training, then start
    before = w0.ask({"cmd": "dump"})
    w1 = fault_cluster.workers[1]
    ready = w1.wait_ready()
    # The model lives on the ps tasks: the new worker joins it as it is.
    assert ready["global_step"] == before["global_step"]
    again = w1.ask({"cmd": "dump"})
    assert again["tables"] == before["tables"]
    out = w1.ask({"cmd": "train", "seeds": [1, 2, 3]})
    assert out["global_step"] == before["global_step"] + 3

  def test_chief_killed_restores_checkpoint(self, fault_cluster):
    w0 = fault_cluster.workers[0]
    start = w0.ask({"cmd": "dump"})["global_step"]
    w0.send({"cmd": "train", "seeds": list(range(3000, 5000))})
    wait_progress(w0, 12)
    fault_cluster.workers[0].kill()
    step, tables, weights = checkpoint_tables(fault_cluster.ckpt)
    assert step > start and step == max(checkpoint_steps(fault_cluster.ckpt))
    w0 = fault_cluster.restart("worker", 0)
    # The new chief restores the last checkpoint, whole.
    assert w0.wait_ready()["global_step"] == step
    got = w0.ask({"cmd": "dump"})
    for g, w in zip(got["tables"], tables):
      np.testing.assert_array_equal(np.array(g, np.float32), w)
    np.testing.assert_array_equal(np.array(got["weights"], np.float32), weights)
    # Training goes on from there, and so do the checkpoints.
    assert (
        w0.ask({"cmd": "train", "seeds": list(range(6))})["global_step"]
        == step + 6
    )
    w1 = fault_cluster.workers[1]
    assert w1.ask({"cmd": "train", "seeds": [7]})["global_step"] == step + 7
    assert max(checkpoint_steps(fault_cluster.ckpt)) > step

  def test_ps_killed_and_restarted(self, fault_cluster):
    w0, w1 = fault_cluster.workers
    w0.ask({"cmd": "train", "seeds": list(range(8))})
    step, tables, weights = checkpoint_tables(fault_cluster.ckpt)
    fault_cluster.restart("ps", 1)  # its shards are gone with it
    # The chief's next step fails, it recreates its session and restores
    # the last checkpoint on both ps tasks.
    got = w0.ask({"cmd": "dump"})
    assert got["global_step"] == step
    for g, w in zip(got["tables"], tables):
      np.testing.assert_array_equal(np.array(g, np.float32), w)
    assert w0.ask({"cmd": "train", "seeds": [1, 2]})["global_step"] == step + 2
    # The other worker reconnects to the restored model and trains on.
    assert w1.ask({"cmd": "train", "seeds": [3]})["global_step"] == step + 3
