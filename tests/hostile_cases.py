"""The cases of tests/test_hostile_input.py, as data: each a name, the code
run in a subprocess after PRELUDE (and its group's setup), and what it must
raise (or None: it must succeed). docs/hostile_input.md lists them.
"""

import collections
import os

UNDER_ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")

Case = collections.namedtuple("Case", "name code raises match")


def ok(name, code):
  """A case that must run without an exception (its code asserts)."""
  return Case(name, code, None, None)


def raises(name, code, types, match):
  """A case that must raise one of `types` (class names, matched against
  the exception's MRO) with a message matching the regex `match`."""
  return Case(name, code, tuple(types), match)


IAE = ("InvalidArgumentError",)
VE = ("ValueError",)
IAE_OR_VE = ("InvalidArgumentError", "ValueError")

# What every group's subprocess runs before its cases.
PRELUDE = r"""
import math, os, sys, time
import numpy as np
import tensorflow as tf
import tensorflow_multihash as tfmh
from tensorflow_multihash import multihash_ops, op_library
raw = op_library.load()
v1 = tf.compat.v1

def raw_lookup(tables, ids, **attrs):
    attrs.setdefault("operation", "concat")
    attrs.setdefault("T", tf.float32)
    return raw.multi_hash_lookup(tables=tables, ids=ids, **attrs)

def raw_grad(grad, tables, ids, **attrs):
    attrs.setdefault("operation", "concat")
    attrs.setdefault("N", len(tables))
    return raw.multi_hash_lookup_grad(grad=grad, tables=tables, ids=ids, **attrs)

A = tf.reshape(tf.range(8, dtype=tf.float32), [4, 2])    # 4 rows, width 2
B = tf.reshape(tf.range(9, dtype=tf.float32), [3, 3])    # 3 rows, width 3
IDS = tf.constant([0, 5, 11], tf.int64)                   # capacity 12
GOOD = dict(table_rows=[4, 3], table_widths=[2, 3], num_shards=[1, 1])

def attrs(**changes):
    out = dict(GOOD)
    out.update(changes)
    return out
"""

# -- the Python API ---------------------------------------------------------
API = [
    # Issue 21, point 4: integer roots; num_ids past what int64 ids name.
    ok(
        "sizing_huge_num_ids_is_fast",
        r"""
t = time.time()
for n in (10**50, 2**64, 2**63 + 1):
    try:
        tfmh.multihash_dims(n, 8)
        raise AssertionError("no error for %d" % n)
    except ValueError as e:
        assert "num_ids must be at most 2**63" in str(e), e
assert time.time() - t < 5, time.time() - t
""",
    ),
    raises(
        "sizing_num_ids_2_64",
        "tfmh.multihash_dims(2**64, 8)",
        VE,
        r"num_ids must be at most 2\*\*63 .*got 18446744073709551616",
    ),
    raises(
        "sizing_capacity_past_int64",
        "tfmh.multihash_dims(2**63 - 1, 8)",
        VE,
        r"more than int64 ids can name",
    ),
    ok(
        "sizing_integral_float",
        r"""
assert tfmh.multihash_dims(1e9, 8) == tfmh.multihash_dims(10**9, 8) == [[31623, 8], [31623, 8]]
""",
    ),
    raises(
        "sizing_fractional_float",
        "tfmh.multihash_dims(1.5, 8)",
        VE,
        r"num_ids must be a positive integer .*got 1\.5",
    ),
    raises(
        "sizing_nan",
        "tfmh.multihash_dims(float('nan'), 8)",
        VE,
        r"num_ids must be a positive integer",
    ),
    raises(
        "variable_capacity_2_64",
        "tfmh.get_multihash_variable('v', dims=[[256, 1]] * 8, num_of_partitions=8, "
        "complementary_strategy='generalized-Q-R')",
        VE,
        r"more than int64 ids can name",
    ),
    # Point 2 as the Python code sees it: the widths' sum, before any table
    # is allocated.
    raises(
        "variable_concat_width_past_int32",
        "tfmh.get_multihash_variable('v', dims=[[1, 2**30], [1, 2**30]], "
        "operation='concat')",
        VE,
        r"output rows 2147483648 wide",
    ),
    raises(
        "variable_eight_bf16_concat_width",
        "tfmh.get_multihash_variable('v', dims=[[1, 2**29]] * 8, num_of_partitions=8, "
        "complementary_strategy='generalized-Q-R', operation='concat', dtype=tf.bfloat16)",
        VE,
        r"output rows 4294967296 wide",
    ),
    raises(
        "variable_operation_list",
        "tfmh.get_multihash_variable('v', dims=[[3, 2], [5, 2]], operation=['add'])",
        VE,
        r"operation .*not supported.*add",
    ),
    raises(
        "variable_int32_dtype",
        "tfmh.get_multihash_variable('v', dims=[[3, 2], [5, 2]], dtype=tf.int32)",
        VE,
        r"dtype must be a floating-point type",
    ),
    # Point 5: uint64 ids >= 2**63 wrap in unsigned arithmetic.
    ok(
        "keras_uint64_wrap",
        r"""
layer = tfmh.keras.MultiHashEmbedding(dims=[[4, 2], [3, 3]], operation="concat",
                                      out_of_range="wrap")
layer.build((None,))
layer.set_weights([A.numpy(), B.numpy()])
big = layer(tf.constant(np.array([2**64 - 1, 2**63], np.uint64))).numpy()
ref = layer(tf.constant([3, 2**63 % 12], tf.int64)).numpy()
np.testing.assert_array_equal(big, ref)
assert not np.array_equal(big[0], layer(tf.constant([11], tf.int64)).numpy()[0])
""",
    ),
    ok(
        "feature_column_uint64_wrap",
        r"""
sys.path.insert(0, os.environ["TFMH_TESTS"])
from mh_apiutil import array_initializer
cat = tfmh.categorical_column_with_multihash("ids", dims=(4, 3), out_of_range="wrap")
col = tfmh.embedding_column(cat, dimension=(2, 3), combiner="sum",
                            initializer=array_initializer([A.numpy(), B.numpy()]))
with tf.Graph().as_default():
    # (A numpy array: in graph mode tf.constant of the Python int 2**64 - 1
    # as uint64 gives 0.)
    sp = tf.SparseTensor([[0, 0], [1, 0]], np.array([2**64 - 1, 5], np.uint64), [2, 1])
    out = v1.feature_column.input_layer({"ids": sp}, [col])
    with v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        got = sess.run(out)
# (2**64 - 1) % 12 = 3: rows 3 // 3 = 1 of A and 3 % 3 = 0 of B.
a, b = A.numpy(), B.numpy()
np.testing.assert_array_equal(got[0], np.concatenate([a[1], b[0]]))
np.testing.assert_array_equal(got[1], np.concatenate([a[1], b[2]]))
""",
    ),
    # Already handled: bad ids, dtypes, shapes, handles.
    raises(
        "id_negative",
        "multihash_ops.multihash_lookup([A, B], tf.constant([0, -1]), 'concat')",
        IAE,
        r"ids\[1\] = -1 is out of range: ids must be in \[0, 12\)",
    ),
    raises(
        "id_at_capacity",
        "multihash_ops.multihash_lookup([A, B], tf.constant([12], tf.int64), 'concat')",
        IAE,
        r"ids\[0\] = 12 is out of range",
    ),
    raises(
        "id_int64_max",
        "multihash_ops.multihash_lookup([A, B], tf.constant([2**63 - 1], tf.int64), 'concat')",
        IAE,
        r"ids\[0\] = 9223372036854775807 is out of range",
    ),
    raises(
        "ids_float",
        "multihash_ops.multihash_lookup([A, B], tf.constant([1.0]), 'concat')",
        ("TypeError", "ValueError"),
        r"int32 or int64",
    ),
    raises(
        "ids_string",
        "multihash_ops.multihash_lookup([A, B], tf.constant(['1']), 'concat')",
        ("TypeError", "ValueError"),
        r"int32 or int64",
    ),
    raises(
        "table_int32",
        "multihash_ops.multihash_lookup([tf.ones([4, 2], tf.int32), "
        "tf.ones([3, 3], tf.int32)], IDS, 'concat')",
        ("TypeError", "ValueError", "InvalidArgumentError"),
        r"int32",
    ),
    raises(
        "tables_mixed_dtype",
        "multihash_ops.multihash_lookup([A, tf.cast(B, tf.float64)], "
        "IDS, 'concat')",
        ("TypeError", "ValueError"),
        r"dtype",
    ),
    raises(
        "table_rank_3",
        "multihash_ops.multihash_lookup([tf.ones([4, 2, 1]), B], IDS, 'concat')",
        IAE_OR_VE,
        r".",
    ),
    raises(
        "add_unequal_widths",
        "multihash_ops.multihash_lookup([A, B], IDS, 'add')",
        VE,
        r"width",
    ),
    raises(
        "unknown_strategy",
        "multihash_ops.multihash_lookup([A, B], IDS, 'concat', complementary_strategy='QR')",
        VE,
        r"The strategy QR is not supported",
    ),
    raises(
        "raw_resource_of_wrong_dtype",
        r"""
v = tf.Variable(tf.ones([4, 2], tf.float64))
raw_lookup([v.handle, B], IDS, **attrs())
""",
        IAE,
        r"shard 0 of table 0 has dtype double, expected float",
    ),
    raises(
        "raw_resource_never_created",
        r"""
h = tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[4, 2], shared_name="never_created_21")
raw_lookup([h, B], IDS, **attrs())
""",
        ("NotFoundError", "FailedPreconditionError"),
        r".",
    ),
    raises(
        "raw_resource_wrong_width",
        r"""
v = tf.Variable(tf.ones([4, 5]))
raw_lookup([v.handle, B], IDS, **attrs())
""",
        IAE,
        r"shard 0 of table 0 must have shape \[rows, 2\], got \[4,5\]",
    ),
]

# -- rank: ids whose output would pass TensorFlow's 254 dimensions (point 1) --
RANK = [
    raises(
        "rank254_variable_eager",
        r"""
v = tfmh.get_multihash_variable("r1", dims=[[4, 2], [3, 2]], operation="add")
tf.nn.embedding_lookup(v, tf.zeros([1] * 254, tf.int64))
""",
        IAE_OR_VE,
        r"rank 254.*at most 254 dimensions",
    ),
    raises(
        "rank254_variable_tf_function",
        r"""
v = tfmh.get_multihash_variable("r2", dims=[[4, 2], [3, 2]], operation="add")
tf.function(lambda ids: tf.nn.embedding_lookup(v, ids))(tf.zeros([1] * 254, tf.int64))
""",
        IAE_OR_VE,
        r"rank 254.*at most 254 dimensions",
    ),
    raises(
        "rank254_wrap",
        r"""
multihash_ops.multihash_lookup([A, B], tf.zeros([1] * 254, tf.int64), "concat",
                               out_of_range="wrap")
""",
        IAE_OR_VE,
        r"rank 254.*at most 254 dimensions",
    ),
    raises(
        "rank254_keras",
        r"""
layer = tfmh.keras.MultiHashEmbedding(dims=[[4, 2], [3, 3]], operation="concat")
layer(tf.zeros([1] * 254, tf.int64))
""",
        IAE_OR_VE,
        r"rank 254.*at most 254 dimensions",
    ),
    raises(
        "rank254_raw_eager",
        "raw_lookup([A, B], tf.zeros([1] * 254, tf.int32), **attrs())",
        IAE,
        r"ids have rank 254, but the output .* at most 254 dimensions",
    ),
    raises(
        "rank254_raw_grad_eager",
        "raw_grad(tf.zeros([1, 5]), [A, B], tf.zeros([1] * 254, tf.int64), **attrs())",
        IAE,
        r"ids have rank 254, but the output .* at most 254 dimensions",
    ),
    raises(
        "rank254_raw_graph",
        r"""
with tf.Graph().as_default():
    raw_lookup([A.numpy(), B.numpy()], tf.zeros([1] * 254, tf.int64), **attrs())
""",
        VE,
        r"ids have rank 254",
    ),
    ok(
        "rank253_forward",
        r"""
# The largest rank that fits: the output has 254 dimensions.
y = raw_lookup([A, B], tf.fill([1] * 252 + [2], tf.constant(7, tf.int64)), **attrs())
assert y.shape == [1] * 252 + [2, 5], y.shape
row = np.concatenate([A.numpy()[7 // 3], B.numpy()[7 % 3]])
np.testing.assert_array_equal(tf.reshape(y, [2, 5]).numpy(), [row, row])
""",
    ),
    ok(
        "rank200_forward_and_gradient",
        r"""
ids = tf.fill([1] * 199 + [2], tf.constant(7, tf.int64))
tables = [tf.Variable(A), tf.Variable(B)]
with tf.GradientTape() as tape:
    y = multihash_ops.multihash_lookup(tables, ids, "concat")
    loss = tf.reduce_sum(y)
assert y.shape == [1] * 199 + [2, 5], y.shape
row = np.concatenate([A.numpy()[7 // 3], B.numpy()[7 % 3]])
np.testing.assert_array_equal(tf.reshape(y, [2, 5]).numpy(), [row, row])
ga, gb = tape.gradient(loss, tables)
np.testing.assert_array_equal(tf.convert_to_tensor(ga).numpy()[2], [2, 2])
np.testing.assert_array_equal(tf.convert_to_tensor(gb).numpy()[1], [2, 2, 2])
""",
    ),
]

# -- attributes through the raw op, eager: the kernel checks them itself ----
RAW = [
    raises(
        "lengths_widths_longer",
        "raw_lookup([A, B], IDS, **attrs(table_widths=[2, 3, 3]))",
        IAE,
        r"one entry per table, got 2, 3 and 2 entries",
    ),
    raises(
        "lengths_shards_longer",
        "raw_lookup([A, B], IDS, **attrs(num_shards=[1, 1, 1]))",
        IAE,
        r"one entry per table, got 2, 2 and 3 entries",
    ),
    raises(
        "lengths_rows_longer",
        "raw_lookup([A, B], IDS, **attrs(table_rows=[4, 3, 2]))",
        IAE,
        r"one entry per table, got 3, 2 and 2 entries",
    ),
    raises(
        "lengths_grad",
        "raw_grad(tf.zeros([3, 5]), [A, B], IDS, **attrs(num_shards=[1, 1, 1]))",
        IAE,
        r"one entry per table, got 2, 2 and 3 entries",
    ),
    raises(
        "lengths_below_op_minimum",
        "raw_grad(tf.zeros([3, 5]), [A, B], IDS, **attrs(num_shards=[2]))",
        IAE,
        r"Length for attr 'num_shards' of 1 must be at least minimum 2",
    ),
    raises(
        "width_2_32_plus_2",
        "raw_lookup([A, B], IDS, **attrs(table_widths=[2**32 + 2, 3]))",
        IAE,
        r"table_widths\[0\] must be in \[1, 2147483647\], got 4294967298",
    ),
    raises(
        "shards_2_32_plus_1",
        "raw_lookup([A, B], IDS, **attrs(num_shards=[2**32 + 1, 1]))",
        IAE,
        r"num_shards\[0\] must be in \[1, 64\], got 4294967297",
    ),
    raises(
        "shards_sum_overflows_int64",
        "raw_lookup([A, B, tf.ones([1, 1])], IDS, complementary_strategy='generalized-Q-R', "
        "**attrs(table_rows=[4, 3, 1], table_widths=[2, 3, 1], "
        "num_shards=[2**63 - 1, 2**63 - 1, 4]))",
        IAE,
        r"num_shards\[0\] must be in \[1, 64\], got 9223372036854775807",
    ),
    raises(
        "shards_65_in_all",
        "raw_lookup([A] * 65 + [B], IDS, **attrs(num_shards=[64, 2]))",
        IAE,
        r"num_shards adds up to more than the 64 shards",
    ),
    raises(
        "shards_count_mismatch",
        "raw_lookup([A, B], IDS, **attrs(num_shards=[1, 2]))",
        IAE,
        r"num_shards adds up to 3 shards, but 2 tables were given",
    ),
    raises(
        "concat_width_sum_int32",
        "raw_lookup([A, B], IDS, **attrs(table_widths=[2**31 - 1, 2**31 - 1]))",
        IAE,
        r"concat output rows would be 4294967294 wide",
    ),
    raises(
        "concat_two_2_30_tables",
        "raw_lookup([A, B], IDS, **attrs(table_widths=[2**30, 2**30]))",
        IAE,
        r"concat output rows would be 2147483648 wide",
    ),
    raises(
        "concat_eight_2_29_bf16",
        "raw_lookup([tf.ones([1, 1], tf.bfloat16)] * 8, tf.constant([0]), operation='concat', "
        "complementary_strategy='generalized-Q-R', table_rows=[1] * 8, "
        "table_widths=[2**29] * 8, num_shards=[1] * 8, T=tf.bfloat16)",
        IAE,
        r"concat output rows would be 2147483648 wide after table 3",
    ),
    raises(
        "width_negative",
        "raw_lookup([A, B], IDS, **attrs(table_widths=[-2, 3]))",
        IAE,
        r"table_widths\[0\] must be in \[1, 2147483647\], got -2",
    ),
    raises(
        "rows_zero",
        "raw_lookup([A, B], IDS, **attrs(table_rows=[0, 3]))",
        IAE,
        r"table_rows\[0\] must be positive, got 0",
    ),
    raises(
        "rows_product_overflows",
        "raw_lookup([A, B], IDS, **attrs(table_rows=[2**62, 4]))",
        IAE,
        r"rows|overflows",
    ),
    raises(
        "rows_not_matching_shards",
        "raw_lookup([A, B], IDS, **attrs(table_rows=[5, 3]))",
        IAE,
        r"hold 4 rows in all, but the table has 5 rows",
    ),
    raises(
        "qr_three_tables",
        "raw_lookup([A, B, B], IDS, **attrs(table_rows=[4, 3, 3], table_widths=[2, 3, 3], "
        "num_shards=[1, 1, 1]))",
        IAE,
        r"Q-R strategy needs exactly 2 tables, got 3",
    ),
    raises(
        "nine_tables",
        "raw_lookup([B] * 9, IDS, operation='add', complementary_strategy='generalized-Q-R', "
        "table_rows=[3] * 9, table_widths=[3] * 9, num_shards=[1] * 9)",
        IAE,
        r"number of tables .* must be in \[2, 8\], got 9",
    ),
    raises(
        "crt_not_coprime",
        "raw_lookup([A, tf.ones([2, 3])], IDS, complementary_strategy='CRT', "
        "**attrs(table_rows=[4, 2]))",
        IAE,
        r"pairwise coprime",
    ),
    raises(
        "deeprec_with_crt",
        "raw_lookup([A, B], IDS, complementary_strategy='CRT', deeprec_mapping=True, **attrs())",
        IAE,
        r"deeprec_mapping needs complementary_strategy \"Q-R\"",
    ),
    # Point 8, eager: N smaller or larger than the shards.
    raises(
        "grad_N_smaller_eager",
        "raw_grad(tf.zeros([3, 5]), [A[:2], A[2:], B], IDS, N=2, "
        "**attrs(num_shards=[2, 1]))",
        IAE_OR_VE,
        r"N|shards",
    ),
    raises(
        "grad_N_larger_eager",
        "raw_grad(tf.zeros([3, 5]), [A, B], IDS, N=3, **attrs())",
        IAE_OR_VE,
        r"N|shards",
    ),
    raises(
        "grad_id_out_of_range",
        "raw_grad(tf.zeros([3, 5]), [A, B], tf.constant([0, 12, 3]), **attrs())",
        IAE,
        r"ids\[1\] = 12 is out of range: ids must be in \[0, 12\)",
    ),
    raises(
        "grad_wrong_shape",
        "raw_grad(tf.zeros([3, 4]), [A, B], IDS, **attrs())",
        IAE,
        r"grad must have shape \[3,5\]",
    ),
    ok(
        "deeprec_mapping_still_works",
        r"""
y = raw_lookup([A, tf.ones([4, 3])], tf.constant([13, 2], tf.int64), deeprec_mapping=True,
               **attrs(table_rows=[4, 4]))
np.testing.assert_array_equal(y.numpy()[0], [6, 7, 1, 1, 1])   # 13 // 4 = 3
""",
    ),
]

# -- graph mode: shape functions return errors, and the graph stays usable --
GRAPH = [
    raises(
        "graph_shards_overflow",
        r"""
with tf.Graph().as_default():
    raw_lookup([A.numpy(), B.numpy(), np.ones([1, 1], np.float32)], [0],
               complementary_strategy="generalized-Q-R",
               **attrs(table_rows=[4, 3, 1], table_widths=[2, 3, 1],
                       num_shards=[2**63 - 1, 2**63 - 1, 4]))
""",
        VE,
        r"num_shards\[0\] must be in \[1, 64\]",
    ),
    raises(
        "graph_lengths_differ",
        r"""
with tf.Graph().as_default():
    raw_lookup([A.numpy(), B.numpy()], [0], **attrs(table_widths=[2, 3, 3]))
""",
        VE,
        r"one entry per table",
    ),
    raises(
        "graph_width_narrowing",
        r"""
with tf.Graph().as_default():
    raw_lookup([A.numpy(), B.numpy()], [0], **attrs(table_widths=[2, 2**32 + 3]))
""",
        VE,
        r"table_widths\[1\] must be in \[1, 2147483647\], got 4294967299",
    ),
    # Point 8: N below the shard count. The error comes back as a status; the
    # graph's lock is released, so the next op and the session work.
    ok(
        "graph_N_smaller_then_graph_still_works",
        r"""
g = tf.Graph()
with g.as_default():
    try:
        raw_grad(np.zeros([3, 5], np.float32), [A.numpy()[:2], A.numpy()[2:], B.numpy()],
                 tf.constant([0, 5, 11], tf.int64), N=2, **attrs(num_shards=[2, 1]))
        raise AssertionError("no error")
    except ValueError as e:
        assert "N must equal the number of shards, 3" in str(e), e
    y = raw_lookup([A.numpy(), B.numpy()], tf.constant([5], tf.int64), **attrs())
    with v1.Session() as sess:
        got = sess.run(y)
np.testing.assert_array_equal(got[0], np.concatenate([A.numpy()[1], B.numpy()[2]]))
""",
    ),
    raises(
        "tf_function_N_smaller",
        r"""
@tf.function
def f(ids):
    return raw_grad(tf.zeros([3, 5]), [A[:2], A[2:], B], ids, N=2, **attrs(num_shards=[2, 1]))
f(IDS)
""",
        VE,
        r"N must equal the number of shards, 3",
    ),
    ok(
        "tf_function_after_error_still_works",
        r"""
@tf.function
def bad(ids):
    return raw_grad(tf.zeros([3, 5]), [A[:2], A[2:], B], ids, N=2, **attrs(num_shards=[2, 1]))
try:
    bad(IDS)
except ValueError:
    pass
@tf.function
def good(ids):
    return raw_lookup([A, B], ids, **attrs())
np.testing.assert_array_equal(good(tf.constant([5], tf.int64)).numpy()[0],
                              np.concatenate([A.numpy()[1], B.numpy()[2]]))
""",
    ),
    raises(
        "graph_N_below_op_minimum",
        r"""
g = tf.Graph()
with g.as_default():
    raw_grad(np.zeros([3, 5], np.float32), [A.numpy()[:2], A.numpy()[2:], B.numpy()],
             tf.constant([0], tf.int64), N=1, **attrs(num_shards=[2, 1]))
""",
        VE,
        r"Attr 'N' of 'MultiHashLookupGrad' Op passed 1 less than minimum 2",
    ),
]

# -- tampered SavedModels: attribute values edited in saved_model.pb -------
SAVED_MODEL_SETUP = r'''
import shutil, tempfile
from tensorflow.core.protobuf import saved_model_pb2

class M(tf.Module):
    def __init__(self):
        self.a = tf.Variable(A)
        self.b = tf.Variable(B)
    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
    def lookup(self, ids):
        return multihash_ops.multihash_lookup([self.a, self.b], ids, "concat")

BASE = tempfile.mkdtemp()
tf.saved_model.save(M(), BASE)
CALL = tf.constant([0, 5, 11], tf.int64)
REF = np.stack([np.concatenate([A.numpy()[i // 3], B.numpy()[i % 3]]) for i in (0, 5, 11)])

def tampered(edit):
    """A copy of the SavedModel with edit(node_def) applied to every
    MultiHashLookup node; returns the directory."""
    d = tempfile.mkdtemp()
    shutil.rmtree(d)
    shutil.copytree(BASE, d)
    path = os.path.join(d, "saved_model.pb")
    sm = saved_model_pb2.SavedModel()
    with open(path, "rb") as f:
        sm.ParseFromString(f.read())
    n = 0
    for mg in sm.meta_graphs:
        for node in mg.graph_def.node:
            if node.op == "MultiHashLookup":
                edit(node); n += 1
        for fn in mg.graph_def.library.function:
            for node in fn.node_def:
                if node.op == "MultiHashLookup":
                    edit(node); n += 1
    assert n > 0, "no MultiHashLookup node in the SavedModel"
    with open(path, "wb") as f:
        f.write(sm.SerializeToString())
    return d

def load_and_call(edit):
    m = tf.saved_model.load(tampered(edit))
    return m.lookup(CALL).numpy()

def set_list(name, values):
    def edit(node):
        del node.attr[name].list.i[:]
        node.attr[name].list.i.extend(values)
    return edit
'''

SAVED = [
    ok(
        "saved_model_untampered",
        r"""
m = tf.saved_model.load(BASE)
np.testing.assert_array_equal(m.lookup(CALL).numpy(), REF)
""",
    ),
    ok(
        "saved_model_roundtrip_through_editor",
        "np.testing.assert_array_equal(load_and_call(lambda node: None), REF)",
    ),
    raises(
        "saved_model_shards_sum_overflow",
        r"""
def edit(node):
    node.attr["complementary_strategy"].s = b"generalized-Q-R"
    set_list("num_shards", [2**63 - 1, 2**63 - 1, 4])(node)
    set_list("table_rows", [4, 3, 1])(node)
    set_list("table_widths", [2, 3, 1])(node)
load_and_call(edit)
""",
        IAE_OR_VE,
        r"num_shards\[0\] must be in \[1, 64\], got 9223372036854775807",
    ),
    raises(
        "saved_model_width_2_32_plus_2",
        "load_and_call(set_list('table_widths', [2**32 + 2, 2**32 + 3]))",
        IAE_OR_VE,
        r"table_widths\[0\] must be in \[1, 2147483647\], got 4294967298",
    ),
    raises(
        "saved_model_shards_2_32_plus_1",
        "load_and_call(set_list('num_shards', [2**32 + 1, 2**32 + 1]))",
        IAE_OR_VE,
        r"num_shards\[0\] must be in \[1, 64\], got 4294967297",
    ),
    raises(
        "saved_model_lengths_differ",
        "load_and_call(set_list('table_rows', [4, 3, 7]))",
        IAE_OR_VE,
        r"one entry per table, got 3, 2 and 2 entries",
    ),
    raises(
        "saved_model_concat_width_sum",
        "load_and_call(set_list('table_widths', [2**31 - 1, 2**31 - 1]))",
        IAE_OR_VE,
        r"concat output rows would be 4294967294 wide",
    ),
    raises(
        "saved_model_rows_overflow",
        "load_and_call(set_list('table_rows', [2**62, 4]))",
        IAE_OR_VE,
        r"rows",
    ),
    raises(
        "saved_model_rows_negative",
        "load_and_call(set_list('table_rows', [-4, 3]))",
        IAE_OR_VE,
        r"table_rows\[0\] must be positive, got -4",
    ),
    raises(
        "saved_model_rows_grown",
        "load_and_call(set_list('table_rows', [5, 3]))",
        IAE_OR_VE,
        r"hold 4 rows in all, but the table has 5 rows",
    ),
    raises(
        "saved_model_shards_zero",
        "load_and_call(set_list('num_shards', [0, 2]))",
        IAE_OR_VE,
        r"num_shards\[0\] must be in \[1, 64\], got 0",
    ),
    raises(
        "saved_model_widths_swapped",
        "load_and_call(set_list('table_widths', [3, 2]))",
        IAE_OR_VE,
        r"must have shape \[rows, 3\], got \[4,2\]",
    ),
    raises(
        "saved_model_unknown_operation",
        r"""
def edit(node):
    node.attr["operation"].s = b"max"
load_and_call(edit)
""",
        IAE_OR_VE,
        r"max",
    ),
    raises(
        "saved_model_int_dtype",
        r"""
def edit(node):
    node.attr["T"].type = tf.int32.as_datatype_enum
load_and_call(edit)
""",
        IAE_OR_VE + ("TypeError",),
        r"int32|T",
    ),
    raises(
        "saved_model_deeprec_with_generalized",
        r"""
def edit(node):
    node.attr["complementary_strategy"].s = b"generalized-Q-R"
    node.attr["deeprec_mapping"].b = True
load_and_call(edit)
""",
        IAE_OR_VE,
        r"deeprec_mapping needs complementary_strategy",
    ),
    raises(
        "saved_model_crt_not_coprime",
        r"""
def edit(node):
    node.attr["complementary_strategy"].s = b"CRT"
    set_list("table_rows", [4, 2])(node)
load_and_call(edit)
""",
        IAE_OR_VE,
        r"pairwise coprime|rows",
    ),
]

# -- out of memory in the gradient (point 3) --------------------------------
# 8 tables of [2, 1], 2**25 int32 ids, generalized-Q-R: the gradient's
# temporary rows (8 * 2**25 int64, 2 GiB) cannot be allocated once the
# address space is capped 1 GiB above what the process already maps.
OOM = [
    raises(
        "grad_out_of_memory",
        r"""
import resource
tables = [tf.ones([2, 1]) for _ in range(8)]
kw = dict(operation="add", complementary_strategy="generalized-Q-R", table_rows=[2] * 8,
          table_widths=[1] * 8, num_shards=[1] * 8)
small = raw_grad(tf.ones([4, 1]), tables, tf.constant([0, 1, 2, 255]), **kw)  # warm up
ids = tf.zeros([2**25], tf.int32)
grad = tf.ones([2**25, 1])
vm = [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize")][0]
hard = resource.getrlimit(resource.RLIMIT_AS)[1]
resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), hard))
raw_grad(grad, tables, ids, **kw)
""",
        ("ResourceExhaustedError",),
        r"OOM|[Oo]ut of memory|allocat",
    ),
]


GROUPS = {
    "api": ("", API),
    "rank": ("", RANK),
    "raw": ("", RAW),
    "graph": ("", GRAPH),
    "saved_model": (SAVED_MODEL_SETUP, SAVED),
}
if not UNDER_ASAN:
  GROUPS["oom"] = ("", OOM)
