"""The Python of the repository is formatted by its one pyink configuration.

pyproject.toml's [tool.pyink] (2-space indent, line length 80) covers the
package, the tests, the examples, the benchmarks and setup.py. The check runs
the pyink that ./configure.sh installs into this interpreter's environment, at
the version configure.sh pins: another version may format differently. A
missing pyink is a failure, not a skip, so a CI run cannot pass unchecked.
"""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMATTED = [
    "tensorflow_multihash",
    "tests",
    "examples",
    "benchmarks",
    "setup.py",
]


def _pinned_version():
  with open(os.path.join(ROOT, "configure.sh"), encoding="utf-8") as f:
    match = re.search(r"^PYINK_VERSION=([0-9.]+)$", f.read(), re.M)
  assert match, "configure.sh has no PYINK_VERSION=... line"
  return match.group(1)


def _pyink(*args):
  return subprocess.run(
      [sys.executable, "-m", "pyink", *args],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=600,
  )


def test_pyink_is_the_pinned_version():
  proc = _pyink("--version")
  if proc.returncode != 0:
    pytest.fail(
        f"pyink is not installed for {sys.executable} ({proc.stderr.strip()});"
        f" ./configure.sh installs pyink=={_pinned_version()}, or run"
        f" {sys.executable} -m pip install pyink=={_pinned_version()}"
    )
  found = re.search(r"pyink, ([0-9][^ \n]*)", proc.stdout)
  assert found and found.group(1) == _pinned_version(), (
      f"pyink {found.group(1) if found else proc.stdout!r} is installed, "
      f"configure.sh pins {_pinned_version()}"
  )


def test_sources_are_formatted():
  proc = _pyink(
      "--check", "--config", os.path.join(ROOT, "pyproject.toml"), *FORMATTED
  )
  if "No module named pyink" in proc.stderr:
    pytest.fail(f"pyink is not installed for {sys.executable}")
  assert proc.returncode == 0, (
      "files not formatted; run `.venv/bin/python -m pyink "
      + " ".join(FORMATTED)
      + "`:\n"
      + proc.stderr
  )
