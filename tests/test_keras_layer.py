"""The Keras 3 layer `tfmh.keras.MultiHashEmbedding` (issue #10): values
against a NumPy reference, sizing from num_ids, masking, config round trip,
.keras save/load, model.export served in a fresh process, model.fit with
sparse gradients, and the errors for bad arguments."""
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import tensorflow_multihash as tfmh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MHE = tfmh.keras.MultiHashEmbedding
# Unequal row counts (capacity 15, q = id // 5, r = id % 5) so that a
# quotient/remainder mix-up shows.
DIMS = {"add": [[3, 4], [5, 4]], "mul": [[3, 4], [5, 4]],
        "concat": [[3, 3], [5, 2]]}
IDS = np.array([[0, 14, 7], [7, 3, 10]])


def np_reference(tables, ids, operation, strategy="Q-R"):
    """float64 lookup from the contract: mixed radix (Q-R for k = 2)."""
    ids = np.asarray(ids, np.int64)
    rows = [t.shape[0] for t in tables]
    parts, divisor = [], 1
    for j in reversed(range(len(tables))):
        parts.append(np.asarray(tables[j], np.float64)[(ids // divisor) % rows[j]])
        divisor *= rows[j]
    parts.reverse()
    if operation == "add":
        return sum(parts)
    if operation == "mul":
        return np.prod(parts, axis=0)
    return np.concatenate(parts, axis=-1)


def random_layer(operation, rng, **kw):
    layer = MHE(dims=DIMS[operation], operation=operation, **kw)
    layer.build()
    layer.set_weights([rng.uniform(-1, 1, w.shape).astype(np.float32)
                       for w in layer.weights])
    return layer


@pytest.mark.parametrize("operation", ["add", "mul", "concat"])
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8])
def test_values_match_reference(operation, dtype, rng):
    layer = random_layer(operation, rng)
    out = layer(IDS.astype(dtype))
    assert out.dtype == tf.float32
    width = 5 if operation == "concat" else 4
    assert out.shape == (2, 3, width) == (*IDS.shape, layer.output_dim)
    want = np_reference([w.numpy() for w in layer.tables], IDS, operation)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-6, atol=1e-6)
    assert [w.name for w in layer.weights] == ["multhash_Q", "multhash_R"]
    assert layer.capacity == 15


def test_three_tables_and_wrap(rng):
    layer = MHE(dims=[[3, 2], [4, 2], [5, 2]], operation="add",
                complementary_strategy="generalized-Q-R", out_of_range="wrap")
    ids = np.array([0, 59, 60, 61, 127])
    out = layer(ids).numpy()
    assert [w.name for w in layer.weights] == ["multhash_0", "multhash_1", "multhash_2"]
    want = np_reference([w.numpy() for w in layer.tables], ids % 60, "add")
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)


def test_num_ids_and_output_dim_use_multihash_dims():
    layer = MHE(1000, 16)
    assert layer.operation == "mul"
    assert layer.dims == tfmh.multihash_dims(1000, 16, operation="mul")
    assert layer.output_dim == 16 and layer.capacity >= 1000
    layer = MHE(num_ids=1000, output_dim=16, num_collisions=4, operation="concat")
    assert layer.dims == tfmh.multihash_dims(1000, 16, operation="concat",
                                             num_collisions=4)
    assert layer.output_dim == 16 and layer.num_ids == 1000
    assert layer(np.array([999])).shape == (1, 16)
    # dims plus a consistent output_dim and num_ids is fine.
    assert MHE(15, 4, dims=DIMS["add"], operation="add").output_dim == 4


def test_mask_zero(rng):
    layer = random_layer("add", rng, mask_zero=True)
    ids = np.array([[3, 0, 7], [0, 0, 14]])
    np.testing.assert_array_equal(layer.compute_mask(ids).numpy(), ids != 0)
    assert random_layer("add", rng).compute_mask(ids) is None
    # A downstream layer sees the mask: the average skips the padding.
    inp = keras.Input(shape=(3,), dtype="int64")
    model = keras.Model(inp, keras.layers.GlobalAveragePooling1D()(layer(inp)))
    emb = np_reference([w.numpy() for w in layer.tables], ids, "add")
    want = [emb[0, [0, 2]].mean(0), emb[1, [2]].mean(0)]
    np.testing.assert_allclose(model(ids).numpy(), want, rtol=1e-5, atol=1e-6)


def test_config_round_trip(rng):
    layer = random_layer("concat", rng, num_ids=12, mask_zero=True,
                         embeddings_initializer=["zeros", {"class_name": "Constant",
                                                           "config": {"value": 2.0}}],
                         embeddings_regularizer=keras.regularizers.L2(1e-3),
                         out_of_range="wrap", name="emb")
    config = layer.get_config()
    assert config["dims"] == DIMS["concat"] and config["num_ids"] == 12
    json.dumps(config)  # plain JSON
    clone = MHE.from_config(config)
    assert clone.get_config() == config
    clone.build()
    assert np.all(clone.tables[0].numpy() == 0) and np.all(clone.tables[1].numpy() == 2)
    clone.set_weights(layer.get_weights())
    ids = np.array([0, 14, 15, 29])  # 15 and 29 wrap
    np.testing.assert_array_equal(clone(ids).numpy(), layer(ids).numpy())
    assert len(clone.losses) == 2  # the regularizer, once per table
    # Built from num_ids, the config stores the resolved dims.
    config = MHE(500, 8, num_collisions=3).get_config()
    assert config["dims"] == tfmh.multihash_dims(500, 8, num_collisions=3)
    assert MHE.from_config(config).dims == config["dims"]


def _model(rng, operation="mul"):
    inp = keras.Input(shape=(3,), dtype="int64", name="ids")
    emb = random_layer(operation, rng, name="mh")
    out = keras.layers.Dense(2, name="dense")(keras.layers.Flatten()(emb(inp)))
    return keras.Model(inp, out)


def test_keras_file_save_and_load(rng, tmp_path):
    model = _model(rng)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.get_layer("mh"), MHE)
    np.testing.assert_array_equal(loaded.predict(IDS, verbose=0),
                                  model.predict(IDS, verbose=0))
    for a, b in zip(loaded.get_layer("mh").weights, model.get_layer("mh").weights):
        assert a.path == b.path and np.array_equal(a.numpy(), b.numpy())


FRESH = textwrap.dedent('''\
    import json, sys
    import numpy as np
    import tensorflow as tf
    sys.path.insert(0, sys.argv[1])
    import tensorflow_multihash  # the op library; registers the layer
    import keras
    ids = np.array(json.loads(sys.argv[2]), np.int64)
    m = tf.saved_model.load(sys.argv[3])
    out = {"serve": m.serve(tf.constant(ids)).numpy().tolist(),
           "keras": keras.saving.load_model(sys.argv[4]).predict(ids, verbose=0).tolist()}
    print("RESULT " + json.dumps(out))
    ''')


def test_export_served_and_keras_file_loaded_in_fresh_process(rng, tmp_path):
    model = _model(rng, "concat")
    export_dir, keras_path = str(tmp_path / "export"), str(tmp_path / "m.keras")
    model.export(export_dir, verbose=False)
    model.save(keras_path)
    want = model.predict(IDS, verbose=0)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("PYTHONPATH", None)
    p = subprocess.run([sys.executable, "-c", FRESH, ROOT, json.dumps(IDS.tolist()),
                        export_dir, keras_path], cwd="/", env=env,
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-4000:]
    out = json.loads([x for x in p.stdout.splitlines() if x.startswith("RESULT ")][-1][7:])
    np.testing.assert_allclose(out["serve"], want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out["keras"], want, rtol=1e-6, atol=1e-6)


def test_gradients_are_indexed_slices(rng):
    layer = random_layer("mul", rng)
    ids = np.array([[0, 14], [14, 3]])
    upstream = rng.uniform(-1, 1, (2, 2, 4))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(ids) * upstream)
    grads = tape.gradient(loss, layer.trainable_weights)
    q_tab, r_tab = [w.numpy().astype(np.float64) for w in layer.tables]
    want_q, want_r = np.zeros_like(q_tab), np.zeros_like(r_tab)
    for i, u in zip(ids.ravel(), upstream.reshape(-1, 4)):
        want_q[i // 5] += u * r_tab[i % 5]
        want_r[i % 5] += u * q_tab[i // 5]
    for g, want, touched in zip(grads, (want_q, want_r), ([0, 2], [0, 3, 4])):
        assert isinstance(g, tf.IndexedSlices)
        assert sorted(g.indices.numpy().tolist()) == touched
        np.testing.assert_allclose(tf.convert_to_tensor(g).numpy(), want, rtol=1e-5,
                                   atol=1e-6)


def test_fit_decreases_loss_and_sgd_updates_only_touched_rows(rng):
    # The Dense kernel's initializer and fit's shuffling draw from Keras' own
    # generators: seed them so that every run trains the same way.
    keras.utils.set_random_seed(int(rng.integers(2**31)))
    model = _model(rng, "add")
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    layer = model.get_layer("mh")
    before = [w.numpy().copy() for w in layer.tables]
    ids = np.array([[0, 1, 2], [3, 1, 0]] * 8)  # q = 0, r in {0, 1, 2, 3}
    # One target per distinct input, so the loss can go to zero.
    y = np.tile(rng.uniform(-1, 1, (2, 2)), (8, 1)).astype(np.float32)
    hist = model.fit(ids, y, batch_size=4, epochs=5, verbose=0)
    assert hist.history["loss"][-1] < 0.8 * hist.history["loss"][0]
    after = [w.numpy() for w in layer.tables]
    changed = [np.flatnonzero(np.any(a != b, axis=1)).tolist()
               for a, b in zip(after, before)]
    assert changed == [[0], [0, 1, 2, 3]]


def test_stateless_call_and_mixed_precision(rng):
    layer = random_layer("add", rng)
    tables = [np.full(w.shape, j + 1.0, np.float32) for j, w in enumerate(layer.tables)]
    out, _ = layer.stateless_call([tf.constant(t) for t in tables], [], IDS)
    np.testing.assert_array_equal(out.numpy(), np.full((2, 3, 4), 3.0))
    half = MHE(dims=DIMS["mul"], dtype="mixed_float16")
    assert half(IDS).dtype == tf.float16
    assert all(w.dtype == "float32" for w in half.weights)


def test_out_of_range_id_is_an_error(rng):
    layer = random_layer("add", rng)
    with pytest.raises(tf.errors.InvalidArgumentError, match="15"):
        layer(np.array([3, 15]))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(), ValueError, "give either dims or both num_ids and output_dim"),
    (dict(num_ids=100), ValueError, "output_dim=None"),
    (dict(num_ids=0, output_dim=4), ValueError, "num_ids must be a positive integer, got 0"),
    (dict(num_ids=10, output_dim=2.5), ValueError, "output_dim must be a positive integer"),
    (dict(dims=DIMS["add"], num_collisions=3), ValueError, "num_collisions=3"),
    (dict(dims=DIMS["add"], output_dim=8), ValueError, "output_dim=8 does not match"),
    (dict(dims=DIMS["add"], num_ids=16), ValueError,
     "num_ids=16 exceeds the capacity 15"),
    (dict(dims=DIMS["add"], operation="max"), ValueError,
     "The operation max is not supported"),
    (dict(dims=DIMS["add"], complementary_strategy="X"), ValueError,
     "The strategy X is not supported"),
    (dict(dims=DIMS["add"], out_of_range="clip"), ValueError, "out_of_range"),
    (dict(dims=DIMS["concat"], operation="add"), ValueError, "equal widths"),
    (dict(dims=[[3, 4], [0, 4]]), ValueError, r"dims\[1\] rows"),
    (dict(dims=DIMS["add"], embeddings_initializer=["ones"]), ValueError,
     "list of 2"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        MHE(**kwargs)


def test_bad_inputs(rng):
    layer = random_layer("add", rng)
    with pytest.raises(TypeError, match="integer ids, got dtype float32"):
        layer(np.array([1.0, 2.0], np.float32))
    with pytest.raises(TypeError, match="SparseTensor"):
        layer(tf.sparse.from_dense(tf.constant([[1, 0]], tf.int64)))


def test_package_imports_without_keras():
    code = ("import sys; sys.modules['keras'] = None; sys.path.insert(0, %r)\n"
            "import tensorflow_multihash as t\n"
            "try:\n    t.keras\nexcept ImportError:\n    print('OK')\n" % ROOT)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    p = subprocess.run([sys.executable, "-c", code], cwd="/", env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "OK", p.stderr[-3000:]
