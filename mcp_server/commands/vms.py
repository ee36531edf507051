"""VM commands: vms (libvirt domains via virsh)."""

from __future__ import annotations

from mcp_server.commands.base import CommandDefinition, NoParams
from mcp_server.parsers.vms import VmList, parse_vms

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

COMMANDS: tuple[CommandDefinition, ...] = (VMS,)
