"""Wheel of tensorflow_multihash: the Python package plus the op library
that ./configure.sh built (tensorflow_multihash/_multihash_ops.so).

Build it with ./build_wheel.sh (configure + `pip wheel`); see that script.
The wheel is platform-tagged (py3-none-<platform>: the library links no
Python, only libtensorflow_framework.so.2) and requires exactly the
TensorFlow release the library was built against, read from the library's
TFMH_BUILD_INFO text (the same text op_library.py checks at import).
"""
import os
import re

from setuptools import setup
from setuptools.dist import Distribution

try:
    from setuptools.command.bdist_wheel import bdist_wheel  # setuptools >= 70.1
except ImportError:
    from wheel.bdist_wheel import bdist_wheel

VERSION = "0.1.0"
ROOT = os.path.dirname(os.path.abspath(__file__))
LIBRARY = os.path.join(ROOT, "tensorflow_multihash", "_multihash_ops.so")


def built_tf_version():
    if not os.path.exists(LIBRARY):
        raise SystemExit(f"{LIBRARY} does not exist: run ./configure.sh first")
    with open(LIBRARY, "rb") as f:
        match = re.search(rb"TFMH_BUILD_INFO tf=([^ \x00]+) cuda=([01])", f.read())
    if match is None:
        raise SystemExit(f"{LIBRARY} has no TFMH_BUILD_INFO; rebuild it with ./configure.sh")
    return match.group(1).decode()


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
                "for stock TensorFlow",
    packages=["tensorflow_multihash"],
    package_data={"tensorflow_multihash": ["_multihash_ops.so"]},
    include_package_data=False,
    python_requires=">=3.9",
    install_requires=["tensorflow==" + built_tf_version()],
    distclass=BinaryDistribution,
    cmdclass={"bdist_wheel": PlatformWheel},
    zip_safe=False,
)
