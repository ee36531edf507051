"""Network commands: network_interfaces."""

from __future__ import annotations

from typing import Any

from mcp_server.commands.base import CommandDefinition, NoParams
from mcp_server.parsers.network import NetworkInterfaces, parse_network_interfaces

# ip lives in /sbin or /usr/sbin on many distributions, which are not on an unprivileged user's PATH
NETWORK_INTERFACES_SCRIPT = 'PATH="$PATH:/usr/sbin:/sbin"; exec ip -j -s addr show'

NETWORK_INTERFACES: CommandDefinition[NetworkInterfaces] = CommandDefinition(
    name="network_interfaces",
    category="network",
    summary="Every network interface: state, MTU, MAC, IPv4/IPv6 addresses and traffic/error counters.",
    argv=("sh", "-c", NETWORK_INTERFACES_SCRIPT),
    model=NetworkInterfaces,
    parse=parse_network_interfaces,
    params=NoParams,
    ttl=30.0,
    timeout=15.0,
)

COMMANDS: tuple[CommandDefinition[Any], ...] = (NETWORK_INTERFACES,)
