"""Validated parameters of the container commands: what may reach a device's docker CLI."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

# A name docker accepts, or a (short or full) hex id; never starts with "-", so it cannot become an option.
CONTAINER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
# docker logs --since: a Go duration ("10m", "1h30m"), a Unix time, or an RFC 3339 date/time.
SINCE_PATTERN = (
    r"^(?:(?:[0-9]+(?:\.[0-9]+)?(?:ns|us|ms|s|m|h))+"
    r"|[0-9]{9,10}(?:\.[0-9]{1,9})?"
    r"|[0-9]{4}-[0-9]{2}-[0-9]{2}(?:T[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,9})?)?(?:Z|[+-][0-9]{2}:[0-9]{2})?)?)$"
)
# A fixed string: printable, one line, not option-like.
GREP_PATTERN = r"^[^\x00-\x1f\x7f-][^\x00-\x1f\x7f]*$"

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
]
GrepText = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        pattern=GREP_PATTERN,
        description="Only lines containing this exact text (case-sensitive, no wildcards).",
    ),
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
