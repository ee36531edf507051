"""Drive commands: drive_inventory (lsblk) and drive_smart (smartctl)."""

from __future__ import annotations

from mcp_server.commands.base import Arg, CommandDefinition, NoParams
from mcp_server.parsers.drives import (
    DriveHealth,
    DriveInventory,
    DriveSmartParams,
    parse_drive_inventory,
    parse_drive_smart,
)

# -d: whole disks only (partitions carry no SMART data of their own); -b: sizes in bytes.
DRIVE_INVENTORY: CommandDefinition[DriveInventory] = CommandDefinition(
    name="drive_inventory",
    category="drives",
    summary="Physical disks of the device (lsblk): path, size, model, serial, rotational, transport.",
    argv=("lsblk", "-J", "-b", "-d", "-o", "NAME,PATH,TYPE,SIZE,MODEL,SERIAL,ROTA,TRAN"),
    model=DriveInventory,
    parse=parse_drive_inventory,
    params=NoParams,
    ttl=300.0,
    timeout=15.0,
)

# smartctl's exit status is a bitmask. Bits 2-7 describe the disk (failing, logged errors, ...) and come with
# full JSON on stdout, so they are data, not failures. Bit 0 (bad command line, unknown device type) stays a
# failure: sudo also exits 1 when it wants a password, and check_exit must see that to say so. Bit 1 (open
# failed) still prints JSON naming the cause. 126/127 are the shell's "cannot execute" / "not found".
SMART_OK_STATUSES = frozenset(status for status in range(256) if not status & 1) - {126}

DRIVE_SMART: CommandDefinition[DriveHealth] = CommandDefinition(
    name="drive_smart",
    category="drives",
    summary="SMART health of one drive (smartctl --json -a): overall health, wear, sectors, temperature, verdict.",
    argv=("smartctl", "--json", "-a", "--", Arg("drive")),
    model=DriveHealth,
    parse=parse_drive_smart,
    params=DriveSmartParams,
    ttl=300.0,
    timeout=60.0,
    ok_exit_statuses=SMART_OK_STATUSES,
    root=True,
)

COMMANDS: tuple[CommandDefinition, ...] = (DRIVE_INVENTORY, DRIVE_SMART)
