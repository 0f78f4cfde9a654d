"""Many threads on one session: lookups and sparse optimizer steps at once.

Writers run an optimizer whose sparse update holds the variable's lock
exclusively (Adagrad with use_locking=True; for reference variables also
SGD with use_locking=True), so every step applies whole; with a constant
gradient per row the order of the steps does not matter and the final
tables equal the same number of steps run one after another. (SGD on a
resource variable is left out: its ResourceScatterAdd takes the lock in
shared mode whatever use_locking says, and concurrent steps were seen to
lose updates, in TensorFlow's own op.) Readers run lookups meanwhile; every row they see must be a state
some number of whole steps produced (for resource variables, whose reads
share the lock the updates take exclusively, a whole row at once; for
reference variables, whose reads take no lock, element by element). Both
the fused op (one device) and the colocated lookup (shards on two CPU
devices) are exercised.
"""

import threading

import numpy as np
import pytest
import tensorflow as tf

from mh_apiutil import tfmh  # noqa: F401  (fixture)

v1 = tf.compat.v1
CPU = ["/job:localhost/replica:0/task:0/device:CPU:%d" % i for i in range(2)]
DIMS = [[4, 3], [5, 2]]  # concat: each table's part is visible in the output
IDS = np.array([0, 1, 5, 7, 7, 12, 19, 19, 19, 3], np.int64)
WRITERS, READERS, STEPS, READS = 4, 4, 25, 25
LR, ACC0 = 0.5, 0.1


def row_counts():
  """How often each row of each table is used by IDS (its gradient)."""
  q, r = IDS // DIMS[1][0], IDS % DIMS[1][0]
  return [
      np.bincount(q, minlength=DIMS[0][0]),
      np.bincount(r, minlength=DIMS[1][0]),
  ]


def states(initial, optimizer, steps):
  """Every table's value after 0..steps sequential steps (float32)."""
  out = []
  for table, count in zip(initial, row_counts()):
    g = np.repeat(count[:, None].astype(np.float32), table.shape[1], axis=1)
    var, acc, seq = (
        table.astype(np.float32),
        np.full_like(table, ACC0, np.float32),
        [],
    )
    for _ in range(steps + 1):
      seq.append(var.copy())
      if optimizer == "sgd":
        var = var - np.float32(LR) * g
      else:  # TF's sparse Adagrad: only rows with a gradient move
        acc = np.where(g > 0, acc + g * g, acc)
        var = np.where(g > 0, var - np.float32(LR) * g / np.sqrt(acc), var)
    out.append(np.stack(seq))  # [steps + 1, rows, width]
  return out


def seen_state(value, seq, whole_rows):
  """True if `value` (one row) is a state of `seq` ([steps + 1, width]):
  the whole row at once, or each element on its own."""
  close = np.isclose(seq, value[None, :], rtol=1e-5, atol=1e-5)
  return close.all(axis=1).any() if whole_rows else close.any(axis=0).all()


def _device_function(op):
  if op.type in ("VariableV2", "VarHandleOp"):
    _device_function.n += 1
    return CPU[_device_function.n % 2]
  return ""


@pytest.mark.parametrize(
    "use_resource,optimizer",
    [(True, "adagrad"), (False, "adagrad"), (False, "sgd")],
    ids=["resource-adagrad", "ref-adagrad", "ref-sgd"],
)
@pytest.mark.parametrize("placement", ["one_device", "two_devices"])
@pytest.mark.tf1
def test_parallel_lookups_and_updates(
    tfmh, placement, use_resource, optimizer, rng
):
  initial = [rng.integers(-4, 5, d).astype(np.float32) for d in DIMS]

  def init(shape, dtype=None, partition_info=None):
    full = (
        initial[0] if partition_info.full_shape[0] == DIMS[0][0] else initial[1]
    )
    o = partition_info.var_offset[0]
    return tf.constant(full[o : o + shape[0]])

  _device_function.n = 0
  with tf.Graph().as_default():
    with v1.device(_device_function if placement == "two_devices" else None):
      v = tfmh.get_multihash_variable(
          "emb",
          DIMS,
          operation="concat",
          initializer=init,
          partitioner=v1.fixed_size_partitioner(2),
          use_resource=use_resource,
      )
    out = tf.nn.embedding_lookup(v, IDS)
    opt = (
        v1.train.GradientDescentOptimizer(LR, use_locking=True)
        if optimizer == "sgd"
        else v1.train.AdagradOptimizer(
            LR, initial_accumulator_value=ACC0, use_locking=True
        )
    )
    train = opt.minimize(tf.reduce_sum(out))
    config = v1.ConfigProto(
        device_count={"CPU": 2}, inter_op_parallelism_threads=4
    )
    with v1.Session(config=config) as sess:
      sess.run(v1.global_variables_initializer())
      reads, errors = [], []

      def run(fetch, times, sink):
        try:
          for _ in range(times):
            value = sess.run(fetch)
            if sink is not None:
              sink.append(value)
        except Exception as e:  # reported below, in the main thread
          errors.append(e)

      threads = [
          threading.Thread(target=run, args=(train, STEPS, None))
          for _ in range(WRITERS)
      ] + [
          threading.Thread(target=run, args=(out, READS, reads))
          for _ in range(READERS)
      ]
      for t in threads:
        t.start()
      for t in threads:
        t.join(timeout=120)
      assert not any(t.is_alive() for t in threads), "a thread hung"
      assert not errors, errors[0]
      final = [np.concatenate(sess.run(list(t))) for t in v.tables]

  seqs = states(initial, optimizer, WRITERS * STEPS)
  for got, seq in zip(final, seqs):
    np.testing.assert_allclose(got, seq[-1], rtol=1e-5, atol=1e-5)
  assert len(reads) == READERS * READS
  q, r = IDS // DIMS[1][0], IDS % DIMS[1][0]
  width_q = DIMS[0][1]
  for value in reads:
    for i in range(len(IDS)):
      assert seen_state(value[i, :width_q], seqs[0][:, q[i]], use_resource), (
          i,
          value,
      )
      assert seen_state(value[i, width_q:], seqs[1][:, r[i]], use_resource), (
          i,
          value,
      )
