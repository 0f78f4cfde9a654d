"""The wheel (./build_wheel.sh) and the supported TensorFlow releases.

The wheel, built from the configured tree: its name, tag and requirement
(`tensorflow==<the built release>.*`), its manylinux tag as `auditwheel show`
sees it, and, installed into a new virtual environment, the quickstart run
from outside the source tree; the version-mismatch warning of op_library.py;
configure.sh's refusal of a TensorFlow outside the supported range; and the
range, stated alike wherever it is stated.

The new environment gets TensorFlow from .venv through a .pth file naming
.venv's site-packages (`venv --system-site-packages` would expose the base
interpreter's packages, not .venv's, and installing TensorFlow again is too
slow and needs a network). Paths from a .pth file are not scanned for .pth
files themselves, so .venv's _tensorflow_multihash_repo.pth (which puts the
repository on sys.path) is not applied: tensorflow_multihash can only come
from the wheel, which the test checks. pip installs the wheel *with* its
dependencies and --no-index, so its `tensorflow==<built release>.*`
requirement must be met by the TensorFlow that is there.
"""

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import warnings
import zipfile

import pytest
import tensorflow as tf

from tensorflow_multihash.version import __version__

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The supported releases, 2.16 to 2.21 (docs/tensorflow_versions.md).
TF_MIN_MINOR, TF_MAX_MINOR = 16, 21
TF_RELEASE = ".".join(tf.__version__.split(".")[:2])  # the running one, 2.Y


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  dist = tmp_path_factory.mktemp("dist")
  env = dict(os.environ, PYTHON_BIN_PATH=sys.executable)
  p = subprocess.run(
      [
          os.path.join(ROOT, "build_wheel.sh"),
          "--no-configure",
          "--dist",
          str(dist),
      ],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
  wheels = list(dist.glob("tensorflow_multihash-*.whl"))
  assert len(wheels) == 1, wheels
  return wheels[0]


@pytest.mark.slow  # builds the wheel (once per module)
def test_wheel_contents(wheel):
  assert re.fullmatch(
      r"tensorflow_multihash-%s\+tf%s-py3-none-(linux|manylinux_\d+_\d+)_%s\.whl"
      % (re.escape(__version__), re.escape(TF_RELEASE), platform.machine()),
      wheel.name,
  ), wheel.name
  with zipfile.ZipFile(wheel) as z:
    names = z.namelist()
    meta = z.read(
        [n for n in names if n.endswith(".dist-info/METADATA")][0]
    ).decode()
    info = z.read(
        [n for n in names if n.endswith(".dist-info/WHEEL")][0]
    ).decode()
    lib = z.getinfo("tensorflow_multihash/_multihash_ops.so")
  assert lib.file_size == os.path.getsize(
      os.path.join(ROOT, "tensorflow_multihash", "_multihash_ops.so")
  )
  for module in ("__init__", "op_library", "multihash_ops", "variable"):
    assert f"tensorflow_multihash/{module}.py" in names
  # Nothing grafted in: TensorFlow's own library comes with tensorflow.
  assert [n for n in names if n.endswith(".so") or ".so." in n] == [
      lib.filename
  ], names
  assert not [
      n for n in names if "__pycache__" in n or n.startswith("tests/")
  ], names
  requires = re.findall(r"^Requires-Dist: (.*)$", meta, re.M)
  assert requires == [f"tensorflow=={TF_RELEASE}.*"], meta
  assert f"Version: {__version__}+tf{TF_RELEASE}\n" in meta, meta
  assert "Root-Is-Purelib: false" in info, info
  tag = wheel.name[: -len(".whl")].split("-", 2)[2]
  assert re.findall(r"^Tag: (.*)$", info, re.M) == [tag], info


@pytest.mark.slow  # builds the wheel (once per module)
def test_wheel_passes_auditwheel_show(wheel):
  """The manylinux tag is the one auditwheel finds from the library's symbol
  versions, and the only library outside the manylinux set is TensorFlow's
  own libtensorflow_framework.so.2, left out on purpose (auditwheel show has
  no --exclude, so it names it and calls the whole linux_<arch>, as it does
  for any TensorFlow add-on wheel)."""
  pytest.importorskip("auditwheel")  # configure.sh installs it
  tag = re.search(r"-py3-none-(\w+)\.whl$", wheel.name).group(1)
  assert re.fullmatch(r"manylinux_2_\d+_" + platform.machine(), tag), wheel.name
  p = subprocess.run(
      [sys.executable, "-m", "auditwheel", "show", str(wheel)],
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert p.returncode == 0, p.stdout + p.stderr
  text = " ".join(p.stdout.split())
  assert f'This constrains the platform tag to "{tag}"' in text, p.stdout
  p = subprocess.run(
      [sys.executable, "-m", "auditwheel", "show", "--json", str(wheel)],
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert p.returncode == 0, p.stdout + p.stderr
  report = json.loads(p.stdout)
  assert report["sym_tag"] == tag, report
  assert sorted(report["external_libs"]) == [
      "libtensorflow_framework.so.2"
  ], report
  assert not report["unsupported_isa"], report


@pytest.mark.slow  # builds the wheel (once per module)
def test_wheel_installs_and_runs_quickstart(wheel, tmp_path):
  venv = tmp_path / "venv"
  subprocess.run(
      [sys.executable, "-m", "venv", "--without-pip", str(venv)],
      check=True,
      timeout=120,
  )
  py = str(venv / "bin" / "python")
  site = subprocess.run(
      [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
      check=True,
      capture_output=True,
      text=True,
  ).stdout.strip()
  with open(os.path.join(site, "_dot_venv.pth"), "w") as f:
    f.write(sysconfig.get_paths()["purelib"] + "\n")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  env.pop("PYTHONPATH", None)
  p = subprocess.run(
      [
          py,
          "-m",
          "pip",
          "install",
          "-q",
          "--no-index",
          "--disable-pip-version-check",
          str(wheel),
      ],
      cwd=str(tmp_path),
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert p.returncode == 0, p.stderr[-4000:]

  work = tmp_path / "work"
  work.mkdir()
  shutil.copy(os.path.join(ROOT, "examples", "seed_variable.py"), work)
  p = subprocess.run(
      [
          py,
          "-W",
          "error::RuntimeWarning:tensorflow_multihash.op_library",
          "-c",
          "import sys, runpy, tensorflow_multihash as m; "
          "print('PACKAGE', m.__file__); print('VERSION', m.__version__); "
          "sys.argv = ['seed_variable.py']; runpy.run_path('seed_variable.py', run_name='__main__')",
      ],
      cwd=str(work),
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
  package = [x for x in p.stdout.splitlines() if x.startswith("PACKAGE ")][0]
  assert package.split()[1].startswith(site), (package, site)
  assert ROOT not in package
  # The installed package's __version__ is the public part of the wheel's
  # version (its metadata's, which the file name carries).
  installed = [x for x in p.stdout.splitlines() if x.startswith("VERSION ")]
  wheel_version = wheel.name.split("-")[1]
  assert installed == ["VERSION " + wheel_version.split("+")[0]], (
      installed,
      wheel.name,
  )
  # The seed example's numbers (README quickstart): 1.0 -> 0.9003111 ->
  # 0.8297106 printed by the three steps, tables ending at 0.7720356.
  numbers = [float(x) for x in re.findall(r"\d\.\d*", p.stdout)]
  for value in (1.0, 0.9003111, 0.8297106, 0.7720356):
    assert any(abs(x - value) < 1e-6 for x in numbers), (value, p.stdout)
  final = [x for x in p.stdout.splitlines() if x.startswith("final tables")]
  assert final and "0.7720356" in final[0], p.stdout


def test_version_mismatch_warns(monkeypatch):
  from tensorflow_multihash import op_library

  op_library.load()
  built = op_library.built_tf_version()
  assert built == tf.__version__
  monkeypatch.setattr(op_library, "_module", None)
  monkeypatch.setattr(op_library.tf, "__version__", "2.99.0")
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    op_library.load()
  messages = [
      str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)
  ]
  assert any(built in m and "2.99.0" in m for m in messages), messages


def test_running_tensorflow_is_supported():
  major, minor = (int(x) for x in TF_RELEASE.split("."))
  assert major == 2 and TF_MIN_MINOR <= minor <= TF_MAX_MINOR, tf.__version__


def test_supported_range_is_stated_alike():
  """configure.sh, setup.py, build_wheel.sh, the CI job of the oldest
  release, the README and docs/tensorflow_versions.md name one range."""

  def read(path):
    with open(os.path.join(ROOT, path)) as f:
      return f.read()

  configure = read("configure.sh")
  assert re.search(r"^TF_MIN_MINOR=(\d+)$", configure, re.M).group(1) == str(
      TF_MIN_MINOR
  )
  assert re.search(r"^TF_MAX_MINOR=(\d+)$", configure, re.M).group(1) == str(
      TF_MAX_MINOR
  )
  assert re.search(
      r"^TF_MIN_MINOR, TF_MAX_MINOR = (\d+), (\d+)$", read("setup.py"), re.M
  ).groups() == (str(TF_MIN_MINOR), str(TF_MAX_MINOR))
  releases = " ".join(f"2.{m}" for m in range(TF_MIN_MINOR, TF_MAX_MINOR + 1))
  assert f"all) RELEASES+=({releases})" in read("build_wheel.sh")
  assert f'RELEASE="${{TFMH_OLDEST_TF:-2.{TF_MIN_MINOR}}}"' in read(
      ".ci/oldest_tf.sh"
  )
  stated = f"2.{TF_MIN_MINOR} to 2.{TF_MAX_MINOR}"
  assert stated in " ".join(read("README.md").split())
  assert stated in " ".join(read("docs/tensorflow_versions.md").split())


@pytest.mark.parametrize("version", ["2.15.1", "2.22.0", "1.15.5", None])
def test_configure_refuses_tensorflow_it_cannot_use(version, tmp_path):
  """With a TensorFlow outside 2.16 to 2.21 (or one that fails to import),
  configure.sh stops before installing anything. The environment holds a
  stand-in `tensorflow` package with that __version__ (None: its import
  raises), since configure.sh reads no more than that before deciding; the
  environment has no pip, so an attempt to install would fail differently,
  and configure.sh runs from a copy, so the tree's .bazelrc is never at
  risk."""
  venv = tmp_path / "venv"
  subprocess.run(
      [sys.executable, "-m", "venv", "--without-pip", str(venv)],
      check=True,
      timeout=120,
  )
  py = str(venv / "bin" / "python")
  site = subprocess.run(
      [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
      check=True,
      capture_output=True,
      text=True,
  ).stdout.strip()
  os.mkdir(os.path.join(site, "tensorflow"))
  with open(os.path.join(site, "tensorflow", "__init__.py"), "w") as f:
    if version is None:
      f.write("raise ImportError('numpy.core.multiarray failed to import')\n")
    else:
      f.write(f"__version__ = {version!r}\n")
  before = sorted(os.listdir(site))
  copy = tmp_path / "tree"
  copy.mkdir()
  shutil.copy(os.path.join(ROOT, "configure.sh"), copy)
  env = dict(os.environ, PYTHON_BIN_PATH=py)
  env.pop("PYTHONPATH", None)
  p = subprocess.run(
      [str(copy / "configure.sh"), "--cpu-only", "--no-build"],
      cwd=str(copy),
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert p.returncode == 1, p.stdout + p.stderr
  message = " ".join(p.stderr.split())
  assert message.startswith(f"configure.sh: error: {py} has "), p.stderr
  assert "installed nothing" in message, p.stderr
  if version is None:
    assert (
        "cannot be imported (ImportError: numpy.core.multiarray failed to import)"
        in message
    )
  else:
    assert (
        f"TensorFlow {version}, outside the supported range 2.16 to 2.21"
        in message
    )
  assert "pip install" not in p.stdout, p.stdout
  assert sorted(os.listdir(site)) == before
  assert sorted(os.listdir(copy)) == ["configure.sh"]
