"""Property-based fuzzing of the REST API with schemathesis against the live OpenAPI document of a real
`infrastructor serve` process: every operation it offers, valid and invalid inputs, a valid and an invalid
token. No 5xx, every response matches the status codes, content types and schemas the document declares,
and no answer carries a secret the server holds.

The server runs read-only (INFRA_READ_ONLY): generated inputs must never register a device, which would send
SSH connections to whatever host name was generated. The routes that change something are fuzzed on a second,
writable server with a read-scoped token: whatever the input, a 403 problem and nothing changed (their effects
are tested in test_api.py). Bounded: a few examples per operation, generation only."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode, checks

from mcp_server.auth import ADMIN, READ, SigningKey, issue_token
from mcp_server.settings import load_settings
from tests.helpers import free_port, serving
from tests.test_transports import CLI, cli_env, run_cli

SECRET = "f" * 48
# examples per operation and mode; derandomized so CI is reproducible (INFRA_API_FUZZ_RANDOM=1 and a higher
# INFRA_API_FUZZ_EXAMPLES for a deeper, random run by hand)
EXAMPLES = int(os.environ.get("INFRA_API_FUZZ_EXAMPLES", "4"))
RANDOM = os.environ.get("INFRA_API_FUZZ_RANDOM") == "1"
# What every answer must satisfy. Not negative_data_rejection: a query string carries every value as text, so
# "12" sent for a string parameter that the generator meant as the number 12 is rightly accepted.
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]
# the stream never ends; test_api.py reads it
SKIPPED = {"events"}


@contextlib.contextmanager
def _served(tmp: Path, subject: str, scope: str, **env: str) -> Iterator[tuple[str, str]]:
    """A real `infrastructor serve` on a free port, and a token of `scope` for it."""
    port = free_port()
    settings = cli_env(
        tmp,
        INFRA_HTTP_PORT=str(port),
        INFRA_JWT_SECRET=SECRET,
        INFRA_HTTP_RATE_LIMIT="100000",
        INFRA_HTTP_RATE_BURST="10000",
        **env,
    )
    with serving([CLI, "serve"], port, settings, tmp / "server.log"):
        token, _ = issue_token(
            SigningKey("HS256", SECRET, None, None),
            load_settings(data_dir=tmp / "data", jwt_secret=SECRET),
            subject=subject,
            scopes=[scope],
            ttl_seconds=3600,
        )
        yield f"http://127.0.0.1:{port}", token


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A read-only server (no route that changes something), and an admin token."""
    with _served(tmp_path_factory.mktemp("fuzz"), "fuzz", ADMIN, INFRA_READ_ONLY="true") as served:
        yield served


@pytest.fixture(scope="module")
def writable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """A server that offers every route, and a token that may only read."""
    tmp = tmp_path_factory.mktemp("fuzz-writable")
    with _served(tmp, "fuzz-reader", READ) as (base, token):
        yield base, token, tmp


def _no_secret(response: requests.Response, token: str) -> None:
    body = response.text
    assert SECRET not in body and token not in body, "a response carries a secret"


def _fuzz(
    base: str,
    headers: dict[str, str],
    modes: list[GenerationMode],
    token: str,
    *,
    only: Callable[[Any], bool] = lambda operation: True,
    expect: set[int] | None = None,
) -> int:
    """Fuzz the operations `only` selects; with `expect`, every answer must also have one of those statuses."""
    schema = schemathesis.openapi.from_url(f"{base}/api/v1/openapi.json")
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]
        if operation.definition.raw.get("operationId") in SKIPPED or not only(operation):
            continue
        for mode in modes:
            strategy = operation.as_strategy(generation_mode=mode)

            @hypothesis.given(case=strategy)
            @hypothesis.settings(
                max_examples=EXAMPLES,
                derandomize=not RANDOM,
                deadline=None,
                database=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def check(case: schemathesis.Case[Any]) -> None:
                nonlocal calls
                calls += 1
                response = case.call_and_validate(
                    base_url=f"{base}/api/v1", headers=headers, timeout=60, checks=CHECKS
                )
                _no_secret(response, token)  # type: ignore[arg-type]
                if expect is not None:
                    assert response.status_code in expect, (case.method, case.path, response.text)

            check()
    return calls


def test_every_operation_with_valid_and_invalid_inputs_answers_as_documented(live: tuple[str, str]) -> None:
    base, token = live
    calls = _fuzz(
        base,
        {"Authorization": f"Bearer {token}"},
        [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        token,
    )
    assert calls > 40


def test_every_operation_that_changes_something_refuses_a_read_token_whatever_the_input(
    writable: tuple[str, str, Path],
) -> None:
    base, token, tmp = writable
    calls = _fuzz(
        base,
        {"Authorization": f"Bearer {token}"},
        [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        token,
        only=lambda operation: (
            operation.method.upper() != "GET" and operation.definition.raw.get("x-scope") != READ
        ),
        # 401 where the generated request replaced or broke the Authorization header, 400 for a body that is
        # not JSON at all (refused before anything is read of it, scope included)
        expect={400, 401, 403},
    )
    assert calls > 40
    devices = run_cli(tmp, "devices", "list")
    rows = [line for line in devices.stdout.splitlines() if line.startswith("│")]
    assert devices.returncode == 0 and len(rows) == 1 and "local" in rows[0], devices.stdout  # nothing added


def test_every_operation_refuses_an_invalid_token(live: tuple[str, str]) -> None:
    base, token = live
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    schema = schemathesis.openapi.from_url(f"{base}/api/v1/openapi.json")
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]
        path = operation.path.replace("{device}", "local").replace("{container}", "c")
        path = path.replace("{unit}", "u").replace("{name}", "n")
        response = requests.request(
            operation.method.upper(),
            f"{base}/api/v1{path}",
            headers={"Authorization": f"Bearer {forged}"},
            timeout=30,
        )
        assert response.status_code == 401, (operation.method, path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        _no_secret(response, token)


def test_the_server_log_has_no_traceback(
    live: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    base, _ = live
    assert requests.get(f"{base}/health", timeout=10).status_code == 200
    logs = list(Path(tmp_path_factory.getbasetemp()).glob("fuzz*/server.log"))
    assert logs and all("Traceback" not in log.read_text() for log in logs)
