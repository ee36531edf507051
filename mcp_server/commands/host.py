"""Host commands: package_updates (apt, dnf or pacman, whichever the device has; never installs) and vms (libvirt domains via virsh)."""

from __future__ import annotations

from typing import Any

from mcp_server.commands.base import CommandDefinition, NoParams
from mcp_server.parsers.host import PackageUpdates, VmList, parse_package_updates, parse_vms

RPM_FORMAT = "%{NAME}.%{ARCH} %|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\\n"
# One script detects the manager so one call answers on any distribution. Exit statuses are normalised
# here: `dnf check-update` exits 100 when updates exist, `checkupdates` 2 and `pacman -Qu` 1 when none do,
# while apt's 100 means an error; anything else is a real failure and is passed on.
PACKAGE_UPDATES_SCRIPT = "; ".join(
    (
        "export LC_ALL=C",
        "if command -v apt >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1; then echo '@@apt'"
        "; apt list --upgradable 2>/dev/null || exit"
        "; elif command -v dnf >/dev/null 2>&1; then echo '@@dnf'"
        "; dnf -q check-update; s=$?; [ $s -eq 0 ] || [ $s -eq 100 ] || exit $s"
        "; echo '@@dnf-security'"
        "; dnf -q updateinfo list --security --available 2>/dev/null || echo '@@dnf-security-unavailable'"
        f"; echo '@@rpm'; rpm -qa --qf '{RPM_FORMAT}' 2>/dev/null"
        "; elif command -v checkupdates >/dev/null 2>&1; then echo '@@pacman'"
        "; checkupdates; s=$?; [ $s -eq 0 ] || [ $s -eq 2 ] || exit $s"
        "; elif command -v pacman >/dev/null 2>&1; then echo '@@pacman'"
        "; pacman -Qu; s=$?; [ $s -eq 0 ] || [ $s -eq 1 ] || exit $s"
        '; else echo "apt/dnf/pacman: not found" >&2; exit 127; fi',
        "echo '@@end'",
    )
)

PACKAGE_UPDATES: CommandDefinition[PackageUpdates] = CommandDefinition(
    name="package_updates",
    category="packages",
    summary="Pending package updates (apt, dnf or pacman): installed -> candidate version, security flag.",
    argv=("sh", "-c", PACKAGE_UPDATES_SCRIPT),
    model=PackageUpdates,
    parse=parse_package_updates,
    params=NoParams,
    ttl=600.0,
    timeout=120.0,
)


# Non-root virsh would default to qemu:///session, which holds no system VMs; LIBVIRT_DEFAULT_URI still
# wins where the operator set one. A domain removed between the listing and its dominfo is skipped.
VMS_SCRIPT = "; ".join(
    (
        "export LC_ALL=C",
        'command -v virsh >/dev/null 2>&1 || { echo "virsh: not found" >&2; exit 127; }',
        'uri="${LIBVIRT_DEFAULT_URI:-qemu:///system}"',
        'names=$(virsh -c "$uri" list --all --name) || exit',
        "echo '@@virsh'",
        'printf \'%s\\n\' "$names" | while IFS= read -r name; do [ -n "$name" ] || continue'
        '; info=$(virsh -c "$uri" dominfo -- "$name" 2>/dev/null) && printf \'@@vm\\n%s\\n\' "$info"; done',
        "echo '@@end'",
    )
)

VMS: CommandDefinition[VmList] = CommandDefinition(
    name="vms",
    category="vms",
    summary="libvirt virtual machines: state, vCPUs, memory, autostart (virsh list --all + dominfo).",
    argv=("sh", "-c", VMS_SCRIPT),
    model=VmList,
    parse=parse_vms,
    params=NoParams,
    ttl=30.0,
    timeout=60.0,
)


COMMANDS: tuple[CommandDefinition[Any], ...] = (PACKAGE_UPDATES, VMS)
