"""The wheel (./build_wheel.sh): built from the configured tree, installed
into a new virtual environment, it runs the quickstart from outside the
source tree; and the version-mismatch warning of op_library.py.

The new environment gets TensorFlow from .venv through a .pth file naming
.venv's site-packages (`venv --system-site-packages` would expose the base
interpreter's packages, not .venv's, and installing TensorFlow again is too
slow and needs a network). Paths from a .pth file are not scanned for .pth
files themselves, so .venv's _tensorflow_multihash_repo.pth (which puts the
repository on sys.path) is not applied: tensorflow_multihash can only come
from the wheel, which the test checks. pip installs the wheel *with* its
dependencies and --no-index, so its `tensorflow==<built version>`
requirement must be met by the TensorFlow that is there.
"""
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import warnings
import zipfile

import pytest
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    dist = tmp_path_factory.mktemp("dist")
    env = dict(os.environ, PYTHON_BIN_PATH=sys.executable)
    p = subprocess.run([os.path.join(ROOT, "build_wheel.sh"), "--no-configure",
                        "--dist", str(dist)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    wheels = list(dist.glob("tensorflow_multihash-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_contents(wheel):
    assert re.fullmatch(r"tensorflow_multihash-[\w.]+-py3-none-(linux|manylinux)\w*\.whl",
                        wheel.name), wheel.name
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read([n for n in names if n.endswith(".dist-info/METADATA")][0]).decode()
        info = z.read([n for n in names if n.endswith(".dist-info/WHEEL")][0]).decode()
        lib = z.getinfo("tensorflow_multihash/_multihash_ops.so")
    assert lib.file_size == os.path.getsize(
        os.path.join(ROOT, "tensorflow_multihash", "_multihash_ops.so"))
    for module in ("__init__", "op_library", "multihash_ops", "variable"):
        assert f"tensorflow_multihash/{module}.py" in names
    assert not [n for n in names if "__pycache__" in n or n.startswith("tests/")], names
    assert f"Requires-Dist: tensorflow=={tf.__version__}" in meta, meta
    assert "Root-Is-Purelib: false" in info, info


def test_wheel_installs_and_runs_quickstart(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    py = str(venv / "bin" / "python")
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(site, "_dot_venv.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("PYTHONPATH", None)
    p = subprocess.run([py, "-m", "pip", "install", "-q", "--no-index",
                        "--disable-pip-version-check", str(wheel)],
                       cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]

    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(os.path.join(ROOT, "examples", "seed_variable.py"), work)
    p = subprocess.run(
        [py, "-W", "error::RuntimeWarning:tensorflow_multihash.op_library", "-c",
         "import sys, runpy, tensorflow_multihash as m; "
         "print('PACKAGE', m.__file__); "
         "sys.argv = ['seed_variable.py']; runpy.run_path('seed_variable.py', run_name='__main__')"],
        cwd=str(work), env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    package = [x for x in p.stdout.splitlines() if x.startswith("PACKAGE ")][0]
    assert package.split()[1].startswith(site), (package, site)
    assert ROOT not in package
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
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert any(built in m and "2.99.0" in m for m in messages), messages
