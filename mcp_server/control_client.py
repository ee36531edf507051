"""The CLI's side of the control socket (control.py): hand a read collection to a running `serve` on the same
data directory, as `ssh` hands a session to its ControlMaster.

Standard library only (a new process pays for every import before it knows whether a server answers). The
socket is followed only when it is this user's socket, in this user's data directory that no one else may
write to, and the process answering on it runs as this user. When nothing answers (no server, a stale socket,
another user's, a server that refuses), `NoServer` says so and the CLI runs the collection itself.
"""

from __future__ import annotations

import _json  # json's C half: the json package compiles regular expressions (and loads re) on import
import _socket  # socket's C module: socket.py builds enums on import, a tenth of this process's imports
import os
import stat
import struct
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

SOCKET_NAME = "control.sock"  # control.SOCKET_NAME
CONNECT_SECONDS = 1.0
# Seconds to wait for the next line of an answer (a device finishing); the server bounds each device's work.
ANSWER_SECONDS = 600.0
# the environment variables rich reads to shape its output (control.RICH_ENVIRON)
RICH_ENVIRON = (
    *("COLUMNS", "LINES", "TERM", "COLORTERM", "NO_COLOR"),
    *("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"),
)
FORCING = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")


class NoServer(Exception):
    """No server takes the request: the CLI runs it in-process."""


def setting(name: str) -> str | None:
    """An INFRA_* variable as the settings read it (pydantic-settings ignores the case of the name)."""
    value = os.environ.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    return next((v for k, v in os.environ.items() if k.lower() == wanted), None)


def data_dir() -> str:
    return os.path.expanduser(setting("INFRA_DATA_DIR") or "~/.local/share/infrastructor")


def database_fingerprint() -> str | None:
    """control.database_fingerprint of this process's INFRA_DATABASE_URL."""
    url = setting("INFRA_DATABASE_URL")
    if not url:
        return None
    import hashlib

    return hashlib.sha256(url.encode()).hexdigest()


def collect_request(
    command: str,
    *,
    device: str | None,
    all_devices: bool,
    tags: list[str] | None,
    params: dict[str, Any] | None,
    force_refresh: bool,
    render: dict[str, Any] | None,
) -> dict[str, Any]:
    """The control request of `infrastructor collect` (control.py reads it), from either CLI entry."""
    return {
        "v": 1,
        "op": "collect",
        "command": command,
        "device": device,
        "all": all_devices,
        "tags": tags,
        "params": params or None,
        "force_refresh": force_refresh,
        "database": database_fingerprint(),
        "render": render,
    }


def render_request(as_json: bool) -> dict[str, Any] | None:
    """How the server should render the output for this process (see cli_output.CliConsoles), or None when
    stdout or stderr is a terminal (progress bars and colours are drawn here)."""
    if sys.stdout.isatty() or sys.stderr.isatty() or any(k in os.environ for k in FORCING):
        return None
    environ = {k: os.environ[k] for k in RICH_ENVIRON if k in os.environ}
    columns = environ.get("COLUMNS")
    # rich's size when no width is given: the first of stdin/stdout/stderr that is a terminal, COLUMNS, or 80
    measured: int | None = None
    for fd in (0, 1, 2):
        try:
            measured = os.get_terminal_size(fd).columns
        except (OSError, ValueError):
            continue
        break
    natural = int(columns) if columns is not None and columns.isdigit() else (measured or 80)
    return {
        "json": as_json,
        "out_width": natural if "COLUMNS" in os.environ else 200,  # cli.py's `out`
        "err_width": natural,
        "out_encoding": (sys.stdout.encoding or "utf-8").lower(),
        "err_encoding": (sys.stderr.encoding or "utf-8").lower(),
        "environ": environ,
    }


def connect(directory: str | os.PathLike[str]) -> _socket.socket:
    """A connection to the server on `directory`'s control socket; NoServer unless it is safe and answers."""
    uid = os.geteuid()
    path = os.path.join(directory, SOCKET_NAME)
    try:
        folder = os.lstat(directory)
        found = os.lstat(path)
    except OSError as exc:
        raise NoServer(f"no control socket ({exc.strerror})") from None
    if not stat.S_ISDIR(folder.st_mode) or folder.st_uid != uid or folder.st_mode & 0o022:
        raise NoServer("the data directory is not this user's alone")
    if not stat.S_ISSOCK(found.st_mode) or found.st_uid != uid:
        raise NoServer("the control socket is not this user's")
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_SECONDS)
        sock.connect(path)
        size = struct.calcsize("3i")
        credentials = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, size)
        _pid, peer, _gid = struct.unpack("3i", credentials)
        if peer != uid:
            raise NoServer(f"the control socket is served by uid {peer}")
    except OSError as exc:  # refused: a stale socket, its server gone
        sock.close()
        raise NoServer(f"the control socket does not answer ({exc})") from None
    except NoServer:
        sock.close()
        raise
    return sock


def delegate(request: dict[str, Any], on_line: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Send `request` to the server on this data directory; hand each intermediate answer to `on_line` and
    return the last one (it carries "exit"). NoServer when no server takes it."""
    sock = connect(data_dir())
    try:
        sock.settimeout(ANSWER_SECONDS)
        sock.sendall(dumps(request).encode() + b"\n")
        for raw in _lines(sock):
            message = loads(raw.decode())
            if "refused" in message:
                raise NoServer(f"the server refused: {message['refused']}")
            if "exit" in message:
                return dict(message)
            on_line(message)
    except (OSError, ValueError) as exc:
        raise NoServer(f"the server's answer broke off ({exc})") from None
    finally:
        sock.close()
    raise NoServer("the server closed the connection without an answer")


def _lines(sock: _socket.socket) -> Iterator[bytes]:
    """The lines the server sends, until it closes the connection."""
    pending = b""
    while chunk := sock.recv(1 << 16):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from lines


class _Reading:
    """What json's C scanner reads its settings from (json.JSONDecoder's defaults)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}.__getitem__
    memo: dict[str, Any] = {}


_scan = _json.make_scanner(_Reading())  # type: ignore[arg-type]  # typeshed: a JSONDecoder; any such object


def _unserializable(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_encode = _json.make_encoder(
    None, _unserializable, _json.encode_basestring, None, ": ", ", ", False, False, True
)


def dumps(value: Any) -> str:
    """json.dumps(value, ensure_ascii=False), without the json package."""
    if isinstance(value, str):
        return str(_json.encode_basestring(value))
    return "".join(_encode(value, 0))


def loads(text: str) -> Any:
    """json.loads of one line the server sent, without the json package; what the scanner does not read
    whole (surrounding whitespace, not JSON) is left to json.loads (a ValueError when it is not JSON)."""
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        end = -1
    if end != len(text):
        import json

        return json.loads(text)
    return value
