"""The CommandRegistry: an explicit index of every command Infrastructor can run."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import BaseModel, Field

from mcp_server.commands.base import Arg, ArgList, CommandDefinition, NoParams
from mcp_server.errors import InvalidParameter, UnknownCommand

__all__ = [
    "Arg",
    "ArgList",
    "CommandDefinition",
    "CommandList",
    "CommandRegistry",
    "NoParams",
    "default_registry",
]


class CommandInfo(BaseModel):
    name: str
    category: str
    summary: str
    ttl_seconds: float = Field(description="How long a result is served from the cache.")
    timeout_seconds: float
    parameters: dict[str, Any] = Field(description="JSON schema of the command's parameters (for `collect`).")


class CommandList(BaseModel):
    commands: list[CommandInfo]
    total: int


class CommandRegistry:
    """Commands by name; refuses duplicates."""

    def __init__(self, definitions: Iterable[CommandDefinition[Any]]) -> None:
        self._commands: dict[str, CommandDefinition[Any]] = {}
        for definition in definitions:
            if definition.name in self._commands:
                raise ValueError(f"duplicate command name {definition.name!r}")
            self._commands[definition.name] = definition

    def get(self, name: str) -> CommandDefinition[Any]:
        try:
            return self._commands[name]
        except KeyError:
            raise UnknownCommand(name, self._commands) from None

    def readable(self) -> list[str]:
        """The commands `get_read` accepts, by name."""
        return sorted(n for n, d in self._commands.items() if d.read_only and d.access != "internal")

    def get_read(self, name: str) -> CommandDefinition[Any]:
        """A command that may be run by name (`collect`, resources): read commands only; changes go through
        their own scoped tools."""
        if name not in self._commands:
            raise UnknownCommand(name, self.readable())
        definition = self._commands[name]
        if definition.access == "internal":
            raise InvalidParameter(
                f"{name!r} is run only by the server itself (configuration monitoring); use the config tools "
                "(watch_config_file, get_config_history, list_proxy_configs)."
            )
        if not definition.read_only:
            raise InvalidParameter(
                f"{name!r} changes things on the device; use its own tool (e.g. restart_container), "
                "which needs the infra:write or infra:admin scope."
            )
        return definition

    def catalogue(self, category: str | None = None) -> CommandList:
        """Every read command (of `category`, if given) with its parameters' JSON schema."""
        commands = [
            CommandInfo(
                name=d.name,
                category=d.category,
                summary=d.summary,
                ttl_seconds=d.ttl,
                timeout_seconds=d.timeout,
                parameters=d.parameter_schema(),
            )
            for d in self
            if d.read_only and (category is None or d.category == category)
        ]
        return CommandList(commands=commands, total=len(commands))

    def __iter__(self) -> Iterator[CommandDefinition[Any]]:
        return iter(self._commands.values())

    def __len__(self) -> int:
        return len(self._commands)

    def names(self) -> list[str]:
        return sorted(self._commands)


def default_registry() -> CommandRegistry:
    """Every built-in command."""
    from mcp_server.commands import admin, config, containers, host, network, services, storage, system

    areas = (system, network, storage, containers, services, host, admin, config)
    return CommandRegistry([definition for area in areas for definition in area.COMMANDS])
