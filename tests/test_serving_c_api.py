"""The C-API serving client (examples/serving/multihash_serving_client.c,
built by ./configure.sh through Bazel): it loads the op library with
TF_LoadLibrary and a SavedModel with TF_LoadSessionFromSavedModel, reads the
serving signature's tensor names from the MetaGraphDef, runs it on ids given
on the command line and prints the rows, which must equal what Python
serves. The _static variant links //:multihash_ops_lib (alwayslink) as a
TensorFlow Serving build would, and needs no --op_library.
"""

import os
import subprocess

import numpy as np
import pytest
import tensorflow as tf

from mh_apiutil import tfmh  # noqa: F401  (fixture)
import mh_serving

pytestmark = (
    pytest.mark.slow
)  # starts processes or builds: not in the fast loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN_DIR = os.path.join(ROOT, "bazel-bin", "examples", "serving")
CLIENT = os.path.join(BIN_DIR, "multihash_serving_client")
STATIC_CLIENT = os.path.join(BIN_DIR, "multihash_serving_client_static")
IDS = mh_serving.IDS
TOL = dict(rtol=1e-6, atol=1e-6)


def _client(path):
  assert os.access(path, os.X_OK), (
      f"{path} is missing: ./configure.sh builds it "
      "(bazel build //examples/serving:all)"
  )
  return path


@pytest.fixture(scope="module")
def models(tfmh, tmp_path_factory):
  base = tmp_path_factory.mktemp("c_api")
  v1 = tf.compat.v1
  out = {}
  out["module"] = (
      str(base / "module"),
      mh_serving.export_trained_module(tfmh, str(base / "module")),
  )
  out["keras"] = (
      str(base / "keras"),
      mh_serving.export_trained_keras(tfmh, str(base / "keras")),
  )
  # A TF1 Session export (Builder), trained with a v1 optimizer.
  path = str(base / "tf1")
  with tf.Graph().as_default():
    v = tfmh.get_multihash_variable(
        "c_emb",
        [[3, 4], [5, 4]],
        operation="mul",
        initializer=v1.random_uniform_initializer(seed=3),
    )
    ids = v1.placeholder(tf.int64, [None], name="ids")
    y = tf.nn.embedding_lookup(v, ids)
    train = v1.train.AdagradOptimizer(0.3).minimize(
        tf.reduce_sum(tf.square(y - 0.5))
    )
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      for _ in range(3):
        sess.run(train, {ids: IDS})
      want = sess.run(y, {ids: IDS})
      builder = v1.saved_model.Builder(path)
      builder.add_meta_graph_and_variables(
          sess,
          ["serve"],
          signature_def_map={
              "serving_default": v1.saved_model.predict_signature_def(
                  {"ids": ids}, {"emb": y}
              )
          },
      )
      builder.save()
  out["tf1"] = (path, want)
  return out


def _run(binary, args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  # The binary finds libtensorflow_cc.so.2 by its rpath, not by this.
  env.pop("LD_LIBRARY_PATH", None)
  return subprocess.run(
      [binary] + args,
      cwd="/",
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
  )


def _parse(stdout):
  """{output key: rows} from the client's "# output KEY [shape]" blocks."""
  out, key = {}, None
  for line in stdout.splitlines():
    if line.startswith("# output "):
      key = line.split()[2]
      out[key] = []
    elif key is not None and line.strip():
      out[key].append([float(x) for x in line.split()])
  return out


@pytest.mark.parametrize(
    "which,key", [("module", "emb"), ("keras", "output_0"), ("tf1", "emb")]
)
def test_c_client_serves_python_numbers(tfmh, models, which, key):
  path, want = models[which]
  p = _run(
      _client(CLIENT),
      ["--op_library", tfmh.multihash_ops.LIBRARY_PATH, path]
      + [str(i) for i in IDS],
  )
  assert p.returncode == 0, p.stderr[-4000:]
  got = _parse(p.stdout)
  assert list(got) == [key], p.stdout
  np.testing.assert_allclose(np.array(got[key]), want, **TOL)


def test_c_client_without_op_library_names_op(models):
  p = _run(_client(CLIENT), [models["module"][0], "1", "2"])
  assert p.returncode == 1, p.stdout
  assert "MultiHashLookup" in p.stderr, p.stderr[-4000:]


def test_c_client_signature_errors(tfmh, models):
  lib = ["--op_library", tfmh.multihash_ops.LIBRARY_PATH]
  p = _run(
      _client(CLIENT), lib + ["--signature", "nope", models["keras"][0], "1"]
  )
  assert p.returncode == 2 and "serving_default" in p.stderr, p.stderr[-4000:]
  p = _run(_client(CLIENT), lib + ["--output", "nope", models["tf1"][0], "1"])
  assert p.returncode == 2 and "no output nope" in p.stderr, p.stderr[-4000:]


def test_static_client_links_ops_lib(models):
  """//:multihash_ops_lib linked into a binary registers the ops itself."""
  path, want = models["keras"]
  p = _run(
      _client(STATIC_CLIENT),
      ["--signature", "serve", path] + [str(i) for i in IDS],
  )
  assert p.returncode == 0, p.stderr[-4000:]
  np.testing.assert_allclose(
      np.array(_parse(p.stdout)["output_0"]), want, **TOL
  )
