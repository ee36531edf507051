"""Shared pytest fixtures: the sshd fleet here, the application's in tests/app_fixtures.py (a plugin)."""

from __future__ import annotations

from collections.abc import Iterator

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
