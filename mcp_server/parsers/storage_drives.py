"""Parsers for drive_inventory (`lsblk -J`) and drive_smart (`smartctl --json -a`), and the per-drive verdict."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from mcp_server.parsers.common import parse_errors_as

if TYPE_CHECKING:
    from mcp_server.commands.storage import DriveSmartParams

# memory- and file-backed block devices have no SMART data; lsblk lists zram and ram disks as type "disk"
VIRTUAL_PREFIXES = ("loop", "zram", "ram")
HOT_CELSIUS = {"NVMe": 70}  # NVMe controllers run warmer than platters; other protocols use the default
HOT_CELSIUS_DEFAULT = 60
WEAR_WATCH_PERCENT = 80


class Disk(BaseModel):
    name: str = Field(description="Kernel name (sda, nvme0n1).")
    path: str = Field(description="Device path to pass as `drive` (/dev/sda).")
    size_bytes: int | None = Field(description="Capacity as the kernel reports it.")
    model: str | None
    serial: str | None
    rotational: bool | None = Field(
        description="True for spinning disks, false for SSD/NVMe; null if unknown."
    )
    transport: str | None = Field(description="sata, nvme, usb, sas, ...; null for virtual disks.")


class DriveInventory(BaseModel):
    disks: list[Disk] = Field(description="Physical disks (loop, zram and ram devices left out).")


def _text(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


def _flag(value: Any) -> bool | None:
    # lsblk before util-linux 2.33 printed every JSON value as a string ("1"/"0")
    if value is None or isinstance(value, bool):
        return value
    return str(value).strip() == "1"


@parse_errors_as("drive_inventory")
def parse_drive_inventory(stdout: str, params: BaseModel) -> DriveInventory:
    """`lsblk -J -b -d -o NAME,PATH,TYPE,SIZE,MODEL,SERIAL,ROTA,TRAN` -> the disks worth asking smartctl about."""
    devices = json.loads(stdout)["blockdevices"]
    if not isinstance(devices, list):
        raise ValueError("blockdevices is not a list")
    disks = []
    for dev in devices:
        name = str(dev["name"])
        if dev.get("type") != "disk" or name.startswith(VIRTUAL_PREFIXES):
            continue
        size = dev.get("size")
        disks.append(
            Disk(
                name=name,
                path=_text(dev.get("path")) or f"/dev/{name}",
                size_bytes=int(size) if size not in (None, "") else None,
                model=_text(dev.get("model")),
                serial=_text(dev.get("serial")),
                rotational=_flag(dev.get("rota")),
                transport=_text(dev.get("tran")),
            )
        )
    return DriveInventory(disks=disks)


EXIT_BITS = (
    "command line did not parse, or the device type is unknown",
    "device open failed, or the device did not identify itself (or is in a low-power mode)",
    "a SMART or other ATA command to the disk failed, or a SMART data structure had a checksum error",
    "SMART status check returned DISK FAILING",
    "pre-failure attributes are at or below their threshold now",
    "SMART status is OK but usage or pre-failure attributes were at or below threshold in the past",
    "the device error log contains records of errors",
    "the device self-test log contains records of errors",
)
_NVME_WARNINGS = (
    "spare capacity below threshold",
    "temperature outside its limits",
    "reliability degraded by media or internal errors",
    "media placed in read-only mode",
    "volatile memory backup failed",
)


class ExitStatusBit(BaseModel):
    bit: int = Field(description="Bit number of smartctl's exit status (0-7).")
    meaning: str


class NvmeHealth(BaseModel):
    percentage_used: int | None = Field(description="Share of rated write endurance used; may exceed 100.")
    available_spare: int | None = Field(description="Remaining spare blocks, percent.")
    available_spare_threshold: int | None = Field(description="Spare percent below which the drive warns.")
    media_errors: int | None = Field(description="Unrecovered data integrity errors over the drive's life.")
    critical_warning: int | None = Field(description="Critical warning bitmask; 0 means none.")
    error_log_entries: int | None = Field(
        description="Error log entries over the drive's life; often harmless driver probes, not a verdict reason."
    )
    unsafe_shutdowns: int | None


Status = Literal["healthy", "watch", "failing", "unknown"]


class DriveHealth(BaseModel):
    path: str = Field(description="Device path that was checked.")
    model: str | None
    serial: str | None
    protocol: str | None = Field(description="ATA, NVMe or SCSI, as smartctl talked to the drive.")
    device_type: str | None = Field(description="smartctl's device type (sat, nvme, scsi, usbjmicron, ...).")
    capacity_bytes: int | None
    rotation_rpm: int | None = Field(description="Spindle speed; 0 for SSDs; null if not reported.")
    smart_available: bool = Field(description="False when smartctl could not read the SMART health status.")
    smart_passed: bool | None = Field(description="The drive's own overall-health self-assessment.")
    temperature_c: int | None
    power_on_hours: int | None
    power_cycles: int | None
    reallocated_sectors: int | None = Field(description="ATA attribute 5: sectors moved to spares.")
    pending_sectors: int | None = Field(
        description="ATA attribute 197: unreadable sectors awaiting reallocation."
    )
    offline_uncorrectable: int | None = Field(
        description="ATA attribute 198: sectors the offline scan could not read."
    )
    crc_errors: int | None = Field(
        description="ATA attribute 199: interface CRC errors (cable or connector)."
    )
    grown_defects: int | None = Field(description="SCSI grown defect list length.")
    error_log_count: int | None = Field(description="ATA error log entries over the drive's life.")
    nvme: NvmeHealth | None = Field(description="NVMe health log; null for ATA and SCSI drives.")
    exit_status: int | None = Field(description="smartctl's exit status, a bitmask (see exit_status_bits).")
    exit_status_bits: list[ExitStatusBit] = Field(description="The exit status bits that are set, explained.")
    messages: list[str] = Field(description="Messages smartctl printed about this drive.")
    status: Status = Field(description="healthy, watch (keep an eye on it), failing (replace it) or unknown.")
    verdict: str = Field(description="Plain-language verdict, e.g. 'watch: 8 reallocated sectors'.")
    reasons: list[str] = Field(description="Every finding behind the verdict, most severe first.")


def exit_bits(status: int | None) -> list[ExitStatusBit]:
    if status is None:
        return []
    return [ExitStatusBit(bit=bit, meaning=text) for bit, text in enumerate(EXIT_BITS) if status >> bit & 1]


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _raw(attributes: dict[int, Any], attribute_id: int) -> int | None:
    attribute = attributes.get(attribute_id)
    if attribute is None:
        return None
    # raw.string is smartctl's decoded count ("2725 (151 234 0)"); raw.value may pack vendor bytes together
    first = re.match(r"\s*(\d+)", str(attribute["raw"].get("string", "")))
    return int(first.group(1)) if first else int(attribute["raw"]["value"])


def _judge(d: dict[str, Any], messages: list[str]) -> tuple[Status, list[str], list[str]]:
    """(status, verdict reasons, all reasons) from the parsed fields."""
    bits = d["exit_status"] or 0
    failing: list[str] = []
    unknown: list[str] = []
    watch: list[str] = []
    if bits & 0b11:
        detail = messages[0] if messages else EXIT_BITS[0 if bits & 1 else 1]
        hint = " (smartctl needs root: set use_sudo on the device)" if "Permission denied" in detail else ""
        if re.search(r"Unable to detect device type|Unknown USB bridge", detail):
            hint = " (USB bridge? smartctl may need -d sat)"
        unknown.append(f"smartctl could not read the drive: {detail}{hint}")
    elif not d["smart_available"]:
        unknown.append("SMART unavailable (USB bridge?)")
    if d["smart_passed"] is False or bits & 8:
        failing.append("SMART overall-health FAILED")
    if bits & 16:
        failing.append("a pre-failure attribute is at or below its failure threshold now")
    nvme: NvmeHealth | None = d["nvme"]
    if nvme is not None:
        warning = nvme.critical_warning or 0
        for bit, text in enumerate(_NVME_WARNINGS):
            if warning >> bit & 1:
                failing.append(f"NVMe critical warning: {text}")
        if nvme.percentage_used is not None and nvme.percentage_used >= 100:
            failing.append(f"NVMe rated endurance used up ({nvme.percentage_used}%)")
        elif nvme.percentage_used is not None and nvme.percentage_used >= WEAR_WATCH_PERCENT:
            watch.append(f"NVMe wear at {nvme.percentage_used}% of rated endurance")
        if nvme.media_errors:
            watch.append(_plural(nvme.media_errors, "NVMe media error"))
    counted = (
        ("reallocated_sectors", "reallocated sector"),
        ("pending_sectors", "pending sector"),
        ("offline_uncorrectable", "offline-uncorrectable sector"),
        ("crc_errors", "interface CRC error"),
        ("grown_defects", "grown defect"),
    )
    for key, noun in counted:
        if d[key]:
            watch.append(_plural(d[key], noun) + (" (check the cable)" if key == "crc_errors" else ""))
    if bits & 32:
        watch.append("a pre-failure attribute was at or below its threshold in the past")
    if bits & 64:
        logged = f" ({d['error_log_count']} logged)" if d["error_log_count"] else ""
        watch.append(f"the device error log contains errors{logged}")
    if bits & 128:
        watch.append("the self-test log reports failed self-tests")
    if bits & 4:
        watch.append("some SMART commands failed (bridge, cable or firmware problem?)")
    limit = HOT_CELSIUS.get(d["protocol"] or "", HOT_CELSIUS_DEFAULT)
    if d["temperature_c"] is not None and d["temperature_c"] >= limit:
        watch.append(f"running hot: {d['temperature_c']} °C")
    for status, reasons in (("failing", failing), ("unknown", unknown), ("watch", watch)):
        if reasons:
            return status, reasons, failing + unknown + watch  # type: ignore[return-value]
    return "healthy", [], []


def _nvme(log: dict[str, Any] | None) -> NvmeHealth | None:
    if not isinstance(log, dict):
        return None
    return NvmeHealth(
        percentage_used=log.get("percentage_used"),
        available_spare=log.get("available_spare"),
        available_spare_threshold=log.get("available_spare_threshold"),
        media_errors=log.get("media_errors"),
        critical_warning=log.get("critical_warning"),
        error_log_entries=log.get("num_err_log_entries"),
        unsafe_shutdowns=log.get("unsafe_shutdowns"),
    )


@parse_errors_as("drive_smart")
def parse_drive_smart(stdout: str, params: DriveSmartParams) -> DriveHealth:
    """`smartctl --json -a DRIVE` -> DriveHealth, whatever the exit status bits say (they are reported, not fatal)."""
    data = json.loads(stdout)
    if not isinstance(data, dict) or not ("smartctl" in data or "device" in data):
        raise ValueError("not smartctl JSON output")
    tool = data.get("smartctl") or {}
    device = data.get("device") or {}
    messages = [str(m["string"]) for m in tool.get("messages", [])]
    attributes = {int(a["id"]): a for a in (data.get("ata_smart_attributes") or {}).get("table", [])}
    nvme_log = data.get("nvme_smart_health_information_log")
    smart_status = data.get("smart_status")
    temperature = (data.get("temperature") or {}).get("current")
    power_on = (data.get("power_on_time") or {}).get("hours")
    fields: dict[str, Any] = {
        "path": params.drive,
        "model": _text(data.get("model_name")),
        "serial": _text(data.get("serial_number")),
        "protocol": _text(device.get("protocol")),
        "device_type": _text(device.get("type")),
        "capacity_bytes": (data.get("user_capacity") or {}).get("bytes") or data.get("nvme_total_capacity"),
        "rotation_rpm": data.get("rotation_rate"),
        "smart_available": isinstance(smart_status, dict) and "passed" in smart_status,
        "smart_passed": smart_status.get("passed") if isinstance(smart_status, dict) else None,
        "temperature_c": temperature if temperature is not None else (nvme_log or {}).get("temperature"),
        "power_on_hours": power_on if power_on is not None else _raw(attributes, 9),
        "power_cycles": data.get("power_cycle_count"),
        "reallocated_sectors": _raw(attributes, 5),
        "pending_sectors": _raw(attributes, 197),
        "offline_uncorrectable": _raw(attributes, 198),
        "crc_errors": _raw(attributes, 199),
        "grown_defects": data.get("scsi_grown_defect_list"),
        "error_log_count": ((data.get("ata_smart_error_log") or {}).get("summary") or {}).get("count"),
        "nvme": _nvme(nvme_log),
        "exit_status": tool.get("exit_status"),
    }
    status, top, reasons = _judge(fields, messages)
    return DriveHealth(
        **fields,
        exit_status_bits=exit_bits(fields["exit_status"]),
        messages=messages,
        status=status,
        verdict=status if not top else f"{status}: {'; '.join(top)}",
        reasons=reasons,
    )


def unreadable_drive(disk: Disk, reason: str, exit_status: int | None) -> DriveHealth:
    """A drive smartctl gave no usable answer for (it failed or timed out), described from lsblk's facts."""
    return DriveHealth(
        path=disk.path,
        model=disk.model,
        serial=disk.serial,
        protocol=None,
        device_type=None,
        capacity_bytes=disk.size_bytes,
        rotation_rpm=None,
        smart_available=False,
        smart_passed=None,
        temperature_c=None,
        power_on_hours=None,
        power_cycles=None,
        reallocated_sectors=None,
        pending_sectors=None,
        offline_uncorrectable=None,
        crc_errors=None,
        grown_defects=None,
        error_log_count=None,
        nvme=None,
        exit_status=exit_status,
        exit_status_bits=exit_bits(exit_status),
        messages=[],
        status="unknown",
        verdict=f"unknown: {reason}",
        reasons=[reason],
    )
