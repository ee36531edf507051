"""The CommandRegistry: an explicit index of every command Infrastructor can run."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from mcp_server.commands.base import Arg, ArgList, CommandDefinition, NoParams
from mcp_server.errors import UnknownCommand

__all__ = ["Arg", "ArgList", "CommandDefinition", "CommandRegistry", "NoParams", "default_registry"]


class CommandRegistry:
    """Commands by name; refuses duplicates."""

    def __init__(self, definitions: Iterable[CommandDefinition]) -> None:
        self._commands: dict[str, CommandDefinition] = {}
        for definition in definitions:
            if definition.name in self._commands:
                raise ValueError(f"duplicate command name {definition.name!r}")
            self._commands[definition.name] = definition

    def get(self, name: str) -> CommandDefinition:
        try:
            return self._commands[name]
        except KeyError:
            raise UnknownCommand(name, self._commands) from None

    def __iter__(self) -> Iterator[CommandDefinition]:
        return iter(self._commands.values())

    def __len__(self) -> int:
        return len(self._commands)

    def names(self) -> list[str]:
        return sorted(self._commands)


def default_registry() -> CommandRegistry:
    """Every built-in command."""
    from mcp_server.commands import (
        admin,
        containers,
        drives,
        network,
        packages,
        services,
        storage,
        system,
        vms,
        zfs,
    )

    areas = (system, storage, network, containers, services, drives, zfs, vms, packages, admin)
    return CommandRegistry([definition for area in areas for definition in area.COMMANDS])
