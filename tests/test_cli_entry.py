"""cli_entry reads a plain `collect` by hand: what it reads must be what argparse reads (cli._parser), and
both entries build their control request with control_client.collect_request; every other form is left to
argparse (None)."""

from __future__ import annotations

import pytest

from mcp_server.cli import _parser
from mcp_server.cli_entry import plain_collect

READ = [
    ["collect", "os_info"],
    ["collect", "os_info", "--all", "--force-refresh"],
    ["collect", "os_info", "--force-refresh", "--all", "--json"],
    ["collect", "disk_usage", "--device", "web1"],
    ["collect", "disk_usage", "--device=web1,db2", "--json"],
    ["collect", "os_info", "--tag", "prod", "--tag=eu", "--all"],
    ["collect", "os_info", "--device", "a", "--tag", "x", "--force-refresh"],
    ["collect", "os_info", "--device", "has space"],
    ["collect", "nope"],  # an unknown command: the server says so as the in-process path does
]


@pytest.mark.parametrize("argv", READ, ids=" ".join)
def test_what_is_read_by_hand_is_what_argparse_reads(argv: list[str]) -> None:
    found = plain_collect(argv)
    args = _parser().parse_args(argv)
    assert found == {
        "command": args.command,
        "device": args.device,
        "all_devices": args.all,
        "tags": args.tags,
        "force_refresh": args.force_refresh,
        "json": args.json,
    }


LEFT = [
    [],
    ["--help"],
    ["--version"],
    ["devices", "list"],
    ["collect"],
    ["collect", "--list"],
    ["collect", "--help"],
    ["collect", "os_info", "--help"],
    ["collect", "os_info", "-h"],
    ["collect", "--all", "os_info"],  # the command first only
    ["collect", "os_info", "--force"],  # an abbreviation argparse accepts
    ["collect", "os_info", "--al"],
    ["collect", "os_info", "--param", "path=/"],
    ["collect", "os_info", "--no-server"],
    ["collect", "os_info", "--device", "a", "--all"],  # argparse: not allowed with
    ["collect", "os_info", "--device", "a", "--device", "b"],
    ["collect", "os_info", "--all", "--all"],
    ["collect", "os_info", "--device"],  # expects one argument
    ["collect", "os_info", "--device", "--all"],
    ["collect", "os_info", "--device="],
    ["collect", "os_info", "--tag", "-x"],
    ["collect", "os_info", "extra"],
    ["collect", "os_info", "--json=yes"],
    ["collect", "os_info", "--"],
    ["collect", "", "--all"],
]


@pytest.mark.parametrize("argv", LEFT, ids=lambda a: " ".join(a) or "(none)")
def test_every_other_form_is_left_to_argparse(argv: list[str]) -> None:
    assert plain_collect(argv) is None
