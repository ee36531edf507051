"""Real OpenSSH sshd processes on 127.0.0.1 as test hosts: one config, host key and log per host.

Usable from pytest fixtures and from benchmark scripts (`from tests.sshd import SshdFleet`).
"""

from __future__ import annotations

import atexit
import contextlib
import getpass
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import asyncssh

from mcp_server.devices import Device
from tests.helpers import free_port

SSHD = Path("/usr/sbin/sshd")
TEST_USER = "infratest"
TEST_USER_HOME = Path("/var/lib/infratest")
START_TIMEOUT = 10.0
_ACCEPTED = re.compile(r"Accepted (?:publickey|password) for ")
_DISCONNECTED = re.compile(r"^Disconnected from user ", re.M)


def sshd_available() -> bool:
    return SSHD.is_file() and os.access(SSHD, os.X_OK)


def _write(path: Path, text: str, mode: int) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def _children(pid: int) -> list[int]:
    """Direct children of pid (sshd forks one monitor per connection)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    stack = _children(pid)
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(_children(child))
    return found


def _kill(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@dataclass
class SshdHost:
    """One running sshd. Mutable because a restart changes the pid and possibly the host key."""

    fleet: SshdFleet = field(repr=False)
    name: str
    port: int
    host_key_line: str
    log_path: Path
    config_path: Path
    host_key_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    log_offset: int = 0

    @property
    def pid(self) -> int:
        assert self.process is not None, f"sshd {self.name} is not running"
        return self.process.pid

    @property
    def hostname(self) -> str:
        return "127.0.0.1"

    @property
    def username(self) -> str:
        return self.fleet.username

    @property
    def client_key_path(self) -> Path:
        return self.fleet.client_key_path

    @property
    def known_hosts_line(self) -> str:
        return f"[{self.hostname}]:{self.port} {self.host_key_line}"

    @property
    def host_key_fingerprint(self) -> str:
        return asyncssh.import_public_key(self.host_key_line).get_fingerprint("sha256")

    def log(self) -> str:
        # bytes, not read_text: sshd -e ends lines with \r\n and log_offset counts bytes
        return self.log_path.read_bytes().decode(errors="replace")

    def accepted_logins(self) -> int:
        """Successful logins so far: one per SSH connection the server accepted."""
        return len(_ACCEPTED.findall(self.log()))

    def disconnects(self) -> int:
        """Connections that ended after login (closed by either side)."""
        return len(_DISCONNECTED.findall(self.log()))

    def session_pids(self) -> list[int]:
        """The per-connection sshd processes (children of the listener and their children)."""
        return _descendants(self.pid) if self.process is not None else []

    def kill_sessions(self) -> int:
        """Kill every connection this server holds, as if the server dropped them; returns how many."""
        monitors = _children(self.pid)
        _kill(self.session_pids())
        return len(monitors)

    def restart_with_new_host_key(self) -> str:
        """Stop, generate a new host key, start again on the same port; returns the new key line."""
        self.stop()
        self.host_key_line = self.fleet.write_host_key(self.host_key_path)
        self.fleet.launch(self)
        self.fleet.wait_listening([self])
        return self.host_key_line

    def stop(self) -> None:
        if self.process is None:
            return
        pids = self.session_pids()
        self.process.kill()
        self.process.wait(timeout=START_TIMEOUT)
        _kill(pids)
        self.process = None


class SshdFleet:
    """A set of sshd test hosts sharing one login user and one authorized client key."""

    def __init__(self) -> None:
        if not sshd_available():
            raise RuntimeError(f"{SSHD} is not installed")
        self.root = Path(tempfile.mkdtemp(prefix="infra-sshd-"))
        # sshd reads authorized_keys as the login user; pytest tmp dirs are 0700
        self.root.chmod(0o755)
        self.is_root = os.geteuid() == 0
        self.username = TEST_USER if self.is_root else getpass.getuser()
        if self.is_root:
            Path("/run/sshd").mkdir(parents=True, exist_ok=True)
            _ensure_user(TEST_USER, TEST_USER_HOME)
        self.client_key_path = self.root / "client_ed25519"
        self.client_key_line = self.write_private_key(self.client_key_path)
        _write(self.root / f"authorized_keys.{self.username}", self.client_key_line + "\n", 0o644)
        self.hosts: dict[str, SshdHost] = {}
        # a benchmark or test run that dies without close() must not leave sshd processes behind
        atexit.register(self.close)

    def __enter__(self) -> SshdFleet:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @staticmethod
    def write_private_key(path: Path) -> str:
        """Write a new ed25519 private key (0600) and its .pub; returns the public key line."""
        key = asyncssh.generate_private_key("ssh-ed25519")
        path.write_bytes(key.export_private_key())
        path.chmod(0o600)
        public = key.export_public_key("openssh").decode().strip()
        _write(path.with_name(path.name + ".pub"), public + "\n", 0o644)
        return public

    def write_host_key(self, path: Path) -> str:
        return self.write_private_key(path)

    def new_client_key(self, name: str) -> Path:
        """A key the hosts do not authorize (for wrong-key cases)."""
        path = self.root / name
        self.write_private_key(path)
        return path

    def scratch_dir(self) -> Path:
        """A world-writable directory the login user and the test process can both use."""
        path = Path(tempfile.mkdtemp(prefix="scratch-", dir=self.root))
        path.chmod(0o1777)
        return path

    def set_password(self, password: str) -> None:
        """Give the login user a password (needs root; for password_auth hosts)."""
        if not self.is_root:
            raise RuntimeError("setting a password needs root")
        subprocess.run(["chpasswd"], input=f"{self.username}:{password}\n".encode(), check=True)

    def start_host(
        self,
        name: str,
        *,
        password_auth: bool = False,
        allow_tcp_forwarding: bool = False,
        env: Mapping[str, str] | None = None,
        config: Sequence[str] = (),
    ) -> SshdHost:
        return self.start_hosts(
            [name],
            password_auth=password_auth,
            allow_tcp_forwarding=allow_tcp_forwarding,
            env=env,
            config=config,
        )[0]

    def start_hosts(
        self,
        names: Iterable[str],
        *,
        password_auth: bool = False,
        allow_tcp_forwarding: bool = False,
        env: Mapping[str, str] | None = None,
        config: Sequence[str] = (),
    ) -> list[SshdHost]:
        """Start several hosts at once: every process is spawned before waiting for any of them.

        `config` lines go first in sshd_config, so they override the defaults below (sshd keeps the first
        value it reads for a keyword)."""
        hosts = [self._prepare(n, password_auth, allow_tcp_forwarding, env or {}, config) for n in names]
        for host in hosts:
            self.launch(host)
        self.wait_listening(hosts)
        return hosts

    def _prepare(
        self,
        name: str,
        password_auth: bool,
        allow_tcp_forwarding: bool,
        env: Mapping[str, str],
        config: Sequence[str] = (),
    ) -> SshdHost:
        if name in self.hosts:
            raise ValueError(f"host {name!r} already started")
        hostdir = self.root / name
        hostdir.mkdir(mode=0o755)
        host_key_path = hostdir / "ssh_host_ed25519_key"
        host_key_line = self.write_host_key(host_key_path)
        port = free_port()
        lines = [
            *config,
            "ListenAddress 127.0.0.1",
            f"Port {port}",
            f"HostKey {host_key_path}",
            f"PidFile {hostdir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.root}/authorized_keys.%u",
            "UsePAM no",
            "StrictModes no",
            "PubkeyAuthentication yes",
            f"PasswordAuthentication {'yes' if password_auth else 'no'}",
            "KbdInteractiveAuthentication no",
            f"AllowTcpForwarding {'yes' if allow_tcp_forwarding else 'no'}",
            f"AllowUsers {self.username}",
            "PermitRootLogin prohibit-password",
            "MaxStartups 200:30:400",
            "MaxSessions 10",
            "LogLevel INFO",
            "Subsystem sftp internal-sftp",
            # sshd honours only the first SetEnv line, so every variable goes on one
            *([" ".join(["SetEnv", *(f'"{k}={v}"' for k, v in env.items())])] if env else []),
        ]
        config_path = _write(hostdir / "sshd_config", "\n".join(lines) + "\n", 0o644)
        host = SshdHost(self, name, port, host_key_line, hostdir / "sshd.log", config_path, host_key_path)
        self.hosts[name] = host
        return host

    def launch(self, host: SshdHost) -> None:
        # a restart appends to the same log; readiness is judged on what comes after this point
        host.log_offset = host.log_path.stat().st_size if host.log_path.exists() else 0
        with host.log_path.open("ab") as log:
            host.process = subprocess.Popen(
                [str(SSHD), "-f", str(host.config_path), "-D", "-e"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    def wait_listening(self, hosts: list[SshdHost]) -> None:
        """Poll each log for sshd's 'Server listening' line; a process that died raises with its log."""
        deadline = time.monotonic() + START_TIMEOUT
        pending = list(hosts)
        while pending:
            host = pending[0]
            assert host.process is not None
            marker = f"Server listening on 127.0.0.1 port {host.port}."
            if marker in host.log()[host.log_offset :]:
                pending.pop(0)
                continue
            if host.process.poll() is not None:
                raise RuntimeError(f"sshd {host.name} exited with {host.process.returncode}:\n{host.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"sshd {host.name} not listening after {START_TIMEOUT}s:\n{host.log()}")
            time.sleep(0.01)

    def device(self, host: SshdHost, **overrides: Any) -> Device:
        """A Device that reaches `host` as the test user with the fleet's key, host key pinned."""
        fields: dict[str, Any] = {
            "name": host.name,
            "hostname": host.hostname,
            "port": host.port,
            "username": self.username,
            "key_path": str(self.client_key_path),
            "host_key": host.host_key_line,
        }
        fields.update(overrides)
        return Device(**fields)

    def close(self) -> None:
        for host in self.hosts.values():
            with contextlib.suppress(Exception):
                host.stop()
        self.hosts.clear()
        shutil.rmtree(self.root, ignore_errors=True)
        atexit.unregister(self.close)


def _ensure_user(name: str, home: Path) -> None:
    """Create the unprivileged login user once; '*' unlocks it for key logins without a password."""
    home.mkdir(mode=0o755, parents=True, exist_ok=True)
    try:
        pwd.getpwnam(name)
    except KeyError:
        result = subprocess.run(
            ["useradd", "-M", "-d", str(home), "-s", "/bin/sh", name], capture_output=True, text=True
        )
        # a concurrent test session may have created it in the meantime
        if result.returncode not in (0, 9):
            raise RuntimeError(f"useradd {name} failed: {result.stderr.strip()}") from None
    entry = subprocess.run(["getent", "shadow", name], capture_output=True, text=True).stdout
    hashed = entry.split(":")[1] if entry.count(":") > 1 else ""
    if hashed.startswith("!") or hashed == "":
        subprocess.run(["usermod", "-p", "*", name], check=True)
