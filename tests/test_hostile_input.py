"""Hostile input: every bad id, attribute, shape, handle and SavedModel gives a
clean Python exception (or the right result), never a signal, a hang or a
silently narrowed attribute.

Each case runs in a subprocess with an address-space limit (RLIMIT_AS) and a
timeout, so that a crash, an abort or a hang fails the case instead of the
test run. Cases are grouped (one TensorFlow import per group; the groups run
a few at a time in parallel) and each case is reported as its own test: the
group's subprocess prints START before and RESULT after every case, so a
crash names the case that caused it. docs/hostile_input.md lists the cases
and what each raises.

Under AddressSanitizer (tests/asan/run_asan.sh: libasan in LD_PRELOAD) the
address-space limit is left off (ASan reserves terabytes of shadow address
space) and the out-of-memory case is skipped.
"""

import concurrent.futures
import json
import os
import resource
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hostile_cases import GROUPS, PRELUDE

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
UNDER_ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")
MEMORY_LIMIT = 8 << 30  # bytes of address space per group (TF alone ~2 GiB)
TIMEOUT = 600 if UNDER_ASAN else 180  # seconds per group


# The subprocess: runs the prelude, the group's setup, then every case in a
# copy of that namespace, printing START / RESULT lines as it goes.
RUNNER = r"""
import json, sys, time
spec = json.loads(sys.stdin.read())
ns = {"__name__": "__hostile__"}
exec(spec["prelude"] + spec["setup"], ns)
print("READY", flush=True)
for name, code in spec["cases"]:
    print("START " + name, flush=True)
    t = time.time()
    try:
        exec(code, dict(ns))
        res = {"ok": True}
    except BaseException as e:  # noqa: B902 - reported to the parent
        res = {"ok": False, "mro": [c.__name__ for c in type(e).__mro__],
               "msg": str(e)[-4000:]}
    res["seconds"] = round(time.time() - t, 3)
    print("RESULT " + json.dumps([name, res]), flush=True)
print("DONE", flush=True)
"""


def _limit_memory():
  if not UNDER_ASAN:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _run_group(group):
  setup, cases = GROUPS[group]
  spec = json.dumps(
      {
          "prelude": PRELUDE,
          "setup": setup,
          "cases": [[c.name, c.code] for c in cases],
      }
  )
  env = dict(
      os.environ,
      TF_CPP_MIN_LOG_LEVEL="3",
      TFMH_TESTS=str(TESTS),
      PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]),
  )
  proc = subprocess.Popen(
      [sys.executable, "-c", RUNNER],
      cwd=ROOT,
      env=env,
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      preexec_fn=_limit_memory,
  )
  timed_out = False
  try:
    out, _ = proc.communicate(spec, timeout=TIMEOUT)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, _ = proc.communicate()
    timed_out = True
  results, started = {}, None
  for line in out.splitlines():
    if line.startswith("START "):
      started = line[6:]
    elif line.startswith("RESULT "):
      name, res = json.loads(line[7:])
      results[name] = res
      started = None
  return {
      "rc": proc.returncode,
      "timed_out": timed_out,
      "results": results,
      "unfinished": started,
      "tail": out[-6000:],
  }


_pool = concurrent.futures.ThreadPoolExecutor(max_workers=3)
_futures = {}
_lock = threading.Lock()


def group_result(group):
  """The group's outcome; the first call starts every group (3 at once)."""
  with _lock:
    if not _futures:
      for g in GROUPS:
        _futures[g] = _pool.submit(_run_group, g)
  return _futures[group].result()


def _params():
  for group, (_, cases) in GROUPS.items():
    for case in cases:
      yield pytest.param(group, case, id=f"{group}-{case.name}")


@pytest.mark.parametrize("group,case", list(_params()))
def test_case(group, case):
  import re

  run = group_result(group)
  res = run["results"].get(case.name)
  where = (
      f"group {group}: rc={run['rc']} timed_out={run['timed_out']} "
      f"unfinished={run['unfinished']}\n{run['tail']}"
  )
  assert (
      res is not None
  ), f"{case.name} did not finish (a crash or a hang): {where}"
  if case.raises is None:
    assert res["ok"], f"{case.name} raised {res['mro'][0]}: {res['msg']}"
    return
  assert not res["ok"], f"{case.name} raised nothing; expected {case.raises}"
  assert set(case.raises) & set(
      res["mro"]
  ), f"{case.name} raised {res['mro'][0]}: {res['msg']}; expected one of {case.raises}"
  assert re.search(
      case.match, res["msg"], re.S
  ), f"{case.name}: message does not match {case.match!r}: {res['msg']}"


@pytest.mark.parametrize("group", list(GROUPS))
def test_group_exits_cleanly(group):
  # No signal, no hang, interpreter exit included.
  run = group_result(group)
  assert not run["timed_out"], f"group {group} timed out:\n{run['tail']}"
  assert (
      run["rc"] == 0
  ), f"group {group} exited with {run['rc']}:\n{run['tail']}"
  assert "DONE" in run["tail"], run["tail"]
