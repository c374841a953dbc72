"""The ``needs_extension`` mark: a test that needs the compiled ops extension is skipped
without it, or fails with the build error when ``MOLCONF_REQUIRE_EXTENSION=1`` (CI)."""

from __future__ import annotations

import pytest
from ops_testlib import extension_available, extension_unavailable_reason


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "needs_extension: needs molconf's compiled ops extension (skipped without it; "
        "failed under MOLCONF_REQUIRE_EXTENSION=1)")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    # In the call phase (not setup), so that a required extension's absence is a test failure.
    if item.get_closest_marker("needs_extension") is not None and not extension_available():
        pytest.skip(f"compiled extension unavailable: {extension_unavailable_reason()}")
