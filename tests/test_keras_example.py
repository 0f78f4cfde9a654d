"""Issue #20, point 7: examples/keras_movielens.py runs end to end, and
`python -m tensorflow_multihash.saved_model_cli` shows and runs an exported
Keras model that TensorFlow's own saved_model_cli cannot load."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import tensorflow_multihash as tfmh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
  env = dict(
      os.environ,
      TF_CPP_MIN_LOG_LEVEL="2",
      CUDA_VISIBLE_DEVICES="",
      PYTHONPATH=ROOT,
  )
  return env


@pytest.mark.slow
def test_keras_movielens_example(tmp_path):
  out = tmp_path / "out"
  p = subprocess.run(
      [
          sys.executable,
          os.path.join(ROOT, "examples", "keras_movielens.py"),
          "--out",
          str(out),
          "--epochs",
          "2",
      ],
      cwd=str(tmp_path),
      env=_env(),
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  lines = p.stdout.splitlines()
  assert lines[-1] == "OK"
  assert (
      "user_emb: tables [[142, 16], [141, 16]] (283 rows) for 20000 ids"
      in lines
  )
  val = [float(x.rsplit(" ", 1)[1]) for x in lines if x.startswith("epoch ")]
  assert len(val) == 2 and val[-1] > 0.6
  assert any(x.startswith("served ") and "same predictions" in x for x in lines)
  assert (out / "movielens.keras").exists() and (
      out / "export" / "saved_model.pb"
  ).exists()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  d = tmp_path_factory.mktemp("cli")
  keras.utils.set_random_seed(5)
  ids = keras.Input(shape=(3,), dtype="int64", name="ids")
  emb = tfmh.keras.MultiHashEmbedding(100, 4, name="mh")(ids)
  model = keras.Model(ids, keras.layers.Dense(2)(keras.layers.Flatten()(emb)))
  export_dir = str(d / "export")
  model.export(export_dir, verbose=False)
  x = np.array([[0, 99, 7], [42, 42, 1]], np.int64)
  return export_dir, x, model.predict(x, verbose=0), d


def _cli(module, *args):
  return subprocess.run(
      [sys.executable, "-m", module] + list(args),
      cwd="/",
      env=_env(),
      capture_output=True,
      text=True,
      timeout=300,
  )


def test_saved_model_cli_show(exported):
  export_dir, _, _, _ = exported
  p = _cli(
      "tensorflow_multihash.saved_model_cli",
      "show",
      "--dir",
      export_dir,
      "--all",
  )
  assert p.returncode == 0, p.stderr[-3000:]
  assert "signature_def['serve']" in p.stdout
  assert "signature_def['serving_default']" in p.stdout
  assert "shape: (-1, 3)" in p.stdout and "DT_INT64" in p.stdout


@pytest.mark.slow  # three fresh interpreters
def test_saved_model_cli_run(exported):
  export_dir, x, want, d = exported
  outdir = str(d / "run_out")
  expr = (
      "ids=%s" % x.tolist()
  )  # a Python literal (the CLI evaluates literals only)
  p = _cli(
      "tensorflow_multihash.saved_model_cli",
      "run",
      "--dir",
      export_dir,
      "--tag_set",
      "serve",
      "--signature_def",
      "serving_default",
      "--input_exprs",
      expr,
      "--outdir",
      outdir,
  )
  assert p.returncode == 0, p.stderr[-3000:]
  files = os.listdir(outdir)
  assert len(files) == 1 and files[0].endswith(".npy"), files
  np.testing.assert_allclose(
      np.load(os.path.join(outdir, files[0])), want, rtol=1e-6, atol=1e-6
  )
  # TensorFlow's own CLI cannot: it does not know the op.
  p = _cli(
      "tensorflow.python.tools.saved_model_cli",
      "run",
      "--dir",
      export_dir,
      "--tag_set",
      "serve",
      "--signature_def",
      "serving_default",
      "--input_exprs",
      expr,
  )
  assert p.returncode != 0
  assert "MultiHashLookup" in p.stderr
