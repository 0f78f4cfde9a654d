"""DeepRec users, as they run: TF1 graphs and sessions, DeepRec's argument
orders and names, and DeepRec's own mapping (q = id // rows_Q) for models
trained with DeepRec.

Every test here is TF1 graph code, so the module runs in all three modes of
TFMH_TEST_MODE (tf2, v1 = disable_v2_behavior(), graph). The references are
plain TensorFlow variables read at the rows DeepRec's own tests compute
(id // 5 and id % 3 for dims [[5, 6], [3, 6]]) or NumPy.
"""

import logging

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.ops import variables

import tensorflow_multihash as tfmh
from tensorflow_multihash import deeprec_compat
from tensorflow_multihash import variable as variable_lib

from mh_testutil import np_grads, np_lookup

pytestmark = pytest.mark.tf1

v1 = tf.compat.v1
OPERATIONS = ("concat", "add", "mul")
# DeepRec's test case: dims [[5, 6], [3, 6]], these ids, Adagrad 0.1.
DEEPREC_DIMS = [[5, 6], [3, 6]]
DEEPREC_IDS = [0, 1, 2, 4, 6, 7]


@pytest.fixture(autouse=True)
def _fresh_process_state(monkeypatch):
  """Each test starts as a new process would: no mapping chosen, no
  warning given."""
  monkeypatch.setattr(variable_lib, "_deeprec_mapping_default", None)
  monkeypatch.setattr(deeprec_compat, "_warned_rows_differ", False)


def _combine(a, b, operation):
  if operation == "concat":
    return tf.concat([a, b], axis=1)
  return a + b if operation == "add" else a * b


def _train_once(loss):
  opt = v1.train.AdagradOptimizer(0.1)
  return opt.apply_gradients(opt.compute_gradients(loss))


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("how", ["keyword", "process"])
def test_deeprec_multihash_function_case(operation, how):
  """DeepRec's testEmbeddingVariableForMultiHashFunction, in our code:
  two plain partitioned tables read at id // 5 and id % 3 against the
  multi-hash variable with DeepRec's mapping, one Adagrad step each, then
  the embeddings must be equal."""
  part = v1.fixed_size_partitioner(num_shards=2)
  with tf.Graph().as_default():
    var1 = v1.get_variable(
        "var_1",
        shape=[5, 6],
        initializer=v1.ones_initializer(),
        partitioner=part,
    )
    var2 = v1.get_variable(
        "var_2",
        shape=[3, 6],
        initializer=v1.ones_initializer(),
        partitioner=part,
    )
    ids_q = tf.constant([i // 5 for i in DEEPREC_IDS], tf.int64)
    ids_r = tf.constant([i % 3 for i in DEEPREC_IDS], tf.int64)
    emb = _combine(
        v1.nn.embedding_lookup(var1, ids_q),
        v1.nn.embedding_lookup(var2, ids_r),
        operation,
    )
    train = _train_once(tf.reduce_sum(emb * 2.0))

    if how == "process":
      tfmh.set_deeprec_mapping(True)
      kwargs = {}
    else:
      kwargs = {"deeprec_mapping": True}
    var_multi = v1.get_multihash_variable(
        "var_multi",
        DEEPREC_DIMS,
        complementary_strategy="Q-R",
        operation=operation,
        initializer=v1.ones_initializer,
        partitioner=part,
        **kwargs,
    )
    assert var_multi.deeprec_mapping
    assert var_multi.capacity == 25
    ids = tf.constant(DEEPREC_IDS, tf.int64)
    emb_multi = v1.nn.embedding_lookup(var_multi, ids)
    train_multi = _train_once(tf.reduce_sum(emb_multi * 2.0))
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      sess.run([train, train_multi])
      expected, got = sess.run([emb, emb_multi])
  np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("operation", OPERATIONS)
def test_deeprec_categorical_column_case(operation):
  """DeepRec's testCategoricalColumnWithEmbeddingVariableFunction: a rank-1
  SparseTensor of the same ids through input_layer, one Adagrad step."""
  tfmh.set_deeprec_mapping(True)
  part = v1.fixed_size_partitioner(num_shards=2)
  with tf.Graph().as_default():
    var1 = v1.get_variable(
        "var_1",
        shape=[5, 6],
        initializer=v1.ones_initializer(),
        partitioner=part,
    )
    var2 = v1.get_variable(
        "var_2",
        shape=[3, 6],
        initializer=v1.ones_initializer(),
        partitioner=part,
    )
    emb = _combine(
        v1.nn.embedding_lookup(
            var1, tf.constant([i // 5 for i in DEEPREC_IDS], tf.int64)
        ),
        v1.nn.embedding_lookup(
            var2, tf.constant([i % 3 for i in DEEPREC_IDS], tf.int64)
        ),
        operation,
    )
    train = _train_once(tf.reduce_sum(emb * 2.0))

    column = v1.feature_column.categorical_column_with_multihash(
        key="col_emb",
        dims=(5, 3),
        complementary_strategy="Q-R",
        operation=operation,
    )
    assert column.deeprec_mapping and column.num_buckets == 25
    w = v1.feature_column.embedding_column(
        categorical_column=column,
        dimension=(6, 6),
        initializer=v1.ones_initializer,
    )
    features = {
        "col_emb": tf.SparseTensor(
            indices=[[i] for i in range(6)],
            values=tf.constant(DEEPREC_IDS, tf.int64),
            dense_shape=[6],
        )
    }
    emb_multi = v1.feature_column.input_layer(features, [w])
    train_multi = _train_once(tf.reduce_sum(emb_multi * 2.0))
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      sess.run([train, train_multi])
      expected, got = sess.run([emb, emb_multi])
  np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("rows", [(5, 3), (3, 5), (4, 4)])
def test_deeprec_mapping_random_tables_two_steps(rng, operation, rows):
  """Random tables, ids covering the whole range [0, rows_Q**2): the
  lookup and two Adagrad steps match NumPy with q = id // rows_Q."""
  widths = (3, 2) if operation == "concat" else (4, 4)
  arrays = [
      rng.standard_normal((r, w)).astype(np.float32)
      for r, w in zip(rows, widths)
  ]
  cap = rows[0] * rows[0]
  ids = np.concatenate(
      [np.arange(cap), rng.integers(0, cap, 18 - cap % 2)]
  ).reshape(-1, 2)
  upstream = rng.standard_normal(
      ids.shape + (sum(widths) if operation == "concat" else widths[0],)
  )
  with tf.Graph().as_default():
    v = tfmh.get_multihash_variable(
        "mh",
        [[r, w] for r, w in zip(rows, widths)],
        operation=operation,
        initializer=None,
        deeprec_mapping=True,
    )
    assign = [t.assign(a) for t, a in zip(v.tables, arrays)]
    emb = tf.nn.embedding_lookup(v, tf.constant(ids, tf.int64))
    loss = tf.reduce_sum(emb * tf.constant(upstream, tf.float32))
    opt = v1.train.AdagradOptimizer(0.1)
    train = opt.minimize(loss)
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      sess.run(assign)
      np.testing.assert_allclose(
          sess.run(emb),
          np_lookup(arrays, ids, rows, "deeprec", operation),
          rtol=1e-6,
          atol=1e-6,
      )
      tables = [a.astype(np.float64) for a in arrays]
      accum = [np.full(a.shape, 0.1) for a in arrays]
      for _ in range(2):
        sess.run(train)
        grads = np_grads(tables, ids, rows, "deeprec", operation, upstream)
        for j in range(2):
          accum[j] += grads[j] ** 2
          tables[j] = tables[j] - 0.1 * grads[j] / np.sqrt(accum[j])
      got = sess.run(v.tables)
  for g, t in zip(got, tables):
    np.testing.assert_allclose(g, t, rtol=1e-5, atol=1e-5)


def test_deeprec_mapping_collides_as_deeprec():
  """rows_Q = 3, rows_R = 2: DeepRec maps ids 0 and 2 to the same rows
  (0, 0); the default mapping gives them (0, 0) and (1, 0)."""
  with tf.Graph().as_default():
    dr = tfmh.get_multihash_variable(
        "dr",
        [[3, 2], [2, 2]],
        operation="concat",
        initializer=None,
        deeprec_mapping=True,
    )
    qr = tfmh.get_multihash_variable(
        "qr", [[3, 2], [2, 2]], operation="concat", initializer=None
    )
    q = np.arange(6, dtype=np.float32).reshape(3, 2)
    r = 10 + np.arange(4, dtype=np.float32).reshape(2, 2)
    assign = [t.assign(a) for v in (dr, qr) for t, a in zip(v.tables, (q, r))]
    ids = tf.constant([0, 2], tf.int64)
    out = [tf.nn.embedding_lookup(dr, ids), tf.nn.embedding_lookup(qr, ids)]
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      sess.run(assign)
      got_dr, got_qr = sess.run(out)
  np.testing.assert_array_equal(got_dr[0], got_dr[1])
  np.testing.assert_array_equal(got_dr[0], [0, 1, 10, 11])
  np.testing.assert_array_equal(got_qr, [[0, 1, 10, 11], [2, 3, 10, 11]])


@pytest.mark.parametrize("id_value, ok", [(24, True), (25, False), (-1, False)])
def test_deeprec_mapping_valid_range(id_value, ok):
  """Valid ids are [0, rows_Q * rows_Q); the error names that range."""
  with tf.Graph().as_default():
    v = tfmh.get_multihash_variable(
        "mh", [[5, 2], [3, 2]], initializer=None, deeprec_mapping=True
    )
    out = tf.nn.embedding_lookup(v, tf.constant([id_value], tf.int64))
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      if ok:
        assert sess.run(out).shape == (1, 2)
      else:
        with pytest.raises(
            tf.errors.InvalidArgumentError, match=r"\[0, 25\).*DeepRec"
        ):
          sess.run(out)


def test_deeprec_mapping_wraps_into_its_capacity():
  with tf.Graph().as_default():
    v = tfmh.get_multihash_variable(
        "mh",
        [[5, 2], [3, 2]],
        initializer=None,
        deeprec_mapping=True,
        out_of_range="wrap",
    )
    out = tf.nn.embedding_lookup(v, tf.constant([27, 2], tf.int64))
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      a, b = sess.run(out)
  np.testing.assert_array_equal(a, b)  # 27 % 25 == 2


def test_deeprec_mapping_only_for_two_table_qr():
  with tf.Graph().as_default():
    with pytest.raises(ValueError, match="deeprec_mapping"):
      tfmh.get_multihash_variable(
          "a",
          [[2, 1], [3, 1], [5, 1]],
          num_of_partitions=3,
          complementary_strategy="CRT",
          deeprec_mapping=True,
      )
    with pytest.raises(ValueError, match="deeprec_mapping"):
      tfmh.categorical_column_with_multihash(
          "c", (2, 3), complementary_strategy="CRT", deeprec_mapping=True
      )
    with pytest.raises(ValueError, match="deeprec_mapping"):
      tfmh.get_multihash_variable("b", [[2, 1], [3, 1]], deeprec_mapping="yes")
  with pytest.raises(ValueError, match="True or False"):
    tfmh.set_deeprec_mapping(1)


def test_process_mapping_leaves_other_strategies_alone():
  tfmh.set_deeprec_mapping(True)
  with tf.Graph().as_default():
    crt = tfmh.get_multihash_variable(
        "a", [[2, 1], [3, 1]], complementary_strategy="CRT"
    )
    qr = tfmh.get_multihash_variable("b", [[2, 1], [3, 1]])
    explicit = tfmh.get_multihash_variable(
        "c", [[2, 1], [3, 1]], deeprec_mapping=False
    )
  assert not crt.deeprec_mapping and crt.capacity == 6
  assert qr.deeprec_mapping and qr.capacity == 4
  assert not explicit.deeprec_mapping


def test_deeprec_mapping_saved_model_keeps_it(tmp_path):
  """The mapping is an attribute of the op: a SavedModel served in a
  fresh graph computes DeepRec's rows without any Python setting."""
  export = str(tmp_path / "sm")
  q = np.arange(6, dtype=np.float32).reshape(3, 2)
  r = 10 + np.arange(4, dtype=np.float32).reshape(2, 2)
  with tf.Graph().as_default():
    v = tfmh.get_multihash_variable(
        "mh",
        [[3, 2], [2, 2]],
        operation="add",
        initializer=None,
        deeprec_mapping=True,
        use_resource=True,
    )
    ids = v1.placeholder(tf.int64, [None], name="ids")
    out = tf.nn.embedding_lookup(v, ids)
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      sess.run([t.assign(a) for t, a in zip(v.tables, (q, r))])
      builder = v1.saved_model.Builder(export)
      sig = v1.saved_model.predict_signature_def({"ids": ids}, {"emb": out})
      builder.add_meta_graph_and_variables(
          sess, ["serve"], signature_def_map={"serving_default": sig}
      )
      builder.save()
  with tf.Graph().as_default():
    with v1.Session() as sess:
      meta = v1.saved_model.loader.load(sess, ["serve"], export)
      sig = meta.signature_def["serving_default"]
      got = sess.run(
          sig.outputs["emb"].name,
          {sig.inputs["ids"].name: np.array([0, 2, 5, 8])},
      )
  expected = np_lookup([q, r], [0, 2, 5, 8], (3, 2), "deeprec", "add")
  np.testing.assert_array_equal(got, expected)


@pytest.mark.slow
def test_tf1_saved_model_served_in_fresh_v1_process(tmp_path):
  """A TF1-builder SavedModel (reference variables, mul, partitioned)
  loads and serves in a new disable_v2_behavior() process that imports
  the package, with the same numbers."""
  import json
  import os
  import subprocess
  import sys

  export = str(tmp_path / "sm")
  ids = [[0, 7], [11, 3]]
  with tf.Graph().as_default():
    v = tfmh.get_multihash_variable(
        "mh",
        [[4, 3], [3, 3]],
        operation="mul",
        use_resource=False,
        partitioner=v1.fixed_size_partitioner(2),
    )
    ph = v1.placeholder(tf.int64, [None, None], name="ids")
    out = tf.nn.embedding_lookup(v, ph)
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      expected = sess.run(out, {ph: ids})
      builder = v1.saved_model.Builder(export)
      sig = v1.saved_model.predict_signature_def({"ids": ph}, {"emb": out})
      builder.add_meta_graph_and_variables(
          sess, ["serve"], signature_def_map={"serving_default": sig}
      )
      builder.save()
  script = (
      "import json, sys\n"
      "import tensorflow.compat.v1 as tf\n"
      "tf.disable_v2_behavior()\n"
      "import tensorflow_multihash\n"
      "with tf.Session() as sess:\n"
      "    meta = tf.saved_model.loader.load(sess, ['serve'], sys.argv[1])\n"
      "    sig = meta.signature_def['serving_default']\n"
      "    out = sess.run(sig.outputs['emb'].name,\n"
      "                   {sig.inputs['ids'].name: json.loads(sys.argv[2])})\n"
      "print('RESULT', json.dumps(out.tolist()))\n"
  )
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root, CUDA_VISIBLE_DEVICES="")
  proc = subprocess.run(
      [sys.executable, "-c", script, export, json.dumps(ids)],
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
  np.testing.assert_array_equal(
      np.array(json.loads(line[7:]), np.float32), expected
  )


# ---------------------------------------------------------------- warnings
class _Records(logging.Handler):

  def __init__(self):
    super().__init__()
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


@pytest.fixture
def tf_log():
  handler = _Records()
  logger = tf.get_logger()
  logger.addHandler(handler)
  yield handler.messages
  logger.removeHandler(handler)


def _warnings(messages):
  return [m for m in messages if "set_deeprec_mapping(True)" in m]


def test_deeprec_entry_point_warns_once_when_rows_differ(tf_log):
  with tf.Graph().as_default():
    tf.compat.v1.get_multihash_variable("a", [[4, 3], [5, 3]])
    tf.compat.v1.get_multihash_variable("b", [[4, 3], [5, 3]])
  found = _warnings(tf_log)
  assert len(found) == 1, tf_log
  assert "(x // 5, x % 5)" in found[0] and "(x // 4, x % 5)" in found[0]


@pytest.mark.parametrize(
    "case", ["tfmh_entry", "equal_rows", "chosen", "keyword", "crt"]
)
def test_no_warning(tf_log, case):
  with tf.Graph().as_default():
    if case == "tfmh_entry":
      tfmh.get_multihash_variable("a", [[4, 3], [5, 3]])
    elif case == "equal_rows":
      tf.compat.v1.get_multihash_variable("a", [[4, 3], [4, 3]])
    elif case == "chosen":
      tfmh.set_deeprec_mapping(False)
      tf.compat.v1.get_multihash_variable("a", [[4, 3], [5, 3]])
    elif case == "keyword":
      tf.compat.v1.get_multihash_variable(
          "a", [[4, 3], [5, 3]], deeprec_mapping=False
      )
    else:
      tf.compat.v1.get_multihash_variable(
          "a", [[4, 3], [5, 3]], complementary_strategy="CRT"
      )
  assert not _warnings(tf_log)


# ------------------------------------------------------- signatures, names
def test_deeprec_source_argument_order():
  """DeepRec's source has no num_of_partitions: a string in third place
  means (name, dims, complementary_strategy, operation, dtype,
  initializer, ...)."""
  with tf.Graph().as_default():
    v = tf.compat.v1.get_multihash_variable(
        "w", [[2, 2], [2, 3]], "Q-R", "concat", tf.float64, v1.ones_initializer
    )
    assert (v.operation, v.complementary_strategy, v.num_of_partitions) == (
        "concat",
        "Q-R",
        2,
    )
    assert v.dtype == tf.float64
    out = tf.nn.embedding_lookup(v, [3])
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      np.testing.assert_array_equal(sess.run(out), np.ones((1, 5)))


def test_seed_argument_order():
  with tf.Graph().as_default():
    v = tfmh.get_multihash_variable("w", [[2, 2], [2, 2]], 2, "Q-R", "mult")
  assert (v.num_of_partitions, v.complementary_strategy, v.operation) == (
      2,
      "Q-R",
      "mul",
  )


def test_argument_given_twice_is_a_type_error():
  with tf.Graph().as_default():
    with pytest.raises(TypeError, match="operation"):
      tfmh.get_multihash_variable(
          "w", [[2, 2], [2, 2]], "Q-R", "add", operation="mul"
      )
    with pytest.raises(TypeError, match="positional"):
      tfmh.get_multihash_variable(
          *(["w", [[2, 2], [2, 2]], "Q-R"] + [None] * 30)
      )


def test_deeprec_names_installed():
  from tensorflow.python.ops import variable_scope

  assert variable_scope.get_multihash_variable is tf.get_multihash_variable
  assert tf.compat.v1.get_multihash_variable is tf.get_multihash_variable
  with tf.Graph().as_default():
    v = variable_scope.get_multihash_variable(
        "w", [[3, 2], [4, 2]], operation="mul"
    )
  cfg = v.mhvconfig
  assert (cfg.size, cfg.strategy, cfg.operation, cfg.num_of_partitions) == (
      [[3, 2], [4, 2]],
      "Q-R",
      "mul",
      2,
  )
  assert v.val_list == v.tables


# ---------------------------------------- the TF1 process users run: matrix
PARTITIONERS = {
    "none": None,
    "fixed": lambda: v1.fixed_size_partitioner(3),
    "min_max": lambda: v1.min_max_variable_partitioner(
        max_partitions=2, min_slice_size=8
    ),
}
LOOKUPS = ("dense", "sparse", "safe_sparse")


def _bag_setup(rng, cap):
  """Bags of ids (rows of a [4, 3] SparseTensor, one empty row) and weights,
  with a negative weight and a zero weight (counted under "sum")."""
  indices = np.array([[0, 0], [0, 2], [1, 0], [1, 1], [1, 2], [3, 1]], np.int64)
  values = rng.integers(0, cap, len(indices))
  weights = np.array([1.5, -0.5, 2.0, 0.0, 1.0, 0.25], np.float32)
  return indices, values, weights


def _np_pool(emb, indices, weights, batch):
  out = np.zeros((batch, emb.shape[-1]))
  for (b, _), e, w in zip(indices, emb, weights):
    out[b] += w * e
  return out


@pytest.mark.parametrize("lookup", LOOKUPS)
@pytest.mark.parametrize("pname", list(PARTITIONERS))
@pytest.mark.parametrize("use_resource", [False, True])
@pytest.mark.parametrize("operation", OPERATIONS)
def test_tf1_matrix_matches_numpy(
    rng, tmp_path, operation, use_resource, pname, lookup
):
  """add/mul/concat x ref/resource x partitioners x dense/sparse/safe-sparse:
  the lookup, two Adagrad steps and a Saver round trip into a new graph
  match NumPy."""
  rows, widths = (6, 5), ((3, 2) if operation == "concat" else (4, 4))
  cap = rows[0] * rows[1]
  width = sum(widths) if operation == "concat" else widths[0]
  arrays = [
      rng.uniform(0.5, 1.5, (r, w)).astype(np.float32)
      for r, w in zip(rows, widths)
  ]
  if lookup == "dense":
    ids = rng.integers(0, cap, (3, 4))
    upstream = rng.standard_normal((3, 4, width))
    per_id_up, flat_ids = upstream.reshape(-1, width), ids.reshape(-1)
  else:
    indices, values, weights = _bag_setup(rng, cap)
    upstream = rng.standard_normal((4, width))
    # safe lookup with "sum": every weight counts, zero and negative too.
    per_id_up = np.stack(
        [w * upstream[b] for (b, _), w in zip(indices, weights)]
    )
    flat_ids = values
  ckpt = str(tmp_path / "model.ckpt")

  def build(name_scope_reuse=False):
    partitioner = PARTITIONERS[pname]() if PARTITIONERS[pname] else None
    v = tf.compat.v1.get_multihash_variable(
        "emb",
        [[r, w] for r, w in zip(rows, widths)],
        operation=operation,
        partitioner=partitioner,
        use_resource=use_resource,
        initializer=tf.constant_initializer(0.0) if partitioner else None,
    )
    if lookup == "dense":
      out = tf.nn.embedding_lookup(v, tf.constant(ids, tf.int64))
    else:
      sp_ids = tf.SparseTensor(indices, tf.constant(values, tf.int64), [4, 3])
      sp_w = tf.SparseTensor(indices, tf.constant(weights), [4, 3])
      if lookup == "sparse":
        out = v1.nn.embedding_lookup_sparse(v, sp_ids, sp_w, combiner="sum")
      else:
        out = tf.nn.safe_embedding_lookup_sparse(
            v, sp_ids, sp_w, combiner="sum"
        )
    return v, out

  with tf.Graph().as_default():
    v, out = build()
    if pname != "none":
      assert sum(len(list(t)) for t in v.tables) > 2
    shards = [
        list(t) if isinstance(t, variables.PartitionedVariable) else [t]
        for t in v.tables
    ]
    assigns = []
    for j, table_shards in enumerate(shards):
      start = 0
      for s in table_shards:
        n = s.shape.as_list()[0]
        assigns.append(s.assign(arrays[j][start : start + n]))
        start += n
    loss = tf.reduce_sum(out * tf.constant(upstream, tf.float32))
    train = v1.train.AdagradOptimizer(0.1).minimize(loss)
    saver = v1.train.Saver()
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      sess.run(assigns)
      first = sess.run(out)
      for _ in range(2):
        sess.run(train)
      after = sess.run(out)
      saver.save(sess, ckpt)

  composed = np_lookup(arrays, flat_ids, rows, "Q-R", operation)
  if lookup == "dense":
    expected = composed.reshape(3, 4, width)
  else:
    expected = _np_pool(composed, indices, weights, 4)
  np.testing.assert_allclose(first, expected, rtol=1e-5, atol=1e-5)

  tables = [a.astype(np.float64) for a in arrays]
  accum = [np.full(a.shape, 0.1) for a in arrays]
  for _ in range(2):
    grads = np_grads(tables, flat_ids, rows, "Q-R", operation, per_id_up)
    for j in range(2):
      accum[j] += grads[j] ** 2
      tables[j] = tables[j] - 0.1 * grads[j] / np.sqrt(accum[j])
  composed = np_lookup(tables, flat_ids, rows, "Q-R", operation)
  expected = (
      composed.reshape(3, 4, width)
      if lookup == "dense"
      else _np_pool(composed, indices, weights, 4)
  )
  np.testing.assert_allclose(after, expected, rtol=1e-4, atol=1e-4)

  # Restore into a new graph (new variables) by name.
  with tf.Graph().as_default():
    _, out2 = build()
    with v1.Session() as sess:
      v1.train.Saver().restore(sess, ckpt)
      np.testing.assert_array_equal(sess.run(out2), after)


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("kind", ["plain", "weighted", "partitioned"])
def test_tf1_feature_column_matches_numpy(rng, operation, kind):
  rows, dims = (4, 3), ((3, 2) if operation == "concat" else (4, 4))
  width = sum(dims) if operation == "concat" else dims[0]
  arrays = [
      rng.uniform(0.5, 1.5, (r, w)).astype(np.float32)
      for r, w in zip(rows, dims)
  ]
  indices = np.array([[0, 0], [0, 1], [1, 0], [2, 0], [2, 1], [2, 2]], np.int64)
  values = rng.integers(0, 12, len(indices))
  weights = np.array([2.0, 0.5, 1.0, 1.0, 3.0, 0.25], np.float32)
  with tf.Graph().as_default():
    column = tf.feature_column.categorical_column_with_multihash(
        "ids",
        dims=rows,
        operation=operation,
        partition_num=2 if kind == "partitioned" else None,
    )
    if kind == "weighted":
      column = tf.feature_column.weighted_categorical_column(
          column, "w", tf.float32
      )
    emb_col = tf.feature_column.embedding_column(
        column,
        dimension=dims,
        combiner="mean",
        initializer=tf.constant_initializer(0.0),
    )
    features = {
        "ids": tf.SparseTensor(indices, tf.constant(values, tf.int64), [3, 3]),
        "w": tf.SparseTensor(indices, tf.constant(weights), [3, 3]),
    }
    out = v1.feature_column.input_layer(features, [emb_col])
    tables = [v for v in v1.global_variables() if "embedding_weights" in v.name]
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      for t in tables:
        j = 0 if "_q" in t.name else 1
        n = t.shape.as_list()[0]
        part = (
            int(t.name.split("part_")[1].split(":")[0])
            if "part_" in t.name
            else 0
        )
        sess.run(
            t.assign(
                arrays[j][part * 2 : part * 2 + n]
                if kind == "partitioned"
                else arrays[j]
            )
        )
      got = sess.run(out)
  composed = np_lookup(arrays, values, rows, "Q-R", operation)
  w = weights if kind == "weighted" else np.ones_like(weights)
  pooled = _np_pool(composed, indices, w, 3)
  denom = np.zeros(3)
  for (b, _), x in zip(indices, w):
    denom[b] += x
  np.testing.assert_allclose(got, pooled / denom[:, None], rtol=1e-5, atol=1e-5)
  assert got.shape == (3, width)
