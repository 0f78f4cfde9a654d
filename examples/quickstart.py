"""Quickstart: a 4-row logical table stored as a 2x2 Q table and a 2x2 R
table, looked up through the fused op and trained with Adagrad.

Ids 0..3 map to (q, r) = (id // 2, id % 2), so every row of each small table
is used twice, each element's gradient is 4, and with Adagrad (learning rate
0.1, initial accumulator 0.1) every element goes 1.0 -> 0.9003111 ->
0.8297106 -> 0.7720356.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tensorflow_multihash as tfmh  # noqa: E402


def main():
  q_table = tf.Variable(tf.ones([2, 2]), name="var-dist/multhash_Q")
  r_table = tf.Variable(tf.ones([2, 2]), name="var-dist/multhash_R")
  ids = tf.constant([0, 1, 2, 3], dtype=tf.int64)
  opt = tf.compat.v1.train.AdagradOptimizer(0.1)

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      emb = tfmh.multihash_lookup([q_table, r_table], ids, operation="concat")
      loss = tf.reduce_sum(emb * 2.0)
    grads = tape.gradient(loss, [q_table, r_table])
    opt.apply_gradients(zip(grads, [q_table, r_table]))
    return emb

  np.set_printoptions(precision=7)
  for _ in range(3):
    print(step().numpy())
  print("final", tfmh.multihash_lookup([q_table, r_table], ids,
                                       operation="concat").numpy()[0])


if __name__ == "__main__":
  main()
