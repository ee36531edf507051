"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.sshd import SSHD, SshdFleet, sshd_available

# ---- real sshd test hosts ---------------------------------------------------------------------------------

FLEET_HOSTS = ("alpha", "beta", "gamma")


@pytest.fixture(scope="session")
def sshd_fleet() -> Iterator[SshdFleet]:
    """Real OpenSSH servers on 127.0.0.1: alpha, beta and gamma; tests may start more on it."""
    if not sshd_available():
        message = f"{SSHD} is not installed (apt-get install openssh-server)"
        if os.environ.get("INFRA_TEST_REQUIRE_SSHD") == "1":
            pytest.fail(message)
        pytest.skip(message)
    with SshdFleet() as fleet:
        fleet.start_hosts(FLEET_HOSTS)
        yield fleet


# ---- end of real sshd test hosts --------------------------------------------------------------------------


# ---- application: databases, settings, AppState, MCP clients (tests/app_fixtures.py) ---------------------

from tests.app_fixtures import (  # noqa: E402, F401
    client,
    database_url,
    series_database_url,
    settings,
    sqlite_settings,
    state,
)
