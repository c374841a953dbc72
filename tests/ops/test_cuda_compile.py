"""The CUDA sources compile (no GPU needed): nvcc -c on lj_cuda.cu, g++ on the header.

Machines here have nvcc but no GPU and a CPU-only torch, so the CUDA kernels can never run
in these tests; compiling them at least catches syntax, type and host/device errors, and
the kernels' arithmetic is the shared header the CPU tests exercise.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import pytest
from torch.utils.cpp_extension import include_paths

from molconf.ops import _extension

SRC = _extension.source_dir()


def find_nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    candidates = [os.path.join(cuda_home, "bin", "nvcc")] if cuda_home else []
    candidates += sorted(glob.glob("/usr/local/cuda*/bin/nvcc"), reverse=True)
    return next((c for c in candidates if os.access(c, os.X_OK)), None)


def find_cuda_include(nvcc: str) -> str | None:
    """Directory with cuda_runtime_api.h ($CUDA_HOME, next to nvcc, /usr/local/cuda*)."""
    cands = [os.path.join(os.environ[v], "include") for v in ("CUDA_HOME", "CUDA_PATH")
             if os.environ.get(v)]
    cands.append(os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "include"))
    cands += ["/usr/local/cuda/include", *sorted(glob.glob("/usr/local/cuda*/include"), reverse=True)]
    return next((c for c in cands if os.path.isfile(os.path.join(c, "cuda_runtime_api.h"))), None)


def _run(cmd, timeout=300):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, "compile failed:\n" + " ".join(cmd) + "\n" + proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def sources():
    if SRC is None:
        pytest.fail("cuda_ext sources not found")
    return SRC


def test_nvcc_compiles_the_cuda_kernels(sources, tmp_path):
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (not on PATH, not under $CUDA_HOME or /usr/local/cuda*)")
    includes = [f"-I{p}" for p in include_paths()]
    _run(
        [
            nvcc,
            "-c",
            str(sources / "lj_cuda.cu"),
            "-o",
            str(tmp_path / "lj_cuda.o"),
            "-std=c++20",
            "-arch=sm_80",  # one architecture keeps the compile short
            "-Xcompiler",
            "-fPIC",
            "-DMOLCONF_WITH_CUDA",
            # calling a host-only function from device code must be an error, not a warning
            "--Werror",
            "cross-execution-space-call",
            *includes,
        ]
    )
    assert (tmp_path / "lj_cuda.o").stat().st_size > 0


def test_header_compiles_as_plain_host_code(sources, tmp_path):
    # lj_math.h guards its CUDA qualifiers; a plain host compiler must accept it (and it
    # must not need torch).
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no host C++ compiler")
    main = tmp_path / "main.cpp"
    main.write_text(
        '#include "lj_math.h"\n'
        "int main() {\n"
        "  float f = molconf::rewire_pair_force(0.f, 0.f, 0.f, 3.f, 0.f, 0.f,"
        " 3.4f, 3.4f, 0.1f, 0.1f);\n"
        "  double g = molconf::rewire_pair_force(0., 0., 0., 3., 0., 0., 3.4, 3.4, 0.1, 0.1);\n"
        "  return (f != 0.f && g != 0.) ? 0 : 1;\n"
        "}\n"
    )
    exe = tmp_path / "main"
    _run([cxx, "-std=c++17", "-Wall", "-Wextra", "-Werror", f"-I{sources}", str(main),
          "-o", str(exe)])
    subprocess.run([str(exe)], check=True)


def test_cuda_registration_branch_compiles(sources, tmp_path):
    # register.cpp's CUDA branch (-DMOLCONF_WITH_CUDA) is only built against a CUDA torch.
    # A CPU-only torch ships c10/cuda headers but not the CMake-generated
    # c10/cuda/impl/cuda_cmake_macros.h; an empty stand-in is enough for a syntax check.
    nvcc = find_nvcc()
    cxx = shutil.which("g++") or shutil.which("c++")
    if nvcc is None or cxx is None:
        pytest.skip("needs nvcc (for the CUDA runtime headers) and a host C++ compiler")
    cuda_include = find_cuda_include(nvcc)
    if cuda_include is None:
        pytest.skip(f"CUDA runtime headers not found (nvcc: {nvcc})")
    stub = tmp_path / "stub" / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n")
    includes = [f"-isystem{p}" for p in include_paths()]
    _run(
        [cxx, "-fsyntax-only", "-std=c++20", "-DMOLCONF_WITH_CUDA", f"-I{sources}", *includes,
         f"-isystem{tmp_path / 'stub'}", f"-isystem{cuda_include}", str(sources / "register.cpp")]
    )
