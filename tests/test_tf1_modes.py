"""The TF1-facing tests (marked `tf1`) once more in the processes DeepRec
users run: one that called `tf.compat.v1.disable_v2_behavior()` before
anything else, and one that called only `disable_eager_execution()`.

Each mode is a pytest run of its own (TFMH_TEST_MODE, see mh_mode.py), so
`pytest tests` runs the suite in all three modes. Run one mode alone with
`TFMH_TEST_MODE=v1 pytest -m tf1 tests`.
"""

import os
import re
import subprocess
import sys

import pytest

import mh_mode

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["v1", "graph"])
def test_tf1_tests_pass_in_mode(mode):
  if mh_mode.current() != "tf2":
    pytest.skip("runs the other modes from the tf2 run")
  env = dict(os.environ, TFMH_TEST_MODE=mode)
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "pytest",
          "-q",
          "-m",
          "tf1",
          "-p",
          "no:cacheprovider",
          HERE,
      ],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      timeout=2400,
  )
  tail = proc.stdout[-6000:]
  print("TFMH_TEST_MODE=%s:\n%s" % (mode, proc.stdout[-600:]))
  assert proc.returncode == 0, tail
  passed = re.search(r"(\d+) passed", proc.stdout)
  assert passed and int(passed.group(1)) > 200, tail
  assert not re.search(r"\d+ (failed|error)", proc.stdout), tail
