"""A small HTTP/1.1 load balancer for tests: each request goes to the next backend in turn (round robin),
or, when `sticky`, a request carrying an `Mcp-Session-Id` goes to the backend that issued that session (as a
load balancer's header stickiness does).

One request per client connection: the proxy asks the backend to close after its response (`Connection:
close`, which the backend repeats to the client), streams the response through as it comes (SSE included),
and then closes. Loopback only; request bodies need a Content-Length (MCP clients send one).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter

MAX_HEAD = 64 * 1024
SESSION = b"mcp-session-id"


class RoundRobinProxy:
    def __init__(self, backends: list[int], *, sticky: bool = False) -> None:
        self.backends = backends
        self.sticky = sticky
        self.served: Counter[int] = Counter()  # backend port -> requests
        self.sessions: dict[str, int] = {}  # session id -> the backend that issued it
        self.by_session: dict[str, set[int]] = {}  # session id -> backends its requests went to
        self._next = itertools.cycle(backends)
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> RoundRobinProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=MAX_HEAD)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    async def _serve(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        try:
            head = await client.readuntil(b"\r\n\r\n")
            request_line, *lines = head[:-4].split(b"\r\n")
            headers = [line.split(b":", 1) for line in lines if b":" in line]
            named = {name.strip().lower(): value.strip() for name, value in headers}
            if b"chunked" in named.get(b"transfer-encoding", b""):
                to_client.write(
                    b"HTTP/1.1 501 Not Implemented\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
                )
                return
            body = await client.readexactly(int(named.get(b"content-length", b"0")))
            session = named.get(SESSION, b"").decode() or None
            backend = self.sessions.get(session, 0) if self.sticky and session else 0
            backend = backend or next(self._next)
            self.served[backend] += 1
            if session:
                self.by_session.setdefault(session, set()).add(backend)
            kept = [
                b": ".join((n.strip(), v.strip())) for n, v in headers if n.strip().lower() != b"connection"
            ]
            upstream, to_upstream = await asyncio.open_connection("127.0.0.1", backend, limit=MAX_HEAD)
            try:
                to_upstream.write(b"\r\n".join([request_line, *kept, b"Connection: close", b"", b""]) + body)
                await to_upstream.drain()
                response_head = await upstream.readuntil(b"\r\n\r\n")
                for line in response_head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == SESSION and value.strip():
                        self.sessions.setdefault(value.strip().decode(), backend)
                to_client.write(response_head)
                await _pipe(upstream, to_client, client)
            finally:
                to_upstream.close()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass
        finally:
            to_client.close()


async def _pipe(
    source: asyncio.StreamReader, sink: asyncio.StreamWriter, client: asyncio.StreamReader
) -> None:
    """Copy the response until the backend ends it, or until the client goes away."""

    async def copy() -> None:
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()

    async def gone() -> None:
        await client.read()  # the client sends nothing more on this connection; EOF means it left

    tasks = [asyncio.ensure_future(copy()), asyncio.ensure_future(gone())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
