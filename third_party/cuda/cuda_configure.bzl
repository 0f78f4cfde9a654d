"""Repository rule exposing a local CUDA toolkit to Bazel.

configure.sh passes the toolkit root as --repo_env=TFMH_CUDA_HOME=<dir> when
CUDA was found (empty or unset: CPU-only build). @local_config_cuda defines
  //:nvcc            wrapper script running <cuda>/bin/nvcc (genrule tool)
  //:cuda_headers    <cuda>/include (as -isystem), for host-compiled sources
  //:cudart_static   libcudart_static.a plus -ldl -lrt -lpthread
In a CPU-only configuration the targets exist but are empty (and nvcc fails),
so that BUILD files can reference them unconditionally.
"""

_BUILD_CUDA = """\
package(default_visibility = ["//visibility:public"])

filegroup(
    name = "nvcc",
    srcs = ["bin/nvcc.sh"],
)

cc_library(
    name = "cuda_headers",
    hdrs = glob(["include/**"]),
    includes = ["include"],
)

cc_import(
    name = "cudart_static_lib",
    static_library = "lib/libcudart_static.a",
)

cc_library(
    name = "cudart_static",
    linkopts = ["-ldl", "-lrt", "-lpthread"],
    deps = [":cudart_static_lib"],
)
"""

_BUILD_NO_CUDA = """\
package(default_visibility = ["//visibility:public"])

filegroup(
    name = "nvcc",
    srcs = ["bin/nvcc.sh"],
)

cc_library(name = "cuda_headers")

cc_library(name = "cudart_static")
"""

def _cuda_configure_impl(repository_ctx):
    cuda_home = repository_ctx.os.environ.get("TFMH_CUDA_HOME", "")
    if not cuda_home:
        repository_ctx.file(
            "bin/nvcc.sh",
            "#!/bin/sh\necho 'CUDA was not configured; rerun ./configure.sh' >&2\nexit 1\n",
            executable = True,
        )
        repository_ctx.file("BUILD", _BUILD_NO_CUDA)
        return

    nvcc = repository_ctx.path(cuda_home + "/bin/nvcc")
    if not nvcc.exists:
        fail("TFMH_CUDA_HOME=%s has no bin/nvcc; rerun ./configure.sh" % cuda_home)
    cudart = None
    for d in ["lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"]:
        p = repository_ctx.path("%s/%s/libcudart_static.a" % (cuda_home, d))
        if p.exists:
            cudart = p
            break
    if cudart == None:
        fail("No libcudart_static.a under %s" % cuda_home)

    repository_ctx.file(
        "bin/nvcc.sh",
        "#!/bin/sh\nexec '%s' \"$@\"\n" % nvcc,
        executable = True,
    )
    repository_ctx.symlink(cuda_home + "/include", "include")
    repository_ctx.symlink(cudart, "lib/libcudart_static.a")
    repository_ctx.file("BUILD", _BUILD_CUDA)

cuda_configure = repository_rule(
    implementation = _cuda_configure_impl,
    environ = ["TFMH_CUDA_HOME"],
    local = True,
)
