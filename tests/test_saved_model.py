"""SavedModel export and serving in a fresh process (SPEC 5)."""
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
    mod.emb = tfmh.get_multihash_variable("sm_emb", DIMS["concat"], operation="concat",
                                          initializer=array_initializer(arrays2))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
    def serve(ids):
        return {"emb": tf.nn.embedding_lookup(mod.emb, ids)}

    mod.serve = serve
    path2 = str(base / "tf2")
    tf.saved_model.save(mod, path2, signatures={"serving_default": serve})

    arrays1 = table_arrays(rng, DIMS["mul"])
    path1 = str(base / "tf1")
    with tf.Graph().as_default():
        v = tfmh.get_multihash_variable("emb", DIMS["mul"], operation="mul",
                                        initializer=array_initializer(arrays1),
                                        use_resource=False)
        ids = v1.placeholder(tf.int64, [None], name="ids")
        y = tf.identity(tf.nn.embedding_lookup(v, ids), name="emb_out")
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(path1)
            sig = v1.saved_model.predict_signature_def({"ids": ids}, {"emb": y})
            builder.add_meta_graph_and_variables(
                sess, [v1.saved_model.tag_constants.SERVING],
                signature_def_map={"serving_default": sig})
            builder.save()
    return dict(
        tf2=path2, tf1=path1,
        want2=np_lookup(arrays2, np.array(IDS), "concat"),
        want1=np_lookup(arrays1, np.array(IDS), "mul"),
    )


def test_load_in_process(exported):
    loaded = tf.saved_model.load(exported["tf2"])
    got = loaded.signatures["serving_default"](tf.constant(IDS, tf.int64))["emb"]
    np.testing.assert_allclose(got.numpy(), exported["want2"], **TOL)
    got = loaded.serve(tf.constant(IDS, tf.int64))["emb"]
    np.testing.assert_allclose(got.numpy(), exported["want2"], **TOL)


def test_tf1_builder_load_in_process(exported):
    with tf.Graph().as_default():
        with v1.Session() as sess:
            v1.saved_model.loader.load(sess, [v1.saved_model.tag_constants.SERVING],
                                       exported["tf1"])
            got = sess.run("emb_out:0", {"ids:0": IDS})
    np.testing.assert_allclose(got, exported["want1"], **TOL)


SERVE = textwrap.dedent('''\
    import json, sys
    import tensorflow as tf
    {prelude}
    out = {{}}
    m = tf.saved_model.load(sys.argv[1])
    out["tf2"] = m.signatures["serving_default"](
        tf.constant({ids}, tf.int64))["emb"].numpy().tolist()
    with tf.Graph().as_default():
        with tf.compat.v1.Session() as sess:
            tf.compat.v1.saved_model.loader.load(sess, ["serve"], sys.argv[2])
            out["tf1"] = sess.run("emb_out:0", {{"ids:0": {ids}}}).tolist()
    print("RESULT " + json.dumps(out))
    ''')


def _run(prelude, exported):
    code = SERVE.format(prelude=prelude, ids=IDS)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, "-c", code, exported["tf2"], exported["tf1"]],
                          cwd="/", env=env, capture_output=True, text=True, timeout=120)


def _check(p, exported):
    assert p.returncode == 0, p.stderr[-4000:]
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT "):])
    np.testing.assert_allclose(out["tf2"], exported["want2"], **TOL)
    np.testing.assert_allclose(out["tf1"], exported["want1"], **TOL)


def test_fresh_process_with_package(exported):
    _check(_run("sys.path.insert(0, %r)\nimport tensorflow_multihash" % ROOT, exported),
           exported)


def test_fresh_process_with_op_library_only(tfmh, exported):
    lib = tfmh.multihash_ops.LIBRARY_PATH
    assert os.path.exists(lib)
    p = _run("tf.load_op_library(%r)" % lib, exported)
    _check(p, exported)
    assert "tensorflow_multihash" not in p.stdout


def test_fresh_process_without_library_names_op(exported):
    p = _run("", exported)
    assert p.returncode != 0, p.stdout
    assert "MultiHashLookup" in p.stderr, p.stderr[-4000:]
