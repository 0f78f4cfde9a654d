"""CPU benchmark: the fused multi-hash lookup against stock TensorFlow ops.

One process, one graph-mode tf.compat.v1.Session per configuration, variants
timed interleaved (round-robin, one step each per round, order rotated every
round) so that they see the same machine state. Medians are reported.

Variants (same ids, same small tables for fused and stock):
  fused       tfmh.embedding_lookup on a tfmh.get_multihash_variable
              (the MultiHashLookup op; backward = MultiHashLookupGrad).
  stock       the same Q-R lookup from stock ops: q = ids // rows_R,
              r = ids % rows_R, tf.gather on each table, combine (+, * or
              concat); backward = TF's generic gather gradient.
  full        tf.gather from a full [V, D] resource variable (V = 1e6 rows;
              skipped when that table would not fit).
  copy        the memory-copy floor: tf.raw_ops.DeepCopy of a [B, D] tensor
              held in a resource variable. DeepCopy allocates a fresh output
              and reads + writes every byte of it once (the read of the
              variable aliases, it does not copy), so it is the least any op
              that produces a new [B, D] output from memory can cost, with the
              same session overhead as the others. (A forward-only floor.)

Forward = session.run of the lookup op as a target (the output is not fetched
to Python). Train step = forward + sum-of-squares loss + backward +
tf.compat.v1.train.AdagradOptimizer(0.01).minimize on the tables, same for
every variant.

Usage:
  .venv/bin/python benchmarks/cpu_benchmark.py              # default sweep
  .venv/bin/python benchmarks/cpu_benchmark.py --reference  # reference point
  .venv/bin/python benchmarks/cpu_benchmark.py --quick      # fewer rounds
  ... [--out PATH] [--rounds N]

The default sweep varies one axis at a time around the reference point
(B=65536, D=64, float32, mul, Zipf(1.2), V=1e6, int64): B in {1k, 16k, 64k,
256k}, D in {16, 64, 128}, add/mul/concat, uniform/Zipf ids, int32/int64,
float32/bfloat16, and V in {1e6, 1e8} (capacity of the multi-hash table) plus
a re-run of the fused lookup after sparse updates (copy-on-read mode).
"""

import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tensorflow_multihash as tfmh  # noqa: E402

REFERENCE = dict(
    B=65536, D=64, dtype="float32", op="mul", dist="zipf", V=10**6, idx="int64"
)
FULL_TABLE_LIMIT_BYTES = 3 << 30  # full table + Adagrad accumulator


def make_ids(cfg, rng):
  b, v = cfg["B"], cfg["V"]
  if cfg["dist"] == "zipf":
    # Zipf(1.2) ranks, folded into [0, V), then scattered by a fixed
    # permutation-like multiplier so that hot ids are not all small.
    ranks = rng.zipf(1.2, size=b).astype(np.int64) % v
    ids = (ranks * 2654435761) % v
  else:
    ids = rng.integers(0, v, size=b, dtype=np.int64)
  return ids.astype(np.int32 if cfg["idx"] == "int32" else np.int64)


def qr_dims(cfg):
  v, d = cfg["V"], cfg["D"]
  rows = int(math.ceil(math.sqrt(v)))
  width = d // 2 if cfg["op"] == "concat" else d
  return [[rows, width], [rows, width]]


def build(cfg, variants, with_train=True):
  """A graph with every variant's forward and train targets."""
  graph = tf.Graph()
  dtype = tf.as_dtype(cfg["dtype"])
  rng = np.random.default_rng(1234)
  targets = {}
  stages = {}
  with graph.as_default():
    ids_np = make_ids(cfg, rng)
    # Ids live in a variable (read in place), not a graph constant or a feed.
    ids = tf.compat.v1.get_variable(
        "ids",
        initializer=tf.constant(ids_np),
        trainable=False,
        use_resource=True,
    )
    ids_t = ids.read_value()
    mh = tfmh.get_multihash_variable(
        "mh", qr_dims(cfg), operation=cfg["op"], dtype=dtype, use_resource=True
    )
    q_tab, r_tab = mh.tables
    rows_r = mh.dims[1][0]

    # A stored upstream gradient, for timing each backward on its own.
    upstream = tf.compat.v1.get_variable(
        "upstream",
        initializer=tf.cast(
            tf.random.stateless_normal([cfg["B"], cfg["D"]], seed=[1, 2]),
            dtype,
        ),
        trainable=False,
        use_resource=True,
    ).read_value()
    stages["read"] = tf.reduce_sum(upstream).op

    def ops_of(grads):
      return [
          g.values.op if isinstance(g, tf.IndexedSlices) else g.op
          for g in grads
      ]

    def train_of(name, out, var_list):
      loss = tf.reduce_sum(tf.square(tf.cast(out, tf.float32)))
      opt = tf.compat.v1.train.AdagradOptimizer(0.01)
      grads = opt.compute_gradients(loss, var_list=var_list)
      stages[name + "_loss"] = loss.op
      stages[name + "_grad"] = ops_of([g for g, _ in grads])
      stages[name + "_bwd"] = ops_of(
          tf.gradients(out, var_list, grad_ys=upstream)
      )
      return opt.apply_gradients(grads)

    if "fused" in variants:
      out = tfmh.embedding_lookup(mh, ids_t)
      targets["fused"] = (
          out.op,
          train_of("fused", out, [q_tab, r_tab]) if with_train else None,
      )
    if "stock" in variants:
      q = ids_t // rows_r
      r = ids_t % rows_r
      eq = tf.gather(q_tab, q)
      er = tf.gather(r_tab, r)
      if cfg["op"] == "add":
        out = eq + er
      elif cfg["op"] == "mul":
        out = eq * er
      else:
        out = tf.concat([eq, er], axis=-1)
      targets["stock"] = (
          out.op,
          train_of("stock", out, [q_tab, r_tab]) if with_train else None,
      )
    if "full" in variants:
      full = tf.compat.v1.get_variable(
          "full",
          shape=[cfg["V"], cfg["D"]],
          dtype=dtype,
          initializer=tf.compat.v1.truncated_normal_initializer(stddev=0.1),
          use_resource=True,
      )
      out = tf.gather(full, ids_t)
      targets["full"] = (
          out.op,
          train_of("full", out, [full]) if with_train else None,
      )
    if "copy" in variants:
      src = tf.compat.v1.get_variable(
          "copy_src",
          shape=[cfg["B"], cfg["D"]],
          dtype=dtype,
          initializer=tf.compat.v1.zeros_initializer(),
          trainable=False,
          use_resource=True,
      )
      out = tf.raw_ops.DeepCopy(x=src.read_value())
      targets["copy"] = (out.op, None)
    init = tf.compat.v1.global_variables_initializer()
  sess = tf.compat.v1.Session(graph=graph)
  sess.run(init)
  return sess, targets, stages


def interleaved(sess, ops, rounds, warmup=2):
  """Median seconds of each op, run round-robin."""
  names = list(ops)
  for _ in range(warmup):
    for n in names:
      sess.run(ops[n])
  times = {n: [] for n in names}
  for k in range(rounds):
    order = names[k % len(names) :] + names[: k % len(names)]
    for n in order:
      t0 = time.perf_counter()
      sess.run(ops[n])
      times[n].append(time.perf_counter() - t0)
  return {n: float(np.median(t)) for n, t in times.items()}


def rounds_for(cfg, base):
  # Fewer rounds for the big batches, more for the small ones.
  scale = max(1.0, 65536.0 / cfg["B"])
  return (
      int(min(base * scale, base * 4))
      if cfg["B"] < 65536
      else max(5, int(base * 65536 / cfg["B"]))
  )


def run_config(cfg, rounds, with_train=True):
  variants = ["fused", "stock", "copy"]
  full_bytes = 2 * 10**6 * cfg["D"] * tf.as_dtype(cfg["dtype"]).size
  if full_bytes <= FULL_TABLE_LIMIT_BYTES and cfg["V"] == 10**6:
    variants.insert(2, "full")
  sess, targets, stages = build(cfg, variants, with_train)
  n = rounds_for(cfg, rounds)
  res = {"config": dict(cfg), "rounds": n, "fwd_ms": {}, "train_ms": {}}
  fwd = interleaved(sess, {k: v[0] for k, v in targets.items()}, n)
  res["fwd_ms"] = {k: 1e3 * v for k, v in fwd.items()}
  if with_train:
    tr = interleaved(
        sess, {k: v[1] for k, v in targets.items() if v[1] is not None}, n
    )
    res["train_ms"] = {k: 1e3 * v for k, v in tr.items()}
    # The train step's stages, cumulative (forward + loss, + backward), and
    # each backward alone from a stored upstream gradient next to one read
    # of that gradient, all interleaved.
    st = interleaved(sess, stages, n)
    res["stage_ms"] = {k: 1e3 * v for k, v in st.items()}
    # The backward's floor: one read of the upstream gradient (measured)
    # plus the write of the summed rows (at the same bandwidth).
    ids = make_ids(cfg, np.random.default_rng(1234))
    (rows_q, width), (rows_r, _) = qr_dims(cfg)
    del rows_q
    summed_rows = len(np.unique(ids // rows_r)) + len(np.unique(ids % rows_r))
    grad_elems = cfg["B"] * cfg["D"]
    res["summed_rows"] = summed_rows
    res["floor_ms"] = (
        res["stage_ms"]["read"]
        * (grad_elems + summed_rows * width)
        / grad_elems
    )
    # After the sparse updates every table variable is in copy-on-read mode;
    # a whole-table copy on read would show here.
    after = interleaved(sess, {"fused": targets["fused"][0]}, n)
    res["fused_fwd_after_updates_ms"] = 1e3 * after["fused"]
  sess.close()
  return res


def ratio(a, b):
  return (a / b) if (a is not None and b) else None


def fmt(x, digits=2):
  return "-" if x is None else ("%.*f" % (digits, x))


def label(cfg):
  return "B=%d D=%d %s %s %s %s V=%.0e" % (
      cfg["B"],
      cfg["D"],
      cfg["op"],
      cfg["dist"],
      cfg["dtype"],
      cfg["idx"],
      cfg["V"],
  )


def markdown(results):
  lines = [
      "| config | fwd fused ms | fwd stock ms | fwd full ms | copy ms | "
      "fused/stock | fused/full | fused/copy | train fused ms | "
      "train stock ms | train full ms | train fused/stock | "
      "fused fwd after updates ms |",
      "|" + "---|" * 13,
  ]
  for r in results:
    f, t = r["fwd_ms"], r["train_ms"]
    lines.append(
        "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | "
        "%s | %s |"
        % (
            label(r["config"]),
            fmt(f.get("fused")),
            fmt(f.get("stock")),
            fmt(f.get("full")),
            fmt(f.get("copy")),
            fmt(ratio(f.get("fused"), f.get("stock"))),
            fmt(ratio(f.get("fused"), f.get("full"))),
            fmt(ratio(f.get("fused"), f.get("copy"))),
            fmt(t.get("fused")),
            fmt(t.get("stock")),
            fmt(t.get("full")),
            fmt(ratio(t.get("fused"), t.get("stock"))),
            fmt(r.get("fused_fwd_after_updates_ms")),
        )
    )
  return "\n".join(lines)


def breakdown(results):
  """The train step stage by stage, and the backward against its floor."""
  lines = [
      "| config | variant | forward ms | loss ms | backward ms | apply ms | "
      "train step ms | backward alone ms | floor ms | backward alone / "
      "floor |",
      "|" + "---|" * 10,
  ]
  for r in results:
    st, t, f = r.get("stage_ms", {}), r["train_ms"], r["fwd_ms"]
    for v in ("fused", "stock", "full"):
      if v + "_grad" not in st:
        continue
      loss, grad = st[v + "_loss"], st[v + "_grad"]
      bwd = st[v + "_bwd"]
      lines.append(
          "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |"
          % (
              label(r["config"]),
              v,
              fmt(f.get(v)),
              fmt(loss - f.get(v)),
              fmt(grad - loss),
              fmt(t.get(v) - grad),
              fmt(t.get(v)),
              fmt(bwd),
              fmt(r["floor_ms"]),
              fmt(ratio(bwd, r["floor_ms"])),
          )
      )
  return "\n".join(lines)


def memory_table(d=64, dtype_size=4):
  rows = []
  lines = [
      "| V | rows_Q = rows_R | small tables (2) | full table | "
      "full / small |",
      "|---|---|---|---|---|",
  ]
  for v in (10**6, 10**8, 10**10):
    r = int(math.ceil(math.sqrt(v)))
    small = 2 * r * d * dtype_size
    full = v * d * dtype_size
    rows.append({"V": v, "rows": r, "small_bytes": small, "full_bytes": full})
    lines.append(
        "| %.0e | %d | %s | %s | %.0fx |"
        % (v, r, human(small), human(full), full / small)
    )
  return rows, "\n".join(lines)


def human(n):
  for unit in ("B", "KB", "MB", "GB", "TB"):
    if n < 1000:
      return "%.1f %s" % (n, unit)
    n /= 1000.0
  return "%.1f PB" % n


def sweep_configs():
  ref = dict(REFERENCE)
  cfgs = [ref]

  def vary(**kw):
    c = dict(ref)
    c.update(kw)
    if c not in cfgs:
      cfgs.append(c)

  for b in (1024, 16384, 262144):
    vary(B=b)
  for d in (16, 128):
    vary(D=d)
  for op in ("add", "concat"):
    vary(op=op)
  vary(dist="uniform")
  vary(idx="int32")
  vary(dtype="bfloat16")
  vary(V=10**8)
  vary(V=10**8, dist="uniform")
  # 51 MB of small tables (rows_Q = rows_R = 1e5 at D = 64, float32).
  vary(V=10**10)
  vary(V=10**10, dist="uniform")
  vary(V=10**10, op="add")
  vary(V=10**10, op="concat")
  vary(V=10**10, B=16384)
  return cfgs


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument(
      "--reference", action="store_true", help="only the reference point"
  )
  p.add_argument("--quick", action="store_true", help="fewer rounds")
  p.add_argument("--rounds", type=int, default=None)
  p.add_argument(
      "--out",
      default=os.path.join(
          os.path.dirname(os.path.abspath(__file__)),
          "results",
          "cpu_benchmark.json",
      ),
  )
  args = p.parse_args()
  rounds = args.rounds or (7 if args.quick else (41 if args.reference else 25))
  cfgs = [dict(REFERENCE)] if args.reference else sweep_configs()
  results = []
  t_start = time.time()
  for cfg in cfgs:
    t0 = time.time()
    r = run_config(cfg, rounds)
    results.append(r)
    print(
        "%-60s fused/stock fwd %s train %s; backward alone / floor %s"
        "  (%.0f s)"
        % (
            label(cfg),
            fmt(ratio(r["fwd_ms"]["fused"], r["fwd_ms"]["stock"])),
            fmt(ratio(r["train_ms"]["fused"], r["train_ms"]["stock"])),
            fmt(ratio(r["stage_ms"]["fused_bwd"], r["floor_ms"])),
            time.time() - t0,
        ),
        flush=True,
    )
  mem_rows, mem_md = memory_table()
  machine = "%s, %d logical CPUs, TF %s, Python %s" % (
      platform.processor() or platform.machine(),
      os.cpu_count(),
      tf.__version__,
      platform.python_version(),
  )
  print()
  print("Machine: " + machine)
  print()
  print(markdown(results))
  print()
  print(
      "Train step by stage (medians of cumulative runs: forward, + loss, "
      "+ backward, + optimizer apply; differences of medians), and each "
      "backward alone from a stored upstream gradient against its floor "
      "(one read of that gradient, measured as tf.reduce_sum, plus the "
      "write of the summed rows):"
  )
  print()
  print(breakdown(results))
  print()
  print("Memory at D=64, float32:")
  print()
  print(mem_md)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(
        {
            "machine": machine,
            "reference": REFERENCE,
            "results": results,
            "memory": mem_rows,
            "seconds": time.time() - t_start,
        },
        f,
        indent=1,
    )
  print("\nwrote %s (%.0f s)" % (args.out, time.time() - t_start))


if __name__ == "__main__":
  main()
