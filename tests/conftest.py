"""Shared fixtures: a small real QM9 cache built once per test session."""

from __future__ import annotations

import os

import pytest

N_QM9_SMALL = 300  # molecules of real QM9 (from the qm9pack wheel) the default suite uses


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: opt in with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache_dir(tmp_path_factory):
    """Every test (and every subprocess it starts) uses a fresh cache folder."""
    folder = tmp_path_factory.mktemp("molconf_cache")
    old = os.environ.get("MOLCONF_CACHE_DIR")
    os.environ["MOLCONF_CACHE_DIR"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("MOLCONF_CACHE_DIR", None)
    else:
        os.environ["MOLCONF_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def qm9_small(isolated_cache_dir):
    """The first 300 QM9 molecules, converted through the real pipeline."""
    from molconf.data import load_qm9

    return load_qm9(limit=N_QM9_SMALL, workers=1)


@pytest.fixture(scope="session")
def ray_local():
    """A private Ray on this machine (2 CPUs, loopback only), started once, stopped at the end."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False,
             object_store_memory=200 * 1024**2)
    yield ray
    ray.shutdown()
