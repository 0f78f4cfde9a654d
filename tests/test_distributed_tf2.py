"""TF2 distribution strategies (each in a fresh process, tf2_strategy_task.py):

- MirroredStrategy over 2 logical CPUs: the replicas' IndexedSlices
  gradients are summed, so 3 Adagrad steps give the tables (on both
  replicas) and losses of one device running the same global batches;
- ParameterServerStrategy with an in-process cluster (2 workers, 2 ps tasks
  on 127.0.0.1) and a variable_partitioner: the tables become sharded
  variables on both ps tasks, the lookup gathers rows where they live
  (no fused op across tasks) with the same numbers, and training lowers the
  loss.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from mh_cluster import ROOT, child_env

pytestmark = (
    pytest.mark.slow
)  # starts processes or builds: not in the fast loop

SCRIPT = ROOT + "/tests/tf2_strategy_task.py"


def run_task(mode, timeout=240):
  p = subprocess.run(
      [sys.executable, SCRIPT, mode],
      cwd=ROOT,
      env=child_env(),
      capture_output=True,
      text=True,
      timeout=timeout,
      start_new_session=True,
  )
  assert p.returncode == 0, p.stderr[-4000:]
  line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT ") :])


def test_mirrored_two_cpus_equals_one_device():
  out = run_task("mirrored")
  two, one = out["two"], out["one"]
  assert two["grad_kinds"] == ["IndexedSlices"]
  # One device per replica: the fused op runs on each replica's copy.
  assert "MultiHashLookup" in two["ops"]
  np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-6)
  assert two["losses"][-1] < two["losses"][0]
  for copies, (single,) in zip(two["tables"], one["tables"]):
    assert len(copies) == 2
    np.testing.assert_array_equal(copies[0], copies[1])  # replicas agree
    np.testing.assert_allclose(copies[0], single, rtol=1e-6, atol=1e-7)


def test_parameter_server_strategy_trains_sharded_tables():
  out = run_task("ps")
  assert out["table_types"] == ["ShardedVariable", "ShardedVariable"]
  assert sorted(set(d.split("/device")[0] for d in out["shard_devices"])) == [
      "/job:ps/replica:0/task:0",
      "/job:ps/replica:0/task:1",
  ]
  assert "MultiHashLookup" not in out["ops"] and "ResourceGather" in out["ops"]
  assert out["lookup_error"] < 1e-6
  assert out["steps"] == 40
  assert out["loss_after"] < 0.5 * out["loss_before"], out
