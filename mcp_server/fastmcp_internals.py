"""The private members of FastMCP and the MCP SDK that the server relies on, reached here and nowhere else.

FastMCP 4 has no public way to register a low-level request handler, to get the routes added with
`custom_route`, or to reach the connection a request arrived on; the SDK's session manager has no public hooks for admission caps. Each such reach is one function below,
and SESSION_MANAGER_HOOKS lists the SDK methods http_guard.SessionManager overrides or calls.
tests/test_fastmcp_internals.py checks every one against the installed packages, so an upgrade that renames
or reshapes one fails there, loudly, rather than in the middle of a request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastmcp import FastMCP
from fastmcp.server.http import FastMCPStreamableHTTPSessionManager
from mcp.server.connection import Connection
from mcp.server.lowlevel.server import Server
from mcp.server.session import ServerSession
from mcp.server.streamable_http import StreamableHTTPServerTransport
from starlette.routing import BaseRoute


def low_level(mcp: FastMCP[Any]) -> Server[Any]:
    """The SDK server under FastMCP: where request handlers FastMCP does not offer are registered."""
    return mcp._mcp_server


def custom_routes(mcp: FastMCP[Any]) -> list[BaseRoute]:
    """The routes added with `@mcp.custom_route` (the app builder mounts them)."""
    return mcp._get_additional_http_routes()


def connection_of(session: ServerSession) -> Connection:
    """The client connection a request arrived on (one per 2025 session or stdio stream, one per request on
    the 2026-07-28 protocol): its exit stack unwinds when the connection ends."""
    return session._connection


def open_sessions(
    manager: FastMCPStreamableHTTPSessionManager,
) -> Mapping[str, StreamableHTTPServerTransport]:
    """The session manager's open 2025-protocol sessions, by session id."""
    return manager._server_instances


# The SDK StreamableHTTPSessionManager members http_guard.SessionManager overrides or calls, with the
# parameters it relies on (checked by the test named above).
SESSION_MANAGER_HOOKS: dict[str, tuple[str, ...]] = {
    "_handle_request": ("scope", "receive", "send"),
    "_handle_stateful_request": ("scope", "receive", "send"),
    "_admit_session": ("requestor",),
    "_serve_opening_request": ("http_transport", "scope", "receive", "send"),
    "_discard_session": ("session_id", "transport"),
}
SESSION_MANAGER_ATTRIBUTES = ("_session_creation_lock", "_server_instances")
