"""MultiWorkerMirroredStrategy with 2 worker processes on 127.0.0.1
(TF_CONFIG, free ports; tests/multiworker_task.py running
examples/multiworker_training.py; every process killed at the end).

- The custom tf.function loop (strategy.run, GradientTape, Adagrad; over
  tfmh.get_multihash_variable, or the Keras 3 layer used as a plain layer)
  and tf_keras `fit` (the example's train step, or tf_keras's own) end with
  the tables of one process trained on the same global batches, and of a
  NumPy reference written from the definitions (mul of the Q and R rows, a
  linear layer, squared error, Adagrad). Keras 3's `fit` does not run
  under MultiWorkerMirroredStrategy (keras-team/keras#20585, any embedding;
  docs/distributed.md), so it is not tested here.
- Killing a worker mid-training and restarting both (the strategy needs all
  workers) resumes from the last checkpoint (CheckpointManager for the
  loop, tf_keras BackupAndRestore for fit) and ends with the tables of the
  uninterrupted run.
- The gradient reductions (all-gather of rows, dense all-reduce, and "auto",
  which takes the one with fewer bytes) give the same tables, and "auto"
  sends, measured on the sockets, about the bytes of the cheaper one.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mh_cluster import ROOT, MULTIWORKER_SCRIPT, Workers, child_env

sys.path.insert(0, os.path.join(ROOT, "examples"))
import multiworker_training as mw  # noqa: E402

pytestmark = pytest.mark.slow

DIMS = [[64, 8], [32, 8]]
CUSTOM = [
    "--mode=custom",
    "--dims=%s" % json.dumps(DIMS),
    "--steps=12",
    "--global_batch=64",
    "--checkpoint_every=3",
    "--learning_rate=0.1",
]
FIT = [
    "--mode=fit",
    "--dims=%s" % json.dumps(DIMS),
    "--epochs=4",
    "--steps_per_epoch=3",
    "--global_batch=64",
    "--learning_rate=0.1",
]
TIMEOUT = 300


def numpy_training(dims, batches, lr, eps=1e-7, acc0=0.1):
  """Adagrad on loss = mean((sum_k Q[q]_k R[r]_k w_k - y)^2), float64."""
  (rows_q, width), (rows_r, _) = dims

  def init(seed, shape):  # the example's table_initializer, in NumPy
    rng = np.random.default_rng([seed] + list(shape))
    return rng.uniform(0.5, 1.5, shape).astype(np.float32).astype(np.float64)

  params = [
      init(1, [rows_q, width]),
      init(1, [rows_r, width]),
      init(2, [width, 1]),
  ]
  accs = [np.full_like(p, acc0) for p in params]
  losses = []
  for ids, y in batches:
    q_tab, r_tab, w = params
    q, r = ids // rows_r, ids % rows_r
    e = q_tab[q] * r_tab[r]
    err = e @ w[:, 0] - y
    losses.append(np.mean(err**2))
    d = 2.0 * err / len(ids)
    de = d[:, None] * w[:, 0][None, :]
    g_q, g_r = np.zeros_like(q_tab), np.zeros_like(r_tab)
    np.add.at(g_q, q, de * r_tab[r])
    np.add.at(g_r, r, de * q_tab[q])
    grads = [g_q, g_r, (e.T @ d)[:, None]]
    for p, a, g in zip(params, accs, grads):
      a += g * g
      p -= lr * g / np.sqrt(a + eps)
  return params, losses


def custom_batches(steps, batch=64):
  cap = DIMS[0][0] * DIMS[1][0]
  return [mw.global_batch(t, batch, cap) for t in range(steps)]


def fit_batches(epochs, per_epoch, batch=64):
  return custom_batches(per_epoch, batch) * epochs


def single(argv, out):
  """The same training in one process (no TF_CONFIG)."""
  env = child_env()
  env.pop("TF_CONFIG", None)
  p = subprocess.run(
      [sys.executable, MULTIWORKER_SCRIPT, "--single", "--out=" + out] + argv,
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=TIMEOUT,
      start_new_session=True,
  )
  assert p.returncode == 0, p.stderr[-4000:]
  return load(out, 1)[0]


def load(out, n=2):
  res = []
  for i in range(n):
    with open("%s.%d" % (out, i)) as f:
      res.append(json.load(f))
  return res


def cluster(argv, out, log_dir, extra_argv=None):
  with Workers(argv + ["--out=" + out], log_dir, extra_argv=extra_argv) as w:
    w.wait(TIMEOUT)
  return load(out)


def interrupted(argv, out, log_dir, hold_after):
  """Worker 1 stops after `hold_after` steps/epochs (checkpoint written);
  it is killed (SIGKILL), then worker 0, then both start again."""
  with Workers(
      argv, log_dir, extra_argv={1: ["--hold_after=%d" % hold_after]}
  ) as w:
    w.wait_for(1, "held", TIMEOUT)
    w.kill(1)
    # Worker 0 cannot have finished: the strategy needs worker 1.
    assert w.procs[0].poll() is None or w.procs[0].returncode != 0
    w.kill(0)
    assert not os.path.exists(out + ".0")
  return cluster(argv, out, log_dir)


def tables(res):
  return [np.array(t) for t in res["tables"]] + [np.array(res["dense"])]


def assert_same_tables(got, want, rtol, atol):
  for g, w in zip(tables(got), tables(want)):
    np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


def check_trained(res, batches):
  """The tables moved, and equal the NumPy reference."""
  want, losses = numpy_training(DIMS, batches, 0.1)
  first, _ = numpy_training(DIMS, [], 0.1)
  for g, w, w0 in zip(tables(res), want, first):
    assert np.abs(w - w0).max() > 0.02  # training changed them
    np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-5)
  return losses


def test_custom_loop_two_workers_equal_one_process_and_resume(tmp_path):
  log = str(tmp_path)
  steps = 12
  one = single(CUSTOM, str(tmp_path / "one"))
  losses = check_trained(one, custom_batches(steps))
  np.testing.assert_allclose(one["losses"], losses, rtol=2e-4)

  ckpt_a = str(tmp_path / "ckpt_a")
  two = cluster(
      CUSTOM + ["--checkpoint_dir=" + ckpt_a], str(tmp_path / "two"), log
  )
  np.testing.assert_array_equal(two[0]["tables"][0], two[1]["tables"][0])
  np.testing.assert_array_equal(two[0]["tables"][1], two[1]["tables"][1])
  assert two[0]["restored_step"] == 0 and len(two[0]["losses"]) == steps
  assert_same_tables(two[0], one, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(two[0]["losses"], one["losses"], rtol=1e-5)

  ckpt_b = str(tmp_path / "ckpt_b")
  again = interrupted(
      CUSTOM + ["--checkpoint_dir=" + ckpt_b],
      str(tmp_path / "again"),
      log,
      hold_after=6,
  )
  for res in again:
    assert res["restored_step"] == 6
    assert len(res["losses"]) == steps - 6
    # Same graph, same inputs, same order of sums: the same bits.
    assert_same_tables(res, two[0], rtol=0, atol=0)
    np.testing.assert_allclose(res["losses"], two[0]["losses"][6:], rtol=1e-6)


def test_tf_keras_fit_two_workers_equal_one_process_and_resume(tmp_path):
  log = str(tmp_path)
  one = single(FIT, str(tmp_path / "one"))
  check_trained(one, fit_batches(4, 3))
  assert one["epochs_run"] == [0, 1, 2, 3]

  two = cluster(
      FIT + ["--checkpoint_dir=" + str(tmp_path / "bak_a")],
      str(tmp_path / "two"),
      log,
  )
  np.testing.assert_array_equal(two[0]["tables"][0], two[1]["tables"][0])
  assert two[0]["epochs_run"] == [0, 1, 2, 3]
  assert_same_tables(two[0], one, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(two[0]["losses"], one["losses"], rtol=1e-5)

  again = interrupted(
      FIT + ["--checkpoint_dir=" + str(tmp_path / "bak_b")],
      str(tmp_path / "again"),
      log,
      hold_after=2,
  )
  for res in again:
    # BackupAndRestore resumed after epoch 2: only epochs 2 and 3 ran.
    assert res["epochs_run"] == [2, 3]
    assert_same_tables(res, two[0], rtol=0, atol=0)
    np.testing.assert_allclose(res["losses"], two[0]["losses"][2:], rtol=1e-6)
  # BackupAndRestore deletes its backup when fit ends.
  assert not os.listdir(str(tmp_path / "bak_b"))


@pytest.mark.skipif(
    shutil.which("ss") is None,
    reason="counting socket bytes needs `ss` (iproute2)",
)
@pytest.mark.parametrize(
    "dims,batch,zipf,cheaper",
    [
        # Large tables, Zipf ids: each worker touches a few hundred of 1000
        # rows; gathering them is cheaper than the whole tables.
        ([[1000, 16], [1000, 16]], 2048, 1.2, "sparse"),
        # Small tables, uniform ids, every row touched: a row costs 8 bytes in
        # the dense all-reduce, 8 + 8 (its int64 index) in the gather.
        ([[256, 2], [256, 2]], 8192, 0.0, "dense"),
    ],
)
def test_auto_reduction_sends_the_cheaper_bytes(
    tmp_path, dims, batch, zipf, cheaper
):
  argv = [
      "--task=bytes",
      "--reductions=sparse,dense,auto",
      "--steps=8",
      "--dims=%s" % json.dumps(dims),
      "--global_batch=%d" % batch,
      "--zipf=%g" % zipf,
  ]
  res = cluster(argv, str(tmp_path / "bytes"), str(tmp_path))
  for w in res:
    red = w["reductions"]
    base = tables(red["sparse"])
    for name in ("dense", "auto"):
      for g, b in zip(tables(red[name]), base):
        np.testing.assert_allclose(g, b, rtol=1e-6, atol=1e-7)
    # The prediction from the row counts (NumPy) picks `cheaper` ...
    touched = np.max(w["touched"], axis=0)
    pred = [mw.wire_bytes(r, wd * 4, n, 2) for (r, wd), n in zip(dims, touched)]
    other = "dense" if cheaper == "sparse" else "sparse"
    assert all(p[cheaper] < p[other] for p in pred), pred
    # ... the sockets agree, and auto sends about the cheaper bytes
    # (plus the exchange of the row counts).
    sent = {k: v["bytes_per_step"] for k, v in red.items()}
    print("bytes/step", dims, batch, zipf, sent, pred)
    assert sent[cheaper] < 0.8 * sent[other], sent
    assert sent["auto"] < sent[cheaper] + 0.5 * (
        sent[other] - sent[cheaper]
    ), sent


def test_custom_loop_two_workers_keras3_layer(tmp_path):
  """tfmh.keras.MultiHashEmbedding (Keras 3) as a plain layer in the
  custom loop: both workers end with the NumPy reference's tables."""
  argv = CUSTOM + [
      "--layer=keras3",
      "--checkpoint_dir=" + str(tmp_path / "ckpt"),
  ]
  two = cluster(argv, str(tmp_path / "two"), str(tmp_path))
  losses = check_trained(two[0], custom_batches(12))
  np.testing.assert_allclose(two[0]["losses"], losses, rtol=2e-4)
  assert_same_tables(two[1], two[0], rtol=0, atol=0)


def test_tf_keras_fit_two_workers_own_gradient_aggregation(tmp_path):
  """tf_keras's own train step (its optimizer all-gathers the
  IndexedSlices, --reduction=tf) ends with the NumPy reference's tables
  too."""
  two = cluster(FIT + ["--reduction=tf"], str(tmp_path / "two"), str(tmp_path))
  check_trained(two[0], fit_batches(4, 3))
  assert_same_tables(two[1], two[0], rtol=0, atol=0)
