"""Package updates and libvirt VMs end to end: MCP tool -> real sshd -> the real apt, or fixture dnf / rpm / virsh
printing captured real outputs -> parse -> store -> cache; plus the parsers' rules."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client

from mcp_server.commands import default_registry
from mcp_server.errors import CommandNotAvailable, ParseError
from mcp_server.settings import Settings
from mcp_server.state import AppState, open_state
from tests.app_fixtures import add_fleet_host, audit_rows
from tests.helpers import call_tool, fixture_bin, hints
from tests.sshd import SshdHost

GOLDEN = Path(__file__).parent / "golden"
REGISTRY = default_registry()


@dataclass
class HostFixtures:
    fixtures: SshdHost  # sh plus the dnf, rpm and virsh fixtures, nothing else (so no apt either)
    bare: SshdHost  # sh only


@pytest.fixture(scope="module")
def host_fixtures(sshd_fleet: Any) -> HostFixtures:
    root = sshd_fleet.scratch_dir()
    fixtures = fixture_bin(root / "hostfx", "host", ("dnf", "rpm", "virsh"), shell=True)
    bare = fixture_bin(root / "hostbare", "host", (), shell=True)
    return HostFixtures(
        fixtures=sshd_fleet.start_host("host-fixtures", env={"PATH": str(fixtures)}),
        bare=sshd_fleet.start_host("host-bare", env={"PATH": str(bare)}),
    )


# ---- through MCP and the service, against real and fixture hosts ------------------------------------------------


async def test_check_updates_reads_dnf_with_installed_versions_and_the_security_advisory(
    client: Client[Any], state: AppState, sshd_fleet: Any, host_fixtures: HostFixtures
) -> None:
    await add_fleet_host(state, sshd_fleet, host_fixtures.fixtures, name="fedora")
    result = await call_tool(client, "check_updates", device="fedora")
    data = result["data"]
    assert (result["command"], data["manager"], data["total"], data["security_total"]) == (
        "package_updates",
        "dnf",
        4,
        1,
    )
    first = data["updates"][0]
    assert (first["name"], first["current"], first["candidate"], first["security"]) == (
        "homelab-agent",
        "1.0-1",
        "1.1-1",
        True,
    )
    security = await call_tool(client, "check_updates", device="fedora", security_only=True)
    assert [u["name"] for u in security["data"]["updates"]] == ["homelab-agent"]
    assert security["from_cache"] is True
    page = await call_tool(client, "check_updates", device="fedora", limit=2, offset=3)
    assert (len(page["data"]["updates"]), page["data"]["total"], page["data"]["truncated"]) == (1, 4, False)


async def test_list_vms_reports_states_vcpus_memory_and_autostart_running_first(
    client: Client[Any], state: AppState, sshd_fleet: Any, host_fixtures: HostFixtures
) -> None:
    await add_fleet_host(state, sshd_fleet, host_fixtures.fixtures, name="kvm")
    result = await call_tool(client, "list_vms", device="kvm")
    vms = result["data"]["vms"]
    assert [(v["name"], v["state"], v["vcpus"]) for v in vms] == [
        ("homeassistant", "running", 2),
        ("pihole", "paused", 1),
        ("win11 gaming", "shut off", 8),
    ]
    assert vms[2].get("id") is None and vms[2]["max_memory_bytes"] == 16 * 1024**3
    assert (result["data"]["total"], result["data"]["running"]) == (3, 1)
    paged = await call_tool(client, "list_vms", device="kvm", limit=1, offset=1)
    assert [v["name"] for v in paged["data"]["vms"]] == ["pihole"] and paged["data"]["truncated"] is True
    (row,) = [r for r in await audit_rows(state, kind="collection", command="vms") if not r.cache_hit]
    assert row.ssh_commands[0].startswith("sh -c 'export LC_ALL=C; command -v virsh")


def _apt_ground_truth() -> list[str]:
    listed = subprocess.run(
        ["apt", "list", "--upgradable"], capture_output=True, text=True, check=True
    ).stdout
    return sorted(line.split("/")[0] for line in listed.splitlines() if "/" in line)


async def test_check_updates_on_a_real_debian_host_matches_apt_itself(
    sqlite_settings: Settings, sshd_fleet: Any
) -> None:
    if shutil.which("apt") is None or shutil.which("dpkg") is None:
        pytest.skip("apt is not installed on this machine")
    async with open_state(sqlite_settings) as state:
        await add_fleet_host(state, sshd_fleet, sshd_fleet.hosts["alpha"])
        result = await state.service.collect("alpha", "package_updates")
        local = await state.service.collect("local", "package_updates")
    assert result.data.manager == "apt"
    assert sorted(u.name for u in result.data.updates) == _apt_ground_truth()
    assert local.data.model_dump() == result.data.model_dump()
    assert result.data.security_total == sum(u.repository is not None and "-security" in u.repository
                                             for u in result.data.updates)  # fmt: skip


async def test_a_device_without_a_package_manager_or_virsh_gets_command_not_available(
    sqlite_settings: Settings, sshd_fleet: Any, host_fixtures: HostFixtures
) -> None:
    async with open_state(sqlite_settings) as state:
        await add_fleet_host(state, sshd_fleet, host_fixtures.bare, name="appliance")
        with pytest.raises(CommandNotAvailable) as raised:
            await state.service.collect("appliance", "package_updates")
        assert (raised.value.binary, raised.value.device) == ("apt/dnf/pacman", "appliance")
        with pytest.raises(CommandNotAvailable, match="needs 'virsh'.*'appliance'"):
            await state.service.collect("appliance", "vms")


# ---- parsers ----------------------------------------------------------------------------------------------------

GARBAGE = ["", "\n", "garbage\n", "@@nothing\n1 2 3\n", "{}", "[1, 2]", "\x00\x01\x02", "@@end\n"]


@pytest.mark.parametrize("text", GARBAGE, ids=repr)
@pytest.mark.parametrize("command", ["package_updates", "vms"])
def test_garbage_or_empty_output_raises_parse_error(command: str, text: str) -> None:
    with pytest.raises(ParseError, match=command):
        REGISTRY.get(command).parse(text, REGISTRY.get(command).validate({}))


@pytest.mark.parametrize(
    "case",
    sorted((GOLDEN / "package_updates").glob("*.txt")) + sorted((GOLDEN / "vms").glob("*.txt")),
    ids=lambda p: p.stem,
)
def test_an_output_cut_short_is_refused_rather_than_returned_partially(case: Path) -> None:
    text = case.read_text()
    with pytest.raises(ParseError):
        REGISTRY.get(case.parent.name).parse(text[: len(text) // 2], None)


def test_apt_marks_an_update_as_security_when_any_of_its_suites_is_a_security_suite() -> None:
    parsed = json.loads((GOLDEN / "package_updates/debian12_apt_real.json").read_text())
    by_name = {u["name"]: u for u in parsed["updates"]}
    assert by_name["krb5-locales"]["repository"] == "oldstable,oldstable-security"
    assert by_name["krb5-locales"]["security"] is True
    assert by_name["bash"]["security"] is False
    assert parsed["updates"][0]["security"] is True  # security updates come first


def test_dnf_without_advisory_metadata_reports_security_as_unknown() -> None:
    text = (GOLDEN / "package_updates/lab_dnf4_security_advisory.txt").read_text()
    without = text.replace("@@dnf-security\nLAB-2026-0001 Important/Sec. homelab-agent-1.1-1.noarch\n",
                           "@@dnf-security\n@@dnf-security-unavailable\n")  # fmt: skip
    parsed = REGISTRY.get("package_updates").parse(without, None)
    assert parsed.security_total is None and {u.security for u in parsed.updates} == {None}


def test_dnf_obsoleting_packages_are_not_counted_as_updates() -> None:
    text = (GOLDEN / "package_updates/lab_dnf4_security_advisory.txt").read_text()
    # dnf prints replaced packages under this heading after the upgrades; they are removals, not upgrades
    with_obsoletes = text.replace(
        "@@dnf-security\n", "Obsoleting Packages\nhomelab-agent.noarch 1.1-1 lab\n@@dnf-security\n"
    )
    assert REGISTRY.get("package_updates").parse(with_obsoletes, None).total == 4


async def test_check_updates_and_list_vms_are_read_only_tools(client: Client[Any]) -> None:
    tools = {t.name: t for t in await client.list_tools()}
    for name in ("check_updates", "list_vms"):
        annotations = hints(tools[name])
        assert annotations.read_only_hint is True, name
        assert annotations.destructive_hint is False and annotations.open_world_hint is True, name
        assert tools[name].output_schema is not None and "total" in json.dumps(tools[name].output_schema), (
            name
        )
