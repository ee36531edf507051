"""The private members of FastMCP and the MCP SDK the server relies on (mcp_server/fastmcp_internals.py)
still exist in the installed packages with the shape we use, and no other module reaches them. A FastMCP or
SDK upgrade that renames or reshapes one fails here, by name."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import textwrap
from pathlib import Path

from fastmcp.server.http import FastMCPStreamableHTTPSessionManager
from mcp.server.connection import Connection
from mcp.server.lowlevel.server import Server
from mcp.server.session import ServerSession
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.routing import Route

from mcp_server import fastmcp_internals as internals
from mcp_server.http_guard import SessionManager
from mcp_server.server import build_server
from mcp_server.settings import Settings

PACKAGE = Path(internals.__file__).parent
# members of FastMCP or SDK objects that only fastmcp_internals.py may name
PRIVATE = re.compile(
    r"(?<!self)\._(mcp_server|components|get_additional_http_routes|connection|server_instances)\b"
)


def test_the_fastmcp_accessors_reach_what_they_name(sqlite_settings: Settings) -> None:
    server = build_server(sqlite_settings)
    low = internals.low_level(server)
    assert isinstance(low, Server)
    assert callable(low.add_request_handler) and low.get_request_handler("resources/subscribe") is not None
    assert low.get_tool_input_schema is not None  # build_server's schema lookup was set on it
    paths = [r.path for r in internals.custom_routes(server) if isinstance(r, Route)]
    assert paths == ["/health"]


def test_the_sdk_accessors_reach_what_they_name(sqlite_settings: Settings) -> None:
    connection = Connection.for_loop(object(), protocol_version_hint="2025-11-25")  # type: ignore[arg-type]
    session = ServerSession(object(), connection)  # type: ignore[arg-type]
    assert internals.connection_of(session) is connection
    assert callable(connection.exit_stack.callback) and callable(connection.send_resource_updated)
    manager = SessionManager(object(), settings=sqlite_settings, state_of=lambda: None)
    assert internals.open_sessions(manager) == {}
    for name in internals.SESSION_MANAGER_ATTRIBUTES:
        assert hasattr(manager, name), f"the SDK session manager has no {name} any more"


def test_the_session_manager_overrides_only_sdk_methods_that_exist_with_the_same_parameters() -> None:
    for name, parameters in internals.SESSION_MANAGER_HOOKS.items():
        method = getattr(StreamableHTTPSessionManager, name, None)
        assert method is not None, (
            f"StreamableHTTPSessionManager.{name} is gone: review http_guard.SessionManager"
        )
        assert tuple(inspect.signature(method).parameters) == ("self", *parameters), name
    overridden = {
        name
        for name in vars(SessionManager)
        if name.startswith("_") and not name.startswith("__") and hasattr(StreamableHTTPSessionManager, name)
    }
    assert overridden <= set(internals.SESSION_MANAGER_HOOKS)


def test_no_other_module_reaches_a_private_member_of_fastmcp_or_the_sdk() -> None:
    reaching = [
        f"{path.relative_to(PACKAGE)}:{number}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "fastmcp_internals.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE.search(line)
    ]
    assert reaching == []


def _private_reaches(cls: type) -> set[str]:
    """The `_names` a class's own code reaches on `self` or `super()`."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    names: set[str] = set()
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
        ):
            continue
        owner = node.value
        on_self = isinstance(owner, ast.Name) and owner.id == "self"
        on_super = (
            isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super"
        )
        if on_self or on_super:
            names.add(node.attr)
    return names


def test_our_subclasses_of_fastmcp_and_sdk_classes_reach_only_the_listed_private_members() -> None:
    listed = set(internals.SESSION_MANAGER_HOOKS) | set(internals.SESSION_MANAGER_ATTRIBUTES)
    subclasses = [
        cls
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "__main__.py"  # importing it runs the CLI
        for cls in vars(importlib.import_module(_module_name(path))).values()
        if isinstance(cls, type) and cls.__module__ == _module_name(path) and _framework_bases(cls)
    ]
    assert SessionManager in subclasses
    for cls in subclasses:
        inherited = {name for base in _framework_bases(cls) for name in vars(base)}
        if cls is SessionManager:  # and what the SDK manager sets on its instances
            inherited |= set(vars(FastMCPStreamableHTTPSessionManager(app=object())))
        reached = _private_reaches(cls) & inherited
        unlisted = reached - listed
        assert not unlisted, f"{cls.__name__} reaches {sorted(unlisted)}: list them in fastmcp_internals"


def _framework_bases(cls: type) -> list[type]:
    return [base for base in cls.__mro__[1:] if base.__module__.split(".")[0] in ("fastmcp", "mcp")]


def _module_name(path: Path) -> str:
    return ".".join(("mcp_server", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(
        ".__init__"
    )
