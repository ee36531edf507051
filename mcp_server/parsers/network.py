"""Parser for network_interfaces: `ip -j -s addr show` (iproute2 JSON)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field

from mcp_server.parsers.common import parse_errors_as


class Address(BaseModel):
    family: str = Field(description="inet (IPv4) or inet6 (IPv6).")
    address: str = Field(description="The interface's own address.")
    prefix_length: int = Field(description="Network prefix length (24 for a /24).")
    scope: str | None = Field(description="global, link (link-local), host (loopback) or site.")


class NetworkInterface(BaseModel):
    name: str = Field(description="Interface name (eth0, enp3s0, wg0, docker0, lo).")
    index: int = Field(description="Kernel interface index.")
    link_type: str | None = Field(description="Link layer: ether, loopback, none (tunnels), ...")
    operstate: str = Field(
        description="UP, DOWN, LOWER_LAYER_DOWN, DORMANT or UNKNOWN (normal for lo and many virtual links)."
    )
    mtu: int | None = Field(description="Maximum transmission unit in bytes.")
    mac: str | None = Field(description="Hardware address; null for links that have none (tun, wireguard).")
    flags: list[str] = Field(description="Link flags; UP means administratively up, LOWER_UP means carrier.")
    addresses: list[Address] = Field(description="IPv4 and IPv6 addresses on the interface.")
    rx_bytes: int | None = Field(description="Bytes received since the interface was created.")
    rx_packets: int | None = Field(description="Packets received.")
    rx_errors: int | None = Field(
        description="Receive errors; growth points at cabling, duplex or driver trouble."
    )
    rx_dropped: int | None = Field(
        description="Received packets dropped (no buffer, filtered, unknown protocol)."
    )
    tx_bytes: int | None = Field(description="Bytes sent since the interface was created.")
    tx_packets: int | None = Field(description="Packets sent.")
    tx_errors: int | None = Field(description="Transmit errors.")
    tx_dropped: int | None = Field(description="Packets dropped before sending.")


class NetworkInterfaces(BaseModel):
    interfaces: list[NetworkInterface] = Field(description="Every network interface, in kernel index order.")


def _counter(stats: dict[str, Any], direction: str, name: str) -> int | None:
    value = stats.get(direction, {}).get(name)
    return int(value) if value is not None else None


def _interface(link: dict[str, Any]) -> NetworkInterface:
    # iproute2 emits stats64 when the kernel has 64-bit counters, else stats; older builds also emit
    # empty {} entries in addr_info
    stats: dict[str, Any] = link.get("stats64") or link.get("stats") or {}
    addresses = [
        Address(
            family=entry["family"],
            address=entry["local"],
            prefix_length=int(entry["prefixlen"]),
            scope=entry.get("scope"),
        )
        for entry in link.get("addr_info", [])
        if "local" in entry
    ]
    return NetworkInterface(
        name=link["ifname"],
        index=int(link["ifindex"]),
        link_type=link.get("link_type"),
        operstate=link.get("operstate", "UNKNOWN"),
        mtu=link.get("mtu"),
        mac=link.get("address") if link.get("link_type") != "none" else None,
        flags=list(link.get("flags", [])),
        addresses=addresses,
        **{
            f"{direction}_{name}": _counter(stats, direction, name)
            for direction in ("rx", "tx")
            for name in ("bytes", "packets", "errors", "dropped")
        },
    )


@parse_errors_as("network_interfaces")
def parse_network_interfaces(stdout: str, params: BaseModel) -> NetworkInterfaces:
    """`ip -j -s addr show` -> NetworkInterfaces."""
    links = json.loads(stdout)
    if not isinstance(links, list) or not all(isinstance(link, dict) for link in links):
        raise ValueError("expected a JSON array of link objects")
    # ip -j emits an empty object for a link that vanished mid-dump
    return NetworkInterfaces(interfaces=[_interface(link) for link in links if link])
