"""The first example of the Multi-Hash Variable description, as written for
DeepRec: TF1 graph mode, `tf.get_multihash_variable`, `tf.nn.embedding_lookup`
and Adagrad. Each output element goes 1.0 -> 0.9003111 -> 0.8297106, and the
tables end at 0.7720356.
"""

import tensorflow.compat.v1 as tf

import tensorflow_multihash  # noqa: F401  (adds tf.get_multihash_variable)

tf.disable_v2_behavior()


def main(unused_argv):
  embedding = tf.get_multihash_variable(
      "var-dist",
      [[2, 2], [2, 2]],
      complementary_strategy="Q-R",
      operation="concat",
      initializer=tf.ones_initializer,
  )
  var = tf.nn.embedding_lookup(embedding, [0, 1, 2, 3])
  fun = tf.multiply(var, 2.0, name="multiply")
  loss1 = tf.reduce_sum(fun, name="reduce_sum")
  opt = tf.train.AdagradOptimizer(0.1)
  g_v = opt.compute_gradients(loss1)
  train_op = opt.apply_gradients(g_v)
  init = tf.global_variables_initializer()

  with tf.Session() as sess:
    sess.run([init])
    print(sess.run([var, train_op]))
    print(sess.run([var, train_op]))
    print(sess.run([var, train_op]))
    print("trainable:", [v.name for v in tf.trainable_variables()])
    print("final tables:", sess.run(embedding.tables))


if __name__ == "__main__":
  tf.app.run()
