"""Shared pytest fixtures: the sshd fleet here, the application's in tests/app_fixtures.py (a plugin)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.helpers import unavailable
from tests.sshd import SSHD, SshdFleet, sshd_available

pytest_plugins = ["tests.app_fixtures"]

# ---- real sshd test hosts ---------------------------------------------------------------------------------

FLEET_HOSTS = ("alpha", "beta", "gamma")


@pytest.fixture(scope="session")
def sshd_fleet() -> Iterator[SshdFleet]:
    """Real OpenSSH servers on 127.0.0.1: alpha, beta and gamma; tests may start more on it."""
    if not sshd_available():
        message = f"{SSHD} is not installed (apt-get install openssh-server)"
        unavailable("sshd", message)
    with SshdFleet() as fleet:
        fleet.start_hosts(FLEET_HOSTS)
        yield fleet


# ---- a real browser ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    """One headless Debian chromium for the session (Playwright drives it; it never downloads a browser)."""
    from playwright.async_api import async_playwright  # only the browser tests load it

    executable = shutil.which("chromium")
    if executable is None:
        unavailable("browser", "chromium is not installed (apt-get install chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable, headless=True)
        yield launched
        await launched.close()
