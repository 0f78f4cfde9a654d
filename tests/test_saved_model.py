"""SavedModel export and serving in a fresh process (SPEC 5): an untrained
tf.Module (concat), a TF1 Builder export (mul), and a trained tf.Module and
a trained Keras 3 model (mh_serving.py), each loaded in this process and in
fresh ones with the package, with only tf.load_op_library, and without the
library (an error naming MultiHashLookup)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from mh_apiutil import (  # noqa: F401  (tfmh is a fixture)
    DIMS,
    array_initializer,
    np_lookup,
    table_arrays,
    tfmh,
)
import mh_serving

v1 = tf.compat.v1
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDS = [0, 14, 7, 7, 3]
TOL = dict(rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def exported(tfmh, tmp_path_factory):
  """A TF2 SavedModel (concat) and a TF1-builder SavedModel (mul)."""
  rng = np.random.default_rng(1234)
  base = tmp_path_factory.mktemp("sm")
  arrays2 = table_arrays(rng, DIMS["concat"])
  mod = tf.Module()
  mod.emb = tfmh.get_multihash_variable(
      "sm_emb",
      DIMS["concat"],
      operation="concat",
      initializer=array_initializer(arrays2),
  )

  @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
  def serve(ids):
    return {"emb": tf.nn.embedding_lookup(mod.emb, ids)}

  mod.serve = serve
  path2 = str(base / "tf2")
  tf.saved_model.save(mod, path2, signatures={"serving_default": serve})

  arrays1 = table_arrays(rng, DIMS["mul"])
  path1 = str(base / "tf1")
  with tf.Graph().as_default():
    v = tfmh.get_multihash_variable(
        "emb",
        DIMS["mul"],
        operation="mul",
        initializer=array_initializer(arrays1),
        use_resource=False,
    )
    ids = v1.placeholder(tf.int64, [None], name="ids")
    y = tf.identity(tf.nn.embedding_lookup(v, ids), name="emb_out")
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      builder = v1.saved_model.Builder(path1)
      sig = v1.saved_model.predict_signature_def({"ids": ids}, {"emb": y})
      builder.add_meta_graph_and_variables(
          sess,
          [v1.saved_model.tag_constants.SERVING],
          signature_def_map={"serving_default": sig},
      )
      builder.save()
  assert IDS == mh_serving.IDS
  trained, keras_path = str(base / "trained"), str(base / "keras")
  return dict(
      tf2=path2,
      tf1=path1,
      trained=trained,
      keras=keras_path,
      want2=np_lookup(arrays2, np.array(IDS), "concat"),
      want1=np_lookup(arrays1, np.array(IDS), "mul"),
      want_trained=mh_serving.export_trained_module(tfmh, trained),
      want_keras=mh_serving.export_trained_keras(tfmh, keras_path),
  )


def test_load_in_process(exported):
  loaded = tf.saved_model.load(exported["tf2"])
  got = loaded.signatures["serving_default"](tf.constant(IDS, tf.int64))["emb"]
  np.testing.assert_allclose(got.numpy(), exported["want2"], **TOL)
  got = loaded.serve(tf.constant(IDS, tf.int64))["emb"]
  np.testing.assert_allclose(got.numpy(), exported["want2"], **TOL)


def test_trained_module_and_keras_load_in_process(exported):
  ids = tf.constant(IDS, tf.int64)
  m = tf.saved_model.load(exported["trained"])
  np.testing.assert_allclose(
      m.signatures["serving_default"](ids)["emb"].numpy(),
      exported["want_trained"],
      **TOL,
  )
  k = tf.saved_model.load(exported["keras"])
  np.testing.assert_allclose(
      k.serve(ids).numpy(), exported["want_keras"], **TOL
  )
  np.testing.assert_allclose(
      k.signatures["serving_default"](ids=ids)["output_0"].numpy(),
      exported["want_keras"],
      **TOL,
  )


def test_tf1_builder_load_in_process(exported):
  with tf.Graph().as_default():
    with v1.Session() as sess:
      v1.saved_model.loader.load(
          sess, [v1.saved_model.tag_constants.SERVING], exported["tf1"]
      )
      got = sess.run("emb_out:0", {"ids:0": IDS})
  np.testing.assert_allclose(got, exported["want1"], **TOL)


SERVE = textwrap.dedent(
    """\
    import json, sys
    import tensorflow as tf
    {prelude}
    out = {{}}
    m = tf.saved_model.load(sys.argv[1])
    out["tf2"] = m.signatures["serving_default"](
        tf.constant({ids}, tf.int64))["emb"].numpy().tolist()
    m = tf.saved_model.load(sys.argv[3])
    out["trained"] = m.signatures["serving_default"](
        ids=tf.constant({ids}, tf.int64))["emb"].numpy().tolist()
    k = tf.saved_model.load(sys.argv[4])
    out["keras"] = k.serve(tf.constant({ids}, tf.int64)).numpy().tolist()
    with tf.Graph().as_default():
        with tf.compat.v1.Session() as sess:
            tf.compat.v1.saved_model.loader.load(sess, ["serve"], sys.argv[2])
            out["tf1"] = sess.run("emb_out:0", {{"ids:0": {ids}}}).tolist()
    print("RESULT " + json.dumps(out))
    """
)


def _run(prelude, exported):
  code = SERVE.format(prelude=prelude, ids=IDS)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  env.pop("PYTHONPATH", None)
  return subprocess.run(
      [
          sys.executable,
          "-c",
          code,
          exported["tf2"],
          exported["tf1"],
          exported["trained"],
          exported["keras"],
      ],
      cwd="/",
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
  )


def _check(p, exported):
  assert p.returncode == 0, p.stderr[-4000:]
  line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")][-1]
  out = json.loads(line[len("RESULT ") :])
  np.testing.assert_allclose(out["tf2"], exported["want2"], **TOL)
  np.testing.assert_allclose(out["tf1"], exported["want1"], **TOL)
  np.testing.assert_allclose(out["trained"], exported["want_trained"], **TOL)
  np.testing.assert_allclose(out["keras"], exported["want_keras"], **TOL)


@pytest.mark.slow
def test_fresh_process_with_package(exported):
  _check(
      _run(
          "sys.path.insert(0, %r)\nimport tensorflow_multihash" % ROOT, exported
      ),
      exported,
  )


@pytest.mark.slow
def test_fresh_process_with_op_library_only(tfmh, exported):
  lib = tfmh.multihash_ops.LIBRARY_PATH
  assert os.path.exists(lib)
  p = _run("tf.load_op_library(%r)" % lib, exported)
  _check(p, exported)
  assert "tensorflow_multihash" not in p.stdout


@pytest.mark.slow
def test_fresh_process_without_library_names_op(exported):
  p = _run("", exported)
  assert p.returncode != 0, p.stdout
  assert "MultiHashLookup" in p.stderr, p.stderr[-4000:]


@pytest.mark.slow
def test_without_library_each_export_names_op(exported):
  """Every export kind (not only the first one loaded) needs the library:
  one fresh process tries each and prints what it raised."""
  code = textwrap.dedent(
      """\
        import json, sys
        import tensorflow as tf
        out = {}
        for which, path in zip(["trained", "keras", "tf1"], sys.argv[1:]):
            try:
                if which == "tf1":
                    with tf.Graph().as_default(), tf.compat.v1.Session() as s:
                        tf.compat.v1.saved_model.loader.load(s, ["serve"], path)
                else:
                    tf.saved_model.load(path)
                out[which] = "loaded"
            except Exception as e:
                out[which] = "%s: %s" % (type(e).__name__, e)
        print("RESULT " + json.dumps(out))
        """
  )
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  env.pop("PYTHONPATH", None)
  p = subprocess.run(
      [
          sys.executable,
          "-c",
          code,
          exported["trained"],
          exported["keras"],
          exported["tf1"],
      ],
      cwd="/",
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert p.returncode == 0, p.stderr[-4000:]
  line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")][-1]
  for which, message in json.loads(line[len("RESULT ") :]).items():
    assert "MultiHashLookup" in message, (which, message)
