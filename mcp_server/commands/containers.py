"""Container commands through the docker CLI on the device (podman's Docker-compatible API works too), and
the validated parameters of every one of them (what may reach a device's docker CLI)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from mcp_server.commands.base import Arg, CommandDefinition, GrepText, NoParams
from mcp_server.parsers.containers import (
    ContainerList,
    ContainerRestartList,
    parse_container_restarts,
    parse_containers,
)
from mcp_server.parsers.containers_compose import ComposeStacks, parse_compose_stacks
from mcp_server.parsers.containers_inspect import ContainerDetails, parse_container_inspect
from mcp_server.parsers.containers_runtime import (
    Action,
    ContainerActionResult,
    ContainerLogs,
    ContainerStatsList,
    action_parser,
    parse_container_logs,
    parse_container_stats,
)
from mcp_server.times import docker_since

# A name docker accepts, or a (short or full) hex id; never starts with "-", so it cannot become an option.
CONTAINER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"

# docker logs --since: a Go duration ("10m", "1h30m"), a Unix time, or an RFC 3339 date/time.
SINCE_PATTERN = (
    r"^(?:(?:[0-9]+(?:\.[0-9]+)?(?:ns|us|ms|s|m|h))+"
    r"|[0-9]{9,10}(?:\.[0-9]{1,9})?"
    r"|[0-9]{4}-[0-9]{2}-[0-9]{2}(?:T[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,9})?)?(?:Z|[+-][0-9]{2}:[0-9]{2})?)?)$"
)

ContainerName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        pattern=CONTAINER_PATTERN,
        description="Container name or id (letters, digits, '_', '.', '-'; starts with a letter or digit).",
    ),
]

Since = Annotated[
    str,
    Field(
        min_length=1,
        max_length=40,
        pattern=SINCE_PATTERN,
        description="Only lines newer than this: a duration ('10m', '2h'), a Unix time, or an RFC 3339 "
        "date/time ('2024-05-01T12:00:00Z').",
    ),
    AfterValidator(docker_since),
]

TAIL_MAX = 2000

GREP_SCAN_LINES = 50_000


class ContainerParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    container: ContainerName


class ContainerLogsParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    container: ContainerName
    tail: int = Field(default=100, ge=1, le=TAIL_MAX, description="Newest lines to return (at most 2000).")
    since: Since | None = None
    grep: GrepText | None = None
    timestamps: bool = Field(default=False, description="Prefix each line with the time docker received it.")

    # argv words: an absent option is an empty positional parameter to the script
    @property
    def since_arg(self) -> str:
        return self.since or ""

    @property
    def grep_arg(self) -> str:
        return self.grep or ""


class ContainerActionParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    container: ContainerName
    timeout: int | None = Field(
        default=None,
        ge=0,
        le=600,
        description="Seconds to wait for a graceful stop before the container is killed (docker's default: 10).",
    )

    @property
    def timeout_arg(self) -> str:
        return "" if self.timeout is None else str(self.timeout)


class ContainersParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    all: bool = Field(default=False, description="Include stopped (exited, created, dead) containers.")


# Not `root`: docker access comes from the docker group, and running these through sudo would need `sh`
# (that is, everything) in sudoers.
CATEGORY = "containers"
# check_exit turns exit 127 with "X: not found" into CommandNotAvailable naming X.
NEED_DOCKER = 'command -v docker >/dev/null 2>&1 || { echo "docker: not found" >&2; exit 127; }'
NEED_COMPOSE = 'docker compose version >/dev/null 2>&1 || { echo "docker-compose: not found" >&2; exit 127; }'
BOOL_FLAG = {"True": "true", "False": "false"}

# One line of POSIX sh each; caller input arrives only as positional parameters. The existence check
# comes first because `docker logs` output is merged with its stderr, where an error would pass for a
# log line. With grep, the last GREP_SCAN_LINES lines are searched and the newest `tail` matches kept.
LOGS_SCRIPT = "; ".join(
    (
        NEED_DOCKER,
        "docker inspect --type container --format '{{.Id}}' -- \"$1\" >/dev/null || exit $?",
        'if [ -n "$5" ]; then docker logs --tail "$6" ${3:+"--since=$3"} "$4" -- "$1" 2>&1'
        ' | grep -F -e "$5" | tail -n "$2"'
        '; else docker logs --tail "$2" ${3:+"--since=$3"} "$4" -- "$1" 2>&1'
        "; fi | cut -c 1-2000",
    )
)

# docker stats is given the names (not run bare) because podman's API reports each name with its first
# character missing, while `Container` echoes what was asked for.
STATS_SCRIPT = "; ".join(
    (
        NEED_DOCKER,
        "set -f",
        "names=$(docker ps --format '{{.Names}}') || exit $?",
        '[ -n "$names" ] || exit 0',
        "exec docker stats --no-stream --no-trunc --format '{{json .}}' -- $names",
    )
)

# docker ps shows no restart counts: inspect every container for them. A container removed between the two
# commands makes inspect exit 1 after printing the others.
RESTARTS_FORMAT = (
    '{"id":{{json .Id}},"name":{{json .Name}},"restart_count":{{json .RestartCount}},'
    '"policy":{{json .HostConfig.RestartPolicy.Name}},'
    '"max_retries":{{json .HostConfig.RestartPolicy.MaximumRetryCount}},"started_at":{{json .State.StartedAt}},'
    '"finished_at":{{json .State.FinishedAt}},"exit_code":{{json .State.ExitCode}},'
    '"oom_killed":{{json .State.OOMKilled}}}'
)
RESTARTS_SCRIPT = "; ".join(
    (
        NEED_DOCKER,
        "set -f",
        "ids=$(docker ps --all --quiet --no-trunc) || exit $?",
        '[ -n "$ids" ] || exit 0',
        f"docker inspect --type container --format '{RESTARTS_FORMAT}' -- $ids",
        "s=$?",
        '[ "$s" -le 1 ] || exit "$s"',
    )
)

COMPOSE_SCRIPT = "; ".join(
    (
        NEED_DOCKER,
        NEED_COMPOSE,
        "set -f",
        "echo '@@ls'",
        "docker compose ls --all --format json || exit $?",
        'for p in $(docker compose ls --all --quiet); do echo "@@ps-$p"'
        '; docker compose -p "$p" ps --all --format json || exit $?; done',
        "echo '@@end'",
    )
)


def _action_script(verb: str, timed: bool) -> str:
    timeout = ' ${2:+"--time=$2"}' if timed else ""
    return "; ".join(
        (
            NEED_DOCKER,
            f'docker {verb}{timeout} -- "$1" >/dev/null || exit $?',
            "exec docker inspect --type container --format '{{json .State}}' -- \"$1\"",
        )
    )


CONTAINERS: CommandDefinition[ContainerList] = CommandDefinition(
    name="containers",
    category=CATEGORY,
    summary="Containers with image, state, health, ports, networks and labels (running, or all).",
    argv=(
        "docker",
        "ps",
        Arg("all", choices={k: f"--all={v}" for k, v in BOOL_FLAG.items()}),
        "--no-trunc",
        "--size=false",  # computing sizes walks every container's writable layer
        "--format",
        "{{json .}}",
    ),
    model=ContainerList,
    parse=parse_containers,
    params=ContainersParams,
    ttl=10.0,
)

CONTAINER_RESTARTS: CommandDefinition[ContainerRestartList] = CommandDefinition(
    name="container_restarts",
    category=CATEGORY,
    summary="Restart count, restart policy, last start and exit of every container (docker inspect).",
    argv=("sh", "-c", RESTARTS_SCRIPT),
    model=ContainerRestartList,
    parse=parse_container_restarts,
    params=NoParams,
    ttl=10.0,
)

CONTAINER_INSPECT: CommandDefinition[ContainerDetails] = CommandDefinition(
    name="container_inspect",
    category=CATEGORY,
    summary="One container in detail: state, health, restarts, ports, mounts, networks, limits, env (redacted).",
    argv=("docker", "inspect", "--type", "container", "--", Arg("container")),
    model=ContainerDetails,
    parse=parse_container_inspect,
    params=ContainerParams,
    ttl=10.0,
)

CONTAINER_LOGS: CommandDefinition[ContainerLogs] = CommandDefinition(
    name="container_logs",
    category=CATEGORY,
    summary="The newest log lines of a container (stdout and stderr), optionally since a time and filtered.",
    argv=(
        "sh",
        "-c",
        LOGS_SCRIPT,
        "sh",
        Arg("container"),
        Arg("tail"),
        Arg("since_arg"),
        Arg("timestamps", choices={k: f"--timestamps={v}" for k, v in BOOL_FLAG.items()}),
        Arg("grep_arg"),
        str(GREP_SCAN_LINES),
    ),
    model=ContainerLogs,
    parse=parse_container_logs,
    params=ContainerLogsParams,
    ttl=5.0,
)

CONTAINER_STATS: CommandDefinition[ContainerStatsList] = CommandDefinition(
    name="container_stats",
    category=CATEGORY,
    summary="CPU, memory, network and block I/O of every running container, from one docker stats sample.",
    argv=("sh", "-c", STATS_SCRIPT),
    model=ContainerStatsList,
    parse=parse_container_stats,
    params=NoParams,
    ttl=10.0,
    timeout=45.0,
)

COMPOSE_STACKS: CommandDefinition[ComposeStacks] = CommandDefinition(
    name="compose_stacks",
    category=CATEGORY,
    summary="Docker Compose projects with their config files, working directory and service states.",
    argv=("sh", "-c", COMPOSE_SCRIPT),
    model=ComposeStacks,
    parse=parse_compose_stacks,
    params=NoParams,
    ttl=15.0,
    timeout=60.0,
)


def _action(
    verb: Action, params: type[ContainerParams] | type[ContainerActionParams]
) -> CommandDefinition[ContainerActionResult]:
    timed = params is ContainerActionParams
    argv: tuple[str | Arg, ...] = ("sh", "-c", _action_script(verb, timed), "sh", Arg("container"))
    return CommandDefinition[ContainerActionResult](
        name=f"container_{verb}",
        category=CATEGORY,
        summary=f"docker {verb} a container, then report its state.",
        argv=(*argv, Arg("timeout_arg")) if timed else argv,
        model=ContainerActionResult,
        parse=action_parser(verb),
        params=params,
        ttl=0.0,
        # a stop waits up to `timeout` (max 600 s) before killing; INFRA_SSH_COMMAND_TIMEOUT caps this
        timeout=660.0 if timed else 60.0,
        invalidates=(CATEGORY,),
    )


CONTAINER_START = _action("start", ContainerParams)
CONTAINER_STOP = _action("stop", ContainerActionParams)
CONTAINER_RESTART = _action("restart", ContainerActionParams)

COMMANDS: tuple[CommandDefinition[Any], ...] = (
    CONTAINERS,
    CONTAINER_RESTARTS,
    CONTAINER_INSPECT,
    CONTAINER_LOGS,
    CONTAINER_STATS,
    COMPOSE_STACKS,
    CONTAINER_START,
    CONTAINER_STOP,
    CONTAINER_RESTART,
)
