"""One worker (or the single-process reference) of the multi-worker tests
(test_multiworker.py) and of benchmarks/multiworker_bytes.py.

Runs examples/multiworker_training.py's training in this process with the
example's flags, plus:

  --out=PATH          write this task's final state as JSON to PATH.<index>
                      (PATH.0 for --single)
  --hold_after=N      after step N (custom loop) or epoch N (fit), once its
                      checkpoint is written, print {"held": N} and sleep
                      until killed: the test kills this worker there
  --task=bytes        instead of training once: for each reduction of
                      --reductions, a fresh model trained --steps steps;
                      reports the TCP bytes this process sent per step
                      (from `ss`), the largest row counts and the tables

Progress and results are JSON lines on stdout.
"""

import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))

import multiworker_training as mw  # noqa: E402
import numpy as np  # noqa: E402


def say(obj):
  print(json.dumps(obj), flush=True)


def tcp_bytes_sent(pid=None):
  """Bytes this process has sent on its TCP sockets (kernel counters,
  `ss -tinp`: payload bytes, without TCP/IP headers)."""
  pid = os.getpid() if pid is None else pid
  out = subprocess.run(
      ["ss", "-tinpH"], capture_output=True, text=True, timeout=30
  ).stdout
  total, mine = 0, False
  for line in out.splitlines():
    if not line.startswith(("\t", " ")):
      mine = ("pid=%d," % pid) in line
    elif mine:
      m = re.search(r"bytes_sent:(\d+)", line)
      total += int(m.group(1)) if m else 0
  return total


def touched_rows(args, index, num_workers, steps):
  """Per step, the largest count of distinct rows of each table any
  worker's share of the global batch touches (NumPy)."""
  rows_r = args.dims[1][0]
  capacity = args.dims[0][0] * rows_r
  per = args.global_batch // num_workers
  out = []
  for t in range(steps):
    ids, _ = mw.global_batch(
        t, args.global_batch, capacity, args.seed, args.zipf
    )
    parts = [ids[i * per : (i + 1) * per] for i in range(num_workers)]
    out.append(
        [
            max(len(np.unique(p // rows_r)) for p in parts),
            max(len(np.unique(p % rows_r)) for p in parts),
        ]
    )
  return out


def bytes_task(args, extra):
  strategy = mw.make_strategy(args.single)
  _, index = mw.task_info(strategy)
  n = strategy.num_replicas_in_sync
  results = {}
  for reduction in extra["reductions"]:
    args.reduction = reduction
    # Warm up (trace, first collectives) then count over --steps steps.
    warm = {}

    def on_step(t, warm=warm):
      if t == extra["warmup"]:
        warm["bytes"] = tcp_bytes_sent()
        warm["time"] = time.time()

    out = mw.train_custom(strategy, args, on_step=on_step)
    sent = tcp_bytes_sent() - warm["bytes"]
    steps = args.steps - extra["warmup"]
    results[reduction] = {
        "bytes_per_step": sent / steps,
        "ms_per_step": 1e3 * (time.time() - warm["time"]) / steps,
        "tables": out["tables"],
        "dense": out["dense"],
    }
  touched = touched_rows(args, index, n, args.steps)[extra["warmup"] :]
  return {"workers": n, "reductions": results, "touched": touched}


def main():
  argv = sys.argv[1:]
  extra = {
      "out": "",
      "hold_after": 0,
      "task": "train",
      "reductions": "sparse,dense,auto,tf",
      "warmup": 2,
  }
  rest = []
  for a in argv:
    key = a[2:].split("=", 1)[0] if a.startswith("--") else ""
    if key in extra:
      extra[key] = a.split("=", 1)[1]
    else:
      rest.append(a)
  extra["hold_after"] = int(extra["hold_after"])
  extra["warmup"] = int(extra["warmup"])
  extra["reductions"] = extra["reductions"].split(",")
  args = mw.parse_args(rest)
  index = (
      0 if args.single else json.loads(os.environ["TF_CONFIG"])["task"]["index"]
  )

  def hold(n):
    say({"held": n})
    time.sleep(3600)

  if extra["task"] == "bytes":
    out = bytes_task(args, extra)
  elif args.mode == "custom":

    def on_step(t):
      say({"progress": t})
      if t == extra["hold_after"]:
        hold(t)

    out = mw.run(args, on_step=on_step)
  else:
    import tf_keras

    class Hold(tf_keras.callbacks.Callback):

      def on_epoch_end(self, epoch, logs=None):
        say({"progress": epoch + 1})
        if epoch + 1 == extra["hold_after"]:
          hold(epoch + 1)

    out = mw.run(args, callbacks=[Hold()])
  out["index"] = index
  if extra["out"]:
    with open("%s.%d" % (extra["out"], index), "w") as f:
      json.dump(out, f)
  say({"done": index})
  sys.stdout.flush()
  # Collective runtime threads can hold up interpreter teardown.
  os._exit(0)


if __name__ == "__main__":
  main()
