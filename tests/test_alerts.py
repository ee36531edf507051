"""Alert rules over the REST API and the CLI, evaluated against real collections and a real config change, and
delivered to a real HTTP receiver on loopback (ntfy, Gotify and JSON webhook formats, retries)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mcp_server.alerts import AlertService
from mcp_server.auth import ADMIN, WRITE
from mcp_server.db.tables import SecretRow
from mcp_server.settings import Settings
from tests.app_fixtures import audit_rows, make_settings
from tests.helpers import free_port, until
from tests.test_api import SECRET, Api, read_events, serve_api
from tests.test_transports import run_cli


@dataclass
class Receiver:
    """A real HTTP server on loopback that records what it is sent; it answers 500 to the first `fail`."""

    port: int
    fail: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def handle(self, request: Request) -> Response:
        self.attempts += 1
        if self.fail > 0:
            self.fail -= 1
            return Response("try later", status_code=500)
        body = await request.body()
        self.received.append(
            {
                "path": request.url.path,
                "query": dict(request.query_params),
                "headers": dict(request.headers),
                "body": body.decode(),
            }
        )
        return Response("ok")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    port = free_port()
    recv = Receiver(port)
    app = Starlette(routes=[Route("/{path:path}", recv.handle, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline and not task.done(), "the receiver did not start"
        await asyncio.sleep(0.02)
    try:
        yield recv
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


@pytest.fixture
async def api(settings: Settings, tmp_path: Path) -> AsyncIterator[Api]:
    fast = make_settings(
        tmp_path,
        database_url=settings.database_url,
        jwt_secret=SECRET,
        alert_backoff=0.05,
        alert_interval=3600,
        config_debounce=0.2,
    )
    async for served in serve_api(fast):
        yield served


async def test_rules_are_admin_only_with_their_url_encrypted_and_masked(api: Api, receiver: Receiver) -> None:
    topic = receiver.url("/infra-alerts-topic-9f2c")
    rule = {"kind": "disk_use", "channel": "ntfy", "url": topic, "threshold": 90}
    assert (await api.call("PUT", "/alerts/rules/disk-90", WRITE, json=rule)).status_code == 403
    created = await api.ok("PUT", "/alerts/rules/disk-90", ADMIN, json=rule)
    assert created["url"] == f"http://127.0.0.1:{receiver.port}/***" and created["created_by"] == "alice"
    listed = await api.ok("GET", "/alerts/rules", ADMIN)
    assert [r["name"] for r in listed["rules"]] == ["disk-90"] and "9f2c" not in json.dumps(listed)
    bad = await api.call("PUT", "/alerts/rules/x", ADMIN, json={**rule, "threshold": None})
    assert bad.status_code == 422 and "threshold: a disk_use rule needs" in bad.json()["detail"]
    loops = {**rule, "kind": "container_restarts", "threshold": 3}
    created_loops = await api.ok("PUT", "/alerts/rules/loops", ADMIN, json=loops)
    assert (created_loops["threshold"], created_loops["window_minutes"]) == (3, 10)  # the default window
    for wrong, message in (
        ({"threshold": 0.5}, "threshold: a container_restarts rule needs the number of restarts"),
        ({"window_minutes": 0}, "window_minutes: the minutes restarts are counted in"),
    ):
        refused = await api.call("PUT", "/alerts/rules/x", ADMIN, json={**loops, **wrong})
        assert refused.status_code == 422 and message in refused.json()["detail"], refused.json()
    await api.ok("DELETE", "/alerts/rules/loops", ADMIN)
    bad_url = await api.call("PUT", "/alerts/rules/x", ADMIN, json={**rule, "url": "file:///etc/passwd"})
    assert bad_url.status_code == 422 and bad_url.json()["detail"].startswith("url: must be an http(s) URL")
    async with api.state.db.read_session() as session:
        stored = (await session.scalars(select(SecretRow).where(SecretRow.name == "alert:disk-90"))).one()
    assert "9f2c" not in stored.ciphertext
    rows = await audit_rows(api.state, transport="api", tool="set_alert_rule")
    assert rows and all("9f2c" not in json.dumps(r.arguments) for r in rows)
    assert (await api.ok("DELETE", "/alerts/rules/disk-90", ADMIN))["removed"] == "disk-90"
    missing = await api.call("DELETE", "/alerts/rules/disk-90", ADMIN)
    assert missing.status_code == 422 and "no alert rule 'disk-90'" in missing.json()["detail"]


async def test_disk_rule_fires_once_per_condition_and_retries_a_failed_delivery(
    api: Api, receiver: Receiver
) -> None:
    state = api.state
    rule = {"kind": "disk_use", "channel": "webhook", "url": receiver.url("/hook"), "threshold": 1}
    await api.ok("PUT", "/alerts/rules/disk-any", ADMIN, json=rule)
    disks = await api.ok("GET", "/devices/local/disks")  # a real collection: its rows are the history
    mounts = {f["mount_point"] for f in disks["data"]["filesystems"] if f["use_percent"] >= 1}
    await state.writer.flush()
    receiver.fail = 1  # the first delivery fails and is retried
    alerts = AlertService(state)
    alerts.start()
    try:
        await until(lambda: len(receiver.received) == len(mounts), 30)
        assert await alerts.evaluate(claim=False) == []  # still holding: not sent again
        await asyncio.sleep(0.3)
        assert len(receiver.received) == len(mounts)
    finally:
        await alerts.stop()
    sent = [json.loads(r["body"]) for r in receiver.received]
    assert {s["alert"]["subject"] for s in sent} == {f"local:{m}" for m in mounts}
    assert all(s["text"] and s["content"] for s in sent)  # Slack and Discord read these
    assert receiver.attempts == len(mounts) + 1
    rows = await audit_rows(state, kind="alert")
    assert len(rows) == len(mounts) and all(r.outcome == "ok" for r in rows)
    assert sorted((r.arguments or {})["attempts"] for r in rows) == [1] * (len(mounts) - 1) + [2]


async def test_config_risk_rule_sends_ntfy_and_streams_the_alert(
    api: Api, receiver: Receiver, tmp_path: Path
) -> None:
    state = api.state
    await state.config.start()
    conf = tmp_path / "app.conf"
    conf.write_text("listen 80\n")
    await api.ok("POST", "/config/watched", WRITE, json={"device": "local", "path": str(conf)})
    rule = {"kind": "config_risk", "channel": "ntfy", "url": receiver.url("/topic"), "min_risk": "low"}
    await api.ok("PUT", "/alerts/rules/changes", ADMIN, json=rule)
    alerts = AlertService(state)
    alerts.start()
    stream = asyncio.create_task(read_events(api, 2, **{"Last-Event-ID": "0"}))
    try:
        conf.write_text("listen 8080\n")
        await until(lambda: bool(alerts._pending_changes), 30)
        (fired,) = await alerts.evaluate()
        await until(lambda: len(receiver.received) == 1, 30)
    finally:
        await alerts.stop()
    (sent,) = receiver.received
    assert sent["path"] == "/topic" and str(conf) in sent["body"]
    assert sent["headers"]["title"] == fired.title and sent["headers"]["priority"] == "4"
    events = await asyncio.wait_for(stream, 30)
    assert [e["event"] for e in events] == ["config_change", "alert"]
    assert events[1]["data"]["data"]["rule"] == "changes"


async def test_test_delivery_in_gotify_format_and_giving_up(api: Api, receiver: Receiver) -> None:
    url = receiver.url("/message?token=Agotifytoken123")
    await api.ok(
        "PUT", "/alerts/rules/gotify", ADMIN, json={"kind": "smart", "channel": "gotify", "url": url}
    )
    delivered = await api.ok("POST", "/alerts/rules/gotify/test", ADMIN)
    assert delivered == {"rule": "gotify", "ok": True, "attempts": 1, "status": 200, "error": None}
    (sent,) = receiver.received
    assert sent["query"] == {"token": "Agotifytoken123"}
    assert json.loads(sent["body"])["title"] == "Test alert"
    receiver.fail = 100
    failed = await api.ok("POST", "/alerts/rules/gotify/test", ADMIN)
    assert failed["ok"] is False and failed["attempts"] == 4 and failed["status"] == 500
    rows = await audit_rows(api.state, kind="alert", outcome="error")
    assert (
        rows
        and rows[0].error_message == "HTTP 500"
        and "Agotifytoken123" not in json.dumps(rows[0].arguments)
    )


def test_cli_sets_lists_and_removes_rules(tmp_path: Path) -> None:
    url = "https://ntfy.example/secret-topic-77"
    done = run_cli(
        tmp_path,
        "alerts",
        "set",
        "down",
        "--kind",
        "device_down",
        "--threshold",
        "10",
        "--channel",
        "ntfy",
        "--url",
        url,
    )
    assert done.returncode == 0, done.stderr
    listed = run_cli(tmp_path, "alerts", "list", COLUMNS="200")
    assert (
        "down" in listed.stdout
        and "ntfy.example/***" in listed.stdout
        and "secret-topic" not in listed.stdout
    )
    refused = run_cli(
        tmp_path, "alerts", "set", "Bad Name", "--kind", "smart", "--channel", "ntfy", "--url", url
    )
    assert refused.returncode == 2 and "name: must match" in refused.stderr
    assert run_cli(tmp_path, "alerts", "remove", "down").returncode == 0


async def test_a_read_only_server_takes_no_alert_rules(tmp_path: Path) -> None:
    async for api in serve_api(make_settings(tmp_path, jwt_secret=SECRET, read_only=True)):
        rule = {"kind": "smart", "channel": "ntfy", "url": "https://ntfy.example/t"}
        assert (await api.call("PUT", "/alerts/rules/r", ADMIN, json=rule)).status_code == 404
        assert (await api.ok("GET", "/alerts/rules", ADMIN))["total"] == 0


async def test_replicas_share_what_fired_and_take_turns_evaluating(api: Api, receiver: Receiver) -> None:
    state = api.state
    rule = {"kind": "disk_use", "channel": "webhook", "url": receiver.url("/hook"), "threshold": 1}
    await api.ok("PUT", "/alerts/rules/disk-any", ADMIN, json=rule)
    await api.ok("GET", "/devices/local/disks")
    await state.writer.flush()
    first, second = AlertService(state), AlertService(state)  # two replicas (or one, restarted)
    fired = await first.evaluate()
    assert fired and {a.rule for a in fired} == {"disk-any"}
    assert await second.evaluate() == []  # this interval is the first one's
    assert await second.evaluate(claim=False) == []  # and what fired is known to every replica
    await api.ok("PUT", "/alerts/rules/disk-any", ADMIN, json=rule)  # a changed rule starts afresh
    assert len(await second.evaluate(claim=False)) == len(fired)
