"""Paths of watched configuration files: their shape, the watch policy (what may be read at all), and what
kind a file is.

The policy is an allow-list (where configuration lives on a homelab host, plus INFRA_CONFIG_WATCH_ALLOW) and a
deny-list that wins over it (credential stores, key material, shell histories, databases, and on `local` the
server's own data). It is checked here on the path a caller names, and again on the device by the scripts in
commands/config.py on the path with every symlink resolved, with the same patterns and the same rule:

- a pattern with a '/' matches the whole path, and its `*` matches any characters, '/' included (a shell
  `case` pattern), so `/etc/nginx/*` covers everything below /etc/nginx;
- a pattern without a '/' matches the file name only (`*.pem`);
- a directory is judged as `DIR/`, so `/etc/nginx/*` allows watching /etc/nginx itself.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from collections.abc import Iterable
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

ConfigKind = Literal["compose", "nginx", "systemd", "file"]
KINDS: tuple[str, ...] = ("compose", "nginx", "systemd", "file")
MAX_PATH = 1024

# Where a homelab operator keeps configuration. Anything else needs INFRA_CONFIG_WATCH_ALLOW.
DEFAULT_ALLOW: tuple[str, ...] = (
    # compose projects and application config
    "/opt/*",
    "/srv/*",
    "/home/*/*compose*.yml",
    "/home/*/*compose*.yaml",
    "/home/*/*.env",
    "/home/*/docker/*",
    "/home/*/stacks/*",
    "/root/*compose*.yml",
    "/root/*compose*.yaml",
    "/boot/config/*",  # Unraid's flash drive
    "/mnt/user/appdata/*",  # Unraid
    "/mnt/cache/appdata/*",
    # reverse proxies: nginx, SWAG (wherever its /config lives), and the other usual ones
    "/etc/nginx/*",
    "*/nginx/proxy-confs/*",
    "*/nginx/site-confs/*",
    "/etc/caddy/*",
    "/etc/traefik/*",
    "/etc/haproxy/*",
    "/etc/apache2/*",
    "/etc/httpd/*",
    # systemd units and podman quadlets
    "/etc/systemd/*",
    "/lib/systemd/system/*",
    "/usr/lib/systemd/system/*",
    "/usr/lib/systemd/user/*",
    "/home/*/.config/systemd/user/*",
    "/root/.config/systemd/user/*",
    "/etc/containers/systemd/*",
    "/home/*/.config/containers/systemd/*",
    # service configuration in /etc
    "/etc/docker/daemon.json",
    "/etc/containers/*.conf",
    "/etc/fstab",
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
    "/run/systemd/resolve/*",  # where /etc/resolv.conf leads under systemd-resolved
    "/etc/exports",
    "/etc/exports.d/*",
    "/etc/crontab",
    "/etc/cron.d/*",
    "/etc/ssh/sshd_config",
    "/etc/ssh/sshd_config.d/*",
    "/etc/ssh/ssh_config",
    "/etc/ssh/ssh_config.d/*",
    "/etc/samba/smb.conf",
    "/etc/network/interfaces",
    "/etc/network/interfaces.d/*",
    "/etc/netplan/*",
    "/etc/sysctl.conf",
    "/etc/sysctl.d/*",
    "/etc/modprobe.d/*",
    "/etc/udev/rules.d/*",
    "/etc/logrotate.conf",
    "/etc/logrotate.d/*",
    "/etc/apt/sources.list",
    "/etc/apt/sources.list.d/*",
    "/etc/default/*",
    "/etc/fail2ban/*",
    "/etc/ufw/*",
    "/etc/nftables.conf",
    "/etc/iptables/*",
    "/etc/dnsmasq.conf",
    "/etc/dnsmasq.d/*",
    "/etc/unbound/*",
    "/etc/chrony/*",
    "/etc/chrony.conf",
    "/etc/ntp.conf",
    "/etc/rsyslog.conf",
    "/etc/rsyslog.d/*",
    "/etc/smartd.conf",
    "/etc/smartmontools/*",
    "/etc/mdadm/mdadm.conf",
    "/etc/snapraid.conf",
    "/etc/zfs/zed.d/*",
    "/etc/keepalived/*",
    "/etc/prometheus/*",
    "/etc/netdata/*",
    "/etc/libvirt/qemu/*",
    "/etc/pve/storage.cfg",  # Proxmox; its guests' configs live under nodes/
    "/etc/pve/datacenter.cfg",
    "/etc/pve/qemu-server/*",
    "/etc/pve/lxc/*",
    "/etc/pve/nodes/*/qemu-server/*",
    "/etc/pve/nodes/*/lxc/*",
)
# What the error message names when a path is outside the allow-list.
ALLOW_SUMMARY = (
    "compose projects under /opt, /srv and /home, Unraid /boot/config and appdata, /etc/nginx and SWAG "
    "proxy-confs/site-confs, systemd unit directories, and service configs in /etc such as /etc/fstab, "
    "/etc/ssh/sshd_config, /etc/samba/smb.conf"
)

# Never read, whatever the allow-list says: credential stores, key material, shell histories, databases.
DENY: tuple[str, ...] = (
    # by file name
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.jks",
    "*.keystore",
    "*.keytab",
    "*.kdbx",
    "*.ppk",
    "*.ovpn",
    "*.der",
    "*.gpg",
    "*.age",
    "privkey*",
    "*_key",
    "*key.json",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    "ssh_host_*",
    "*[Ss]ecret*",
    "*SECRET*",
    "*[Pp]assword*",
    "*PASSWORD*",
    "*passwd*",
    "*[Cc]redential*",
    "*[Tt]oken*",
    "*TOKEN*",
    "*history*",
    ".histfile",
    ".lesshst",
    ".viminfo",
    ".netrc",
    ".pgpass",
    ".my.cnf",
    ".npmrc",
    ".pypirc",
    ".s3cfg",
    ".boto",
    ".msmtprc",
    ".fetchmailrc",
    ".authinfo*",
    ".Xauthority",
    "authorized_keys*",
    "known_hosts*",
    "*shadow*",
    "sudoers*",
    "opasswd",
    "*.tdb",
    "*.db",
    "*.db-*",
    "*.sqlite",
    "*.sqlite-*",
    "*.sqlite3",
    "*.sqlite3-*",
    # by place
    "/proc/*",
    "/sys/*",
    "/dev/*",
    "/run/secrets/*",
    "/var/run/secrets/*",
    "/etc/sudoers*",
    "/etc/ssl/private/*",
    "/etc/pki/tls/private/*",
    "/etc/NetworkManager/system-connections/*",
    "*/priv/*",
    "*/wireguard/*",
    "*/letsencrypt/*",
    "*/secrets/*",
    "*/.secrets/*",
    "*/keys/*",
    "*/.ssh/*",
    "*/.gnupg/*",
    "*/.aws/*",
    "*/.azure/*",
    "*/.kube/*",
    "*/.docker/*",
    "*/.password-store/*",
    "*/.config/gcloud/*",
    "*/.local/share/keyrings/*",
)

_GLOB = re.compile(r"^[^\x00-\x1f\x7f\[\]\\]{1,512}$")


def check_glob(pattern: str) -> str:
    """A pattern both Python and a device's `sh` read the same way; ValueError says what is wrong."""
    if not _GLOB.match(pattern):
        raise ValueError(
            f"{pattern!r}: a glob is 1-512 characters without control characters, '[', ']' or '\\' "
            "(use * and ?)"
        )
    if "/" in pattern and pattern[0] not in "/*":
        raise ValueError(f"{pattern!r}: a glob with '/' matches a whole path, so it starts with '/' or '*'")
    return pattern


def escape_glob(path: str) -> str:
    """`path` as a pattern that matches only itself."""
    return re.sub(r"([*?\[])", r"[\1]", path)


def matches(path: str, pattern: str) -> bool:
    """The policy's one matching rule (see the module docstring); `sh` applies it on the device."""
    subject = path if "/" in pattern else path.rpartition("/")[2]
    return fnmatch.fnmatchcase(subject, pattern)


def _first(patterns: Iterable[str], subjects: tuple[str, ...]) -> str | None:
    return next((p for p in patterns for s in subjects if matches(s, p)), None)


def denied(path: str) -> str | None:
    """The deny pattern `path` (a file) falls under, if any."""
    return _first(DENY, (path,))


Glob = Annotated[str, AfterValidator(check_glob)]
OwnPath = Annotated[str, Field(min_length=1, max_length=MAX_PATH + 8, pattern=r"^[^\x00-\x1f\x7f]+$")]


class WatchPolicy(BaseModel):
    """What may be watched and read on one device: the defaults, the admin's additions, and the server's own
    files when the device is the server itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow: tuple[Glob, ...] = Field(
        default=(), description="Globs allowed besides the defaults (INFRA_CONFIG_WATCH_ALLOW)."
    )
    own: tuple[OwnPath, ...] = Field(
        default=(), description="The server's data dir and database on this device, as globs: refused."
    )

    def refusal(self, path: str, *, directory: bool | None = False) -> str | None:
        """Why `path` may not be watched or read, or None. `directory=None` judges a path whose type is not
        known yet: refused if either reading refuses it by a deny pattern, allowed if either is allowed."""
        as_dir = path.rstrip("/") + "/"
        forms = (path, as_dir) if directory is None else (as_dir,) if directory else (path,)
        pattern = _first(DENY, forms)
        if pattern is not None:
            return (
                f"{path} is a credential store, key material, a shell history or a database ({pattern}); the "
                "server never reads such files. Watch configuration files only."
            )
        pattern = _first(self.own, forms)
        if pattern is not None:
            return (
                f"{path} is the server's own data ({pattern}): its database, keys and spool are never watched "
                "(each write would come back as a change)."
            )
        if _first((*DEFAULT_ALLOW, *self.allow), forms) is None:
            extra = f"; also allowed here: {', '.join(self.allow)}" if self.allow else ""
            return (
                f"{path} is outside the places configuration is watched from ({ALLOW_SUMMARY}{extra}). "
                "An admin can allow more with INFRA_CONFIG_WATCH_ALLOW (comma-separated globs)."
            )
        return None


def check_path(path: str) -> str:
    """An absolute, normalised path without control characters; ValueError says what is wrong."""
    if not path.startswith("/"):
        raise ValueError("must be an absolute path (start with '/')")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
        raise ValueError("must not contain control characters (NUL, newline, ...)")
    if path != "/" and path.endswith("/"):
        raise ValueError("must not end with '/'")
    if posixpath.normpath(path) != path or path.startswith("//"):
        raise ValueError("must be normalised: no '.', '..', or repeated '/' components")
    return path


def well_formed(path: str) -> bool:
    """Whether `path` passes check_path (a name a device reported may not)."""
    try:
        check_path(path)
    except ValueError:
        return False
    return True


ConfigPath = Annotated[
    str,
    Field(
        min_length=2,
        max_length=MAX_PATH,
        description="Absolute path of the file on the device, e.g. /opt/stacks/media/compose.yaml.",
    ),
    AfterValidator(check_path),
]


def detect_kind(path: str) -> ConfigKind:
    """The kind of a configuration file, judged by its name and place."""
    name = posixpath.basename(path)
    lowered = name.lower()
    if lowered in COMPOSE_NAMES or fnmatch.fnmatch(lowered, "*compose*.y*ml"):
        return "compose"
    if lowered.endswith(SYSTEMD_SUFFIXES) or "/systemd/" in path:
        return "systemd"
    if "/nginx/" in path or (lowered.endswith(".conf") and "proxy-confs" in path) or lowered == "nginx.conf":
        return "nginx"
    return "file"


COMPOSE_NAMES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")
SYSTEMD_SUFFIXES = (
    ".service",
    ".socket",
    ".timer",
    ".mount",
    ".automount",
    ".path",
    ".target",
    ".slice",
    ".swap",
)
