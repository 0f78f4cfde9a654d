"""A small Keras 3 recommender with multi-hash embeddings, end to end.

Data: MovieLens-like ratings made up here (nothing is downloaded): users
with integer ids, movies with string ids ("tt0000042"), each with a hidden
taste vector; a user likes a movie (label 1) when their tastes agree.

The model embeds the user id with `MultiHashEmbedding(input_dim, 16)` (two
tables of about sqrt(input_dim) rows instead of input_dim rows) and the
movie's string id with `hash_strings=True`, then an MLP predicts the label.
The script

  1. trains it with `model.fit` and a validation split (AUC per epoch),
  2. saves it as a `.keras` file and reloads it (same predictions),
  3. exports it with `model.export` and serves the export in a fresh Python
     process, which needs only `import tensorflow_multihash` (the op
     library) and `tf.saved_model.load`.

    python examples/keras_movielens.py            # about 20 s on 2 cores
    python examples/keras_movielens.py --out DIR  # keep the saved files

Run it from the repository root after ./configure.sh (or with the wheel
installed). It prints "OK" at the end when every check passed.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(
    0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)  # the repository, when the package is not installed

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tensorflow_multihash as tfmh  # noqa: E402  (the op library, the layer)

NUM_USERS = 20_000
NUM_MOVIES = 5_000
NUM_RATINGS = 60_000
TASTE_DIM = 4


def make_ratings(seed=0):
  """(features, labels): `user` int64 ids in [0, NUM_USERS), `movie` string
  ids, and 1.0 where the user's and the movie's hidden tastes agree."""
  rng = np.random.default_rng(seed)
  user_taste = rng.normal(size=(NUM_USERS, TASTE_DIM))
  movie_taste = rng.normal(size=(NUM_MOVIES, TASTE_DIM))
  # A few users and movies make most ratings, as in the real data.
  users = np.minimum(rng.zipf(1.3, NUM_RATINGS) - 1, NUM_USERS - 1)
  users = rng.permutation(NUM_USERS)[users]
  movies = rng.permutation(NUM_MOVIES)[
      np.minimum(rng.zipf(1.2, NUM_RATINGS) - 1, NUM_MOVIES - 1)
  ]
  score = np.sum(user_taste[users] * movie_taste[movies], axis=1)
  labels = (score + 0.5 * rng.normal(size=NUM_RATINGS) > 0).astype("float32")
  movie_ids = np.array(["tt%07d" % m for m in movies], dtype=object)
  return {"user": users.astype("int64"), "movie": movie_ids}, labels


def build_model():
  user = keras.Input(shape=(), dtype="int64", name="user")
  movie = keras.Input(shape=(), dtype="string", name="movie")
  # Replaces keras.layers.Embedding(NUM_USERS, 16): 142 + 141 rows, not
  # 20,000. User ids are checked against input_dim (an id >= 20,000 fails).
  user_emb = tfmh.keras.MultiHashEmbedding(NUM_USERS, 16, name="user_emb")(user)
  # String ids hashed into the tables' capacity (71 x 71 = 5,041 >= 5,000
  # movies, so a few movies share a row pair).
  movie_emb = tfmh.keras.MultiHashEmbedding(
      NUM_MOVIES, 16, hash_strings=True, out_of_range="wrap", name="movie_emb"
  )(movie)
  h = keras.layers.Concatenate()(
      [user_emb, movie_emb, keras.layers.Multiply()([user_emb, movie_emb])]
  )
  h = keras.layers.Dense(32, activation="relu")(h)
  out = keras.layers.Dense(1, activation="sigmoid", name="like")(h)
  return keras.Model({"user": user, "movie": movie}, out)


SERVE = """
import json, sys
import numpy as np
import tensorflow as tf
import tensorflow_multihash  # loads the op library the export needs
served = tf.saved_model.load(sys.argv[1])
request = json.loads(sys.argv[2])
out = served.serve({"user": tf.constant(request["user"], tf.int64),
                    "movie": tf.constant(request["movie"])})
print("SERVED " + json.dumps(np.asarray(out).ravel().tolist()))
"""


def serve_in_fresh_process(export_dir, request):
  """Predictions of the export, from a new Python process."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(
      os.environ,
      TF_CPP_MIN_LOG_LEVEL="2",
      PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
  )
  p = subprocess.run(
      [sys.executable, "-c", SERVE, export_dir, json.dumps(request)],
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
      check=False,
  )
  if p.returncode != 0:
    raise RuntimeError("serving process failed:\n" + p.stderr[-3000:])
  line = [x for x in p.stdout.splitlines() if x.startswith("SERVED ")][-1]
  return np.array(json.loads(line[len("SERVED ") :]), np.float32)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument(
      "--out",
      help="folder for the saved model files "
      "(default: a temporary folder, removed at the end)",
  )
  parser.add_argument("--epochs", type=int, default=4)
  args = parser.parse_args(argv)
  keras.utils.set_random_seed(0)

  features, labels = make_ratings()
  print(
      "ratings %d, users %d, movies %d, positive %.1f%%"
      % (len(labels), NUM_USERS, NUM_MOVIES, 100 * labels.mean())
  )
  model = build_model()
  for name in ("user_emb", "movie_emb"):
    layer = model.get_layer(name)
    print(
        "%s: tables %s (%d rows) for %d ids"
        % (name, layer.dims, sum(r for r, _ in layer.dims), layer.num_ids)
    )
  model.compile(
      optimizer=keras.optimizers.Adam(5e-3),
      loss="binary_crossentropy",
      metrics=[keras.metrics.AUC(name="auc")],
  )
  x = {
      "user": tf.constant(features["user"]),
      "movie": tf.constant(features["movie"].astype(str)),
  }
  hist = model.fit(
      x,
      labels,
      batch_size=512,
      epochs=args.epochs,
      validation_split=0.2,
      verbose=0,
  )
  for epoch, (auc, val_auc) in enumerate(
      zip(hist.history["auc"], hist.history["val_auc"])
  ):
    print(
        "epoch %d: train AUC %.3f, validation AUC %.3f"
        % (epoch + 1, auc, val_auc)
    )
  assert hist.history["val_auc"][-1] > 0.6, hist.history["val_auc"]

  request = {
      "user": [0, 17, 19_999],
      "movie": ["tt0000000", "tt0000042", "tt0004999"],
  }
  x_req = {
      "user": tf.constant(request["user"], tf.int64),
      "movie": tf.constant(request["movie"]),
  }
  want = model.predict(x_req, verbose=0).ravel()
  print("predictions", np.round(want, 4).tolist())

  with tempfile.TemporaryDirectory() as tmp:
    out = args.out or tmp
    os.makedirs(out, exist_ok=True)
    keras_path = os.path.join(out, "movielens.keras")
    model.save(keras_path)
    reloaded = keras.saving.load_model(keras_path)
    got = reloaded.predict(x_req, verbose=0).ravel()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    print("reloaded %s: same predictions" % os.path.basename(keras_path))

    export_dir = os.path.join(out, "export")
    model.export(export_dir, verbose=False)
    served = serve_in_fresh_process(export_dir, request)
    np.testing.assert_allclose(served, want, rtol=1e-6, atol=1e-6)
    print("served %s in a fresh process: same predictions" % export_dir)
    print(
        "(python -m tensorflow_multihash.saved_model_cli show --dir %s "
        "--all lists its signatures)" % export_dir
    )
  print("OK")
  return 0


if __name__ == "__main__":
  sys.exit(main())
