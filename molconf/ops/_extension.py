"""Build, load and register the compiled molconf ops (C++ on CPU, CUDA where available).

The extension is compiled on first use with ``torch.utils.cpp_extension.load`` (ninja) or,
when ninja is missing, with one direct compiler call; the shared library is cached under
``$MOLCONF_CACHE_DIR/extensions`` (default ``~/.cache/molconf/extensions``) in a directory
named after a hash of the sources, compiler flags, CPU model/features and torch/Python
versions, so edited sources, another CPU or a new torch rebuild instead of loading a stale
library. A build already present under the default location is reused even when
``MOLCONF_CACHE_DIR`` points elsewhere. The CPU code is compiled with ``-march=native``
(vectorised pair loops); a compiler that refuses it gets a portable build instead. With a
CUDA build of torch and nvcc the CUDA kernels are built too; if only they fail, the CPU
kernels are kept and CUDA tensors use the reference (one warning).

Nothing here may break ``import molconf``: :func:`load` never raises. When the build or the
load fails, it records the reason, warns once (``RuntimeWarning``) and ``molconf.ops``
falls back to the pure-PyTorch reference.

The C++ side (``cuda_ext/register.cpp``) defines the schemas and CPU/CUDA kernels; this
module adds what torch.library wants from Python: fake (meta) kernels, so ``torch.compile``
can trace the ops, and the autograd formula of ``lj_energy_forces``.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from molconf.constants import ENV_CACHE_DIR, LJ_R_MIN

NAMESPACE = "molconf"
_HEADERS = ("lj_math.h", "ops.h")
_CPU_SOURCES = ("register.cpp", "lj_cpu.cpp")
_CUDA_SOURCES = ("lj_cuda.cu",)
# -ffp-contract=off: no FMA contraction, so per-pair arithmetic rounds exactly like the
# PyTorch reference (the top-K selection compares forces bit for bit). -fno-math-errno
# and -fno-trapping-math: sqrt/div may be evaluated unconditionally, which is what lets
# GCC vectorise the branch-free pair loops; neither changes any result (no reassociation,
# no fast-math). -march=native: the library is built on, and cached for, this CPU (its
# flags are part of the build hash); if the compiler rejects it, a portable build follows.
_CFLAGS = (
    "-O3",
    "-fopenmp",
    "-ffp-contract=off",
    "-fno-math-errno",
    "-fno-trapping-math",
    f"-DMOLCONF_LJ_R_MIN={LJ_R_MIN!r}",
)
_NATIVE_CFLAGS = ("-march=native",)
_LDFLAGS = ("-fopenmp",)
_CUDA_CFLAGS = ("-O3", "--fmad=false", f"-DMOLCONF_LJ_R_MIN={LJ_R_MIN!r}", "-DMOLCONF_WITH_CUDA")
_OUTPUT_TAIL_LINES = 25  # compiler output kept in the warning when a build fails


@dataclass(frozen=True)
class ExtensionState:
    """Outcome of the one build/load attempt of this process."""

    ok: bool
    reason: str  # why it is unavailable ("" when ok)
    with_cuda: bool = False
    library: str = ""
    cuda_reason: str = ""  # why CUDA kernels are missing although CUDA is available


_LOCK = threading.RLock()
_STATE: ExtensionState | None = None
_PY_REGISTERED = False
_LOADED_LIBRARY = ""


# --------------------------------------------------------------------------- locations


def source_dir() -> Path | None:
    """Directory holding the C++/CUDA sources, or ``None``.

    Looked up inside the package first (``molconf/_cuda_ext``, for installed copies), then
    next to the package in a source checkout (``<repo>/cuda_ext``).
    """
    pkg = Path(__file__).resolve().parents[1]  # .../molconf
    for cand in (pkg / "_cuda_ext", pkg.parent / "cuda_ext"):
        if all((cand / f).is_file() for f in (*_HEADERS, *_CPU_SOURCES)):
            return cand
    return None


def default_cache_root() -> Path:
    return Path.home() / ".cache" / "molconf"


def cache_root() -> Path:
    """``$MOLCONF_CACHE_DIR`` or ``~/.cache/molconf``."""
    env = os.environ.get(ENV_CACHE_DIR)
    return Path(env).expanduser() if env else default_cache_root()


def _extension_roots() -> list[Path]:
    """Where builds are looked up, in order; new builds go to the first.

    The default location is always searched too: builds are keyed by a hash of everything
    that affects them, so one made there is valid wherever MOLCONF_CACHE_DIR points (test
    suites point it at a fresh folder per session and would otherwise recompile each time).
    """
    roots = [cache_root() / "extensions"]
    default = default_cache_root() / "extensions"
    if default not in roots:
        roots.append(default)
    return roots


def _registered() -> bool:
    """Whether this process already holds molconf's compiled ops."""
    try:
        torch.ops.molconf.rewire_by_force  # noqa: B018 - raises when not registered
    except (AttributeError, RuntimeError):
        return False
    return True


def _cuda_wanted() -> bool:
    # CUDA kernels need a CUDA build of torch (headers, libc10_cuda) and nvcc; a CPU-only
    # torch cannot link them even where nvcc exists (as on the project's machines).
    if torch.version.cuda is None or not torch.cuda.is_available():
        return False
    from torch.utils.cpp_extension import CUDA_HOME

    return CUDA_HOME is not None


def _cpu_fingerprint() -> str:
    """What a -march=native build depends on: the CPU model and its feature flags."""
    try:
        with open("/proc/cpuinfo") as fh:
            info = fh.read()
        keep = [ln for ln in info.splitlines() if ln.startswith(("model name", "flags", "Features"))]
        return "\n".join(sorted(set(keep)))
    except OSError:
        return f"{platform.processor()} {torch.backends.cpu.get_cpu_capability()}"


def _cflags(native: bool) -> list[str]:
    return [*_CFLAGS, *(_NATIVE_CFLAGS if native else ())]


def _build_name(src: Path, with_cuda: bool, native: bool = True) -> str:
    h = hashlib.sha256()
    files = (*_HEADERS, *_CPU_SOURCES, *(_CUDA_SOURCES if with_cuda else ()))
    for f in files:
        h.update(f.encode())
        h.update((src / f).read_bytes())
    meta = (
        torch.__version__,
        sys.version,
        platform.machine(),
        _cflags(native),
        _LDFLAGS,
        with_cuda,
        _CUDA_CFLAGS if with_cuda else (),
        _cpu_fingerprint() if native else "",
    )
    h.update(repr(meta).encode())
    return f"molconf_ops_{h.hexdigest()[:16]}"


# --------------------------------------------------------------------------- building


def _tail(text: str, n: int = _OUTPUT_TAIL_LINES) -> str:
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    return "\n".join(lines[-n:])


def _build_direct(name: str, src: Path, build_dir: Path, cflags: list[str]) -> Path:
    """Compile the CPU extension with one compiler call (used when ninja is missing)."""
    from torch.utils import cpp_extension

    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX or install g++)")
    torch_lib = Path(torch.__file__).parent / "lib"
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    out = build_dir / f"{name}.so"
    tmp = build_dir / f"{name}.so.tmp{os.getpid()}"
    cmd = [
        cxx,
        *(str(src / s) for s in _CPU_SOURCES),
        "-shared",
        "-fPIC",
        "-std=c++20",
        *cflags,
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        *(f"-I{p}" for p in cpp_extension.include_paths()),
        f"-L{torch_lib}",
        "-lc10",
        "-ltorch_cpu",
        "-ltorch",
        f"-Wl,-rpath,{torch_lib}",
        *_LDFLAGS,
        "-o",
        str(tmp),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"compiler failed:\n{_tail(proc.stderr + proc.stdout)}")
    os.replace(tmp, out)  # atomic: a concurrent process never sees a half-written library
    return out


def _build_variant(src: Path, with_cuda: bool, native: bool) -> str:
    """Build (or find the cached build of) one variant and load it; returns the library."""
    from torch.utils import cpp_extension

    name = _build_name(src, with_cuda, native)
    for root in _extension_roots():
        lib = root / name / f"{name}.so"
        if lib.is_file() and (root / name / "BUILD_OK").is_file():
            torch.ops.load_library(str(lib))
            return str(lib)
    build_dir = _extension_roots()[0] / name
    build_dir.mkdir(parents=True, exist_ok=True)
    lib = build_dir / f"{name}.so"
    marker = build_dir / "BUILD_OK"  # written only after a complete build
    cflags = _cflags(native)
    if cpp_extension.is_ninja_available():
        sources = [str(src / s) for s in _CPU_SOURCES]
        if with_cuda:
            sources += [str(src / s) for s in _CUDA_SOURCES]
        try:
            cpp_extension.load(
                name=name,
                sources=sources,
                extra_cflags=[*cflags, *(["-DMOLCONF_WITH_CUDA"] if with_cuda else [])],
                extra_cuda_cflags=list(_CUDA_CFLAGS),
                extra_ldflags=list(_LDFLAGS),
                build_directory=str(build_dir),
                with_cuda=with_cuda,
                is_python_module=False,  # pure TORCH_LIBRARY registration, no pybind module
                verbose=False,
            )
        except Exception as exc:  # the compiler output is in the message: keep its tail
            raise RuntimeError(_tail(str(exc))) from exc
    elif with_cuda:
        raise RuntimeError("building the CUDA kernels needs ninja (pip install ninja)")
    else:
        _build_direct(name, src, build_dir, cflags)
        torch.ops.load_library(str(lib))
    marker.write_text(f"torch {torch.__version__}\n")
    return str(lib)


def _build_flavours(src: Path, with_cuda: bool) -> str:
    """The -march=native build, or the portable one when the compiler refuses native."""
    refused = _extension_roots()[0] / _build_name(src, with_cuda, True) / "NATIVE_REFUSED"
    if not refused.is_file():
        try:
            return _build_variant(src, with_cuda, native=True)
        except Exception as exc:  # noqa: BLE001
            if _registered():
                raise  # built and loaded, then failed: nothing a portable build would fix
            native_error = str(exc)
        try:
            lib = _build_variant(src, with_cuda, native=False)
        except Exception as exc:
            raise RuntimeError(f"{exc}\n(the -march=native build failed too: "
                               f"{_tail(native_error, 5)})") from exc
        refused.parent.mkdir(parents=True, exist_ok=True)
        refused.write_text(native_error)  # later processes go straight to the portable build
        return lib
    return _build_variant(src, with_cuda, native=False)


def _build() -> tuple[str, bool, str]:
    """Build and load the extension: with CUDA kernels where possible, else CPU only.

    Returns the library path, whether it has CUDA kernels and, when CUDA was wanted but
    failed, why. Raises when not even the CPU build works.
    """
    src = source_dir()
    if src is None:
        pkg = Path(__file__).resolve().parents[1]
        raise FileNotFoundError(
            f"C++ sources not found (looked in {pkg / '_cuda_ext'} and {pkg.parent / 'cuda_ext'})"
        )
    if _registered():
        # Loaded earlier in this process (e.g. by a previous load() whose state was reset):
        # never dlopen a second copy, its TORCH_LIBRARY(molconf) would abort the process.
        has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key(
            f"{NAMESPACE}::rewire_by_force", "CUDA"
        )
        return _LOADED_LIBRARY or "(loaded earlier)", has_cuda, ""
    cuda_reason = ""
    if _cuda_wanted():
        try:
            return _build_flavours(src, with_cuda=True), True, ""
        except Exception as exc:  # noqa: BLE001 - keep the CPU kernels at least
            if _registered():
                raise
            cuda_reason = f"{type(exc).__name__}: {exc}".strip()
    return _build_flavours(src, with_cuda=False), False, cuda_reason


# --------------------------------------------------------------------------- registration


def _register_python_parts() -> None:
    """Fake kernels and autograd; once per process (torch.library refuses duplicates)."""
    global _PY_REGISTERED
    if _PY_REGISTERED:
        return

    @torch.library.register_fake(f"{NAMESPACE}::rewire_by_force")
    def _rewire_fake(pos, mask, bond_adj, sigma, epsilon, k, return_forces=False):
        b, n = pos.shape[0], pos.shape[1]
        attr = pos.new_empty((b, n, n), dtype=torch.bool)
        rep = pos.new_empty((b, n, n), dtype=torch.bool)
        force = pos.new_empty((b, n, n) if return_forces else (0,))
        return attr, rep, force

    @torch.library.register_fake(f"{NAMESPACE}::lj_energy_forces")
    def _lj_fake(pos, mask, sigma, epsilon, exclude=None):
        return pos.new_empty((pos.shape[0],)), pos.new_empty(pos.shape)

    @torch.library.register_fake(f"{NAMESPACE}::lj_energy_forces_backward")
    def _lj_backward_fake(grad_energy, grad_forces, pos, mask, sigma, epsilon, exclude=None):
        return pos.new_empty(pos.shape)

    torch.library.register_autograd(
        f"{NAMESPACE}::lj_energy_forces", _lj_backward, setup_context=_lj_setup_context
    )
    _PY_REGISTERED = True


def _lj_setup_context(ctx, inputs, output):
    pos, mask, sigma, epsilon, exclude = inputs
    ctx.save_for_backward(pos, mask, sigma, epsilon, exclude)
    # Unused outputs then arrive as None and the backward kernel skips their terms
    # (e.g. a loss on the energy alone never evaluates Hessian blocks).
    ctx.set_materialize_grads(False)


def _lj_backward(ctx, grad_energy, grad_forces):
    pos, mask, sigma, epsilon, exclude = ctx.saved_tensors
    if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
        raise NotImplementedError(
            "molconf::lj_energy_forces differentiates with respect to pos only; "
            "call molconf.ops.lj_energy_forces, which routes sigma/epsilon that require "
            "grad to the reference implementation"
        )
    if not ctx.needs_input_grad[0] or (grad_energy is None and grad_forces is None):
        return None, None, None, None, None
    if torch.is_grad_enabled():
        # create_graph=True (double backward, e.g. a loss on autograd-derived forces):
        # the compiled backward has no derivative of its own, so rebuild this one step with
        # the differentiable reference.
        from molconf.ops import reference

        with torch.enable_grad():
            e, f = reference.lj_energy_forces(pos, mask, sigma, epsilon, exclude)
            outs = [o for o, g in ((e, grad_energy), (f, grad_forces)) if g is not None]
            grads = [g for g in (grad_energy, grad_forces) if g is not None]
            (grad_pos,) = torch.autograd.grad(outs, [pos], grads, create_graph=True)
        return grad_pos, None, None, None, None
    grad_pos = torch.ops.molconf.lj_energy_forces_backward(
        grad_energy, grad_forces, pos, mask, sigma, epsilon, exclude
    )
    return grad_pos, None, None, None, None


# --------------------------------------------------------------------------- public


def load() -> ExtensionState:
    """Build/load the extension once per process; never raises.

    On failure the reason is recorded and a single ``RuntimeWarning`` is emitted.
    """
    global _STATE, _LOADED_LIBRARY
    if _STATE is not None:
        return _STATE
    with _LOCK:
        if _STATE is not None:
            return _STATE
        try:
            lib, with_cuda, cuda_reason = _build()
            _LOADED_LIBRARY = lib
            _register_python_parts()
            state = ExtensionState(
                ok=True, reason="", with_cuda=with_cuda, library=lib, cuda_reason=cuda_reason
            )
            if cuda_reason:
                warnings.warn(
                    "molconf.ops: the CUDA kernels could not be built; CUDA tensors use the "
                    f"pure-PyTorch reference ops. Reason: {cuda_reason}",
                    RuntimeWarning,
                    stacklevel=4,
                )
        except Exception as exc:  # noqa: BLE001 - any failure means "use the reference"
            reason = f"{type(exc).__name__}: {exc}".strip()
            state = ExtensionState(ok=False, reason=reason)
            warnings.warn(
                "molconf.ops: the compiled extension is unavailable, falling back to the "
                f"pure-PyTorch reference ops (slower, same results). Reason: {reason}",
                RuntimeWarning,
                stacklevel=4,  # load <- _use_extension <- public op <- caller
            )
        _STATE = state
        return state


def state() -> ExtensionState | None:
    """The recorded outcome, or ``None`` when no load was attempted yet."""
    return _STATE
