"""The seed examples (SPEC 8) run as written under tf.disable_v2_behavior().

disable_v2_behavior() is process-global, so each example runs in a fresh
interpreter and the printed numbers are parsed.
"""

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytestmark = (
    pytest.mark.slow
)  # starts processes or builds: not in the fast loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = (
    "import tensorflow.compat.v1 as tf\n"
    "tf.disable_v2_behavior()\n"
    "import tensorflow_multihash\n"
)
# After each step: 1.0 -> 0.9003111 -> 0.8297106 -> 0.7720356 (Adagrad 0.1,
# initial accumulator 0.1, gradient 4 per element).
SEQUENCE = [1.0, 0.9003111, 0.8297106, 0.7720356]

# The first seed example, verbatim, except the two marked lines added after
# the three training prints (inside the session) to report the tables.
SEED_1 = textwrap.dedent(
    """\
    def main(unused_argv):
      embedding = tf.get_multihash_variable("var-dist",
                                             [[2,2],[2,2]],
                                             complementary_strategy="Q-R",
                                             operation="concat",
                                             initializer=tf.ones_initializer)
      var = tf.nn.embedding_lookup(embedding, [0,1,2,3])
      fun = tf.multiply(var, 2.0, name='multiply')
      loss1 = tf.reduce_sum(fun, name='reduce_sum')
      opt = tf.train.AdagradOptimizer(0.1)
      g_v = opt.compute_gradients(loss1)
      train_op = opt.apply_gradients(g_v)
      init = tf.global_variables_initializer()

      with tf.Session() as sess:
           sess.run([init])
           print(sess.run([var, train_op]))
           print(sess.run([var, train_op]))
           print(sess.run([var, train_op]))
           print("NAMES", [v.name for v in tf.trainable_variables()])  # added
           print("TABLES", [x.tolist() for x in sess.run(tf.trainable_variables())])  # added

    if __name__=="__main__":
      tf.app.run()
    """
)

SEED_2 = textwrap.dedent(
    """\
    from tensorflow.python.framework import ops
    from tensorflow.python.feature_column import feature_column_v2 as fc2

    columns = fc2.categorical_column_with_multihash("col_emb", dims = (2,2))
    W = tf.feature_column.embedding_column(categorical_column=columns,
                dimension=(2,3),
                initializer=tf.ones_initializer(tf.dtypes.float32))

    ids={}
    ids["col_emb"] = tf.SparseTensor(indices=[[0,0],[1,1],[2,2],[3,3]], values=tf.cast([0,1,2,3], tf.dtypes.int64), dense_shape=[4, 4])

    emb = tf.feature_column.input_layer(ids, [W])
    fun = tf.multiply(emb, 2.0, name='multiply')
    loss1 = tf.reduce_sum(fun, name='reduce_sum')
    opt = tf.train.AdagradOptimizer(0.1)
    g_v = opt.compute_gradients(loss1)
    train_op = opt.apply_gradients(g_v)
    init = tf.global_variables_initializer()

    with tf.Session() as sess:
        sess.run(init)
        print("init global done")
        print(sess.run([emb, train_op]))
        print(sess.run([emb, train_op]))
        print(sess.run([emb, train_op]))
        print("NAMES", [v.name for v in tf.trainable_variables()])  # added
    """
)

FLOAT = r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?"


def _run(code_or_path, timeout=120):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  args = (
      [sys.executable, code_or_path]
      if code_or_path.endswith(".py")
      else [sys.executable, "-c", code_or_path]
  )
  p = subprocess.run(
      args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
  )
  assert (
      p.returncode == 0
  ), f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr[-4000:]}"
  return p.stdout


def _step_arrays(stdout):
  """The `var` arrays of the `print(sess.run([var, train_op]))` lines."""
  blocks = re.findall(r"\[array\((.*?)dtype=float32\), None\]", stdout, re.S)
  return [np.array([float(x) for x in re.findall(FLOAT, b)]) for b in blocks]


def _check_steps(stdout, n_values):
  arrays = _step_arrays(stdout)
  assert len(arrays) == 3, stdout
  for step, a in enumerate(arrays):
    assert a.size == n_values, (step, a)
    np.testing.assert_allclose(
        a, SEQUENCE[step], rtol=0, atol=5e-7, err_msg=f"step {step}\n{stdout}"
    )


def _line(stdout, tag):
  for line in stdout.splitlines():
    if line.startswith(tag + " "):
      return eval(line[len(tag) + 1 :])  # noqa: S307 (our own print)
  raise AssertionError(f"no {tag} line in:\n{stdout}")


def test_seed_example_1_as_written():
  out = _run(HEADER + SEED_1)
  _check_steps(out, 16)  # 4x4 output
  assert sorted(_line(out, "NAMES")) == [
      "var-dist/multhash_Q:0",
      "var-dist/multhash_R:0",
  ]
  tables = _line(out, "TABLES")
  assert len(tables) == 2
  for t in tables:
    t = np.array(t)
    assert t.shape == (2, 2)
    np.testing.assert_allclose(t, SEQUENCE[3], rtol=0, atol=5e-7)


def test_seed_example_2_feature_column():
  import tensorflow_multihash as tfmh

  if not hasattr(tfmh, "categorical_column_with_multihash"):
    pytest.skip(
        "categorical_column_with_multihash (SPEC 6) not implemented yet"
    )
  out = _run(HEADER + SEED_2)
  assert "init global done" in out
  _check_steps(out, 20)  # 4x5 output
  names = _line(out, "NAMES")
  assert len(names) == 2
  assert any("embedding_weights_q" in n for n in names), names
  assert any("embedding_weights_r" in n for n in names), names


def test_examples_seed_variable_file():
  path = os.path.join(ROOT, "examples", "seed_variable.py")
  assert os.path.exists(path), "examples/seed_variable.py is missing"
  out = _run(path)
  _check_steps(out, 16)
  assert "var-dist/multhash_Q:0" in out and "var-dist/multhash_R:0" in out, out
  tail = out[out.rindex("dtype=float32), None]") :]
  finals = [float(x) for x in re.findall(r"\d\.\d{4,}", tail)]
  assert len(finals) == 8, out  # two 2x2 tables
  np.testing.assert_allclose(finals, SEQUENCE[3], rtol=0, atol=5e-7)
