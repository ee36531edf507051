"""The `infrastructor` command line: serve, migrate, devices, collect."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from mcp_server import __version__
from mcp_server.db.engine import migrate, redact_url
from mcp_server.errors import InfrastructorError
from mcp_server.settings import Settings, load_settings

# stdout belongs to the MCP protocol in stdio mode and to command output otherwise; everything else is stderr.
err = Console(stderr=True)
out = Console()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infrastructor", description="Audited fleet access for AI agents over MCP."
    )
    parser.add_argument("--version", action="version", version=f"infrastructor {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True)

    serve = sub.add_parser("serve", help="run the MCP server (streamable HTTP by default)")
    serve.add_argument("--stdio", action="store_true", help="speak MCP over stdin/stdout (Claude Desktop)")
    serve.add_argument("--host", help="HTTP bind address (default INFRA_HTTP_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="HTTP port (default INFRA_HTTP_PORT or 8765)")
    serve.add_argument("--path", help="HTTP path of the MCP endpoint (default /mcp)")

    sub.add_parser("migrate", help="create or upgrade the database schema")

    devices = sub.add_parser("devices", help="manage devices").add_subparsers(
        dest="devices_cmd", required=True
    )
    devices.add_parser("list", help="list devices")
    add = devices.add_parser("add", help="register an SSH device")
    add.add_argument("name")
    add.add_argument("hostname")
    add.add_argument("--port", type=int, default=22)
    add.add_argument("--username")
    add.add_argument("--key-path")
    add.add_argument("--jump-host")
    add.add_argument("--tag", action="append", default=[], dest="tags")
    add.add_argument("--description", default="")
    add.add_argument("--use-sudo", action="store_true", help="run root-only commands via sudo -n")
    remove = devices.add_parser("remove", help="unregister a device")
    remove.add_argument("name")
    imp = devices.add_parser("import-ssh-config", help="register the hosts of an OpenSSH config")
    imp.add_argument("path", nargs="?", default="~/.ssh/config")
    imp.add_argument("--host", action="append", dest="hosts", help="only this Host alias (repeatable)")
    imp.add_argument("--tag", action="append", default=[], dest="tags")

    collect = sub.add_parser("collect", help="run a registered command on one device or all of them")
    collect.add_argument(
        "command", help="registry name, e.g. system_metrics (see: infrastructor collect --list)"
    )
    target = collect.add_mutually_exclusive_group()
    target.add_argument("--device", default="local")
    target.add_argument("--all", action="store_true", help="every registered device")
    collect.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    collect.add_argument("--force-refresh", action="store_true")
    collect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        logging.basicConfig(
            level=settings.log_level,
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        logging.getLogger("alembic").setLevel(logging.WARNING)
        if args.cmd == "serve":
            return _serve(settings, args)
        if args.cmd == "migrate":
            migrate(settings.resolved_database_url)
            err.print(f"database {redact_url(settings.resolved_database_url)} is at the latest schema")
            return 0
        if args.cmd == "devices":
            return asyncio.run(_devices(settings, args))
        if args.cmd == "collect":
            return asyncio.run(_collect(settings, args))
    except InfrastructorError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        return 130
    return 1


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from mcp_server.server import build_server

    if args.stdio:
        server = build_server(settings, transport="stdio")
        asyncio.run(server.run_stdio_async(show_banner=False))
        return 0
    host = args.host or settings.http_host
    port = args.port or settings.http_port
    path = args.path or settings.http_path
    if not _is_loopback(host):
        err.print(
            f"[red]error:[/red] refusing to listen on {host}: this server has no authentication configured, "
            "so it only listens on loopback (127.0.0.1, ::1, localhost)."
        )
        return 2
    server = build_server(settings, transport="http")
    url = f"http://{host}:{port}{path}"
    err.print(
        f"Infrastructor {__version__} serving MCP at [bold]{url}[/bold]\n"
        f"  database: {redact_url(settings.resolved_database_url)}\n"
        f"  health:   http://{host}:{port}/health\n"
        "Next:\n"
        f"  Claude Code:    claude mcp add --transport http infrastructor {url}\n"
        f"  MCP Inspector:  npx @modelcontextprotocol/inspector --cli {url} --method tools/list\n"
        "  Claude Desktop: use `infrastructor serve --stdio` (see README)\n"
        "  Add a host:     infrastructor devices add nas01 192.168.1.10 --username admin --key-path ~/.ssh/id_ed25519",
        highlight=False,
        soft_wrap=True,
    )
    asyncio.run(
        server.run_http_async(
            show_banner=False,
            host=host,
            port=port,
            path=path,
            # The audit records the socket peer; forwarded headers are trusted only by explicit configuration.
            uvicorn_config={"proxy_headers": False, "log_level": settings.log_level.lower()},
        )
    )
    return 0


async def _devices(settings: Settings, args: argparse.Namespace) -> int:
    from mcp_server.devices import DeviceSpec
    from mcp_server.server import app_state
    from mcp_server.tools.devices import describe, import_config

    async with app_state(settings) as state:
        if args.devices_cmd == "list":
            table = Table("name", "address", "user", "auth", "tags", "host key")
            for device in state.devices.list():
                info = describe(device, state)
                table.add_row(
                    info.name,
                    "(this machine)" if device.is_local else f"{info.hostname}:{info.port}",
                    info.username or "",
                    info.auth,
                    ",".join(info.tags),
                    info.host_key_fingerprint or "",
                )
            out.print(table)
        elif args.devices_cmd == "add":
            spec = DeviceSpec(
                hostname=args.hostname,
                port=args.port,
                username=args.username,
                key_path=args.key_path,
                jump_host=args.jump_host,
                tags=tuple(args.tags),
                description=args.description,
                use_sudo=args.use_sudo,
            )
            device = await state.devices.add(args.name, spec)
            err.print(f"added {device.name} ({device.hostname}:{device.port})")
        elif args.devices_cmd == "remove":
            await state.devices.remove(args.name)
            err.print(f"removed {args.name}")
        elif args.devices_cmd == "import-ssh-config":
            result = await import_config(state, Path(args.path).expanduser(), args.hosts, args.tags)
            for host in result.hosts:
                err.print(f"{host.status:8} {host.alias}" + (f"  ({host.reason})" if host.reason else ""))
            for warning in result.warnings:
                err.print(f"[yellow]warning:[/yellow] {warning}")
    return 0


def _params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InfrastructorError(f"--param {pair!r}: expected KEY=VALUE")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


async def _collect(settings: Settings, args: argparse.Namespace) -> int:
    from mcp_server.server import app_state

    params = _params(args.param)
    async with app_state(settings) as state:
        state.registry.get(args.command)
        names = state.devices.names() if args.all else [args.device]
        with Progress(console=err, transient=True) as progress:
            progress.add_task(f"{args.command} on {len(names)} device(s)", total=None)
            outcomes = await state.service.collect_many(
                names, args.command, params, force_refresh=args.force_refresh
            )
        if args.json:
            out.print_json(json.dumps([o.model_dump(mode="json") for o in outcomes]))
        else:
            table = Table("device", "ok", "age (s)", "result")
            for o in outcomes:
                if o.result is None:
                    table.add_row(o.device, "[red]no[/red]", "", o.error or "")
                else:
                    body = o.result.data.model_dump_json()
                    table.add_row(o.device, "yes", f"{o.result.age_seconds:.1f}", body[:300])
            out.print(table)
    return 0 if all(o.ok for o in outcomes) else 1
