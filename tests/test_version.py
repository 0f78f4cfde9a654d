"""`tensorflow_multihash.__version__`: one source (version.py), read by
setup.py as text, a PEP 440 public version.

The wheel's own metadata is compared with the installed package's
`__version__` where tests/test_wheel.py builds and installs the wheel (slow).
"""

import os
import re
import shutil
import subprocess
import sys

import tensorflow as tf
from packaging.version import Version

import tensorflow_multihash as tfmh
from tensorflow_multihash import version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup_py_version(root, local_label):
  """What `python setup.py --version` prints (its last line) in `root`."""
  env = dict(os.environ, TFMH_WHEEL_LOCAL_VERSION=local_label)
  p = subprocess.run(
      [sys.executable, "setup.py", "--version"],
      cwd=root,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
  return p.stdout.strip().splitlines()[-1]


def test_version_is_exported_from_version_py():
  assert tfmh.__version__ is version.__version__
  assert isinstance(tfmh.__version__, str)


def test_version_is_a_pep440_public_version():
  parsed = Version(tfmh.__version__)
  # Canonical (str(Version) normalizes) and public (no "+local" label).
  assert str(parsed) == tfmh.__version__
  assert parsed.local is None
  assert re.fullmatch(
      r"\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?", tfmh.__version__
  ), tfmh.__version__


def test_setup_py_reads_the_same_version():
  # The release of the library (tested against the running TensorFlow in
  # test_wheel.py) is the local label.
  release = ".".join(tf.__version__.split(".")[:2])
  assert _setup_py_version(ROOT, "0") == tfmh.__version__
  assert _setup_py_version(ROOT, "1") == f"{tfmh.__version__}+tf{release}"


def test_setup_py_takes_the_version_from_version_py(tmp_path):
  """A copy of setup.py next to a version.py saying 9.8.7 builds 9.8.7."""
  shutil.copy(os.path.join(ROOT, "setup.py"), tmp_path)
  package = tmp_path / "tensorflow_multihash"
  package.mkdir()
  with open(package / "version.py", "w") as f:
    f.write('"""A stand-in."""\n\n__version__ = "9.8.7"\n')
  os.symlink(
      os.path.join(ROOT, "tensorflow_multihash", "_multihash_ops.so"),
      package / "_multihash_ops.so",
  )
  assert _setup_py_version(tmp_path, "0") == "9.8.7"
