"""Every call a client saw answered has exactly one audit row, whatever happens to the server: a SIGKILL at a
random moment under concurrent load, a database that hangs, a shutdown. Real `infrastructor serve` processes
over HTTP and stdio, real SQLite files and PostgreSQL, a real TCP proxy that stops forwarding."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport
from fastmcp.exceptions import ToolError

from mcp_server.polling.breaker import REFRESH_AFTER
from mcp_server.polling.service import audit_pipeline
from mcp_server.server import build_server
from mcp_server.state import open_state
from tests.app_fixtures import create_pg_database, drop_pg_database, make_settings
from tests.helpers import free_port, server_process, structured
from tests.test_audit import _accept_connections
from tests.test_transports import CLI, cli_env

CLIENTS = 12
TOOL = "list_commands"  # answers from memory, touches no database: the audit is the only write


def _server_env(tmp_path: Path, url: str | None, **extra: str) -> dict[str, str]:
    env = cli_env(
        tmp_path,
        INFRA_AUTH="false",
        INFRA_HTTP_RATE_LIMIT="1000000",
        INFRA_HTTP_RATE_BURST="1000000",
        INFRA_AUDIT_FLUSH_INTERVAL="0.1",
        **extra,
    )
    if url is not None:
        env["INFRA_DATABASE_URL"] = url
    return env


@contextlib.contextmanager
def serving(
    tmp_path: Path, url: str | None, name: str, **extra: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`infrastructor serve` over HTTP on a free port; killed at the end if still running."""
    port = free_port()
    env = _server_env(tmp_path, url, **extra)
    with server_process([CLI, "serve", "--port", str(port)], port, env, tmp_path / f"{name}.log") as proc:
        yield f"http://127.0.0.1:{port}", proc


async def _agent(base: str, me: int, answered: set[str], sent: set[str], stop: asyncio.Event) -> None:
    """One client calling TOOL with a unique argument until `stop` or its server dies."""
    with contextlib.suppress(Exception):
        async with Client(StreamableHttpTransport(f"{base}/mcp")) as client:
            for i in range(100_000):
                if stop.is_set():
                    return
                tag = f"c{me}-{i}"
                sent.add(tag)
                result = await client.call_tool(TOOL, {"category": tag})
                assert structured(result)["total"] == 0
                answered.add(tag)


async def _load(
    base: str, stop: asyncio.Event, clients: int = CLIENTS
) -> tuple[set[str], set[str], list[asyncio.Task[None]]]:
    answered: set[str] = set()
    sent: set[str] = set()
    tasks = [asyncio.create_task(_agent(base, me, answered, sent, stop)) for me in range(clients)]
    return answered, sent, tasks


async def _until_answering(answered: set[str], calls: int = 2 * CLIENTS) -> None:
    """Wait (bounded) until the clients have had `calls` answers: the load is on."""
    deadline = time.monotonic() + 30
    while len(answered) < calls and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def audited_tags(url: str | None, tmp_path: Path) -> Counter[str]:
    """How many tool rows of TOOL the database holds per `category` argument."""
    query = "SELECT arguments FROM data_collection_audit WHERE kind = 'tool' AND tool = 'list_commands'"
    if url is None:
        with sqlite3.connect(tmp_path / "data" / "infrastructor.db") as conn:
            values = [json.loads(r[0]) for r in conn.execute(query) if r[0]]
    else:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            values = [json.loads(r[0]) for r in await conn.fetch(query) if r[0]]
        finally:
            await conn.close()
    return Counter(v.get("category") for v in values)


async def shipped_everything(base: str, timeout: float = 30) -> dict[str, Any]:
    """Ask the server until its audit pipeline has nothing left to ship (bounded; a refusal while it catches
    up is retried); its last answer."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            async with Client(StreamableHttpTransport(f"{base}/mcp")) as client:
                last = structured(await client.call_tool("get_service_health", {}))["audit"]
        except Exception as exc:  # overloaded until the journal drains
            last = exc
        if isinstance(last, dict) and last["pending_rows"] == 0 and last["journal_bytes"] == 0:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"the audit pipeline did not drain: {last}")


def assert_exactly_once(answered: set[str], sent: set[str], rows: Counter[str]) -> None:
    assert answered, "no call was answered before the kill"
    missing = sorted(answered - set(rows))
    twice = sorted(tag for tag, n in rows.items() if n > 1)
    assert not missing, f"{len(missing)} of {len(answered)} answered calls have no audit row: {missing[:5]}"
    assert not twice, f"audited more than once: {twice[:5]}"
    assert set(rows) <= sent


@pytest.fixture(params=["sqlite", "postgresql"])
async def database(request: pytest.FixtureRequest) -> AsyncIterator[str | None]:
    """None for the server's default SQLite file, else a throwaway PostgreSQL database's URL."""
    if request.param == "sqlite":
        yield None
        return
    url = await create_pg_database()
    try:
        yield url
    finally:
        await drop_pg_database(url)


# runs under concurrent load and with a single caller (each call's row journaled by the call itself, see
# BatchWriter.durable), in both modes that answer only once the rows are in the journal
@pytest.mark.parametrize(
    ("run", "clients", "sync"),
    [(0, CLIENTS, "write"), (1, CLIENTS, "fsync"), (2, 1, "write"), (3, 1, "fsync")],
)
async def test_sigkill_under_load_loses_no_answered_call_and_duplicates_none(
    tmp_path: Path, database: str | None, run: int, clients: int, sync: str
) -> None:
    stop = asyncio.Event()
    with serving(tmp_path, database, f"first-{run}", INFRA_AUDIT_SYNC=sync) as (base, proc):
        answered, sent, tasks = await _load(base, stop, clients)
        await _until_answering(answered)
        await asyncio.sleep(random.uniform(0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    with serving(tmp_path, database, f"second-{run}") as (base, _):
        await shipped_everything(base)
        assert_exactly_once(answered, sent, await audited_tags(database, tmp_path))


class Stall:
    """A TCP proxy in front of PostgreSQL that can stop forwarding (connections held, nothing answered). It
    runs its own event loop in a thread, so the test's blocking waits never stall it."""

    def __init__(self, upstream_port: int = 5432) -> None:
        self.upstream_port = upstream_port
        self.loop = asyncio.new_event_loop()
        self.flowing = asyncio.Event()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0

    def __enter__(self) -> Stall:
        self.thread.start()
        started = asyncio.run_coroutine_threadsafe(self._start(), self.loop)
        self.server = started.result(10)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    async def _stop(self) -> None:
        self.server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _start(self) -> asyncio.Server:
        self.flowing.set()
        return await asyncio.start_server(self._serve, "127.0.0.1", 0)

    def flow(self, on: bool) -> None:
        self.loop.call_soon_threadsafe(self.flowing.set if on else self.flowing.clear)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.flowing.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    await self.flowing.wait()
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def url(self, database_url: str) -> str:
        return database_url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{self.port}/")


@pytest.mark.parametrize("end", ["resumes", "killed", "terminated"])
async def test_a_hanging_database_fails_no_call_and_gets_every_row_once(tmp_path: Path, end: str) -> None:
    """The database stops answering (connections held) under load: calls go on being answered; the rows
    arrive once when it answers again, also when the server is SIGKILLed or SIGTERMed during the hang."""
    hang = float(os.environ.get("INFRA_TEST_HANG_SECONDS", "5"))
    url = await create_pg_database()
    try:
        with Stall() as stall:
            stop = asyncio.Event()
            extra = {"INFRA_AUDIT_WRITE_TIMEOUT": "1"}
            with serving(tmp_path, stall.url(url), "hang", **extra) as (base, proc):
                answered, sent, tasks = await _load(base, stop)
                await _until_answering(answered)
                stall.flow(False)
                before = len(answered)
                await asyncio.sleep(hang)
                during = len(answered) - before
                if end != "resumes":
                    started = time.monotonic()
                    proc.send_signal(signal.SIGKILL if end == "killed" else signal.SIGTERM)
                    await asyncio.to_thread(proc.wait, 30)
                    print(f"server ended {time.monotonic() - started:.2f} s after {end} during the hang")
                stall.flow(True)
                stop.set()
                await asyncio.wait_for(asyncio.gather(*tasks), 30)
                if end == "resumes":
                    assert answered == sent, "a call failed while the database hung"
                    audit = await shipped_everything(base)
                    assert audit["last_error"] and "timed out" in audit["last_error"]
            assert during > CLIENTS, "calls stopped being answered while the database hung"
            if end != "resumes":
                with serving(tmp_path, stall.url(url), "after") as (base, _):
                    await shipped_everything(base)
            assert_exactly_once(answered, sent, await audited_tags(url, tmp_path))
    finally:
        await drop_pg_database(url)


def _rpc(proc: subprocess.Popen[bytes], message: dict[str, Any]) -> None:
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(message).encode() + b"\n")
    proc.stdin.flush()


def _reply(proc: subprocess.Popen[bytes], id_: int) -> dict[str, Any]:
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        assert line, "the server closed stdout"
        message = json.loads(line)
        if message.get("id") == id_:
            return message  # type: ignore[no-any-return]


def test_stdio_server_exits_when_stdin_closes_with_every_row_kept(tmp_path: Path) -> None:
    """Closing stdin ends `serve --stdio` promptly; the calls it answered are audited once (shipped at exit,
    or journaled and shipped by the next process to open the data dir)."""
    proc = subprocess.Popen(
        [CLI, "serve", "--stdio"],
        env=_server_env(tmp_path, None),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "stdio.log").open("w"),
    )
    try:
        _rpc(proc, {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})  # fmt: skip
        _reply(proc, 0)
        _rpc(proc, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        for i in range(1, 21):
            _rpc(proc, {"jsonrpc": "2.0", "id": i, "method": "tools/call",
                        "params": {"name": TOOL, "arguments": {"category": f"stdio-{i}"}}})  # fmt: skip
            assert "error" not in _reply(proc, i)
        assert proc.stdin is not None
        started = time.monotonic()
        proc.stdin.close()
        proc.wait(timeout=30)
        print(f"stdio server exited {time.monotonic() - started:.2f} s after stdin closed")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, (tmp_path / "stdio.log").read_text()
    assert (
        subprocess.run([CLI, "devices", "list"], env=_server_env(tmp_path, None), check=False).returncode == 0
    )
    rows = asyncio.run(audited_tags(None, tmp_path))
    assert {f"stdio-{i}" for i in range(1, 21)} == {t for t, n in rows.items() if n == 1} == set(rows)


async def test_sigterm_under_load_exits_promptly_with_every_row_kept(tmp_path: Path) -> None:
    stop = asyncio.Event()
    with serving(tmp_path, None, "term") as (base, proc):
        answered, sent, tasks = await _load(base, stop)
        await _until_answering(answered)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 30)
        print(f"HTTP server exited {time.monotonic() - started:.2f} s after SIGTERM")
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    with serving(tmp_path, None, "again") as (base, _):
        await shipped_everything(base)
    assert_exactly_once(answered, sent, await audited_tags(None, tmp_path))


# ---- backpressure and what the server says about its audit ---------------------------------------------


async def test_calls_are_refused_and_audited_while_the_journal_waits_for_the_database(tmp_path: Path) -> None:
    """Past INFRA_AUDIT_JOURNAL_MAX_MB of rows the database has not taken, new calls get an MCP error (the
    transport is not HTTP here), each refusal audited; get_service_health shows the backlog and warns; once
    the database is back, calls are answered again and every row arrives once."""
    url = await create_pg_database()
    name = url.rsplit("/", 1)[1]
    settings = make_settings(
        tmp_path, database_url=url, audit_journal_max_mb=0.01, audit_lag_warning=0.2, audit_write_timeout=1
    )
    try:
        async with open_state(settings) as state, Client(build_server(settings, state=state)) as client:
            await _accept_connections(name, False)
            await state.db.engine.dispose()
            refused = None
            for i in range(200):
                try:
                    await client.call_tool(TOOL, {"category": f"big-{i}-" + "x" * 2000})
                except ToolError as exc:
                    refused = (i, str(exc))
                    break
            assert refused is not None, "no call was refused"
            assert "overloaded" in refused[1] and "INFRA_AUDIT_JOURNAL_MAX_MB" in refused[1]
            health = state.writer.status()
            assert health.pending_rows > 0 and health.journal_bytes >= 10_000 and health.refused_calls == 1
            await asyncio.sleep(0.3)
            pipeline = audit_pipeline(state)
            assert pipeline.warning is not None and "behind" in pipeline.warning
            assert pipeline.last_error is not None
            await _accept_connections(name, True)
            await state.writer.flush(30)
            assert state.writer.overloaded() is None
            await client.call_tool(TOOL, {"category": "after"})
            page = await state.audit_page(limit=1000, offset=0)
            assert page.unshipped_rows == 0 and page.oldest_unshipped_seconds is None
        tags = await audited_tags(url, tmp_path)
        assert {f"big-{i}" for i in range(refused[0] + 1)} == {
            t.rsplit("-", 1)[0] for t in tags if t.startswith("big-")
        }
        assert tags["after"] == 1 and all(n == 1 for n in tags.values())
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            denied = await conn.fetchval(
                "SELECT count(*) FROM data_collection_audit WHERE outcome = 'denied' AND error_type = 'overloaded'"
            )
        finally:
            await conn.close()
        assert denied == 1
    finally:
        await _accept_connections(name, True)
        await drop_pg_database(url)


async def test_http_calls_get_503_with_retry_after_while_the_database_hangs_past_the_journal_cap(
    tmp_path: Path,
) -> None:
    url = await create_pg_database()
    try:
        with Stall() as stall:
            extra = {"INFRA_AUDIT_WRITE_TIMEOUT": "1", "INFRA_AUDIT_JOURNAL_MAX_MB": "0.01"}
            with serving(tmp_path, stall.url(url), "cap", **extra) as (base, _):
                stall.flow(False)
                with contextlib.suppress(Exception):
                    async with Client(StreamableHttpTransport(f"{base}/mcp")) as client:
                        for i in range(200):
                            await client.call_tool(TOOL, {"category": f"{i}-" + "x" * 3000})
                request = urllib.request.Request(f"{base}/mcp", b"{}", {"Content-Type": "application/json"})
                with pytest.raises(urllib.error.HTTPError) as refused:
                    await asyncio.to_thread(urllib.request.urlopen, request, timeout=10)
                status, retry = refused.value.code, refused.value.headers.get("Retry-After")
                assert status == 503 and retry is not None and int(retry) >= 1
                stall.flow(True)
                audit = await shipped_everything(base)
                assert audit["refused_calls"] >= 1
                conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
                try:
                    refused = await conn.fetchval(
                        "SELECT count(*) FROM data_collection_audit WHERE kind = 'request' AND error_type = 'overloaded'"
                    )
                finally:
                    await conn.close()
                assert refused >= 1
    finally:
        await drop_pg_database(url)


async def test_calls_that_read_a_hanging_database_fail_at_its_deadline_and_memory_answers_go_on(
    tmp_path: Path,
) -> None:
    """The database hangs (connections held, nothing answered): a call that must read it fails after
    INFRA_DB_READ_TIMEOUT with an error saying so (audited), instead of hanging with it; list_devices answers
    from the registry in memory; once the database answers again, so do the calls that read it."""
    url = await create_pg_database()
    try:
        with Stall() as stall:
            settings = make_settings(
                tmp_path, database_url=stall.url(url), db_read_timeout=1, audit_write_timeout=1
            )
            async with open_state(settings) as state, Client(build_server(settings, state=state)) as client:
                assert structured(await client.call_tool("list_devices", {}))["total"] == 1
                stall.flow(False)
                await asyncio.sleep(REFRESH_AFTER)  # the next list_devices reloads the devices' health
                # bounded: the deadline (and SQLAlchemy's 2 s to drop a stuck connection), not the hang
                async with asyncio.timeout(30):
                    listed = structured(await client.call_tool("list_devices", {}))
                    assert [d["name"] for d in listed["devices"]] == ["local"]
                    for tool in ("query_audit_log", "get_metrics_history"):
                        arguments = (
                            {"device": "local", "metric": "cpu_percent"} if tool != "query_audit_log" else {}
                        )
                        with pytest.raises(ToolError) as failed:
                            await client.call_tool(tool, arguments)
                        assert "did not answer within 1 s (INFRA_DB_READ_TIMEOUT)" in str(failed.value)
                    assert structured(await client.call_tool("list_devices", {}))["total"] == 1
                stall.flow(True)
                await state.writer.flush(30)
                page = structured(await client.call_tool("query_audit_log", {"tool": "get_metrics_history"}))
        timed_out = [e for e in page["entries"] if e["error_type"] == "database_timeout"]
        assert len(timed_out) == 1 and timed_out[0]["outcome"] == "error"
    finally:
        await drop_pg_database(url)
