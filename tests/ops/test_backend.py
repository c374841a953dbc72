"""Choosing between the compiled extension and the reference; the fallback on failure."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from ops_testlib import random_batch, rewire_args

import molconf.ops as ops
from molconf.constants import ENV_CACHE_DIR, ENV_FORCE_REFERENCE_OPS
from molconf.ops import _extension, reference

REPO = Path(__file__).resolve().parents[2]


def test_backend_names():
    assert ops.backend() in ("extension", "reference")
    assert ops.backend("meta") == "reference"  # no kernels for other devices


@pytest.mark.parametrize("value", ["1", "true", "YES"])
def test_env_var_forces_reference(monkeypatch, value):
    monkeypatch.setenv(ENV_FORCE_REFERENCE_OPS, value)
    assert ops.backend() == "reference"
    batch = random_batch(3, 10, torch.float32, seed=1, extra_k=2)
    got = ops.rewire_by_force(*rewire_args(batch), return_forces=True)
    want = reference.rewire_by_force(*rewire_args(batch), return_forces=True)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


@pytest.mark.parametrize("value", ["0", "", "false"])
def test_env_var_off_values(monkeypatch, value):
    monkeypatch.setenv(ENV_FORCE_REFERENCE_OPS, value)
    assert not ops._reference_forced()


def test_failed_build_warns_once_and_falls_back(monkeypatch):
    def broken_build():
        raise RuntimeError("compiler exploded: lj_cpu.cpp:1: error")

    monkeypatch.delenv(ENV_FORCE_REFERENCE_OPS, raising=False)
    monkeypatch.setattr(_extension, "_STATE", None)  # restored after the test
    monkeypatch.setattr(_extension, "_build", broken_build)
    with pytest.warns(RuntimeWarning, match="falling back to the pure-PyTorch reference.*"
                      "compiler exploded"):
        assert ops.backend() == "reference"
    batch = random_batch(2, 9, torch.float64, seed=2, extra_k=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would fail here
        got = ops.rewire_by_force(*rewire_args(batch))
        e, f = ops.lj_energy_forces(batch["pos"], batch["mask"], batch["sigma"], batch["epsilon"])
    want = reference.rewire_by_force(*rewire_args(batch))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert torch.isfinite(e).all() and torch.isfinite(f).all()
    assert not _extension.state().ok and "compiler exploded" in _extension.state().reason


@pytest.mark.needs_extension
def test_failed_cuda_build_keeps_the_cpu_kernels(monkeypatch):
    library = _extension.load().library

    def build_variant(src, with_cuda, native):
        if with_cuda:
            raise RuntimeError("nvcc: unsupported GPU architecture")
        return library  # the CPU build is loaded already (a second dlopen would abort)

    monkeypatch.setattr(_extension, "_STATE", None)
    monkeypatch.setattr(_extension, "_registered", lambda: False)
    monkeypatch.setattr(_extension, "_cuda_wanted", lambda: True)
    monkeypatch.setattr(_extension, "_build_variant", build_variant)
    with pytest.warns(RuntimeWarning, match="CUDA kernels could not be built.*unsupported GPU"):
        st = _extension.load()
    assert st.ok and not st.with_cuda
    assert ops.backend("cpu") == "extension" and ops.backend("cuda") == "reference"


def test_native_build_refused_falls_back_to_portable(monkeypatch, tmp_path):
    calls = []

    def build_variant(src, with_cuda, native):
        calls.append(native)
        if native:
            raise RuntimeError("c++: error: unrecognized -march=native")
        return "portable.so"

    monkeypatch.setenv(ENV_CACHE_DIR, str(tmp_path))
    monkeypatch.setattr(_extension, "_registered", lambda: False)
    monkeypatch.setattr(_extension, "_build_variant", build_variant)
    src = _extension.source_dir()
    assert _extension._build_flavours(src, False) == "portable.so"
    assert calls == [True, False]
    # remembered: the next process goes straight to the portable build
    assert _extension._build_flavours(src, False) == "portable.so"
    assert calls == [True, False, False]


def test_missing_sources_give_a_clear_reason(monkeypatch):
    monkeypatch.setattr(_extension, "_STATE", None)
    monkeypatch.setattr(_extension, "source_dir", lambda: None)
    with pytest.warns(RuntimeWarning, match="C\\+\\+ sources not found"):
        st = _extension.load()
    assert not st.ok


@pytest.mark.needs_extension
def test_reload_after_reset_reuses_the_loaded_library(monkeypatch, tmp_path):
    # A reset state plus a different cache folder must not dlopen a second copy (its
    # TORCH_LIBRARY(molconf) would abort the process); the loaded ops are reused.
    monkeypatch.setenv(ENV_CACHE_DIR, str(tmp_path))
    monkeypatch.setattr(_extension, "_STATE", None)
    st = _extension.load()
    assert st.ok and ops.backend() == "extension"
    assert not any(tmp_path.iterdir())  # nothing was built


def test_cache_dir_and_build_name(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_CACHE_DIR, str(tmp_path))
    assert _extension.cache_root() == tmp_path
    src = _extension.source_dir()
    assert src is not None and (src / "lj_math.h").is_file()
    copy = tmp_path / "src"
    shutil.copytree(src, copy)
    assert _extension._build_name(copy, False) == _extension._build_name(src, False)
    (copy / "lj_cpu.cpp").write_text((copy / "lj_cpu.cpp").read_text() + "\n// edited\n")
    assert _extension._build_name(copy, False) != _extension._build_name(src, False)


def test_compile_error_is_named_in_the_warning(monkeypatch, tmp_path):
    # A real (failing) build: sources with a syntax error, an empty cache.
    broken = tmp_path / "src"
    shutil.copytree(_extension.source_dir(), broken)
    header = broken / "lj_math.h"
    header.write_text(header.read_text() + "\nthis is not C++;\n")
    monkeypatch.setenv(ENV_CACHE_DIR, str(tmp_path / "cache"))
    monkeypatch.setattr(_extension, "source_dir", lambda: broken)
    monkeypatch.setattr(_extension, "_STATE", None)
    monkeypatch.setattr(_extension, "_registered", lambda: False)  # fails before loading
    with pytest.warns(RuntimeWarning, match="compiled extension is unavailable") as record:
        st = _extension.load()
    assert not st.ok
    message = str(record[0].message)
    assert "lj_math.h" in message and "error" in message.lower(), message


def test_import_survives_a_broken_compiler(tmp_path):
    # End to end in a fresh process: empty cache, a compiler that always fails.
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in (ENV_FORCE_REFERENCE_OPS, "MAX_JOBS")
    }
    env.update(
        {
            ENV_CACHE_DIR: str(tmp_path / "cache"),
            "HOME": str(tmp_path),  # no build in ~/.cache/molconf to fall back on either
            "CXX": "/bin/false",
            "PYTHONPATH": str(REPO),
        }
    )
    code = (
        "import warnings; warnings.simplefilter('default')\n"
        "import molconf, molconf.ops as ops\n"
        "print('imported'); print(ops.backend())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["imported", "reference"]
    assert proc.stderr.count("the compiled extension is unavailable") == 1, proc.stderr


@pytest.mark.parametrize("required", [False, True], ids=["optional", "required"])
def test_broken_build_skips_or_fails_under_require_extension(tmp_path, required):
    # A fresh pytest process whose compiler always fails (as in the test above): the tests
    # marked needs_extension skip, or fail naming the build error when CI requires the build.
    env = {key: value for key, value in os.environ.items()
           if key not in (ENV_FORCE_REFERENCE_OPS, "MAX_JOBS", "MOLCONF_REQUIRE_EXTENSION")}
    env.update({ENV_CACHE_DIR: str(tmp_path / "cache"), "HOME": str(tmp_path), "CXX": "/bin/false"})
    if required:
        env["MOLCONF_REQUIRE_EXTENSION"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfs",
         str(REPO / "tests" / "ops" / "test_lj.py"), "-k", "test_extension_matches_reference and 6-13"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    out = proc.stdout + proc.stderr
    if required:
        assert proc.returncode == 1, out
        assert "2 failed" in out, out
        assert "MOLCONF_REQUIRE_EXTENSION=1 but the compiled extension is unavailable" in out, out
        assert "/bin/false" in out, out  # the build error itself
    else:
        assert proc.returncode == 0, out
        assert "2 skipped" in out and "compiled extension unavailable" in out, out
