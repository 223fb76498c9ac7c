"""CUDA rules: nvcc in a genrule, linked by cc_library; nothing needs CUDA by default.

Every .cu file is compiled by /usr/local/cuda/bin/nvcc into a PIC object for sm_90
(Hopper); a cc_library links the objects with cudart. All targets made here are
incompatible unless the build runs with --config=cuda (--define=cuda=true), so
`bazel build //...` and `bazel test //...` skip them on machines without nvcc, and
`bazel build --config=cuda //...` builds them on any machine with nvcc, GPU or not.
Tests made by cuda_test are also tagged `gpu` (run them on a GPU machine; see
tools/gpu_build.sh and tools/gpu_remote.sh).
"""

NVCC = "/usr/local/cuda/bin/nvcc"

NVCC_FLAGS = [
    "-std=c++17",
    "-O3",
    "-lineinfo",
    "-Xcompiler -fPIC",
    "-gencode=arch=compute_90,code=sm_90",
    "-I.",
    "-I$(GENDIR)",
]

CUDART_LINKOPTS = [
    "-L/usr/local/cuda/lib64",
    "-Wl,-rpath,/usr/local/cuda/lib64",
    "-lcudart",
]

# target_compatible_with value: compatible only under --config=cuda.
CUDA_ONLY = select({
    "//tools:cuda_enabled": [],
    "//conditions:default": ["//tools:cuda_unavailable"],
})

def cuda_library(name, srcs, hdrs = [], cu_hdrs = [], deps = [], visibility = None):
    """A cc_library of nvcc-compiled .cu files.

    Args:
      name: the cc_library.
      srcs: .cu files, one object each.
      hdrs: public headers (C++ only: includable by gcc-compiled code).
      cu_hdrs: further headers the .cu files include (e.g. .cuh), made visible to nvcc.
      deps: cc_library deps (their headers must also be listed in cu_hdrs or hdrs when
        a .cu file includes them; nvcc sees only files named here).
      visibility: as usual.
    """
    visible = {h: True for h in hdrs + cu_hdrs}.keys()  # deduplicated, in order
    objs = []
    for src in srcs:
        stem = src[:-len(".cu")].replace("/", "_")
        obj = "_%s_%s.o" % (name, stem)
        native.genrule(
            name = "_%s_%s_nvcc" % (name, stem),
            srcs = [src] + visible,
            outs = [obj],
            cmd = " ".join([NVCC] + NVCC_FLAGS + ["-c", "$(location %s)" % src, "-o", "$@"]),
            target_compatible_with = CUDA_ONLY,
        )
        objs.append(obj)
    native.cc_library(
        name = name,
        srcs = objs,
        hdrs = hdrs,
        deps = deps,
        linkopts = CUDART_LINKOPTS,
        target_compatible_with = CUDA_ONLY,
        visibility = visibility,
    )

def cuda_test(name, srcs, deps = [], tags = [], **kwargs):
    """A cc_test that needs a GPU: built only under --config=cuda, tagged `gpu`.

    Linked statically against its cc_library deps, so the binary travels to the GPU
    machine with only the system shared libraries beside it (tools/gpu_build.sh).
    """
    native.cc_test(
        name = name,
        srcs = srcs,
        deps = deps,
        linkstatic = True,
        tags = tags + ["gpu"],
        target_compatible_with = CUDA_ONLY,
        **kwargs
    )

def cuda_binary(name, srcs, deps = [], tags = [], **kwargs):
    """A cc_binary that needs a GPU (benchmarks): built only under --config=cuda."""
    native.cc_binary(
        name = name,
        srcs = srcs,
        deps = deps,
        tags = tags + ["gpu"],
        target_compatible_with = CUDA_ONLY,
        **kwargs
    )
