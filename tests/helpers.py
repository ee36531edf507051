"""Helpers the test modules share: polling with a deadline, calling a tool, ports, fixture hosts' programs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import mcp_types as mt
import pytest
from fastmcp import Client
from fastmcp.client.client import CallToolResult

FIXTURE_BIN = Path(__file__).parent / "fixture_bin"


def unavailable(suite: str, message: str) -> NoReturn:
    """A service a test needs is missing: skip, or fail where INFRA_TEST_REQUIRE_<SUITE>=1 (CI sets them so
    the SSH, PostgreSQL, container, Inspector and browser suites cannot pass by skipping)."""
    if os.environ.get(f"INFRA_TEST_REQUIRE_{suite.upper()}") == "1":
        pytest.fail(message)
    pytest.skip(message)


async def until(predicate: Callable[[], bool], within: float = 5.0, *, interval: float = 0.02) -> None:
    """Poll `predicate` until it holds; fail once `within` seconds have passed."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(interval)


async def call_tool(client: Client[Any], tool: str, **arguments: Any) -> dict[str, Any]:
    """Call a tool and return its structured result (failing the test on a tool error)."""
    return structured(await client.call_tool(tool, arguments))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fixture_bin(root: Path, area: str, programs: Iterable[str], *, shell: bool = False) -> Path:
    """`root`/bin holding the fixture programs of tests/fixture_bin/<area> (and `sh` when `shell`), with the
    area's captured outputs in the sibling `root`/data, where the programs read them. Returns the bin dir,
    to put on a fixture host's PATH."""
    source = FIXTURE_BIN / area
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True)
    if shell:
        (bin_dir / "sh").symlink_to(shutil.which("sh") or "/bin/sh")
    for program in programs:
        shutil.copy(source / program, bin_dir / program)
        (bin_dir / program).chmod(0o755)
    if (source / "data").is_dir():
        shutil.copytree(source / "data", root / "data")
    else:
        (root / "data").mkdir()
    calls = root / "data" / "calls.log"  # fixture programs append their arguments here
    calls.touch()
    calls.chmod(0o666)
    return bin_dir


def structured(result: CallToolResult) -> dict[str, Any]:
    """A tool result's structured content (failing the test when the tool returned none)."""
    assert result.structured_content is not None, result
    return result.structured_content


def hints(tool: mt.Tool) -> mt.ToolAnnotations:
    """A listed tool's annotations as a client reads them, the protocol's defaults filled in: a tool that does
    not say otherwise is destructive, not idempotent and open world, and those first two hints mean nothing
    for a read-only tool (it is neither). Fails the test when the tool has no annotations."""
    listed = tool.annotations
    assert listed is not None, tool.name
    read_only = listed.read_only_hint is True
    return mt.ToolAnnotations(
        read_only_hint=read_only,
        destructive_hint=False if read_only else listed.destructive_hint is not False,
        idempotent_hint=True if read_only else listed.idempotent_hint is True,
        open_world_hint=listed.open_world_hint is not False,
    )


async def read_text(client: Client[Any], uri: str) -> str:
    """The text of a resource's first content (failing the test for a binary one)."""
    content = (await client.read_resource(uri))[0]
    assert isinstance(content, mt.TextResourceContents), content
    return content.text


def path_without(root: Path, program: str) -> Path:
    """A PATH directory under `root` with every program of /usr/bin and /bin except `program` (a host where
    it is not installed)."""
    bindir = root / f"bin-without-{program}"
    bindir.mkdir(exist_ok=True)
    for folder in (Path("/usr/bin"), Path("/bin")):
        for found in folder.iterdir():
            link = bindir / found.name
            if found.name != program and not link.exists():
                link.symlink_to(found)
    bindir.chmod(0o755)
    return bindir


@contextlib.contextmanager
def server_process(
    command: list[str], port: int, env: dict[str, str], log: Path, *, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run an HTTP server process listening on 127.0.0.1:`port` until /health answers; yield the process.

    Output goes to `log`, which a failure to come up shows (with whether the process is still running); on exit
    the process is terminated if a test has not ended it already."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 90  # a loaded machine (CI) starts slowly; a healthy start takes seconds
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    how = "still starting" if proc.poll() is None else f"exited with {proc.returncode}"
                    raise AssertionError(
                        f"the server did not answer /health ({how}):\n{log.read_text()}"
                    ) from None
                time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=30)


@contextlib.contextmanager
def serving(
    command: list[str], port: int, env: dict[str, str], log: Path, *, cwd: Path | None = None
) -> Iterator[str]:
    """`server_process`, yielding the server's MCP URL."""
    with server_process(command, port, env, log, cwd=cwd):
        yield f"http://127.0.0.1:{port}/mcp"


async def delayed_pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy reader to writer, each chunk held `delay` seconds after it arrived (order kept, no throttling)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def pump() -> None:
        try:
            while data := await reader.read(65536):
                queue.put_nowait((loop.time() + delay, data))
        finally:
            queue.put_nowait((0.0, b""))

    task = asyncio.create_task(pump())
    try:
        while True:
            due, data = await queue.get()
            if not data:
                break
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()
    except OSError:
        pass
    finally:
        task.cancel()


@contextlib.asynccontextmanager
async def delaying_relay(target: int, delay: float) -> AsyncIterator[int]:
    """A TCP relay on 127.0.0.1 in front of port `target` that holds every chunk `delay` seconds in each
    direction (this kernel has no netem): a distant host, whose connection and every command take round trips
    of 2 x `delay`; yields its port."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            writer.close()
            return
        for w in (writer, up_writer):
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.gather(
                delayed_pipe(reader, up_writer, delay), delayed_pipe(up_reader, writer, delay)
            )
        finally:
            writer.close()
            up_writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await server.wait_closed()
