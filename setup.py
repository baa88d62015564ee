"""Build and install minibert.

The package is pure Python except for one extension module, ``minibert._C``, built from ``csrc/``:

* the C++ (CPU) kernels are always built when PyTorch is importable at build time;
* the CUDA kernels are added when PyTorch is a CUDA build and ``nvcc`` is found, or when
  ``FORCE_CUDA=1`` is set (``TORCH_CUDA_ARCH_LIST`` defaults to "8.0;9.0+PTX": machine code for
  sm_80 and sm_90, and compute_90 PTX that the driver compiles for newer GPUs such as sm_100/sm_120);
* ``MINIBERT_NO_EXT=1`` skips the extension entirely (minibert then JIT-builds it on first use, or
  falls back to PyTorch eager ops: see ``minibert.ops.backend_info()``).

Install with ``pip install --no-build-isolation -e .`` so pip builds against the torch you already have
instead of downloading another one into an isolated build environment.
"""
import glob
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _extension_build():
    """Return (ext_modules, cmdclass) for minibert._C, or ([], {}) when it cannot or should not be built."""
    if os.environ.get("MINIBERT_NO_EXT", "0") == "1":
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        print("minibert: torch is not importable at build time; skipping minibert._C "
              "(install torch first and use --no-build-isolation to build it)")
        return [], {}

    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "*.cu")))
    if not sources:
        return [], {}

    force_cuda = os.environ.get("FORCE_CUDA", "0") == "1"
    want_cuda = bool(cuda_sources) and (
        force_cuda or (torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None))
    if want_cuda and torch.version.cuda is None:
        raise RuntimeError("FORCE_CUDA=1 but this torch is a CPU build; install a CUDA build of torch")
    if want_cuda:
        # +PTX: without it a newer GPU (sm_100, sm_120) finds no kernel image; minibert.ops._load also
        # checks at run time and uses eager ops on a GPU the build cannot run.
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")

    # No -std flag: BuildExtension adds the standard this torch's headers need (C++17 up to torch 2.13,
    # C++20 from 2.14); the kernel files themselves are plain C++17/CUDA.
    cxx_flags = ["-O3", "-fopenmp"]
    if os.environ.get("MINIBERT_NATIVE", "0") == "1":
        cxx_flags.append("-march=native")  # faster locally, but the wheel only runs on this CPU
    define_macros = [("MINIBERT_WITH_CUDA", "1")] if want_cuda else []
    ext_cls = cpp_extension.CUDAExtension if want_cuda else cpp_extension.CppExtension
    ext = ext_cls(
        name="minibert._C",
        sources=sources + (cuda_sources if want_cuda else []),
        include_dirs=[os.path.join(HERE, "csrc")],
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--use_fast_math"]},
        extra_link_args=["-fopenmp"],
    )
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extension_build()

setup(
    name="minibert",
    version="0.1.0",
    description="BERT pretraining from scratch: a readable NumPy reference and a fast PyTorch + C++/CUDA path",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["minibert", "minibert.*"]),
    # The kernel assignment's C++/CUDA sources are compiled by the grader, so they ship with the package.
    package_data={"minibert.assignments": ["csrc/*.cpp", "csrc/*.cu"]},
    install_requires=[
        "numpy>=1.24",
        "torch>=2.4",
        "safetensors>=0.4",
        "tqdm>=4.60",
        "matplotlib>=3.7",
    ],
    extras_require={
        # transformers/tokenizers/scipy are test-time oracles only: nothing in minibert needs them.
        # nbclient/ipykernel/nbformat run the tutorials in a real Jupyter kernel (tests/test_tutorials.py).
        "test": ["pytest>=7", "transformers>=4.40", "tokenizers>=0.15", "scipy", "nbclient>=0.7",
                 "ipykernel>=6", "nbformat>=5"],
    },
    entry_points={"console_scripts": ["minibert = minibert.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
