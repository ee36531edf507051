"""Discovery: the compose files list_compose_stacks reports and the SWAG proxy-conf directory behind a running
SWAG container are watched, against an sshd host whose docker is a fixture (tests/fixture_bin/config)."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

from mcp_server.events import ConfigChanged
from mcp_server.state import open_state
from tests.app_fixtures import add_fleet_host, make_settings
from tests.sshd import SshdFleet

FIXTURE = Path(__file__).parent / "fixture_bin" / "config" / "docker"
DEADLINE = 20.0
PROXY = "server { listen 443 ssl; server_name grafana.*; location / { proxy_pass http://grafana:3000; } }\n"


async def test_compose_files_and_swag_proxy_confs_found_on_a_device_are_watched(
    sshd_fleet: SshdFleet, tmp_path: Path
) -> None:
    root = sshd_fleet.scratch_dir()
    bindir = root / "bin"
    bindir.mkdir()
    shutil.copy(FIXTURE, bindir / "docker")
    (bindir / "docker").chmod(0o755)
    compose = root / "media" / "compose.yaml"
    compose.parent.mkdir()
    compose.write_text("services:\n  web:\n    image: nginx:1.25\n")
    confs = root / "swag" / "nginx" / "proxy-confs"
    confs.mkdir(parents=True)
    (confs / "grafana.subdomain.conf").write_text(PROXY)
    host = sshd_fleet.start_host(
        "docker-fixture", env={"PATH": f"{bindir}:/usr/bin:/bin", "CONFIG_FIXTURE_DIR": str(root)}
    )
    async with open_state(make_settings(tmp_path, config_debounce=0.2)) as state:
        queue = state.events.subscribe_queue(types=(ConfigChanged,))
        await state.config.start()
        device = await add_fleet_host(state, sshd_fleet, host)

        # what list_compose_stacks runs: the stack's compose file becomes a discovered target
        stacks = await state.service.collect(device, "compose_stacks")
        assert stacks.data.stacks[0].config_files == [str(compose)]
        end = time.monotonic() + DEADLINE
        while str(compose) not in state.config.targets.get(device, {}):
            assert time.monotonic() < end, "the compose file was not discovered"
            await asyncio.sleep(0.02)
        added, errors = await state.config.discover(device)

        assert (added, errors) == ([str(confs)], [])
        target = state.config.targets[device][str(confs)]
        assert (target.source, target.kind, target.is_directory) == ("discovered", "nginx", True)
        assert state.config.targets[device][str(compose)].source == "discovered"
        compose.write_text("services:\n  web:\n    image: nginx:1.27\n")
        change = await asyncio.wait_for(queue.get(), DEADLINE)
        assert isinstance(change, ConfigChanged) and change.path == str(compose) and change.risk == "high"
