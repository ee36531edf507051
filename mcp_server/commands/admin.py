"""Admin commands: run_command (an allowlisted argv, never a shell string)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from mcp_server.commands.base import ArgList, CommandDefinition
from mcp_server.errors import InvalidParameter, ParseError
from mcp_server.settings import comma_list

OUTPUT_MAX_CHARS = 20_000
# "$@" runs the argv exactly as given (no word splitting, no globbing, no second parse); stderr joins stdout
# so the agent sees messages in order, and the exit status travels in-band after a marker.
RUN_SCRIPT = '"$@" 2>&1 </dev/null; echo "@@exit=$?"'

Word = Annotated[str, StringConstraints(min_length=1, max_length=4096, pattern=r"^[^\x00]*$")]


class RunCommandParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    argv: tuple[Word, ...] = Field(
        min_length=1, max_length=64, description="Program and arguments, one word each; no shell is involved."
    )


class CommandOutput(BaseModel):
    argv: list[str] = Field(description="What ran, word for word.")
    exit_status: int = Field(description="The program's exit status (127: not found on the device).")
    output: str = Field(description=f"stdout and stderr interleaved; the last {OUTPUT_MAX_CHARS} characters.")
    truncated: bool = Field(description="True when earlier output was cut to fit.")


def check_allowed(argv: list[str], *, enabled: bool, allowlist: str) -> None:
    """run_command's gate: enabled at all, and argv[0] equal to an allowlist entry (a bare name matches a
    bare name, a path that exact path)."""
    if not enabled:
        raise InvalidParameter(
            "run_command is disabled on this server (INFRA_ALLOW_RUN_COMMAND=true enables it)."
        )
    entries = set(comma_list(allowlist))
    if argv[0] not in entries:
        allowed = allowlist or "nothing (INFRA_RUN_COMMAND_ALLOWLIST is empty)"
        raise InvalidParameter(f"{argv[0]!r} is not in INFRA_RUN_COMMAND_ALLOWLIST; allowed: {allowed}.")


def parse_run_command(stdout: str, params: RunCommandParams) -> CommandOutput:
    body, sep, status = stdout.rstrip("\n").rpartition("@@exit=")
    # ASCII digits only: int() refuses other Unicode digits ('²'), and a shell's $? has at most three
    if not sep or not (status.isascii() and status.isdigit()) or len(status) > 3:
        raise ParseError("run_command output (no exit marker: the command was cut short)", stdout[-200:])
    body = body[:-1] if body.endswith("\n") else body
    return CommandOutput(
        argv=list(params.argv),
        exit_status=int(status),
        output=body[-OUTPUT_MAX_CHARS:],
        truncated=len(body) > OUTPUT_MAX_CHARS,
    )


COMMANDS: tuple[CommandDefinition[Any], ...] = (
    CommandDefinition(
        name="run_command",
        category="admin",
        summary="Run an allowlisted program with arguments (admin only).",
        argv=("sh", "-c", RUN_SCRIPT, "sh", ArgList("argv")),
        model=CommandOutput,
        parse=parse_run_command,
        params=RunCommandParams,
        ttl=0,
        timeout=60,
        access="admin",
    ),
)
