"""Services commands."""

from __future__ import annotations

from mcp_server.commands.base import CommandDefinition

COMMANDS: tuple[CommandDefinition, ...] = ()
