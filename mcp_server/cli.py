"""The `infrastructor` command line: serve, migrate, devices, collect.

Start-up is part of the interface: `--help` and `--version` load argparse only, and each command imports
what it uses when it runs (`collect` never loads FastMCP or Alembic; asyncssh only to reach an SSH host; and
when a server runs on the same data directory, it hands the collection to it over the control socket; a plain
piped `collect` is handed over by the console script itself, cli_entry.py, before this module and argparse
load). tests/test_startup.py and tests/test_control.py guard this; bench/bench_startup.py and
bench/bench_peers.py measure it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence

from mcp_server import TOOLSETS, __version__

# typing, datetime and threading load only where they are needed: a collect answered by a running server
# pays for every module it imports (tests/test_control.py)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from rich.console import Console

    from mcp_server.collection import ConnectionTest, DeviceOutcome
    from mcp_server.progress import OnStep, StepDone
    from mcp_server.settings import Settings
    from mcp_server.state import AppState


class _Lazy:
    """A rich Console made on first use: a collect that a running server answers never loads rich."""

    def __init__(self, make: Callable[[], Console]) -> None:
        self._make = make
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        if self._console is None:
            self._console = self._make()
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.console, name)


def _stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True)


def _stdout_console() -> Console:
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 200)


# stdout belongs to the MCP protocol in stdio mode and to command output otherwise; everything else is stderr.
err: Console = _Lazy(_stderr_console)  # type: ignore[assignment]
# Output piped to a file or grep is wider than rich's 80-column guess: one line per row where it fits.
out: Console = _Lazy(_stdout_console)  # type: ignore[assignment]


def _help_width() -> int:
    """What argparse's help formatter measures with shutil.get_terminal_size, without loading shutil (and
    the compression modules it imports): the formatter is built for every argument added, help or not."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            stdout = sys.__stdout__
            columns = (os.get_terminal_size(stdout.fileno()).columns if stdout else 0) or 80
        except (AttributeError, ValueError, OSError):
            columns = 80
    return columns - 2


class _Formatter(argparse.HelpFormatter):
    def __init__(
        self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None
    ):
        super().__init__(prog, indent_increment, max_help_position, _help_width() if width is None else width)


class _RawFormatter(_Formatter, argparse.RawDescriptionHelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse's parser with _Formatter; its subcommands' parsers are of this class too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("formatter_class") in (None, argparse.HelpFormatter):
            kwargs["formatter_class"] = _Formatter
        super().__init__(*args, **kwargs)


def _path(value: str) -> Path:
    from pathlib import Path

    return Path(value)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="infrastructor", description="Audited fleet access for AI agents over MCP.")
    parser.add_argument("--version", action="version", version=f"infrastructor {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True)

    serve = sub.add_parser("serve", help="run the MCP server (streamable HTTP by default)")
    serve.add_argument("--stdio", action="store_true", help="speak MCP over stdin/stdout (Claude Desktop)")
    serve.add_argument("--host", help="HTTP bind address (default INFRA_HTTP_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="HTTP port (default INFRA_HTTP_PORT or 8765)")
    serve.add_argument("--path", help="HTTP path of the MCP endpoint (default /mcp)")
    serve.add_argument(
        "--read-only", action="store_true", help="offer only tools that change nothing (INFRA_READ_ONLY)"
    )
    serve.add_argument(
        "--toolsets",
        metavar="LIST",
        help=f"comma-separated toolsets to offer: {','.join(TOOLSETS)} (INFRA_TOOLSETS; default all)",
    )

    sub.add_parser("migrate", help="create or upgrade the database schema")

    secrets_cmd = sub.add_parser("secrets", help="encrypted secrets").add_subparsers(
        dest="secrets_cmd", required=True
    )
    secrets_cmd.add_parser(
        "rotate", help="re-encrypt every secret under a new master key, then retire the old one"
    )
    export = secrets_cmd.add_parser(
        "export-key",
        help="write the master key(s) for a backup: without them no stored secret can be read",
        description="Write the master key(s), one per line, newest first (the format of master.key and, "
        "comma-separated, of INFRA_MASTER_KEY). Keep the copy apart from the database backup.",
    )
    export.add_argument("--out", type=_path, help="a new file (created 0600); default standard output")

    db_cmd = sub.add_parser("db", help="PostgreSQL credentials").add_subparsers(dest="db_cmd", required=True)
    boot = db_cmd.add_parser(
        "bootstrap-credentials",
        help="create a least-privilege role (INFRA_DATABASE_ADMIN_URL) and use it from now on",
    )
    boot.add_argument("--role-base", default="infrastructor_app")
    rot = db_cmd.add_parser(
        "rotate-credentials", help="switch to a fresh password without dropping in-flight work"
    )
    rot.add_argument(
        "--retire-previous", action="store_true", help="also lock the role used before the last rotation"
    )

    token = sub.add_parser("token", help="bearer tokens").add_subparsers(dest="token_cmd", required=True)
    create = token.add_parser("create", help="print a signed token (HS256, the configured or generated key)")
    create.add_argument("--subject", required=True, help="who the token is for (audited as the subject)")
    create.add_argument(
        "--scopes", default="infra:read", help="comma-separated: infra:read, infra:write, infra:admin"
    )
    create.add_argument("--ttl", default="12h", help="lifetime: 90s, 15m, 12h, 30d, 1w")

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
    update = devices.add_parser(
        "update",
        help="change a device's fields (only those given); drops its pooled connection and cached data",
    )
    update.add_argument("name")
    update.add_argument("--hostname")
    update.add_argument("--port", type=int)
    update.add_argument("--username")
    update.add_argument("--key-path")
    update.add_argument("--jump-host", help="a registered device to tunnel through; '' removes it")
    update.add_argument(
        "--tag", action="append", dest="tags", help="replaces every tag (repeatable); --tag '' clears them"
    )
    update.add_argument("--description")
    update.add_argument(
        "--use-sudo", action=argparse.BooleanOptionalAction, help="run root-only commands via sudo -n"
    )
    update.add_argument(
        "--clear-host-key",
        action="store_true",
        help="forget the pinned host key (after a reinstall); the next connection pins the new one",
    )
    test = devices.add_parser(
        "test", help="connect and run a no-op: latency, SSH server version and host key, or why it failed"
    )
    test.add_argument("names", nargs="*", metavar="name", help="devices to test (default: every device)")
    remove = devices.add_parser("remove", help="unregister a device")
    remove.add_argument("name")
    imp = devices.add_parser("import-ssh-config", help="register the hosts of an OpenSSH config")
    imp.add_argument("path", nargs="?", default="~/.ssh/config")
    imp.add_argument("--host", action="append", dest="hosts", help="only this Host alias (repeatable)")
    imp.add_argument("--tag", action="append", default=[], dest="tags")

    alerts = sub.add_parser("alerts", help="alert rules (ntfy, Gotify, JSON webhooks)").add_subparsers(
        dest="alerts_cmd", required=True
    )
    alerts.add_parser("list", help="list alert rules (URLs masked)")
    rule = alerts.add_parser("set", help="create or replace an alert rule")
    rule.add_argument("name")
    rule.add_argument(
        "--kind",
        required=True,
        choices=["disk_use", "smart", "device_down", "config_risk", "container_restarts"],
    )
    rule.add_argument("--channel", required=True, choices=["ntfy", "gotify", "webhook"])
    rule.add_argument("--url", required=True, help="topic, message or webhook URL (stored encrypted)")
    rule.add_argument("--device", help="only this device (default: every device)")
    rule.add_argument(
        "--threshold",
        type=float,
        help="disk_use: percent; device_down: minutes; container_restarts: restarts",
    )
    rule.add_argument("--min-risk", choices=["low", "medium", "high"], help="config_risk (default high)")
    rule.add_argument(
        "--window", type=int, dest="window_minutes", help="container_restarts: minutes (default 10)"
    )
    rule.add_argument("--disabled", action="store_true", help="keep the rule but do not evaluate it")
    alerts.add_parser("remove", help="delete an alert rule").add_argument("name")
    alerts.add_parser("test", help="send a test alert through a rule now").add_argument("name")

    collect = sub.add_parser(
        "collect",
        help="run a registered command on one device, several, those with a tag, or all of them",
        description="Run a read command by name, with the gates of the MCP tools, and print its whole result.",
        epilog=COLLECT_OUTPUT,
        formatter_class=_RawFormatter,
    )
    collect.add_argument(
        "command", nargs="?", help="registry name, e.g. system_metrics (see: infrastructor collect --list)"
    )
    collect.add_argument(
        "--list", action="store_true", dest="list_commands", help="list the commands and their parameters"
    )
    target = collect.add_mutually_exclusive_group()
    target.add_argument(
        "--device", help="device name, or several separated by commas (default: local, this machine)"
    )
    target.add_argument("--all", action="store_true", help="every registered device")
    collect.add_argument(
        "--tag",
        action="append",
        dest="tags",
        metavar="TAG",
        help="devices carrying this tag (repeatable: all of them; with --device, those named that carry them)",
    )
    collect.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter of the command (repeatable); VALUE is read as JSON when it parses, else as text",
    )
    collect.add_argument(
        "--force-refresh", action="store_true", help="run the command now instead of using a cached result"
    )
    collect.add_argument("--json", action="store_true", help="print JSON (described below) instead of tables")
    collect.add_argument(
        "--no-server",
        action="store_true",
        help="run here even when a server runs on the same data directory (by default it answers, over its "
        "pooled connections)",
    )
    return parser


COLLECT_OUTPUT = """\
output:
  Tables on stdout: one of the result's single values (a row per device), then one per list in the result
  (with a device column when several devices answered); nested values are shown as JSON. Devices that
  failed come last, with the reason. Progress goes to stderr.

  --json prints a JSON array with one object per device:
    {"device": "nas01", "ok": true, "error_type": null, "error": null,
     "result": {"device": "nas01", "command": "disk_usage", "collected_at": "2026-01-01T12:00:00Z",
                "from_cache": false, "age_seconds": 0.0, "data": {...}}}
  where data is what the MCP tool of the same command returns; a failed device has "ok": false, its
  error_type (e.g. host_unreachable) and error, and "result": null.

exit status: 0 when every device answered, 1 when any failed, 2 for a usage error.
"""


def run(*, delegate: bool = True) -> None:
    """The console script (after cli_entry.run): `main`, then the process ends at once.

    Every command closes what it opened before `main` returns; what is left is the interpreter tearing
    down some 700 modules one object at a time, most of a second on a busy machine, for nothing. Only when
    the output is flushed and no thread is left that could still be finishing work: daemon threads (the
    audit journal's, once a server's state is closed, has every row shipped or journaled) do not count."""
    code = main(delegate=delegate)
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # a closed pipe (`| head`): let the interpreter report it as usual
        sys.exit(code)
    threading = sys.modules.get("threading")  # never imported: no thread was started
    main_thread = threading.main_thread() if threading is not None else None
    if threading is None or all(t.daemon for t in threading.enumerate() if t is not main_thread):
        os._exit(code)
    sys.exit(code)


def _started() -> None:
    """Start-up is over: garbage is collected again, leaving out everything allocated so far.

    The collector is off while a command imports its modules and builds what it needs (it would walk the
    growing heap every few hundred allocations, a sixth of the import time, finding next to nothing); those
    objects live as long as the process, so later collections skip them."""
    gc.freeze()
    gc.enable()


def main(argv: Sequence[str] | None = None, *, delegate: bool = True) -> int:
    """The command `argv` names; `delegate=False`: a collect is not offered to a server (cli_entry asked)."""
    args = _parser().parse_args(argv)
    if args.cmd == "collect" and not args.no_server and delegate:
        code = _delegated(args)
        if code is not None:
            return code
    import asyncio
    import logging

    if args.cmd in ("serve", "collect", "devices"):
        gc.disable()  # until _started(): the commands people wait for
    from mcp_server.errors import InfrastructorError
    from mcp_server.logs import redact_log_handlers
    from mcp_server.permissions import restrict_umask
    from mcp_server.settings import load_settings

    # Everything the process creates (database, WAL, spool, keys) is its user's alone.
    restrict_umask()
    try:
        overrides: dict[str, object] = {}
        if args.cmd == "serve" and args.read_only:
            overrides["read_only"] = True
        if args.cmd == "serve" and args.toolsets is not None:
            overrides["toolsets"] = args.toolsets
        settings = load_settings(**overrides)
        level = settings.log_level
        if args.cmd != "serve" and "log_level" not in settings.model_fields_set:
            level = "WARNING"  # a one-shot command prints its answer, not the start-up chatter of a server
        logging.basicConfig(
            level=level,
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        logging.getLogger("alembic").setLevel(logging.WARNING)
        redact_log_handlers()
        if args.cmd == "serve":
            return _serve(settings, args)
        if args.cmd == "migrate":
            from mcp_server.db.engine import redact_url
            from mcp_server.permissions import secure_data_dir
            from mcp_server.state import migrate_and_configure

            admin = settings.database_admin_url
            url = admin.get_secret_value() if admin is not None else settings.resolved_database_url
            secure_data_dir(settings.data_dir)
            report = asyncio.run(migrate_and_configure(url, settings, run_jobs=True))
            err.print(f"database {redact_url(url)} is at the latest schema", soft_wrap=True)
            err.print(report.summary(), soft_wrap=True, highlight=False)
            return 1 if report.error else 0
        if args.cmd == "secrets" and args.secrets_cmd == "export-key":
            return _export_key(settings, args.out)
        if args.cmd == "secrets":
            return asyncio.run(_rotate_secrets(settings))
        if args.cmd == "db":
            return asyncio.run(_db_credentials(settings, args))
        if args.cmd == "devices":
            return asyncio.run(_devices(settings, args))
        if args.cmd == "collect":
            return asyncio.run(_collect(settings, args))
        if args.cmd == "alerts":
            return asyncio.run(_alerts(settings, args))
        if args.cmd == "token":
            return asyncio.run(_token(settings, args))
    except InfrastructorError as exc:
        from mcp_server.cli_output import print_error

        print_error(err, str(exc))
        return 2
    except KeyboardInterrupt:
        return 130
    return 1


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from mcp_server.server import build_server, http_signing_key

    if args.stdio:
        # initialize is answered before the tools are built and while the state opens (StartGate)
        server = build_server(settings, transport="stdio", defer_start=True)
        _started()
        asyncio.run(server.run_stdio_async(show_banner=False))
        return 0  # run() ends the process at once: every row is shipped or journaled by now
    from mcp_server.auth import dev_token_notice
    from mcp_server.db.engine import redact_url
    from mcp_server.http_app import allowed_hosts, check_bind, serve_http

    host = args.host or settings.http_host
    port = args.port or settings.http_port
    path = args.path or settings.http_path
    check_bind(host, auth=settings.auth)  # before any work: the same refusal serve_http applies
    key = asyncio.run(http_signing_key(settings))
    server = build_server(settings, transport="http", signing_key=key)
    _started()
    url = f"http://{host}:{port}{path}"
    if key is None:
        auth_line = "auth:     OFF (INFRA_AUTH=false) - anyone who can reach this address can call every tool"
    else:
        auth_line = f"auth:     bearer JWT ({key.algorithm}); scopes infra:read < infra:write < infra:admin"
        if key.generated:
            err.print(dev_token_notice(key, settings), soft_wrap=True, highlight=False)
    header = '--header "Authorization: Bearer $TOKEN" ' if key is not None else ""
    err.print(
        f"Infrastructor {__version__} serving MCP at [bold]{url}[/bold]\n"
        f"  database: {redact_url(settings.resolved_database_url)}\n"
        f"  {auth_line}\n"
        f"  health:   http://{host}:{port}/health\n"
        f"  console:  http://{host}:{port}/ui/ (sign in with a token)\n"
        "Next:\n"
        f"  Claude Code:    claude mcp add --transport http infrastructor {url} {header}\n"
        f"  MCP Inspector:  npx -y -p node@22 -p @modelcontextprotocol/inspector@2.12.0 -- mcp-inspector --cli {url} {header}--method tools/list\n"
        "  Claude Desktop: use `infrastructor serve --stdio` (see README)\n"
        "  Tokens:         infrastructor token create --subject NAME --scopes infra:read --ttl 12h\n"
        "  Add a host:     infrastructor devices add nas01 192.168.1.10 --username admin --key-path ~/.ssh/id_ed25519",
        highlight=False,
        soft_wrap=True,
    )
    if host in ("0.0.0.0", "::") and not allowed_hosts(settings):
        err.print(
            "[yellow]note:[/yellow] listening on all interfaces: requests are accepted only with a Host header "
            "of localhost/127.0.0.1 unless you list your server's names in INFRA_ALLOWED_HOSTS.",
            soft_wrap=True,
        )
    asyncio.run(serve_http(server, host=host, port=port, path=path))
    return 0


def _export_key(settings: Settings, out: Path | None) -> int:
    from mcp_server.secrets import key_fingerprint, load_master_keys

    keys = load_master_keys(settings)
    text = "".join(key.decode() + "\n" for key in keys)
    names = ", ".join(key_fingerprint(k) for k in keys)
    if out is None:
        if sys.stdout.isatty():
            err.print(
                "refusing to print the master key to a terminal: redirect it to a file, or use --out FILE"
            )
            return 2
        sys.stdout.write(text)
    else:
        try:
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            err.print(f"{out} exists: choose a new file (it is never overwritten)")
            return 2
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
    err.print(
        f"exported {len(keys)} master key(s) ({names}); whoever has them can read every stored secret "
        "(device passwords, the token key, database credentials): keep them apart from the database backup",
        soft_wrap=True,
    )
    return 0


async def _rotate_secrets(settings: Settings) -> int:
    from mcp_server.secrets import rotate_master_key
    from mcp_server.state import open_database

    db = await open_database(settings)
    try:
        report = await rotate_master_key(settings, db)
    finally:
        await db.close()
    err.print(
        f"re-encrypted {report.rows} secrets and {len(report.files)} file(s) under key {report.fingerprint} "
        f"({report.location}); old keys retired: {report.retired}",
        soft_wrap=True,
    )
    if report.new_key is not None and settings.master_key is not None:
        current = settings.master_key.get_secret_value()
        err.print(
            "INFRA_MASTER_KEY comes from the environment, which cannot be rewritten from here. Restart with\n"
            f"  INFRA_MASTER_KEY={report.new_key},{current}\n"
            f"and once every server runs with it, with\n  INFRA_MASTER_KEY={report.new_key}",
            soft_wrap=True,
            highlight=False,
        )
    return 0


async def _db_credentials(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from mcp_server.db.credentials import bootstrap_credentials, retire_previous, rotate_credentials
    from mcp_server.db.engine import migrate
    from mcp_server.errors import InfrastructorError

    if settings.database_admin_url is None:
        raise InfrastructorError(
            "INFRA_DATABASE_ADMIN_URL: set it to a PostgreSQL owner URL (postgresql+asyncpg://owner:...@host/db); "
            "it is used for this command only"
        )
    admin = settings.database_admin_url.get_secret_value()
    if args.db_cmd == "bootstrap-credentials":
        await asyncio.to_thread(migrate, admin)
        report = await bootstrap_credentials(settings, admin, role_base=args.role_base)
    else:
        report = await rotate_credentials(settings, admin)
        if args.retire_previous:
            err.print(f"locked role {await retire_previous(settings, admin)}")
    err.print(
        f"the server now connects to {report.database} as {report.role} "
        f"(credential encrypted in {report.path}; previous role: {report.previous_role or 'none'})",
        soft_wrap=True,
    )
    return 0


async def _token(settings: Settings, args: argparse.Namespace) -> int:
    from mcp_server.auth import issue_token, parse_ttl
    from mcp_server.errors import InfrastructorError
    from mcp_server.server import http_signing_key
    from mcp_server.settings import comma_list

    key = await http_signing_key(settings)
    if key is None:
        raise InfrastructorError("INFRA_AUTH is false: there is no key to sign tokens with")
    scopes = comma_list(args.scopes)
    token, expires = issue_token(
        key, settings, subject=args.subject, scopes=scopes, ttl_seconds=parse_ttl(args.ttl)
    )
    err.print(
        f"token for {args.subject!r}, scopes {', '.join(scopes)}, expires "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(expires))}",
        highlight=False,
        soft_wrap=True,
    )
    print(token)
    return 0


async def _alerts(settings: Settings, args: argparse.Namespace) -> int:
    """The same operations as /api/v1/alerts/rules (alerts.py), as the local user."""
    import getpass

    from rich.table import Table

    from mcp_server import alerts
    from mcp_server.audit import CallContext, calling
    from mcp_server.state import open_state

    async with open_state(settings) as state:
        with calling(CallContext(transport="cli", subject=f"local:{getpass.getuser()}")):
            if args.alerts_cmd == "list":
                table = Table("name", "kind", "device", "threshold", "channel", "url", "enabled")
                for r in (await alerts.list_alert_rules(state)).rules:
                    limit = r.min_risk if r.kind == "config_risk" else r.threshold
                    table.add_row(
                        r.name,
                        r.kind,
                        r.device or "(all)",
                        str(limit or ""),
                        r.channel,
                        r.url,
                        str(r.enabled),
                    )
                out.print(table)
            elif args.alerts_cmd == "set":
                info = await alerts.set_alert_rule(
                    args.name,
                    args.kind,
                    args.channel,
                    args.url,
                    device=args.device,
                    threshold=args.threshold,
                    min_risk=args.min_risk,
                    window_minutes=args.window_minutes,
                    enabled=not args.disabled,
                    state=state,
                )
                err.print(f"alert rule {info.name}: {info.kind} -> {info.channel} {info.url}")
            elif args.alerts_cmd == "remove":
                await alerts.remove_alert_rule(args.name, state=state)
                err.print(f"removed alert rule {args.name}")
            elif args.alerts_cmd == "test":
                delivery = await alerts.test_alert_rule(args.name, state=state)
                err.print(delivery.model_dump_json())
                return 0 if delivery.ok else 1
    return 0


async def _devices(settings: Settings, args: argparse.Namespace) -> int:
    from rich.table import Table

    from mcp_server.devices import device_spec, import_ssh_hosts, spec_changes
    from mcp_server.errors import InvalidParameter
    from mcp_server.state import open_state

    async with open_state(settings) as state:
        _started()
        if args.devices_cmd == "test":
            return await _test_devices(state, args.names or state.devices.names())
        if args.devices_cmd == "list":
            table = Table("name", "address", "user", "auth", "tags", "host key")
            for device in state.devices.list():
                info = state.describe(device)
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
            spec = device_spec(
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
        elif args.devices_cmd == "update":
            changes = spec_changes(
                hostname=args.hostname,
                port=args.port,
                username=args.username,
                key_path=args.key_path,
                jump_host=args.jump_host,
                tags=None if args.tags is None else [t for t in args.tags if t],
                description=args.description,
                use_sudo=args.use_sudo,
            )
            if not changes and not args.clear_host_key:
                raise InvalidParameter(
                    "devices update: give at least one field to change (see infrastructor devices update --help)"
                )
            device = await state.devices.update(args.name, changes, clear_host_key=args.clear_host_key)
            await state.forget_connection(args.name)
            what = ", ".join([*changes, *(["host key cleared"] if args.clear_host_key else [])])
            err.print(f"updated {device.name} ({device.hostname}:{device.port}): {what}", highlight=False)
        elif args.devices_cmd == "remove":
            await state.devices.remove(args.name)
            err.print(f"removed {args.name}")
        elif args.devices_cmd == "import-ssh-config":
            result = await import_ssh_hosts(state.devices, args.path, args.hosts, args.tags)
            for host in result.hosts:
                err.print(f"{host.status:8} {host.alias}" + (f"  ({host.reason})" if host.reason else ""))
            for warning in result.warnings:
                err.print(f"[yellow]warning:[/yellow] {warning}")
    return 0


async def _test_devices(state: AppState, names: list[str]) -> int:
    """`devices test`: every device at once, a row each; 1 when any failed."""
    import asyncio

    from rich.text import Text

    from mcp_server.cli_output import cell as _cell
    from mcp_server.cli_output import table as _table

    for name in names:
        state.devices.get(name)  # an unknown name is a usage error before anything connects
    limit = asyncio.Semaphore(state.settings.fanout_concurrency)

    async def one(name: str) -> ConnectionTest:
        async with limit:
            return await state.service.test_connection(name)

    tests = await asyncio.gather(*(one(name) for name in names))
    table = _table("device", "ok", "latency (ms)", "server", "host key", "error")
    for t in tests:
        key = f"{t.host_key_fingerprint} ({t.host_key_source})" if t.host_key_fingerprint else None
        latency = None if t.latency_ms is None else f"{t.latency_ms:.1f}"
        ok = Text("yes") if t.ok else Text("no", style="red")
        table.add_row(t.device, ok, latency, _cell(t.server_version), _cell(key), _cell(t.error))
    out.print(table)
    return 0 if all(t.ok for t in tests) else 1


def _params(pairs: list[str]) -> dict[str, Any]:
    from mcp_server.errors import InfrastructorError

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


@contextlib.contextmanager
def device_progress(what: str, total: int) -> Iterator[OnStep]:
    """Devices as they finish, on stderr: a progress bar on a terminal, else one plain line each."""
    from mcp_server.cli_output import step_line

    if not err.is_terminal:

        async def line(step: StepDone) -> None:
            err.print(step_line(what, step.done, step.total, step.message), markup=False, highlight=False)

        yield line
        return
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    console: Console = err.console  # type: ignore[attr-defined]  # the real one (err is a _Lazy)
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(what, total=total)

        async def advance(step: StepDone) -> None:
            progress.update(task, advance=1, description=f"{what}: {escape(step.message)}")

        yield advance


async def _collect(settings: Settings, args: argparse.Namespace) -> int:
    from mcp_server.cli_output import print_json, print_outcomes
    from mcp_server.control import targets
    from mcp_server.errors import InvalidParameter
    from mcp_server.state import open_state

    if args.list_commands:
        _print_commands()
        return 0
    if args.command is None:
        raise InvalidParameter("collect: name a command to run (infrastructor collect --list shows them)")
    params = _params(args.param)
    async with open_state(settings) as state:
        _started()
        names = targets(state, args.device, args.all, args.tags)
        if args.command == "config_file":
            outcomes = [await _read_watched(state, name, params) for name in names]
        else:
            _check_collect(state, args.command, params)
            force = args.force_refresh or args.command == "run_command"
            with device_progress(args.command, len(names)) as on_device:
                outcomes = await state.service.collect_many(
                    names, args.command, params, force_refresh=force, on_device=on_device
                )
        dumped = [o.model_dump(mode="json") for o in outcomes]
        if args.json:
            print_json(out, dumped)
        else:
            print_outcomes(out, args.command, dumped)
    return 0 if all(o.ok for o in outcomes) else 1


# Commands a running server never answers for the CLI: run_command changes things; config_file is read
# through the configuration monitor, not the registry.
NOT_DELEGATED = ("run_command", "config_file")


def _delegated(args: argparse.Namespace) -> int | None:
    """`collect` answered by a server running on the same data directory (control.py), over its pooled
    connections, printing what the in-process path prints; None when no server takes it (run it here).

    Until a server has answered, nothing beyond the standard library's socket and json is loaded."""
    if args.list_commands or args.command is None or args.command in NOT_DELEGATED:
        return None
    try:
        params = {}
        for pair in args.param:
            key, sep, value = pair.partition("=")
            if not sep:
                return None  # the in-process path says what is wrong
            try:
                params[key] = json.loads(value)
            except json.JSONDecodeError:
                params[key] = value
    except RecursionError:
        return None
    from mcp_server import control_client

    render = control_client.render_request(args.json)
    request = control_client.collect_request(
        args.command,
        device=args.device,
        all_devices=args.all,
        tags=args.tags,
        params=params,
        force_refresh=args.force_refresh,
        render=render,
    )
    progress: contextlib.ExitStack | None = None
    on_device: OnStep | None = None

    def on_line(message: dict[str, Any]) -> None:
        nonlocal progress, on_device
        if "stderr" in message:
            sys.stderr.write(message["stderr"])
            sys.stderr.flush()
        elif "step" in message:
            from mcp_server.progress import StepDone

            step = message["step"]
            if progress is None:
                progress = contextlib.ExitStack()
                on_device = progress.enter_context(device_progress(args.command, int(step["total"])))
            assert on_device is not None
            done = StepDone(
                str(step["name"]),
                int(step["done"]),
                int(step["total"]),
                str(step["outcome"]),
                step["problem"],
            )
            _drive(on_device(done))

    try:
        try:
            answer = control_client.delegate(request, on_line)
        finally:
            if progress is not None:
                progress.close()
    except control_client.NoServer:
        return None
    if "error" in answer:  # a request the server could not read: said as the in-process path says it
        from mcp_server.cli_output import print_error

        print_error(err, str(answer["error"]))
        return int(answer["exit"])
    if render is not None:
        sys.stdout.write(answer.get("stdout", ""))
        sys.stderr.write(answer.get("stderr", ""))
        return int(answer["exit"])
    from mcp_server.cli_output import print_json, print_outcomes

    if args.json:
        print_json(out, answer["outcomes"])
    else:
        print_outcomes(out, args.command, answer["outcomes"])
    return int(answer["exit"])


def _drive(step: Any) -> None:
    """Run a progress callback (a coroutine that never waits) to its end without an event loop."""
    try:
        step.send(None)
    except StopIteration:
        return
    step.close()


def _print_commands() -> None:
    """`collect --list`: the commands `collect` runs, with their parameters (from the registry, no database)."""
    from mcp_server.cli_output import table as _table
    from mcp_server.commands import default_registry

    registry = default_registry()
    table = _table("command", "category", "parameters", "what it returns")
    for name in registry.readable():
        definition = registry.get(name)
        parameters = definition.parameter_schema().get("properties", {})
        table.add_row(name, definition.category, ", ".join(parameters), definition.summary)
    table.add_row("config_file", "config", "path", "a watched configuration file's current content")
    table.add_row(
        "run_command", "admin", "argv", "an allowlisted program's output (INFRA_ALLOW_RUN_COMMAND=true only)"
    )
    out.print(table)


def _check_collect(state: AppState, command: str, params: dict[str, Any]) -> None:
    """The gates of the MCP tools that run a command by name: `collect` runs read commands only, and
    `run_command` only when INFRA_ALLOW_RUN_COMMAND is on and the program is in its allowlist."""
    from mcp_server.commands.admin import check_allowed
    from mcp_server.errors import InvalidParameter

    if command != "run_command":
        state.registry.get_read(command)
        return
    argv = params.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(word, str) for word in argv):
        raise InvalidParameter(
            "run_command takes its program and arguments as a JSON list: --param 'argv=[\"uptime\"]'"
        )
    check_allowed(
        argv, enabled=state.settings.allow_run_command, allowlist=state.settings.run_command_allowlist
    )


async def _read_watched(state: AppState, device: str, params: dict[str, Any]) -> DeviceOutcome[Any]:
    """A configuration file as the `infra://config/{device}/{path*}` resource reads it: watched files only."""
    from datetime import UTC, datetime
    from typing import Any

    from mcp_server.collection import Collected, DeviceOutcome
    from mcp_server.errors import InfrastructorError, InvalidParameter

    path = params.get("path")
    try:
        if set(params) != {"path"} or not isinstance(path, str):
            raise InvalidParameter(
                "config_file reads one watched file: --param path=/absolute/path (watch it first with "
                "watch_config_file)"
            )
        data = await state.config.current(device, path)
    except InfrastructorError as exc:
        return DeviceOutcome(device=device, ok=False, error_type=exc.error_type, error=str(exc))
    result = Collected[Any](
        device=device,
        command="config_file",
        collected_at=datetime.now(UTC),
        from_cache=False,
        age_seconds=0.0,
        data=data,
    )
    return DeviceOutcome(device=device, ok=True, result=result)
