"""Repository rule exposing the installed TensorFlow pip package to Bazel.

configure.sh reads tf.sysconfig and passes the paths with --repo_env:
  TF_HEADER_DIR           tf.sysconfig.get_include()
  TF_SHARED_LIBRARY_DIR   directory of libtensorflow_framework.so.2
  TF_SHARED_LIBRARY_NAME  its file name (libtensorflow_framework.so.2)
The rule symlinks them into @local_config_tf, which defines
  //:tf_header_lib               headers (as -isystem)
  //:libtensorflow_framework     the framework shared library
  //:libtensorflow_cc            libtensorflow_cc.so.2 of the same directory
                                 (the C API, TF_LoadSessionFromSavedModel...)
  //:tensorflow_c_api            both libraries, for a C/C++ client binary,
                                 with an rpath to that directory so that the
                                 binary runs without LD_LIBRARY_PATH
A pip wheel without libtensorflow_cc.so.2 leaves the last two incompatible
(skipped by `bazel build //...`, an error when named).
"""

_ENV_VARS = ["TF_HEADER_DIR", "TF_SHARED_LIBRARY_DIR", "TF_SHARED_LIBRARY_NAME"]

_BUILD = """\
package(default_visibility = ["//visibility:public"])

cc_library(
    name = "tf_header_lib",
    hdrs = glob(["include/**"], exclude = ["include/**/*.so*", "include/**/*.a"]),
    includes = ["include"],
)

cc_import(
    name = "libtensorflow_framework",
    shared_library = "lib/{lib_name}",
)
"""

_BUILD_CC = """
cc_import(
    name = "libtensorflow_cc",
    shared_library = "lib/{cc_name}",
)

cc_library(
    name = "tensorflow_c_api",
    linkopts = ["-Wl,-rpath,{lib_dir}"],
    deps = [
        ":libtensorflow_cc",
        ":libtensorflow_framework",
        ":tf_header_lib",
    ],
)
"""

_BUILD_NO_CC = """
cc_library(
    name = "libtensorflow_cc",
    target_compatible_with = ["@platforms//:incompatible"],
)

cc_library(
    name = "tensorflow_c_api",
    target_compatible_with = ["@platforms//:incompatible"],
)
"""

def _require(repository_ctx, name):
    value = repository_ctx.os.environ.get(name, "")
    if not value:
        fail("%s is not set; run ./configure.sh first (it writes .bazelrc)." % name)
    return value

def _tf_configure_impl(repository_ctx):
    header_dir = _require(repository_ctx, "TF_HEADER_DIR")
    lib_dir = _require(repository_ctx, "TF_SHARED_LIBRARY_DIR")
    lib_name = _require(repository_ctx, "TF_SHARED_LIBRARY_NAME")
    lib_path = repository_ctx.path(lib_dir + "/" + lib_name)
    if not repository_ctx.path(header_dir).exists:
        fail("TF_HEADER_DIR %s does not exist; rerun ./configure.sh" % header_dir)
    if not lib_path.exists:
        fail("%s does not exist; rerun ./configure.sh" % lib_path)
    repository_ctx.symlink(header_dir, "include")
    repository_ctx.symlink(lib_path, "lib/" + lib_name)
    build = _BUILD.format(lib_name = lib_name)

    # The C API library ships next to the framework library in the wheel.
    cc_name = lib_name.replace("tensorflow_framework", "tensorflow_cc")
    cc_path = repository_ctx.path(lib_dir + "/" + cc_name)
    if cc_name != lib_name and cc_path.exists:
        repository_ctx.symlink(cc_path, "lib/" + cc_name)
        build += _BUILD_CC.format(cc_name = cc_name, lib_dir = str(cc_path.dirname))
    else:
        build += _BUILD_NO_CC
    repository_ctx.file("BUILD", build)

tf_configure = repository_rule(
    implementation = _tf_configure_impl,
    environ = _ENV_VARS,
    local = True,
)
