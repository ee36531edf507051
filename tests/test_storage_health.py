"""Storage health (SMART and ZFS) end to end: MCP tool -> validation -> quoting -> real sshd -> fixture binary
printing a captured real output -> parse -> store -> cache; plus the parsers' rules and the commands' contracts."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError

from mcp_server.commands import default_registry
from mcp_server.commands.storage import SMART_OK_STATUSES, DriveSmartParams
from mcp_server.errors import ParseError
from mcp_server.parsers.storage_drives import parse_drive_smart
from mcp_server.server import build_server
from mcp_server.settings import Settings
from mcp_server.state import AppState, open_state
from tests.app_fixtures import add_fleet_host, audit_rows
from tests.helpers import call_tool, fixture_bin, hints
from tests.sshd import SshdHost

GOLDEN = Path(__file__).parent / "golden"
REGISTRY = default_registry()
STORAGE_COMMANDS = ("drive_inventory", "drive_smart", "zpool_list", "zpool_status", "zfs_snapshots")
# the datasets of the system the zfs_snapshots capture comes from (mmitch/list-zfs-snapshots, t/mock-zfs.sh)
DATASETS = (
    "bpool", "bpool/BOOT", "bpool/BOOT/debian", "rpool", "rpool/ROOT", "rpool/ROOT/debian", "rpool/opt",
    "rpool/var", "rpool/var/cache", "rpool/var/log", "rpool/var/spool",
)  # fmt: skip


@dataclass
class StorageHosts:
    fixtures: SshdHost  # smartctl, zpool, zfs and lsblk fixtures on PATH; /dev/vda answers as a failing disk
    usb: SshdHost  # the same, but smartctl cannot tell /dev/vda's device type (exit status 1)
    bare: SshdHost  # only the lsblk fixture: smartctl, zpool and zfs are missing
    data: Path

    def calls(self) -> list[str]:
        return (self.data / "calls.log").read_text().splitlines()


def _fixture_host_dir(root: Path, name: str, programs: tuple[str, ...], smart_case: str) -> Path:
    """<root>/<name>/bin holds the fixture programs; they read the captures in the sibling data/ directory."""
    data = fixture_bin(root / name, "storage", programs).parent / "data"
    (data / "smartctl").mkdir()
    shutil.copy(GOLDEN / "drive_inventory/debian12_virtio_zram_loop.txt", data / "lsblk.json")
    shutil.copy(GOLDEN / f"drive_smart/{smart_case}.txt", data / "smartctl/vda.json")
    shutil.copy(GOLDEN / "zpool_list/netdata_issue_degraded_store_and_zroot.txt", data / "zpool-list.txt")
    shutil.copy(GOLDEN / "zpool_status/proxmox_rpool_degraded_faulted_disk.txt", data / "zpool-status.txt")
    shutil.copy(GOLDEN / "zfs_snapshots/debian_zfs_auto_snapshot.txt", data / "zfs-snapshots.txt")
    (data / "zfs-datasets.txt").write_text("\n".join(DATASETS) + "\n")
    return root / name


@pytest.fixture(scope="module")
def storage_hosts(sshd_fleet: Any, request: pytest.FixtureRequest) -> StorageHosts:
    """The fixture hosts, once per test module using them (tests/test_progress.py imports this fixture too):
    host names carry the module's name, as the session's fleet starts each name once."""
    root = sshd_fleet.scratch_dir()
    module = request.module.__name__.rsplit(".", 1)[-1]
    everything = ("lsblk", "smartctl", "zpool", "zfs")
    fixtures = _fixture_host_dir(root, "fixtures", everything, "usb_jmicron_hdd_failing")
    usb = _fixture_host_dir(root, "usb", everything, "unknown_device_type")
    bare = _fixture_host_dir(root, "bare", ("lsblk",), "usb_jmicron_hdd_failing")

    def host(name: str, home: Path) -> SshdHost:
        # sshd applies only the first SetEnv line, so PATH is the one variable; the data dir sits beside bin/
        return sshd_fleet.start_host(f"{name}-{module}", env={"PATH": f"{home / 'bin'}:/usr/bin:/bin"})  # type: ignore[no-any-return]

    return StorageHosts(
        fixtures=host("storage-fixtures", fixtures),
        usb=host("storage-usb", usb),
        bare=host("storage-bare", bare),
        data=fixtures / "data",
    )


@contextlib.asynccontextmanager
async def mcp_on_sqlite(settings: Settings) -> AsyncIterator[tuple[AppState, Client[Any]]]:
    async with open_state(settings) as state, Client(build_server(state.settings, state=state)) as client:
        yield state, client


# ---- through MCP, against the fixture host ----------------------------------------------------------------------


async def test_drive_health_checks_every_disk_one_disk_and_rejects_a_disk_lsblk_does_not_list(
    client: Client[Any], state: AppState, sshd_fleet: Any, storage_hosts: StorageHosts
) -> None:
    await add_fleet_host(state, sshd_fleet, storage_hosts.fixtures, name="nas")
    every = await call_tool(client, "get_drive_health", device="nas")
    assert every["command"] == "drive_smart" and every["from_cache"] is False
    report = every["data"]
    assert (report["total"], report["failing"], report["healthy"]) == (1, 1, 0)
    (vda,) = report["drives"]
    assert vda["path"] == "/dev/vda"  # zram0 and loop0 are left out
    assert vda["verdict"] == (
        "failing: SMART overall-health FAILED; a pre-failure attribute is at or below its failure threshold now"
    )
    assert (vda["reallocated_sectors"], vda["pending_sectors"], vda["power_on_hours"]) == (1975, 8, 65592)
    # smartctl exited 216: disk-condition bits, reported as data rather than raised as a failure
    assert vda["exit_status"] == 216 and [b["bit"] for b in vda["exit_status_bits"]] == [3, 4, 6, 7]

    one = await call_tool(client, "get_drive_health", device="nas", drive="/dev/vda", force_refresh=True)
    assert [d["path"] for d in one["data"]["drives"]] == ["/dev/vda"]

    with pytest.raises(
        ToolError, match=r"Unknown drive '/dev/sdz' on device 'nas'. Drives found by lsblk: /dev/vda\."
    ):
        await client.call_tool("get_drive_health", {"device": "nas", "drive": "/dev/sdz"})
    rows = await audit_rows(state, device="nas", command="drive_smart")
    assert [r.ssh_commands for r in rows] == [["smartctl --json -a -- /dev/vda"]] * 2
    inventory = await audit_rows(state, device="nas", command="drive_inventory")
    assert inventory[0].ssh_commands == ["lsblk -J -b -d -o NAME,PATH,TYPE,SIZE,MODEL,SERIAL,ROTA,TRAN"]


async def test_zfs_status_reports_the_degraded_pool_its_faulted_disk_and_the_usage_of_listed_pools(
    sqlite_settings: Settings, sshd_fleet: Any, storage_hosts: StorageHosts
) -> None:
    async with mcp_on_sqlite(sqlite_settings) as (state, client):
        await add_fleet_host(state, sshd_fleet, storage_hosts.fixtures, name="nas")
        report = (await call_tool(client, "get_zfs_status", device="nas"))["data"]
        pools = {p["name"]: p for p in report["pools"]}
        # the two captures come from different systems, so each pool is known to one command only
        assert sorted(pools) == ["rpool", "store", "zroot"]
        assert report["unhealthy"] == ["rpool", "store"]
        assert pools["store"]["usage"]["capacity_percent"] == 30 and pools["store"]["health"] == "DEGRADED"
        rpool = pools["rpool"]["status"]
        faulted = [v for v in rpool["vdevs"] if v["state"] == "FAULTED"]
        assert faulted == [
            {
                "name": "ata-ST9500325AS_5VE0S1MT-part3",
                "depth": 2,
                "parent": "mirror-0",
                "section": "data",
                "state": "FAULTED",
                "read_errors": 6,
                "write_errors": 0,
                "checksum_errors": 0,
                "note": "too many errors",
            }
        ]
        assert rpool["scan"]["state"] == "finished" and rpool["scan"]["ended"] == "Fri Aug 16 15:35:22 2024"

        only = await call_tool(client, "get_zfs_status", device="nas", pool="zroot")
        assert [p["name"] for p in only["data"]["pools"]] == ["zroot"] and only["from_cache"] is True
        with pytest.raises(
            ToolError, match=r"Unknown pool 'tank' on device 'nas'. Pools: rpool, store, zroot\."
        ):
            await client.call_tool("get_zfs_status", {"device": "nas", "pool": "tank"})
        rows = await audit_rows(state, device="nas", command="zpool_status")
        assert rows[0].ssh_commands == ["zpool status -p"]
        assert [r.cache_hit for r in rows] == [False, True, True]


async def test_snapshots_of_a_dataset_whose_name_has_a_slash_are_newest_first_and_paginated(
    sqlite_settings: Settings, sshd_fleet: Any, storage_hosts: StorageHosts
) -> None:
    async with mcp_on_sqlite(sqlite_settings) as (state, client):
        await add_fleet_host(state, sshd_fleet, storage_hosts.fixtures, name="nas")
        first = (
            await call_tool(client, "list_zfs_snapshots", device="nas", dataset="rpool/ROOT/debian", limit=5)
        )["data"]
        assert (first["total"], first["truncated"], first["sort_by"]) == (22, True, "creation")
        assert [s["snapshot"] for s in first["snapshots"][:2]] == [
            "zfs-auto-snap_hourly-2020-08-28-2117",
            "zfs-auto-snap_frequent-2020-08-28-2115",
        ]
        assert {s["dataset"] for s in first["snapshots"]} == {"rpool/ROOT/debian"}
        last = await call_tool(
            client, "list_zfs_snapshots", device="nas", dataset="rpool/ROOT/debian", offset=20, limit=5
        )
        assert [s["snapshot"] for s in last["data"]["snapshots"]] == [
            "zfs-auto-snap_weekly-2020-08-16-0518",
            "zfs-auto-snap_weekly-2020-08-09-0518",
        ]
        assert last["data"]["truncated"] is False and last["from_cache"] is True
        largest = await call_tool(
            client, "list_zfs_snapshots", device="nas", dataset="rpool/ROOT/debian", sort_by="used"
        )
        assert largest["data"]["snapshots"][0]["used_bytes"] == 36737024
        empty = await call_tool(client, "list_zfs_snapshots", device="nas", dataset="rpool/var/cache")
        assert (empty["data"]["total"], empty["data"]["snapshots"]) == (0, [])
        with pytest.raises(ToolError, match="cannot open 'rpool/nope': dataset does not exist"):
            await client.call_tool("list_zfs_snapshots", {"device": "nas", "dataset": "rpool/nope"})
        rows = await audit_rows(state, device="nas", command="zfs_snapshots")
        assert rows[0].ssh_commands == [
            "zfs list -Hp -t snapshot -o name,used,creation -r -- rpool/ROOT/debian"
        ]


async def test_a_second_call_within_the_ttl_is_served_from_cache_and_force_refresh_runs_smartctl_again(
    sqlite_settings: Settings, sshd_fleet: Any, storage_hosts: StorageHosts
) -> None:
    async with mcp_on_sqlite(sqlite_settings) as (state, client):
        await add_fleet_host(state, sshd_fleet, storage_hosts.fixtures, name="nas")
        before = storage_hosts.calls()
        first = await call_tool(client, "get_drive_health", device="nas")
        cached = await call_tool(client, "get_drive_health", device="nas")
        refreshed = await call_tool(client, "get_drive_health", device="nas", force_refresh=True)
        ran = [c.split()[0] for c in storage_hosts.calls()[len(before) :]]
        assert (first["from_cache"], cached["from_cache"], refreshed["from_cache"]) == (False, True, False)
        assert cached["collected_at"] == first["collected_at"]
        assert ran == ["lsblk", "smartctl", "lsblk", "smartctl"]


async def test_a_drive_smartctl_cannot_address_is_reported_unknown_instead_of_failing_the_call(
    sqlite_settings: Settings, sshd_fleet: Any, storage_hosts: StorageHosts
) -> None:
    async with mcp_on_sqlite(sqlite_settings) as (state, client):
        await add_fleet_host(state, sshd_fleet, storage_hosts.usb, name="usb-box")
        report = (await call_tool(client, "get_drive_health", device="usb-box"))["data"]
        (vda,) = report["drives"]
        assert (report["unknown"], vda["status"], vda["exit_status"]) == (1, "unknown", 1)
        assert vda["verdict"].startswith("unknown: smartctl failed with exit status 1")
        assert vda["capacity_bytes"] == 274877906944  # what lsblk knew


async def test_use_sudo_runs_smartctl_and_zpool_through_sudo_and_a_password_prompt_is_a_clear_error(
    sqlite_settings: Settings, sshd_fleet: Any, storage_hosts: StorageHosts
) -> None:
    if shutil.which("sudo") is None:
        pytest.skip("sudo is not installed")
    async with mcp_on_sqlite(sqlite_settings) as (state, client):
        await add_fleet_host(state, sshd_fleet, storage_hosts.fixtures, name="nas-sudo", use_sudo=True)
        with pytest.raises(ToolError, match="'nas-sudo' needs root and sudo asked for a password"):
            await client.call_tool("get_drive_health", {"device": "nas-sudo"})
        with pytest.raises(ToolError, match="sudo asked for a password"):
            await client.call_tool("get_zfs_status", {"device": "nas-sudo"})
        smart = await audit_rows(state, device="nas-sudo", command="drive_smart")
        assert smart[0].ssh_commands == ["sudo -n -- smartctl --json -a -- /dev/vda"]
        assert smart[0].error_type == "sudo_password_required"
        # lsblk and zfs list need no root, so they never go through sudo
        lsblk = await audit_rows(state, device="nas-sudo", command="drive_inventory")
        assert lsblk[0].ssh_commands[0].startswith("lsblk ") and lsblk[0].outcome == "ok"
        zpool = await audit_rows(state, device="nas-sudo", command="zpool_list")
        assert zpool[0].ssh_commands == [
            "sudo -n -- zpool list -Hp -o name,size,alloc,free,frag,cap,dedup,health"
        ]


@pytest.mark.parametrize(
    ("tool", "binary", "commands"),
    [
        ("get_drive_health", "smartctl", {"drive_smart"}),
        ("get_zfs_status", "zpool", {"zpool_list", "zpool_status"}),
        ("list_zfs_snapshots", "zfs", {"zfs_snapshots"}),
    ],
)
async def test_a_device_without_the_binary_gets_command_not_available_naming_it_and_the_device(
    sqlite_settings: Settings,
    sshd_fleet: Any,
    storage_hosts: StorageHosts,
    tool: str,
    binary: str,
    commands: set[str],
) -> None:
    async with mcp_on_sqlite(sqlite_settings) as (state, client):
        await add_fleet_host(state, sshd_fleet, storage_hosts.bare, name="bare")
        with pytest.raises(ToolError, match=f"needs '{binary}', which is not installed .* on device 'bare'"):
            await client.call_tool(tool, {"device": "bare"})
        rows = await audit_rows(state, device="bare", kind="collection", error_type="command_not_available")
        # zpool list and zpool status run concurrently: the call fails with whichever finishes first
        assert rows and {r.command for r in rows} <= commands


CORPUS = [
    "x; touch /tmp/p",
    "$(id)",
    "`id`",
    "a\nb",
    "--output=/etc/passwd",
    "../../etc/passwd",
    "",
    "x" * 300,
]
EXTRA = {
    "drive": [
        "/dev/sda; touch {marker}",
        "/dev/$(touch {marker})",
        "/dev/`touch {marker}`",
        "/dev/sda\n",
        "/dev/../etc",
    ],
    "pool": ["tank; touch {marker}", "tank\n", "-tank", "tank pool"],
    "dataset": [
        "tank/x; touch {marker}",
        "tank/$(touch {marker})",
        "tank/../../etc",
        "tank/x\n",
        "/tank",
        "-r",
    ],
}
TOOLS = {"drive": "get_drive_health", "pool": "get_zfs_status", "dataset": "list_zfs_snapshots"}


@pytest.mark.parametrize("parameter", ["drive", "pool", "dataset"])
async def test_injection_attempts_are_rejected_and_nothing_runs_on_the_device(
    sqlite_settings: Settings, sshd_fleet: Any, storage_hosts: StorageHosts, tmp_path: Path, parameter: str
) -> None:
    marker = tmp_path / "pwned"
    async with mcp_on_sqlite(sqlite_settings) as (state, client):
        await add_fleet_host(state, sshd_fleet, storage_hosts.fixtures, name="nas")
        before = storage_hosts.calls()
        for value in CORPUS + [v.format(marker=marker) for v in EXTRA[parameter]]:
            with pytest.raises(ToolError, match="Invalid arguments|Invalid parameters") as raised:
                await client.call_tool(TOOLS[parameter], {"device": "nas", parameter: value})
            assert "Traceback" not in str(raised.value)
        assert not marker.exists() and not Path("/tmp/p").exists()
        assert storage_hosts.calls() == before
        assert [r.ssh_commands for r in await audit_rows(state, kind="collection") if r.ssh_commands] == []


async def test_storage_tools_are_read_only_and_describe_their_results(sqlite_settings: Settings) -> None:
    async with mcp_on_sqlite(sqlite_settings) as (_, client):
        tools = {t.name: t for t in await client.list_tools()}
    for name in ("get_drive_health", "get_zfs_status", "list_zfs_snapshots"):
        tool = tools[name]
        assert tool.annotations is not None and hints(tool).read_only_hint is True
        assert hints(tool).destructive_hint is False and hints(tool).open_world_hint is True
        assert tool.output_schema is not None and "collected_at" in tool.output_schema["properties"]
    schema = tools["list_zfs_snapshots"].output_schema
    assert schema is not None
    page = schema["properties"]["data"]["properties"]
    assert {"total", "truncated", "snapshots"} <= set(page)


# ---- commands and parsers ------------------------------------------------------------------------------------------


def test_smartctl_exit_statuses_are_accepted_unless_smartctl_could_not_run_or_parse_its_command_line() -> (
    None
):
    assert {0, 2, 4, 8, 64, 192, 216, 252} <= SMART_OK_STATUSES
    # bit 0 (also sudo's "password required" status), the shell's 126/127, and ssh's 255 stay failures
    assert not {1, 3, 5, 126, 127, 255} & SMART_OK_STATUSES


def test_storage_commands_quote_and_separate_their_parameters() -> None:
    smart = REGISTRY.get("drive_smart")
    assert smart.render(smart.validate({"drive": "/dev/nvme0n1"}), sudo=True) == [
        "sudo", "-n", "--", "smartctl", "--json", "-a", "--", "/dev/nvme0n1",
    ]  # fmt: skip
    snapshots = REGISTRY.get("zfs_snapshots")
    assert snapshots.render(snapshots.validate({}))[-1] == "name,used,creation"
    assert snapshots.render(snapshots.validate({"dataset": "tank/data"}))[-3:] == ["-r", "--", "tank/data"]
    assert REGISTRY.get("zfs_snapshots").root is False and REGISTRY.get("zpool_status").root is True


GARBAGE = ["garbage\n", "@@nothing\n1 2 3\n", "{}", "[1, 2]", "\x00\x01\x02", '{"smartctl": ']


@pytest.mark.parametrize("text", GARBAGE, ids=repr)
@pytest.mark.parametrize("name", STORAGE_COMMANDS)
def test_garbage_output_raises_parse_error_naming_the_command(name: str, text: str) -> None:
    command = REGISTRY.get(name)
    params = command.validate({"drive": "/dev/sda"} if name == "drive_smart" else {})
    with pytest.raises(ParseError) as raised:
        command.parse(text, params)
    assert name in str(raised.value)


@pytest.mark.parametrize("name", ["drive_inventory", "drive_smart", "zpool_status"])
def test_empty_output_is_a_parse_error_where_the_program_always_prints_something(name: str) -> None:
    command = REGISTRY.get(name)
    with pytest.raises(ParseError):
        command.parse("", command.validate({"drive": "/dev/sda"} if name == "drive_smart" else {}))


def test_no_pools_and_no_snapshots_are_empty_lists() -> None:
    assert (
        REGISTRY.get("zpool_status")
        .parse("no pools available\n", REGISTRY.get("zpool_status").validate({}))
        .pools
        == []
    )
    assert (
        REGISTRY.get("zpool_list")
        .parse("no pools available\n", REGISTRY.get("zpool_list").validate({}))
        .pools
        == []
    )
    assert REGISTRY.get("zfs_snapshots").parse("", REGISTRY.get("zfs_snapshots").validate({})).snapshots == []


def _capture(case: str, **changes: Any) -> str:
    """A real capture with NVMe health-log fields changed, to exercise one verdict rule at a time."""
    data = json.loads((GOLDEN / "drive_smart" / f"{case}.txt").read_text())
    data["nvme_smart_health_information_log"].update(changes)
    return json.dumps(data)


@pytest.mark.parametrize(
    ("changes", "verdict"),
    [
        ({"percentage_used": 85}, "watch: NVMe wear at 85% of rated endurance"),
        ({"percentage_used": 103}, "failing: NVMe rated endurance used up (103%)"),
        (
            {"critical_warning": 4},
            "failing: NVMe critical warning: reliability degraded by media or internal errors",
        ),
        ({"num_err_log_entries": 90000}, "healthy"),
    ],
)
def test_nvme_wear_and_critical_warnings_drive_the_verdict(changes: dict[str, int], verdict: str) -> None:
    health = parse_drive_smart(
        _capture("nvme_seagate_firecuda_530", **changes), DriveSmartParams(drive="/dev/nvme1")
    )
    assert health.verdict == verdict


def test_a_permission_denied_open_failure_tells_the_operator_to_use_sudo() -> None:
    data = json.loads((GOLDEN / "drive_smart/unknown_device_type.txt").read_text())
    data["smartctl"]["exit_status"] = 2
    data["smartctl"]["messages"][0]["string"] = "Smartctl open device: /dev/sda failed: Permission denied"
    health = parse_drive_smart(json.dumps(data), DriveSmartParams(drive="/dev/sda"))
    assert health.verdict == (
        "unknown: smartctl could not read the drive: Smartctl open device: /dev/sda failed: Permission denied "
        "(smartctl needs root: set use_sudo on the device)"
    )
    assert [b.bit for b in health.exit_status_bits] == [1]


@pytest.mark.parametrize(
    "value", ["/dev/sda", "/dev/nvme0n1", "/dev/disk/by-id/ata-WDC_WD40-part1", "/dev/mapper/x"]
)
def test_drive_paths_under_dev_are_accepted(value: str) -> None:
    assert REGISTRY.get("drive_smart").validate({"drive": value}).drive == value  # type: ignore[attr-defined]
