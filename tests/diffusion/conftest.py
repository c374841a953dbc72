"""Fixtures of the diffusion tests: one torch thread, reference LJ ops, tiny networks."""

from __future__ import annotations

import os

import pytest
import torch

from molconf.diffusion.model import EquivariantDenoiser

TINY = dict(ns=8, nv=2, n_layers=2, n_rbf=8, radial_hidden=16)


@pytest.fixture(scope="module", autouse=True)
def _fast_and_isolated():
    # Module scope: a session-wide autouse fixture here would stay active for every test
    # collected after this folder (tests/models, tests/ops, ...).
    # Tiny graphs: one intra-op thread is several times faster than two on a busy machine.
    # The LJ op runs its pure-PyTorch reference here, so these tests never wait for (or
    # depend on) a build of the compiled extension, which tests/ops covers.
    threads = torch.get_num_threads()
    old = os.environ.get("MOLCONF_REFERENCE_OPS")
    torch.set_num_threads(1)
    os.environ["MOLCONF_REFERENCE_OPS"] = "1"
    yield
    torch.set_num_threads(threads)
    if old is None:
        os.environ.pop("MOLCONF_REFERENCE_OPS", None)
    else:
        os.environ["MOLCONF_REFERENCE_OPS"] = old


def tiny(blind: bool = False, seed: int = 0, **kw) -> EquivariantDenoiser:
    torch.manual_seed(seed)
    return EquivariantDenoiser(blind=blind, **{**TINY, **kw}).eval()


@pytest.fixture(scope="session")
def tiny_conditioned():
    return tiny(False)


@pytest.fixture(scope="session")
def tiny_blind():
    return tiny(True)


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory, tiny_conditioned):
    from molconf.diffusion.io import save_denoiser

    path = tmp_path_factory.mktemp("denoiser") / "tiny.pt"
    save_denoiser(tiny_conditioned, path, {"name": "tiny", "elements": [1, 6, 7, 8, 9], "max_atoms": 29})
    return path


@pytest.fixture(scope="session")
def make_tiny():
    """``make_tiny(blind=False, seed=0, **overrides)`` → a fresh tiny denoiser."""
    return tiny
