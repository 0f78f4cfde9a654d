"""Bytes per training step that cross the wire under
MultiWorkerMirroredStrategy, for each way of summing the small tables'
gradients (examples/multiworker_training.py, `reduce_gradient`):

  sparse  all-gather of every worker's touched rows and their int64 indices
  dense   ring all-reduce of the whole table
  auto    each step and table the one of the two with fewer payload bytes
          (one exchange of the row counts more)
  tf      TensorFlow's own `ReplicaContext.all_reduce` of the IndexedSlices
          (an all-gather, as tf_keras's optimizers do)

Two workers on 127.0.0.1 (tests/multiworker_task.py --task=bytes) train the
example's custom loop; each counts the payload bytes its TCP sockets sent
(kernel counters read with `ss -tinp`) over the steps after a warm-up. The
"predicted" columns are the example's `wire_bytes` for the small tables
alone (gradient rows plus 300 bytes per message), from the rows each
worker's ids touch (counted with NumPy); what was sent also holds the
linear layer's gradient, the loss and, for auto, the row-count exchange.

Run:  .venv/bin/python benchmarks/multiworker_bytes.py [--steps 10]
Prints a Markdown table. Needs `ss` (iproute2).
"""

import argparse
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "examples"))

import numpy as np  # noqa: E402

from mh_cluster import Workers  # noqa: E402
from multiworker_training import wire_bytes  # noqa: E402

# dims, global batch, Zipf exponent (0: uniform ids)
CONFIGS = [
    ([[64, 8], [32, 8]], 64, 1.2),
    ([[1000, 16], [1000, 16]], 2048, 1.2),
    ([[256, 2], [256, 2]], 8192, 0.0),
    ([[10000, 32], [100, 32]], 4096, 1.2),
    ([[1000, 64], [1000, 64]], 65536, 1.2),
]
REDUCTIONS = ["sparse", "dense", "auto", "tf"]


def run(dims, batch, zipf, steps, log_dir):
  out = os.path.join(log_dir, "bytes")
  argv = [
      "--task=bytes",
      "--reductions=" + ",".join(REDUCTIONS),
      "--steps=%d" % steps,
      "--dims=" + json.dumps(dims),
      "--global_batch=%d" % batch,
      "--zipf=%g" % zipf,
      "--out=" + out,
  ]
  with Workers(argv, log_dir) as w:
    w.wait(900)
  res = []
  for i in range(2):
    with open("%s.%d" % (out, i)) as f:
      res.append(json.load(f))
  return res


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--steps", type=int, default=10)
  args = p.parse_args()
  print(
      "| tables (rows x width, float32) | global batch, ids | rows touched "
      "per worker (max) | predicted sparse / dense | sent: sparse | dense | "
      "auto | tf | cheaper by prediction |"
  )
  print("|---|---|---|---|---|---|---|---|---|")
  for dims, batch, zipf in CONFIGS:
    with tempfile.TemporaryDirectory() as d:
      res = run(dims, batch, zipf, args.steps, d)
    touched = np.max(res[0]["touched"], axis=0)
    pay = [wire_bytes(r, w * 4, n, 2) for (r, w), n in zip(dims, touched)]
    took = ["sparse" if q["sparse"] < q["dense"] else "dense" for q in pay]
    # Bytes sent per worker and step, mean of the two workers.
    sent = {
        k: np.mean([r["reductions"][k]["bytes_per_step"] for r in res])
        for k in REDUCTIONS
    }
    print(
        "| %s | %d, %s | %s | %s / %s | %s | %s | %s | %s | %s |"
        % (
            " + ".join("%dx%d" % tuple(t) for t in dims),
            batch,
            "Zipf(%g)" % zipf if zipf else "uniform",
            " + ".join(str(int(n)) for n in touched),
            "{:,}".format(int(sum(q["sparse"] for q in pay))),
            "{:,}".format(int(sum(q["dense"] for q in pay))),
            *["{:,}".format(int(sent[k])) for k in REDUCTIONS],
            " + ".join(took),
        ),
        flush=True,
    )


if __name__ == "__main__":
  main()
