"""Property-based fuzzing of the REST API with schemathesis against the live OpenAPI document of a real
`infrastructor serve` process: every operation it offers, valid and invalid inputs, a valid and an invalid
token. No 5xx, every response matches the status codes, content types and schemas the document declares,
and no answer carries a secret the server holds.

The server runs read-only (INFRA_READ_ONLY): generated inputs must never register a device, which would send
SSH connections to whatever host name was generated; the write routes are covered in test_api.py, and their
refusal without a valid token below. Bounded: a few examples per operation, generation only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode, checks

from mcp_server.auth import ADMIN, SigningKey, issue_token
from mcp_server.settings import load_settings
from tests.helpers import free_port, serving
from tests.test_transports import CLI, cli_env

SECRET = "f" * 48
EXAMPLES = 4
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


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    env = cli_env(
        tmp,
        INFRA_HTTP_PORT=str(port),
        INFRA_JWT_SECRET=SECRET,
        INFRA_READ_ONLY="true",
        INFRA_HTTP_RATE_LIMIT="100000",
        INFRA_HTTP_RATE_BURST="10000",
    )
    with serving([CLI, "serve"], port, env, tmp / "server.log"):
        settings = load_settings(data_dir=tmp / "data", jwt_secret=SECRET)
        token, _ = issue_token(
            SigningKey("HS256", SECRET, None, None),
            settings,
            subject="fuzz",
            scopes=[ADMIN],
            ttl_seconds=3600,
        )
        yield f"http://127.0.0.1:{port}", token


def _no_secret(response: requests.Response, token: str) -> None:
    body = response.text
    assert SECRET not in body and token not in body, "a response carries a secret"


def _fuzz(base: str, headers: dict[str, str], modes: list[GenerationMode], token: str) -> int:
    schema = schemathesis.openapi.from_url(f"{base}/api/v1/openapi.json")
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]
        if operation.definition.raw.get("operationId") in SKIPPED:
            continue
        for mode in modes:
            strategy = operation.as_strategy(generation_mode=mode)

            @hypothesis.given(case=strategy)
            @hypothesis.settings(
                max_examples=EXAMPLES,
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
