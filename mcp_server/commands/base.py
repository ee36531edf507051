"""CommandDefinition: one declarative command, and how its argv is rendered from validated parameters."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mcp_server.errors import invalid

M = TypeVar("M", bound=BaseModel)

# Parameter contracts shared by several areas; an area's own live in commands/<area>.py.
# A fixed text to search for: printable, one line, never option-like (it cannot start with '-').
GREP_PATTERN = r"^[^\x00-\x1f\x7f-][^\x00-\x1f\x7f]*$"
GrepText = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        pattern=GREP_PATTERN,
        description="Only lines containing this text (a fixed string: no wildcards or regular expressions).",
    ),
]
Limit = Annotated[int, Field(ge=1, le=500, description="Most items to return.")]
# bounded so that no database is asked to skip more rows than it can count
Offset = Annotated[int, Field(ge=0, le=1_000_000_000, description="Items to skip (for paging).")]


class NoParams(BaseModel):
    """Parameters of a command that takes none."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Arg:
    """A placeholder in an argv template, filled from the validated parameter `name`.

    `choices` maps a parameter value to the literal argv word (e.g. "cpu" -> "-pcpu"), so the word
    that reaches the device is always one we wrote.
    """

    name: str
    choices: Mapping[str, str] | None = None

    def render(self, params: BaseModel) -> str:
        value = getattr(params, self.name)
        if self.choices is not None:
            return self.choices[str(value)]
        if isinstance(value, bool):
            return "1" if value else "0"
        return str(value)


@dataclass(frozen=True)
class ArgList:
    """A placeholder that expands to the words of a validated list parameter (e.g. an allowlisted argv)."""

    name: str

    def render(self, params: BaseModel) -> list[str]:
        return [str(word) for word in getattr(params, self.name)]


@dataclass(frozen=True)
class CommandDefinition(Generic[M]):
    """A command the registry can run on a device.

    `argv` is a tuple of literal words and `Arg`s. Scripts that need pipes are written as
    `("sh", "-c", SCRIPT, "sh", Arg("x"))`: the script is a constant and every parameter arrives as a
    positional argument ("$1"), so caller input is never part of the script text.
    `parse(stdout, params)` is pure and raises ParseError; it never returns a partial model.
    """

    name: str
    category: str
    summary: str
    argv: tuple[str | Arg | ArgList, ...]
    model: type[M]
    parse: Callable[[str, Any], M]
    params: type[BaseModel] = NoParams
    ttl: float = 30.0
    timeout: float = 30.0
    ok_exit_statuses: frozenset[int] = field(default_factory=lambda: frozenset({0}))
    root: bool = False  # needs root on some systems: run via `sudo -n` on devices with use_sudo
    # Cache categories a successful run makes stale on that device (mutations: container stop, ...).
    invalidates: tuple[str, ...] = ()
    # Who may run it: "read" commands may also be run by name (collect tool, resources); the others only
    # through their own tool, which carries the matching scope; "internal" ones only by the server itself
    # (configuration monitoring reads the files an infra:write caller chose to watch, and nothing else).
    access: Literal["read", "write", "admin", "internal"] = "read"
    # A long-lived command whose output is read line by line (UnifiedDataCollectionService.stream), never
    # collected or cached.
    streaming: bool = False
    separator: bytes = b"\n"  # how a stream's records end (NUL where they carry file names)
    # A cheaper parse for an output whose full parse exceeds the worker's deadline or memory: given why, it
    # returns the result without its costly part (a config file's structure), so the content is still known.
    fallback: Callable[[str, Any, str], M] | None = None

    @property
    def read_only(self) -> bool:
        return self.access == "read" and not self.invalidates and not self.streaming

    def validate(self, params: Mapping[str, Any] | BaseModel | None) -> BaseModel:
        """Validate caller parameters against the command's parameter model."""
        if isinstance(params, self.params):
            return params
        try:
            return self.params.model_validate(dict(params or {}))
        except ValidationError as exc:
            raise invalid(exc, f"Invalid parameters for command {self.name!r}: ") from None

    def render(self, params: BaseModel, *, sudo: bool = False) -> list[str]:
        """The argv for validated parameters; with `sudo` (and `root`), prefixed by a non-interactive sudo."""
        argv: list[str] = []
        for part in self.argv:
            if isinstance(part, ArgList):
                argv.extend(part.render(params))
            else:
                argv.append(part.render(params) if isinstance(part, Arg) else part)
        return ["sudo", "-n", "--", *argv] if sudo and self.root else argv

    def shell_command(self, params: BaseModel, *, sudo: bool = False) -> str:
        """The argv quoted for a remote shell (what SSH sends)."""
        return shlex.join(self.render(params, sudo=sudo))

    def params_key(self, params: BaseModel) -> str:
        """A stable key for the validated parameters (cache and snapshot identity)."""
        return json.dumps(params.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def parameter_schema(self) -> dict[str, Any]:
        return self.params.model_json_schema()
