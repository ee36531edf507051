"""The `infrastructor` console script: a plain `collect` goes straight to a running server, before argparse.

`infrastructor collect COMMAND [--device NAME | --all] [--tag TAG]... [--force-refresh] [--json]` with its
output piped or redirected (neither stdout nor stderr a terminal, where the server draws the output) is read
here, by hand, and handed to the server on the same data directory over its control socket
(control_client.py), having loaded nothing beyond the interpreter's own start-up, `_socket` and `_json`:
`import argparse, json` alone costs a new process more than the rest of its work before the server answers
(re, enum and the json regular expressions are compiled at import). Anything else (another command, another
option or spelling, `--param`, `--help`, a terminal, no server answering) is cli.main's, which parses with
argparse as before; a request the server refused or dropped is not sent again, cli.main runs it in-process
as it would have.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

# the options of `collect` read here; any other (or an abbreviation argparse would accept) goes to argparse
FLAGS = {"--all": "all_devices", "--force-refresh": "force_refresh", "--json": "json"}
VALUES = ("--device", "--tag")


def plain_collect(argv: Sequence[str]) -> dict[str, Any] | None:
    """The arguments of a plain `collect` (control_client.collect_request's, and `json`), or None unless
    they are of the plain form above and argparse reads them exactly so (the command first; each option
    once, --tag repeatable; no value that is empty or starts with "-")."""
    if len(argv) < 2 or argv[0] != "collect" or not argv[1] or argv[1].startswith("-"):
        return None
    found: dict[str, Any] = {"all_devices": False, "force_refresh": False, "json": False}
    device: str | None = None
    tags: list[str] | None = None
    rest = list(argv[2:])
    seen: set[str] = set()
    while rest:
        token = rest.pop(0)
        name, sep, value = token.partition("=")
        if name in FLAGS and not sep and token not in seen:
            seen.add(token)
            found[FLAGS[token]] = True
            continue
        if name not in VALUES or (name == "--device" and name in seen):
            return None
        if not sep:
            if not rest:
                return None
            value = rest.pop(0)
        if not value or value.startswith("-"):
            return None
        seen.add(name)
        if name == "--device":
            device = value
        else:
            tags = [*(tags or []), value]
    if device is not None and found["all_devices"]:
        return None  # argparse's "not allowed with" error
    return {"command": argv[1], "device": device, "tags": tags, **found}


class _Declined(Exception):
    """The request went to the control socket and no server took it: cli.main runs it in-process, without
    asking again (a refused request is audited once)."""


def quick(argv: Sequence[str]) -> int | None:
    """The exit status of a collect the server answered, or None: cli.main reads and runs it. _Declined
    when a server was asked and did not answer."""
    found = plain_collect(argv)
    if found is None:
        return None
    from mcp_server import control_client

    render = control_client.render_request(found.pop("json"))
    if render is None:  # a terminal: progress bars and colours are drawn by cli.main
        return None
    request = control_client.collect_request(**found, params=None, render=render)

    def on_line(message: dict[str, Any]) -> None:
        if "stderr" in message:
            sys.stderr.write(message["stderr"])
            sys.stderr.flush()

    try:
        answer = control_client.delegate(request, on_line)
    except control_client.NoServer:
        raise _Declined from None
    if (
        "stdout" not in answer
    ):  # not a rendered answer (a server of another version): said as cli.main says it
        from mcp_server.cli import err
        from mcp_server.cli_output import print_error

        print_error(err, str(answer.get("error", "the server's answer could not be read")))
        return int(answer["exit"])
    sys.stdout.write(answer["stdout"])
    sys.stderr.write(answer.get("stderr", ""))
    return int(answer["exit"])


def run() -> None:
    """The console script (pyproject.toml, `python -m mcp_server`): `quick`, else cli.run."""
    argv = sys.argv[1:]
    try:
        code = quick(argv) if argv[:1] == ["collect"] else None
    except _Declined:
        code, delegate = None, False
    else:
        delegate = True
    if code is None:
        from mcp_server.cli import run as full

        full(delegate=delegate)
        return
    _exit(code)


def _exit(code: int) -> None:
    """As cli.run ends: flushed, then the process ends at once (no thread was started here)."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # a closed pipe (`| head`): let the interpreter report it as usual
        sys.exit(code)
    os._exit(code)
