"""Wheel of tensorflow_multihash: the Python package plus the op library
that ./configure.sh built (tensorflow_multihash/_multihash_ops.so).

Build it with ./build_wheel.sh (configure + `pip wheel` + auditwheel's
manylinux tag); see that script. The wheel is platform-tagged
(py3-none-<platform>: the library links no Python, only
libtensorflow_framework.so.2). The library is built against one TensorFlow
release, read from its TFMH_BUILD_INFO text (the same text op_library.py
checks at import), so the wheel requires that release,
`tensorflow==<major>.<minor>.*`, one of the supported 2.16 to 2.21
(docs/tensorflow_versions.md). Its version is tensorflow_multihash/version.py's
__version__ (read as text: importing the package would load TensorFlow) with
the release as a local label (0.1.0+tf2.18), so that the wheels of all
releases can sit side by side in one folder or private index;
TFMH_WHEEL_LOCAL_VERSION=0 leaves the label out (PyPI accepts no local
versions: there, one release per version).
"""

import os
import re

from setuptools import setup
from setuptools.dist import Distribution

try:
  from setuptools.command.bdist_wheel import bdist_wheel  # setuptools >= 70.1
except ImportError:
  from wheel.bdist_wheel import bdist_wheel

# The supported TensorFlow releases: the minor versions of 2.x.
TF_MIN_MINOR, TF_MAX_MINOR = 16, 21
ROOT = os.path.dirname(os.path.abspath(__file__))
LIBRARY = os.path.join(ROOT, "tensorflow_multihash", "_multihash_ops.so")


def package_version():
  """`__version__` of tensorflow_multihash/version.py, read as text."""
  path = os.path.join(ROOT, "tensorflow_multihash", "version.py")
  with open(path, encoding="utf-8") as f:
    match = re.search(r'^__version__ = "([^"]+)"$', f.read(), re.M)
  if match is None:
    raise SystemExit(f'{path} has no line __version__ = "..."')
  return match.group(1)


VERSION = package_version()


def built_tf_version():
  if not os.path.exists(LIBRARY):
    raise SystemExit(f"{LIBRARY} does not exist: run ./configure.sh first")
  with open(LIBRARY, "rb") as f:
    match = re.search(rb"TFMH_BUILD_INFO tf=([^ \x00]+) cuda=([01])", f.read())
  if match is None:
    raise SystemExit(
        f"{LIBRARY} has no TFMH_BUILD_INFO; rebuild it with ./configure.sh"
    )
  return match.group(1).decode()


def built_tf_release():
  """'2.Y' of the TensorFlow the library was built against, if supported."""
  version = built_tf_version()
  match = re.match(r"(\d+)\.(\d+)\.", version + ".")
  if (
      match is None
      or match.group(1) != "2"
      or not TF_MIN_MINOR <= int(match.group(2)) <= TF_MAX_MINOR
  ):
    raise SystemExit(
        f"{LIBRARY} was built against TensorFlow {version}, outside the supported "
        f"range 2.{TF_MIN_MINOR} to 2.{TF_MAX_MINOR}"
    )
  return f"{match.group(1)}.{match.group(2)}"


TF_RELEASE = built_tf_release()
if os.environ.get("TFMH_WHEEL_LOCAL_VERSION", "1") != "0":
  VERSION += "+tf" + TF_RELEASE


class BinaryDistribution(Distribution):

  def has_ext_modules(self):
    return True


class PlatformWheel(bdist_wheel):

  def finalize_options(self):
    super().finalize_options()
    self.root_is_pure = False

  def get_tag(self):
    _, _, plat = super().get_tag()
    return "py3", "none", plat


setup(
    name="tensorflow_multihash",
    version=VERSION,
    description="Multi-hash embedding variables (DeepRec's get_multihash_variable) "
    f"for stock TensorFlow (this wheel: TensorFlow {TF_RELEASE})",
    packages=["tensorflow_multihash"],
    package_data={"tensorflow_multihash": ["_multihash_ops.so"]},
    include_package_data=False,
    python_requires=">=3.9",
    # The op library is built for one TensorFlow release (major.minor); at
    # import, op_library.py also warns if the patch version differs.
    install_requires=[f"tensorflow=={TF_RELEASE}.*"],
    distclass=BinaryDistribution,
    cmdclass={"bdist_wheel": PlatformWheel},
    zip_safe=False,
)
