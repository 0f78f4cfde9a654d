"""TF2 eager training of a multi-hash variable: the seed example's numbers
with `tf.function`, `tf.GradientTape` and a TF1 Adagrad optimizer (which
applies the sparse gradients as sparse updates).

Ids 0..3 map to (q, r) = (id // 2, id % 2), so every row of each small table
is used twice, each element's gradient is 4, and every element goes
1.0 -> 0.9003111 -> 0.8297106 -> 0.7720356.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tensorflow_multihash as tfmh  # noqa: E402


def main():
  embedding = tfmh.get_multihash_variable(
      "var-dist",
      [[2, 2], [2, 2]],
      operation="concat",
      initializer=tf.ones_initializer(),
  )
  ids = tf.constant([0, 1, 2, 3], dtype=tf.int64)
  opt = tf.compat.v1.train.AdagradOptimizer(0.1)
  variables = embedding.trainable_variables

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      emb = tf.nn.embedding_lookup(embedding, ids)
      loss = tf.reduce_sum(emb * 2.0)
    grads = tape.gradient(loss, variables)  # tf.IndexedSlices
    opt.apply_gradients(zip(grads, variables))
    return emb

  np.set_printoptions(precision=7)
  for _ in range(3):
    print(step().numpy())
  print("final", tf.nn.embedding_lookup(embedding, ids).numpy()[0])


if __name__ == "__main__":
  main()
