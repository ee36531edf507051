"""The watch policy: what may be watched and read (an allow-list of configuration places, a deny-list that wins),
applied by the server to the path a caller names and by the device's shell to the path with its symlinks
resolved, on real sshd hosts and on `local`; file names framed by NUL between device and parser; and reads of
a watched file shared for a moment but never past a change."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import mcp_types as mt
import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError
from mcp import MCPError
from sqlalchemy import select

from mcp_server.commands import default_registry
from mcp_server.commands.config import POLICY_SCRIPT
from mcp_server.config_monitoring.targets import watch_policy
from mcp_server.db.tables import CollectionSnapshot
from mcp_server.errors import ConfigurationError, InvalidParameter, ParseError
from mcp_server.events import ConfigChanged
from mcp_server.parsers.config_files import ConfigHashesParams, parse_config_hashes
from mcp_server.parsers.config_paths import DEFAULT_ALLOW, DENY, WatchPolicy
from mcp_server.parsers.config_proxy import ProxyConfigsParams, parse_proxy_configs
from mcp_server.server import build_server
from mcp_server.settings import load_settings
from mcp_server.state import AppState, open_state
from tests.app_fixtures import add_fleet_host, audit_rows, make_settings
from tests.sshd import SshdFleet

DEADLINE = 20.0
REGISTRY = default_registry()
SITE = "server {{ listen 443 ssl; server_name {name}; location / {{ proxy_pass http://{name}:80; }} }}\n"


# ---- the policy on paths ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/opt/stacks/media/compose.yaml",
        "/opt/stacks/media/.env",
        "/srv/docker/immich/docker-compose.yml",
        "/home/ann/docker/jellyfin/compose.yaml",
        "/home/ann/homelab/paperless/docker-compose.override.yml",
        "/root/compose.yaml",
        "/etc/nginx/nginx.conf",
        "/etc/nginx/sites-available/default",
        "/mnt/user/appdata/swag/nginx/proxy-confs/grafana.subdomain.conf",
        "/var/lib/docker/volumes/swag_config/_data/nginx/site-confs/default.conf",
        "/etc/systemd/system/backup.timer",
        "/usr/lib/systemd/system/ssh.service",
        "/home/ann/.config/systemd/user/syncthing.service",
        "/etc/containers/systemd/pihole.container",
        "/etc/fstab",
        "/etc/ssh/sshd_config",
        "/etc/samba/smb.conf",
        "/etc/docker/daemon.json",
        "/etc/cron.d/backup",
        "/etc/netplan/01-netcfg.yaml",
        "/boot/config/go",
        "/boot/config/share.cfg",
        "/etc/pve/nodes/pve1/qemu-server/100.conf",
        "/run/systemd/resolve/stub-resolv.conf",
    ],
)
def test_the_places_a_homelab_operator_watches_are_allowed(path: str) -> None:
    assert WatchPolicy().refusal(path) is None


@pytest.mark.parametrize(
    "path",
    [
        "/etc/sudoers",
        "/etc/sudoers.d/90-cloud-init-users",
        "/etc/shadow",
        "/opt/swag/etc/letsencrypt/live/example.com/privkey.pem",
        "/mnt/user/appdata/swag/keys/cert.key",
        "/etc/nginx/ssl/site.crt.pem",
        "/root/.bash_history",
        "/home/ann/docker/.zsh_history",
        "/home/ann/.ssh/id_ed25519",
        "/opt/stack/secrets/db_password.txt",
        "/opt/stack/postgres_password",
        "/opt/stack/api_token",
        "/boot/config/shadow",
        "/boot/config/smbpasswd",
        "/boot/config/wireguard/wg0.conf",
        "/opt/vaultwarden/data/db.sqlite3",
        "/opt/vaultwarden/data/db.sqlite3-wal",
        "/opt/home-assistant/config/secrets.yaml",
        "/etc/ssh/ssh_host_ed25519_key",
        "/srv/app/.docker/config.json",
        "/srv/app/client.ovpn",
    ],
)
def test_credential_stores_keys_histories_and_databases_are_refused_even_in_allowed_places(path: str) -> None:
    reason = WatchPolicy(allow=("*",)).refusal(path)
    assert reason is not None and "credential store, key material, a shell history or a database" in reason


def test_anything_else_is_outside_until_an_admin_allows_it_and_the_deny_list_still_wins() -> None:
    reason = WatchPolicy().refusal("/var/lib/app/config.yml")
    assert reason is not None and "INFRA_CONFIG_WATCH_ALLOW" in reason and "/etc/nginx" in reason
    assert WatchPolicy().refusal("/etc/wireguard/wg0.conf") is not None
    extended = WatchPolicy(allow=("/var/lib/app/*", "Caddyfile"))
    assert extended.refusal("/var/lib/app/config.yml") is None
    assert extended.refusal("/data/caddy/Caddyfile") is None  # a glob without '/' matches a file name
    assert extended.refusal("/var/lib/app/tls.key") is not None
    # a directory is judged as DIR/: /etc/nginx itself may be watched, /etc/ssl/private may not
    assert WatchPolicy().refusal("/etc/nginx", directory=True) is None
    assert WatchPolicy().refusal("/etc/ssl/private", directory=True) is not None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("/data/*,etc/app/*", "starts with '/' or '*'"),
        ("/data/[ab]/*", "'[', ']'"),
    ],
)
def test_a_bad_watch_allow_setting_fails_at_start_naming_the_variable(value: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)) as info:
        load_settings(config_watch_allow=value)
    assert str(info.value).startswith("INFRA_CONFIG_WATCH_ALLOW: ")


def _example(pattern: str) -> str:
    """A path that `pattern` matches, built from the pattern itself."""
    path = re.sub(r"\[(.)[^\]]*\]", r"\1", pattern).replace("*", "a/b")
    return path if "/" in pattern else f"/opt/app/{path}"


def _judge_on_device(shell: list[str], paths: list[str], policy: WatchPolicy) -> dict[str, str]:
    script = POLICY_SCRIPT + '\nfor p in "$@"; do why "$p"; printf \'%s\\0%s\\0\' "$p" "$w"; done'
    argv = [*shell, "-c", script, "sh", "\n".join(policy.allow), "\n".join(policy.own), *paths]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split("\0")
    return dict(zip(out[0:-1:2], out[1::2], strict=True))


def _shells() -> list[list[str]]:
    found = [["sh"]]
    if shutil.which("busybox"):
        found.append(["busybox", "sh"])
    return found


@pytest.mark.parametrize("shell", _shells(), ids=" ".join)
def test_the_device_script_and_the_server_judge_every_path_alike(shell: list[str]) -> None:
    policy = WatchPolicy(allow=("/data/stacks/*", "Caddyfile"), own=("/var/lib/infra", "/var/lib/infra/*"))
    paths = [_example(p) for p in (*DEFAULT_ALLOW, *DENY, *policy.allow, *policy.own)]
    paths += [p + "/" for p in paths]  # the same places judged as directories
    paths += ["/", "/var/lib/app/x", "/opt/a b/compose.yaml", "/opt/x*y/?.conf", "/etc/nginx/"]
    on_device = _judge_on_device(shell, paths, policy)
    for path in paths:
        here = policy.refusal(path.rstrip("/") or "/", directory=path.endswith("/"))
        there = on_device[path]
        assert (here is None) == (there == ""), f"{path}: server says {here!r}, device says {there!r}"
        for word, device_word in (("credential store", "credential store"), ("own data", "server itself")):
            assert (word in (here or "")) == (device_word in there), f"{path}: {here!r} vs {there!r}"


# ---- the same scripts under busybox ---------------------------------------------------------------------------


@pytest.fixture
def busybox_path(tmp_path: Path) -> Path:
    """A PATH of busybox applets only, for the tools the configuration scripts use."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox is not installed (apt-get install busybox-static)")
    bindir = tmp_path / "busybox-bin"
    bindir.mkdir()
    for applet in ("sh", "readlink", "sha256sum", "wc", "head", "tr", "cat"):
        (bindir / applet).symlink_to(busybox)
    return bindir


def test_the_scripts_give_the_same_records_under_busybox_as_under_dash_and_coreutils(
    tmp_path: Path, busybox_path: Path
) -> None:
    confs = tmp_path / "nginx" / "proxy-confs"
    confs.mkdir(parents=True)
    (confs / "a.conf").write_text(SITE.format(name="a.example"))
    (confs / "new\nline.conf").write_text(SITE.format(name="b.example"))
    (tmp_path / "elsewhere.conf").write_text(SITE.format(name="leaked.example"))
    (confs / "zz.conf").symlink_to(tmp_path / "elsewhere.conf")
    policy = WatchPolicy(allow=(f"{tmp_path}/*",))
    cases: dict[str, dict[str, Any]] = {
        "config_file": {"path": str(confs / "zz.conf"), "watched_dir": str(confs)},
        "config_hashes": {
            "files": [str(confs / "a.conf")],
            "dirs": [{"path": str(confs), "pattern": "conf"}],
        },
        "proxy_configs": {"dirs": [str(confs)]},
    }
    for command, params in cases.items():
        definition = REGISTRY.get(command)
        validated = definition.validate({**params, "policy": policy})
        argv = definition.render(validated)
        results = []
        for env in (os.environ, {"PATH": str(busybox_path)}):
            run = subprocess.run(argv, capture_output=True, text=True, env=dict(env), check=True)
            results.append(definition.parse(run.stdout, validated).model_dump())
        assert results[0] == results[1], command
    assert "leaked.example" not in json.dumps(results)


@pytest.fixture
async def running_client(tmp_path: Path) -> AsyncIterator[tuple[AppState, Client[Any]]]:
    async with open_state(make_settings(tmp_path, config_debounce=0.05)) as state:
        await state.config.start()
        async with Client(build_server(state.settings, state=state)) as client:
            yield state, client


# ---- NUL framing -----------------------------------------------------------------------------------------------


async def test_a_file_name_with_a_newline_cannot_stand_in_for_another_files_hash(tmp_path: Path) -> None:
    confs = tmp_path / "confs"
    confs.mkdir()
    (confs / "a.conf").write_text("a=1\n")
    (confs / "a.conf\nzzz").write_text("planted\n")  # listed after a.conf: once read as `f HASH .../a.conf`
    async with open_state(make_settings(tmp_path)) as state:
        params = {"dirs": [{"path": str(confs)}], "policy": state.config.policy("local")}
        hashes = (await state.service.collect("local", "config_hashes", params)).data

    assert hashes.files == {
        str(confs / "a.conf"): hashlib.sha256(b"a=1\n").hexdigest(),
        str(confs / "a.conf\nzzz"): "!",  # a name no watched path can have is never read
    }


async def test_a_conf_name_with_a_newline_neither_breaks_nor_forges_the_proxy_scan(
    running_client: tuple[AppState, Client[Any]], tmp_path: Path
) -> None:
    _state, client = running_client
    confs = tmp_path / "swag" / "nginx" / "proxy-confs"
    confs.mkdir(parents=True)
    odd = confs / "odd\n@@dir .conf"
    odd.write_text(SITE.format(name="odd.example"))
    await client.call_tool("watch_config_file", {"device": "local", "path": str(confs)})

    listed = (await client.call_tool("list_proxy_configs", {"device": "local"})).structured_content
    assert listed is not None
    assert [r["file"] for r in listed["data"]["routes"] if r["domain"] == "odd.example"] == [str(odd)]
    assert listed["data"]["dirs"].count(str(confs)) == 1


@pytest.mark.parametrize(
    "stdout",
    [
        "f\0" + "a" * 64 + "\0/opt/x.conf\0",  # no @@end
        "f\0" + "a" * 64 + "\0@@end\0",  # a record cut short
        "f\0abc\0/opt/x.conf\0@@end\0",  # not a hash
        "f\0" + "a" * 64 + "\0opt/x.conf\0@@end\0",  # a relative path
        "g\0" + "a" * 64 + "\0/opt/x.conf\0@@end\0",  # an unknown record
        "f\0" + "a" * 64 + "\0/opt/x.conf\0@@end\0f\0",  # something after @@end
        "f " + "a" * 64 + " /opt/x.conf\n@@end\n",  # the old line format
    ],
)
def test_hash_records_that_do_not_frame_are_refused_whole(stdout: str) -> None:
    with pytest.raises(ParseError):
        parse_config_hashes(stdout, ConfigHashesParams(files=("/opt/x.conf",)))


def test_proxy_records_that_do_not_frame_are_refused_whole() -> None:
    params = ProxyConfigsParams()
    for stdout in ("@@dir\0/etc/nginx/conf.d\0@@file\0/etc/nginx/conf.d/a.conf\0@@end\0", "@@dir\0", ""):
        with pytest.raises(ParseError):
            parse_proxy_configs(stdout, params)


# ---- on the device: symlinks are resolved and judged there ----------------------------------------------------


def plant_link(fleet: SshdFleet, link: Path, target: Path) -> None:
    """A symlink made by the unprivileged login user of the test hosts, as a local user of a host could."""
    command = ["ln", "-s", str(target), str(link)]
    if fleet.is_root:
        command = ["runuser", "-u", fleet.username, "--", *command]
    subprocess.run(command, check=True)


@pytest.fixture
async def over_ssh(sshd_fleet: SshdFleet, tmp_path: Path) -> AsyncIterator[tuple[AppState, Client[Any], str]]:
    async with open_state(make_settings(tmp_path, config_debounce=0.05)) as state:
        name = await add_fleet_host(state, sshd_fleet, sshd_fleet.hosts["alpha"], name="alpha-policy")
        async with Client(build_server(state.settings, state=state)) as client:
            yield state, client, name


async def stored_proxy_scans(state: AppState, device: str) -> str:
    await state.writer.flush()
    async with state.db.read_session() as session:
        rows = await session.scalars(
            select(CollectionSnapshot.data).where(
                CollectionSnapshot.device == device, CollectionSnapshot.command == "proxy_configs"
            )
        )
        return json.dumps(list(rows))


async def test_a_link_planted_in_a_watched_proxy_directory_is_read_by_no_door(
    over_ssh: tuple[AppState, Client[Any], str], sshd_fleet: SshdFleet
) -> None:
    state, client, device = over_ssh
    scratch = sshd_fleet.scratch_dir()
    confs = scratch / "swag" / "nginx" / "proxy-confs"
    confs.mkdir(parents=True)
    confs.chmod(0o1777)
    (confs / "grafana.subdomain.conf").write_text(SITE.format(name="grafana.example"))
    private = sshd_fleet.scratch_dir() / "private.conf"  # readable, and inside the allow-list: only the
    private.write_text(SITE.format(name="leaked.example"))  # link's leaving its directory is wrong
    await client.call_tool("watch_config_file", {"device": device, "path": str(confs)})
    plant_link(sshd_fleet, confs / "zz-site.conf", private)

    listed = (await client.call_tool("list_proxy_configs", {"device": device})).structured_content
    assert listed is not None
    assert {r["domain"] for r in listed["data"]["routes"]} == {"grafana.example"}
    assert listed["data"]["skipped"] == [
        {"path": str(confs / "zz-site.conf"), "reason": "a link out of the watched directory"}
    ]
    with pytest.raises(ToolError, match="No proxy conf named or serving 'leaked.example'"):
        await client.call_tool("get_proxy_config", {"device": device, "name": "leaked.example"})
    with pytest.raises(MCPError, match="a link out of the watched directory"):
        await client.read_resource(f"infra://config/{device}{confs}/zz-site.conf")
    await state.config.reconcile(device)
    watched = (await client.call_tool("list_watched_files", {"device": device})).structured_content
    assert watched is not None and watched["files"][0]["files"] == [str(confs / "grafana.subdomain.conf")]
    assert "leaked.example" not in await stored_proxy_scans(state, device)


async def test_a_watched_file_that_is_a_link_out_of_the_allowed_places_is_refused_on_the_device(
    over_ssh: tuple[AppState, Client[Any], str], sshd_fleet: SshdFleet
) -> None:
    _state, client, device = over_ssh
    scratch = sshd_fleet.scratch_dir()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as outside:
        notes = Path(outside) / "notes.txt"
        notes.write_text("not configuration\n")
        Path(outside).chmod(0o755)
        notes.chmod(0o644)
        plant_link(sshd_fleet, scratch / "app.conf", notes)

        with pytest.raises(ToolError, match=f"resolves to {notes}: outside the places configuration"):
            await client.call_tool("watch_config_file", {"device": device, "path": str(scratch / "app.conf")})


async def test_a_link_to_root_only_files_in_a_local_proxy_directory_is_never_read(
    running_client: tuple[AppState, Client[Any]], tmp_path: Path
) -> None:
    state, client = running_client
    confs = tmp_path / "appdata" / "swag" / "nginx" / "proxy-confs"
    confs.mkdir(parents=True)
    (confs / "grafana.subdomain.conf").write_text(SITE.format(name="grafana.example"))
    await client.call_tool("watch_config_file", {"device": "local", "path": str(confs)})
    (confs / "zz-site.conf").symlink_to("/etc/shadow")  # the server runs as root here: it could read it

    listed = (await client.call_tool("list_proxy_configs", {"device": "local"})).structured_content
    assert listed is not None
    assert [f["name"] for f in listed["data"]["files"] if f["path"].startswith(str(confs))] == [
        "grafana.subdomain.conf"
    ]
    with pytest.raises(MCPError, match="resolves to /etc/shadow: a credential store"):
        await client.read_resource(f"infra://config/local{confs}/zz-site.conf")
    assert "root:" not in await stored_proxy_scans(state, "local")


async def test_a_site_enabled_by_a_link_into_sites_available_is_read(
    running_client: tuple[AppState, Client[Any]], tmp_path: Path
) -> None:
    _state, client = running_client
    nginx = tmp_path / "nginx"
    (nginx / "sites-available").mkdir(parents=True)
    (nginx / "sites-enabled").mkdir()
    (nginx / "sites-available" / "app.conf").write_text(SITE.format(name="app.example"))
    (nginx / "sites-enabled" / "app.conf").symlink_to("../sites-available/app.conf")
    await client.call_tool("watch_config_file", {"device": "local", "path": str(nginx / "sites-enabled")})

    listed = (await client.call_tool("list_proxy_configs", {"device": "local"})).structured_content
    assert listed is not None
    assert "app.example" in {r["domain"] for r in listed["data"]["routes"]}


# ---- the server's own data ---------------------------------------------------------------------------------------


async def test_the_servers_data_dir_and_database_are_never_watched_even_through_a_link(
    tmp_path: Path,
) -> None:
    database = tmp_path / "state" / "inventory"  # a name no deny pattern knows
    database.parent.mkdir()
    settings = make_settings(tmp_path, database_url=f"sqlite+aiosqlite:///{database}")
    (tmp_path / "stack").mkdir()
    (tmp_path / "stack" / "db.conf").symlink_to(database)
    (tmp_path / "data-link").symlink_to(settings.data_dir)
    async with open_state(settings) as state:
        for path, resolved in (
            (settings.data_dir, None),
            (database, None),
            (tmp_path / "stack" / "db.conf", database),
            (tmp_path / "data-link", settings.data_dir),
        ):
            expected = f"resolves to {resolved}: the data of the server itself" if resolved else "own data"
            with pytest.raises(InvalidParameter, match=re.escape(expected)):
                await state.config.watch("local", str(path))
        assert state.config.targets.get("local", {}) == {}
    remote = watch_policy(settings, local=False)
    assert remote.own == () and remote.refusal(str(database)) is None  # another host's file of that name


# ---- every read path, and targets from before the policy ---------------------------------------------------


async def test_a_target_the_policy_now_refuses_is_dropped_at_start_and_its_content_no_longer_shown(
    tmp_path: Path,
) -> None:
    conf = tmp_path / "app" / "settings.ini"
    conf.parent.mkdir()
    conf.write_text("mode=fast\n")
    async with open_state(make_settings(tmp_path)) as state:
        await state.config.watch("local", str(conf))
        conf.write_text("mode=slow\n")
        await state.config.refresh("local", [str(conf)])

    narrower = make_settings(tmp_path, config_watch_allow="/srv/*")
    async with open_state(narrower) as state, Client(build_server(narrower, state=state)) as client:
        watched = (await client.call_tool("list_watched_files", {})).structured_content
        assert watched is not None and watched["files"] == []
        for tool, arguments in (
            ("get_config_history", {"device": "local", "path": str(conf)}),
            ("get_config_diff", {"device": "local", "path": str(conf)}),
        ):
            with pytest.raises(ToolError, match="outside the places configuration is watched from"):
                await client.call_tool(tool, arguments)
        changes = (await client.call_tool("list_config_changes", {"include_diff": True})).structured_content
        assert changes is not None and changes["total"] == 1 and changes["changes"][0].get("diff") is None
        with pytest.raises(MCPError, match="outside the places"):
            await client.read_resource(f"infra://config/local{conf}")


# ---- one read shared, never past a change -----------------------------------------------------------------


def content(contents: list[mt.TextResourceContents | mt.BlobResourceContents]) -> str:
    [only] = contents
    assert isinstance(only, mt.TextResourceContents)
    return str(json.loads(only.text)["content"])


async def executions(state: AppState) -> int:
    """config_file runs on the device (a reader that joined one in flight ran nothing)."""
    return len([row for row in await audit_rows(state, command="config_file") if row.ssh_commands])


async def test_readers_of_a_watched_file_share_one_read_but_never_get_it_after_a_change(
    running_client: tuple[AppState, Client[Any]], tmp_path: Path
) -> None:
    state, client = running_client
    conf = tmp_path / "app.conf"
    conf.write_text("a=1\n")
    await client.call_tool("watch_config_file", {"device": "local", "path": str(conf)})
    uri = f"infra://config/local{conf}"
    before = await executions(state)

    concurrent = await asyncio.gather(*(client.read_resource(uri) for _ in range(5)))
    after = [await client.read_resource(uri) for _ in range(3)]

    assert {content(c) for c in [*concurrent, *after]} == {"a=1\n"}
    # the watch's own read may still be fresh enough to serve them all
    assert await executions(state) <= before + 1, "eight readers within the TTL, at most one read"
    state.cache.invalidate(device="local", command="config_file")
    before = await executions(state)
    together = await asyncio.gather(*(state.config.current("local", str(conf)) for _ in range(5)))
    assert {c.content for c in together} == {"a=1\n"}
    assert await executions(state) == before + 1, "five readers at once, one read"
    queue = state.events.subscribe_queue(types=(ConfigChanged,))
    conf.write_text("a=2\n")
    await asyncio.wait_for(queue.get(), DEADLINE)
    assert content(await client.read_resource(uri)) == "a=2\n"
