"""The second example of the Multi-Hash Variable description, as written for
DeepRec: a multi-hash categorical column, TensorFlow's own embedding_column
with a (width_Q, width_R) dimension, input_layer and Adagrad. The 4x5 output
goes 1.0 -> 0.9003111 -> 0.8297106, and the tables end at 0.7720356.
"""

import tensorflow.compat.v1 as tf
from tensorflow.python.feature_column import feature_column_v2 as fc2

import tensorflow_multihash  # noqa: F401  (adds the multi-hash column)

tf.disable_v2_behavior()

columns = fc2.categorical_column_with_multihash("col_emb", dims=(2, 2))
W = tf.feature_column.embedding_column(
    categorical_column=columns,
    dimension=(2, 3),
    initializer=tf.ones_initializer(tf.dtypes.float32),
)

ids = {}
ids["col_emb"] = tf.SparseTensor(
    indices=[[0, 0], [1, 1], [2, 2], [3, 3]],
    values=tf.cast([0, 1, 2, 3], tf.dtypes.int64),
    dense_shape=[4, 4],
)

emb = tf.feature_column.input_layer(ids, [W])
fun = tf.multiply(emb, 2.0, name="multiply")
loss1 = tf.reduce_sum(fun, name="reduce_sum")
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
  print("trainable:", [v.name for v in tf.trainable_variables()])
  print("final tables:", sess.run(tf.trainable_variables()))
