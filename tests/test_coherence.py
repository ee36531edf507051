"""Many processes, one fleet: a change made by any process (the CLI, another replica, an MCP tool) reaches
every running server, through the database they share (NOTIFY on PostgreSQL, `PRAGMA data_version` on
SQLite). The servers here are real `infrastructor serve` processes, reached by real MCP clients over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError
from mcp import MCPError
from mcp.client.subscriptions import listen
from sqlalchemy import delete

from mcp_server.db.tables import DeviceRow, RegistryChange
from mcp_server.devices import DeviceSpec
from mcp_server.events import DeviceChanged
from mcp_server.server import build_server
from mcp_server.settings import Settings
from mcp_server.state import open_state
from tests.app_fixtures import create_pg_database, drop_pg_database, make_settings
from tests.helpers import call_tool, free_port, server_process
from tests.lb_proxy import RoundRobinProxy
from tests.sshd import SshdFleet
from tests.test_config_tools import Updates

CLI = str(Path(sys.executable).parent / "infrastructor")
WITHIN = 20.0  # a bound for the polling loops below, not a timing expectation (the feed takes ~1 s)


def server_env(tmp_path: Path, name: str, url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFRA_")}
    return (
        env
        | {
            "INFRA_DATA_DIR": str(tmp_path / name),
            "INFRA_SSH_KNOWN_HOSTS": str(tmp_path / name / "known_hosts"),
            "INFRA_DATABASE_URL": url,
            "INFRA_AUTH": "false",
            "INFRA_LOCAL_DEVICE": "false",  # "local" would be a different machine per process
            "INFRA_REPLICA_NAME": name,
            "INFRA_LOG_LEVEL": "INFO",
            "INFRA_SSH_FILE_DIRS": tempfile.gettempdir(),  # the sshd fleet's client key lives there
            "INFRA_CONFIG_WATCH_ALLOW": f"{tempfile.gettempdir()}/*",
            "INFRA_SSH_CONNECT_TIMEOUT": "5",
            "INFRA_POLL_ENABLED": "false",
        }
        | extra
    )


@dataclass
class Replica:
    url: str  # its MCP endpoint
    process: subprocess.Popen[bytes]


@contextlib.contextmanager
def replica(tmp_path: Path, name: str, url: str, **extra: str) -> Iterator[Replica]:
    """`infrastructor serve` on a free port, once /health answers; stopped (if still running) on exit."""
    port = free_port()
    env = server_env(tmp_path, name, url, **extra)
    with server_process([CLI, "serve", "--port", str(port)], port, env, tmp_path / f"{name}.log") as process:
        yield Replica(f"http://127.0.0.1:{port}/mcp", process)


async def add_fleet_device(client: Client[Any], sshd_fleet: SshdFleet, name: str) -> None:
    """Register the fleet's alpha host under `name` through a replica's add_device tool."""
    alpha = sshd_fleet.hosts["alpha"]
    await call_tool(
        client,
        "add_device",
        name=name,
        hostname=alpha.hostname,
        port=alpha.port,
        username=sshd_fleet.username,
        key_path=str(sshd_fleet.client_key_path),
    )


async def cli(tmp_path: Path, url: str, *args: str) -> str:
    """Run the CLI as its own process on the same database; its stderr (it must succeed)."""
    done = await asyncio.to_thread(
        subprocess.run,
        [CLI, *args],
        env=server_env(tmp_path, "cli", url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll `check` until it holds, at most WITHIN seconds."""
    deadline = asyncio.get_running_loop().time() + WITHIN
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"not within {WITHIN:g}s: {what}")
        await asyncio.sleep(0.1)


async def device_on(client: Client[Any], name: str) -> dict[str, Any] | None:
    """The device as this server's get_device tool returns it, or None when the server does not know it."""
    try:
        return await call_tool(client, "get_device", device=name)
    except ToolError as exc:
        assert "Unknown device" in str(exc), exc
        return None


@pytest.fixture
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The shared database of the processes under test: a SQLite file or a throwaway PostgreSQL database."""
    if getattr(request, "param", "postgresql") == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
        return
    url = await create_pg_database()
    try:
        yield url
    finally:
        await drop_pg_database(url)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"], indirect=True)
async def test_devices_added_updated_and_removed_by_other_processes_reach_a_running_server(
    database: str, tmp_path: Path
) -> None:
    with replica(tmp_path, "server", database) as server:
        async with Client(server.url) as client:
            assert await device_on(client, "nas01") is None
            await cli(tmp_path, database, "devices", "add", "nas01", "192.0.2.10", "--port", "2222")

            async def added() -> bool:
                return (await device_on(client, "nas01") or {}).get("port") == 2222

            await eventually(added, "the server knows the device the CLI added")
            # the server's own tools now agree with the database: it exists, and can be changed there
            with pytest.raises(ToolError, match="already exists"):
                await call_tool(client, "add_device", name="nas01", hostname="192.0.2.10")
            await call_tool(client, "update_device", device="nas01", description="from the server")

            # a change by another process (not the CLI here: it has no update command), which reads the
            # server's change from the database as it opens
            settings = make_settings(tmp_path / "other", database_url=database, local_device=False)
            async with open_state(settings) as other:
                assert other.devices.get("nas01").description == "from the server"
                await other.devices.update("nas01", {"port": 2200, "tags": ("nas",)})

            async def updated() -> bool:
                found = await device_on(client, "nas01") or {}
                return (found.get("port"), found.get("tags")) == (2200, ["nas"])

            await eventually(updated, "the server sees the port and tags another process changed")

            await cli(tmp_path, database, "devices", "remove", "nas01")

            async def removed() -> bool:
                return await device_on(client, "nas01") is None

            await eventually(removed, "the server forgets the device the CLI removed")
            added_again = await call_tool(client, "add_device", name="nas01", hostname="192.0.2.11")
            assert added_again["hostname"] == "192.0.2.11"


async def test_two_replicas_on_postgresql_see_each_others_device_changes_through_their_tools(
    database: str, tmp_path: Path
) -> None:
    with (
        replica(tmp_path, "replica-a", database) as replica_a,
        replica(tmp_path, "replica-b", database) as replica_b,
    ):
        async with Client(replica_a.url) as a, Client(replica_b.url) as b:
            await call_tool(a, "add_device", name="web01", hostname="192.0.2.20", tags=["web"])

            async def b_knows() -> bool:
                return (await device_on(b, "web01") or {}).get("tags") == ["web"]

            await eventually(b_knows, "replica B knows the device added through replica A")
            await call_tool(b, "update_device", device="web01", port=2022)

            async def a_updated() -> bool:
                return (await device_on(a, "web01") or {}).get("port") == 2022

            await eventually(a_updated, "replica A sees the port changed through replica B")
            await call_tool(a, "remove_device", device="web01")

            async def b_forgot() -> bool:
                return await device_on(b, "web01") is None

            await eventually(b_forgot, "replica B forgets the device removed through replica A")


async def test_a_changed_device_loses_its_pooled_connection_on_every_server(
    sshd_fleet: SshdFleet, tmp_path: Path
) -> None:
    """Replica B holds a pooled SSH connection to alpha; when replica A points the device at beta, B closes
    that connection (alpha's sshd sees the disconnect) and its next collection reaches beta."""
    database = await create_pg_database()
    alpha, beta = sshd_fleet.hosts["alpha"], sshd_fleet.hosts["beta"]
    try:
        with (
            replica(tmp_path, "replica-a", database) as replica_a,
            replica(tmp_path, "replica-b", database) as replica_b,
        ):
            async with Client(replica_a.url) as a, Client(replica_b.url) as b:
                await add_fleet_device(a, sshd_fleet, "moving")

                async def b_knows() -> bool:
                    return await device_on(b, "moving") is not None

                await eventually(b_knows, "replica B knows the device")
                first = await call_tool(b, "collect", device="moving", command="os_info")
                assert first["device"] == "moving"
                assert (await device_on(b, "moving") or {}).get("connected") is True
                disconnects = alpha.disconnects()
                await call_tool(a, "update_device", device="moving", port=beta.port)

                async def b_dropped() -> bool:
                    found = await device_on(b, "moving") or {}
                    return found.get("port") == beta.port and found.get("connected") is False

                await eventually(b_dropped, "replica B closed its connection to the old address")
                await eventually(_more(alpha.disconnects, disconnects), "alpha's sshd saw the disconnect")
                await call_tool(b, "collect", device="moving", command="os_info", force_refresh=True)
                assert (await device_on(b, "moving") or {}).get("connected") is True
    finally:
        await drop_pg_database(database)


def _more(count: Callable[[], int], than: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return count() > than

    return check


async def test_the_change_feed_reconnects_after_its_listening_connection_is_killed(tmp_path: Path) -> None:
    """PostgreSQL: the server's LISTEN connection is terminated by the database; the feed opens a new one,
    catches up on what was committed meanwhile, and goes on hearing new changes."""
    database = await create_pg_database()
    try:
        settings = make_settings(tmp_path, database_url=database, local_device=False)
        writer_settings = make_settings(tmp_path / "writer", database_url=database, local_device=False)
        server = build_server(settings)
        async with Client(server) as client, open_state(writer_settings) as writer:
            await writer.devices.add("one", DeviceSpec(hostname="192.0.2.1"))
            await eventually(_known(client, "one"), "the server hears the first change")
            assert server.app_state is not None and server.app_state.feed is not None
            feed = server.app_state.feed
            listening, reconnects = feed.backend_pid, feed.reconnects
            admin = await asyncpg.connect(database.replace("postgresql+asyncpg://", "postgresql://"))
            try:
                assert await admin.fetchval("SELECT pg_terminate_backend($1)", listening)
            finally:
                await admin.close()
            await writer.devices.add("two", DeviceSpec(hostname="192.0.2.2"))
            await eventually(_known(client, "two"), "the server hears a change made after the kill")
            await writer.devices.add("three", DeviceSpec(hostname="192.0.2.3"))
            await eventually(_known(client, "three"), "and the next one")
            assert feed.reconnects > reconnects and feed.backend_pid != listening
    finally:
        await drop_pg_database(database)


def _known(client: Client[Any], name: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await device_on(client, name) is not None

    return check


class Seen:
    """The resource-updated notifications one subscriber received."""

    def __init__(self) -> None:
        self.uris: list[str] = []

    async def collect(self, subscription: Any) -> None:
        async for event in subscription:
            self.uris.append(str(getattr(event, "uri", "")))


async def test_a_config_change_reaches_the_subscribers_of_every_replica_once(
    sshd_fleet: SshdFleet, tmp_path: Path
) -> None:
    """Two replicas share a device's watched file. Only one of them runs the device's watcher (its watch
    lease); each change is stored once, and each subscriber, on either replica and in either protocol era,
    is told once, by the replica it is connected to."""
    database = await create_pg_database()
    conf = sshd_fleet.scratch_dir() / "coherence-app.conf"
    conf.write_text("a=1\n")
    uri = f"infra://config/alpha{conf}"
    try:
        fast = {"INFRA_CONFIG_DEBOUNCE": "0.05"}
        with (
            replica(tmp_path, "replica-a", database, **fast) as replica_a,
            replica(tmp_path, "replica-b", database, **fast) as replica_b,
        ):
            updates_b = Updates()
            async with (
                Client(replica_a.url) as a,
                Client(replica_b.url) as b,
                Client(replica_b.url, mode="legacy", message_handler=updates_b) as legacy_b,
            ):
                await add_fleet_device(a, sshd_fleet, "alpha")
                await call_tool(a, "watch_config_file", device="alpha", path=str(conf))

                async def b_subscribed() -> bool:
                    try:
                        with pytest.warns(Warning, match="resources/subscribe is removed"):
                            await legacy_b.session.subscribe_resource(uri)
                    except MCPError:
                        return False  # B does not know the device or the watched file yet
                    return True

                await eventually(b_subscribed, "replica B accepts a subscription to the file watched on A")
                seen = {"a": Seen(), "b": Seen()}
                async with (
                    listen(a.session, resource_subscriptions=[uri]) as on_a,
                    listen(b.session, resource_subscriptions=[uri]) as on_b,
                    asyncio.TaskGroup() as tasks,
                ):
                    readers = [
                        tasks.create_task(seen["a"].collect(on_a)),
                        tasks.create_task(seen["b"].collect(on_b)),
                    ]
                    for round, content in enumerate(["a=2\n", "a=3\n"], start=1):
                        await _watching(a, b)  # the watcher is up (and sees writes) before the write
                        conf.write_text(content)

                        async def told(n: int = round) -> bool:
                            lists = [seen["a"].uris, seen["b"].uris, updates_b.uris]
                            return all(len(uris) >= n for uris in lists)

                        await eventually(told, f"change {round} reached every subscriber")
                    for reader in readers:
                        reader.cancel()
                assert seen["a"].uris == seen["b"].uris == updates_b.uris == [uri, uri]
                changes = await call_tool(b, "list_config_changes", device="alpha")
                assert [c["change_type"] for c in changes["changes"]] == ["modified", "modified"]
                history = await call_tool(a, "get_config_history", device="alpha", path=str(conf))
                assert len(history["versions"]) == 3  # the first version and one per change, none twice
        # both replicas have stopped and flushed: the event stream's log holds each change once, not once
        # per replica (the other learnt it from the change feed)
        admin = await asyncpg.connect(database.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            logged = await admin.fetchval("SELECT count(*) FROM event_log WHERE kind = 'config_change'")
        finally:
            await admin.close()
        assert logged == 2
    finally:
        await drop_pg_database(database)


async def _watching(a: Client[Any], b: Client[Any]) -> None:
    """Exactly one replica runs the device's watcher, and it is watching; the other says who does."""

    async def one_watches() -> bool:
        modes = []
        for client in (a, b):
            status = (await call_tool(client, "list_watched_files", device="alpha"))["status"]
            modes.append(status[0]["mode"] if status else "none")
        return sorted(modes) in (["by another replica", "inotify"], ["by another replica", "polling"])

    await eventually(one_watches, "one replica watches alpha and the other defers to it")


# ---- behind a load balancer ---------------------------------------------------------------------------------


def _port(url: str) -> int:
    return int(url.split(":")[2].split("/")[0])


async def test_two_replicas_behind_a_round_robin_proxy_answer_stateless_clients_as_one_server(
    tmp_path: Path,
) -> None:
    """The 2026-07-28 protocol has no session: any replica can answer any request. A device added through
    whichever replica got the call is then found through every replica the proxy sends the next calls to."""
    database = await create_pg_database()
    try:
        with (
            replica(tmp_path, "replica-a", database) as replica_a,
            replica(tmp_path, "replica-b", database) as replica_b,
        ):
            async with (
                RoundRobinProxy([_port(replica_a.url), _port(replica_b.url)]) as proxy,
                Client(proxy.url) as client,
            ):
                await call_tool(client, "add_device", name="lb01", hostname="192.0.2.30", tags=["edge"])

                async def everywhere() -> bool:
                    found = [await device_on(client, "lb01") for _ in range(4)]
                    return all(f is not None and f["tags"] == ["edge"] for f in found)

                await eventually(everywhere, "every replica behind the proxy finds the device")
                await call_tool(client, "remove_device", device="lb01")

                async def nowhere() -> bool:
                    return [await device_on(client, "lb01") for _ in range(4)] == [None] * 4

                await eventually(nowhere, "no replica behind the proxy finds it after its removal")
            assert set(proxy.served) == {_port(replica_a.url), _port(replica_b.url)}
            assert min(proxy.served.values()) >= 4
    finally:
        await drop_pg_database(database)


async def test_2025_sessions_behind_the_proxy_need_it_to_stick_each_session_to_its_replica(
    tmp_path: Path,
) -> None:
    """A 2025 session lives in the replica that created it. Round robin sends its next request to the other
    replica, which does not know it; a proxy that routes by Mcp-Session-Id keeps every session working."""
    database = await create_pg_database()
    try:
        with (
            replica(tmp_path, "replica-a", database) as replica_a,
            replica(tmp_path, "replica-b", database) as replica_b,
        ):
            ports = [_port(replica_a.url), _port(replica_b.url)]
            async with RoundRobinProxy(ports) as proxy:
                with pytest.raises(MCPError, match="Session not found"):
                    async with asyncio.timeout(60), Client(proxy.url, mode="legacy") as client:
                        for _ in range(3):
                            await call_tool(client, "list_devices")
            async with (
                RoundRobinProxy(ports, sticky=True) as proxy,
                Client(proxy.url, mode="legacy") as one,
                Client(proxy.url, mode="legacy") as two,
            ):
                await call_tool(one, "add_device", name="sticky01", hostname="192.0.2.40")
                for _ in range(3):
                    for client in (one, two):
                        await call_tool(client, "list_devices")

                async def both_know() -> bool:
                    return all([await device_on(c, "sticky01") is not None for c in (one, two)])

                await eventually(both_know, "both sessions, on different replicas, find the device")
            assert len(proxy.by_session) == 2
            assert [len(backends) for backends in proxy.by_session.values()] == [1, 1]
            assert set().union(*proxy.by_session.values()) == set(ports)
    finally:
        await drop_pg_database(database)


async def test_when_the_replica_watching_a_device_dies_another_takes_its_watch_over(
    sshd_fleet: SshdFleet, tmp_path: Path
) -> None:
    """The watch lease is a lock on the holder's database connection: killed without a word, the holder
    loses it with its connection, and the other replica watches the device and records the next change."""
    database = await create_pg_database()
    conf = sshd_fleet.scratch_dir() / "coherence-failover.conf"
    conf.write_text("a=1\n")
    try:
        fast = {"INFRA_CONFIG_DEBOUNCE": "0.05"}
        with (
            replica(tmp_path, "replica-a", database, **fast) as replica_a,
            replica(tmp_path, "replica-b", database, **fast) as replica_b,
        ):
            async with Client(replica_a.url) as a, Client(replica_b.url) as b:
                await add_fleet_device(a, sshd_fleet, "alpha")
                await call_tool(a, "watch_config_file", device="alpha", path=str(conf))
                await _watching(a, b)
                status = (await call_tool(a, "list_watched_files", device="alpha"))["status"]
                a_holds = status[0]["mode"] != "by another replica"
            holder, survivor = (replica_a, replica_b) if a_holds else (replica_b, replica_a)
            holder.process.kill()
            holder.process.wait(timeout=30)
            async with Client(survivor.url) as client:

                async def taken_over() -> bool:
                    status = (await call_tool(client, "list_watched_files", device="alpha"))["status"]
                    return status[0]["mode"] in ("inotify", "polling")

                await eventually(taken_over, "the surviving replica watches alpha")
                conf.write_text("a=2\n")

                async def recorded() -> bool:
                    found = await call_tool(client, "list_config_changes", device="alpha")
                    return [c["change_type"] for c in found["changes"]] == ["modified"]

                await eventually(recorded, "the surviving replica's watcher records the change")
    finally:
        await drop_pg_database(database)


# ---- in one process: the feed itself ------------------------------------------------------------------------


async def test_changes_from_other_processes_are_published_on_the_servers_event_bus_once_each(
    settings: Settings, tmp_path: Path
) -> None:
    """What the feed applies is an event on the server's own bus, as if made there: watchers follow it, and
    so does anything streaming the bus's events to clients."""
    server = build_server(settings)
    writer_settings = make_settings(tmp_path / "writer", database_url=settings.database_url)
    async with Client(server) as client, open_state(writer_settings) as writer:
        assert server.app_state is not None
        queue = server.app_state.events.subscribe_queue(types=(DeviceChanged,))
        await writer.devices.add("db01", DeviceSpec(hostname="192.0.2.50"))
        await writer.devices.update("db01", {"port": 2201})
        await writer.devices.remove("db01")
        await writer.devices.add("db02", DeviceSpec(hostname="192.0.2.51"))
        await eventually(_known(client, "db02"), "the server applied every change")
        events = [queue.get_nowait() for _ in range(queue.qsize())]
    changes = [(e.device, e.change) for e in events if isinstance(e, DeviceChanged)]
    assert len(changes) == len(events) and changes in (
        # one batch of rows reloads db01 once (it is gone by then); rows read one by one give each change
        [("db01", "added"), ("db01", "updated"), ("db01", "removed"), ("db02", "added")],
        [("db01", "added"), ("db01", "removed"), ("db02", "added")],
        [("db02", "added")],
    )


async def test_a_server_whose_changes_were_pruned_meanwhile_reloads_every_device(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    """Change rows live an hour. A server that finds the rows after its last one gone (the next one it reads
    is not the next id) cannot know what it missed, so it re-reads every device."""
    server = build_server(sqlite_settings)
    async with Client(server) as client:
        assert server.app_state is not None
        db = server.app_state.db
        now = datetime.now(UTC)
        async with db.session() as session, session.begin():
            for name in ("hidden", "visible"):
                session.add(
                    DeviceRow(name=name, hostname="192.0.2.60", created_at=now, updated_at=now, tags=[])
                )
            await session.execute(delete(RegistryChange))
            session.add(
                RegistryChange(id=100, changed_at=now, kind="device", device="visible", origin="elsewhere")
            )
        await eventually(_known(client, "visible"), "the server applied the change it read")
        assert await device_on(client, "hidden") is not None
