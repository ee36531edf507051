"""The control socket: a CLI `collect` handed to a running `serve` on the same data dir (real processes).

The server answers over its pooled connections (one SSH login however many CLI runs, per the sshd log) and
audits the request as transport `cli`; with no server, a stale socket or one that is not this user's, the CLI
runs in-process and prints the same output. Requests on the socket are checked as tool arguments are.
"""

from __future__ import annotations

import ast
import getpass
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mcp_server import control_client
from mcp_server.control import SOCKET_NAME
from tests.helpers import free_port
from tests.sshd import SshdFleet
from tests.test_cli import _add
from tests.test_startup import probe
from tests.test_transports import CLI, audit, cli_env, run_cli


class Served:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.log = tmp_path / "server.log"
        self.proc: subprocess.Popen[str] | None = None

    @property
    def sock(self) -> Path:
        return self.tmp_path / "data" / SOCKET_NAME

    def start(self) -> None:
        seen = self.log.read_text().count("control socket") if self.log.exists() else 0
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                [CLI, "serve", "--port", str(free_port())],
                env=cli_env(self.tmp_path, INFRA_AUTH="false", INFRA_LOG_LEVEL="INFO"),
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        deadline = time.monotonic() + 60
        while self.log.read_text().count("control socket") == seen:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(self.log.read_text())
            time.sleep(0.05)

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
            self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    server = Served(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def _rows(tmp_path: Path, count: int, **where: Any) -> list[dict[str, Any]]:
    """`count` audit rows matching `where`, waiting (bounded) for the batched writer to ship them all."""
    deadline = time.monotonic() + 15
    rows = audit(tmp_path, **where)
    while len(rows) < count and time.monotonic() < deadline:
        time.sleep(0.05)
        rows = audit(tmp_path, **where)
    return rows


def _steady(text: str) -> str:
    """Output with what changes from one run to the next (ages, times) blanked."""
    text = re.sub(r"collected [0-9.]+ s ago", "collected _ s ago", text)
    text = re.sub(r'"(collected_at|age_seconds|from_cache)": [^,\n]+', r'"\1": _', text)
    return text


def _ask(sock: Path, line: bytes) -> dict[str, Any]:
    """One raw request on the socket, the last answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(30)
        conn.connect(str(sock))
        conn.sendall(line)
        answers: list[dict[str, Any]] = [json.loads(raw) for raw in conn.makefile("rb")]
    return answers[-1]


def test_collect_is_answered_by_the_running_server_over_its_pooled_connection(
    tmp_path: Path, sshd_fleet: SshdFleet, served: Served
) -> None:
    alpha = sshd_fleet.hosts["alpha"]
    _add(tmp_path, sshd_fleet, alpha)
    served.start()
    assert os.stat(served.sock).st_mode & 0o777 == 0o600
    logins = alpha.accepted_logins()
    runs = [run_cli(tmp_path, "collect", "os_info", "--device", "alpha", "--force-refresh") for _ in range(3)]
    assert all(r.returncode == 0 for r in runs), runs[-1].stderr
    # the server's one pooled connection answered all three processes
    assert alpha.accepted_logins() == logins + 1
    rows = _rows(tmp_path, 3, kind="tool", transport="cli")
    assert len(rows) == 3 and {r["tool"] for r in rows} == {"collect_many"}
    assert {r["subject"] for r in rows} == {f"local:{getpass.getuser()}"}
    collections = _rows(tmp_path, 3, kind="collection", transport="cli", device="alpha")
    assert len(collections) == 3 and {c["request_id"] for c in collections} == {r["request_id"] for r in rows}

    # in-process (--no-server): its own connection, the same output
    here = run_cli(tmp_path, "collect", "os_info", "--device", "alpha", "--force-refresh", "--no-server")
    assert here.returncode == 0 and alpha.accepted_logins() == logins + 2
    assert _steady(here.stdout) == _steady(runs[-1].stdout)
    assert here.stdout.startswith("os_info on alpha, collected ")
    assert "os_info: 1/1 alpha ok" in here.stderr and "os_info: 1/1 alpha ok" in runs[-1].stderr
    for args in (["--all", "--json"], ["--all"], ["--device", "alpha,local"], ["--device", "ghost"]):
        # fresh both ways: the server's cache would answer with other ages
        there = run_cli(tmp_path, "collect", "os_info", "--force-refresh", *args, COLUMNS="150")
        inproc = run_cli(
            tmp_path, "collect", "os_info", "--force-refresh", *args, "--no-server", COLUMNS="150"
        )
        assert there.returncode == inproc.returncode, args
        assert _steady(there.stdout) == _steady(inproc.stdout), args
    # a usage error reads the same
    there = run_cli(tmp_path, "collect", "nope")
    inproc = run_cli(tmp_path, "collect", "nope", "--no-server")
    assert there.returncode == inproc.returncode == 2
    assert there.stderr.strip().startswith("error: Unknown command 'nope'.")
    assert there.stderr.strip() == inproc.stderr.strip().splitlines()[-1]


def test_the_cli_runs_in_process_when_the_server_is_gone_and_a_new_server_replaces_the_stale_socket(
    tmp_path: Path, served: Served
) -> None:
    served.start()
    assert run_cli(tmp_path, "collect", "os_info").returncode == 0
    served.stop(kill=True)  # no clean-up: the socket stays behind, stale
    assert served.sock.exists()
    done = run_cli(tmp_path, "collect", "os_info", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)[0]["ok"]
    assert audit(tmp_path, kind="collection", transport="internal")  # collected in-process
    served.start()  # the stale socket is replaced
    assert run_cli(tmp_path, "collect", "os_info").returncode == 0
    assert len(_rows(tmp_path, 2, kind="tool", transport="cli")) == 2
    served.stop()
    assert not served.sock.exists()  # removed on exit


def test_the_cli_follows_only_its_own_users_socket_in_its_own_private_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    with pytest.raises(control_client.NoServer, match="no control socket"):
        control_client.connect(data)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(data / SOCKET_NAME))
    listener.listen()
    try:
        control_client.connect(data).close()  # ours: followed
        data.chmod(0o770)
        with pytest.raises(control_client.NoServer, match="not this user's alone"):
            control_client.connect(data)
        data.chmod(0o700)
        if os.geteuid() == 0:
            os.chown(data / SOCKET_NAME, 65534, 65534)
            with pytest.raises(control_client.NoServer, match="socket is not this user's"):
                control_client.connect(data)
            os.chown(data / SOCKET_NAME, 0, 0)
    finally:
        listener.close()
    # bound once, nobody listening now: stale
    with pytest.raises(control_client.NoServer, match="does not answer"):
        control_client.connect(data)


PEER = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
try:
    s.sendall(b'{"v": 1, "op": "collect", "command": "os_info"}\\n')
except BrokenPipeError:
    pass  # refused before it was read: the answer is already there
print(s.makefile("rb").readline().decode())
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_a_process_of_another_user_is_refused_and_audited(tmp_path: Path, served: Served) -> None:
    served.start()
    # let another user reach the socket at all (the data dir is 0700 and the socket 0600): the peer check
    # is what must refuse it
    opened = [
        p for p in (tmp_path / "data", tmp_path, *tmp_path.parents) if p.stat().st_mode & 0o711 != 0o711
    ]
    modes = {p: p.stat().st_mode & 0o7777 for p in opened}
    for path in opened:
        path.chmod(modes[path] | 0o711)
    served.sock.chmod(0o666)
    peer = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3"]
    done = subprocess.run(
        [*peer, "-c", PEER, str(served.sock)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    for path, mode in modes.items():
        path.chmod(mode)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"refused": "not this server's user"}
    (row,) = audit(tmp_path, kind="auth", transport="cli")
    assert row["outcome"] == "denied" and row["error_type"] == "peer_refused"
    assert row["subject"] == "local:nobody" and "uid 65534" in row["error_message"]
    assert not audit(tmp_path, kind="collection", transport="cli")


def test_bad_requests_get_clear_errors_and_are_audited(tmp_path: Path, served: Served) -> None:
    served.start()
    sock = served.sock
    cases = [
        (b"not json\n", "Invalid request: not one line of JSON.", "invalid_parameter"),
        (b"[1, 2]\n", "Invalid request: not a JSON object.", "invalid_parameter"),
        (
            b'{"v": 1, "op": "collect", "command": "os_info", "bogus": 1}\n',
            "Invalid arguments for collect_many:\nbogus: unknown argument",
            "invalid_parameter",
        ),
        (
            b'{"v": 1, "op": "collect", "command": "os_info", "force_refresh": "maybe"}\n',
            "Invalid arguments for collect_many:\nforce_refresh:",
            "invalid_parameter",
        ),
        (
            b'{"v": 1, "op": "collect", "command": "container_restart", "params": {"name": "x"}}\n',
            "'container_restart' changes things on the device",
            "invalid_parameter",
        ),
        (
            b'{"v": 1, "op": "collect", "command": "os_info", "params": {"x": "' + b"a" * 100_000 + b'"}}\n',
            "Refused request: it is 100,",
            "arguments_too_large",
        ),
    ]
    for line, expected, _ in cases:
        answer = _ask(sock, line)
        assert answer["exit"] == 2 and answer["error"].startswith(expected), (line[:80], answer)
    rows = _rows(tmp_path, len(cases), kind="tool", transport="cli")
    assert [r["error_type"] for r in rows] == [c[2] for c in cases]
    assert [r["outcome"] for r in rows] == ["error"] * 5 + ["denied"]
    assert "a" * 1000 not in rows[-1]["arguments"]  # an oversized request is kept as a summary
    # a connection that sends nothing (a liveness probe) is neither answered nor audited
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.connect(str(sock))
    assert _ask(sock, b'{"v": 1, "op": "collect", "command": "os_info"}\n')["exit"] == 0
    assert len(_rows(tmp_path, len(cases) + 1, kind="tool", transport="cli")) == len(cases) + 1


def test_a_client_that_stalls_mid_request_is_cut_off_and_holds_up_no_other(
    tmp_path: Path, served: Served
) -> None:
    served.start()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stalled:
        stalled.settimeout(30)
        stalled.connect(str(served.sock))
        stalled.sendall(b'{"v": 1, "op": "collect", ')  # and nothing more
        # meanwhile another CLI is answered at once
        assert _ask(served.sock, b'{"v": 1, "op": "collect", "command": "os_info"}\n')["exit"] == 0
        answers = [json.loads(raw) for raw in stalled.makefile("rb")]
    assert answers[-1]["exit"] == 2, answers
    assert answers[-1]["error"] == "Invalid request: no complete request line within 5 s.", answers
    rows = _rows(tmp_path, 2, kind="tool", transport="cli")
    assert sorted(r["outcome"] for r in rows) == ["error", "ok"], rows


def test_a_stdio_server_answers_the_cli_too(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [CLI, "serve", "--stdio"],
            env=cli_env(tmp_path, INFRA_LOG_LEVEL="INFO"),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    try:
        deadline = time.monotonic() + 60
        while "control socket" not in log.read_text():  # opened once no client handshake came
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        done = run_cli(tmp_path, "collect", "os_info", "--json")
        assert done.returncode == 0 and json.loads(done.stdout)[0]["ok"], done.stderr
        (row,) = _rows(tmp_path, 1, kind="tool", transport="cli")
        assert row["tool"] == "collect_many" and row["outcome"] == "ok"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()  # the client went away: the server ends
        proc.wait(timeout=30)
    assert not (tmp_path / "data" / SOCKET_NAME).exists()


def test_a_collect_handed_to_the_server_loads_neither_rich_nor_pydantic_nor_asyncio(
    tmp_path: Path, served: Served
) -> None:
    served.start()
    code, loaded, stdout = probe(tmp_path, "collect", "os_info")
    assert code == 0 and stdout.startswith("os_info on local, collected ")
    assert not loaded & {"rich", "pydantic", "sqlalchemy", "asyncssh", "asyncio", "fastmcp"}, sorted(loaded)
    assert _rows(tmp_path, 1, kind="tool", transport="cli")


# runs the console script's quick path as `infrastructor collect …` does, then records what it loaded
QUICK = """
import json, os, sys
from mcp_server.cli_entry import quick
code = quick(sys.argv[1:])
sys.stdout.flush()
with open(os.environ["QUICK_PROBE_OUT"], "w") as f:
    f.write(repr({"code": code, "modules": sorted(sys.modules)}))
"""


def test_a_plain_piped_collect_is_handed_over_before_argparse_or_json_load(
    tmp_path: Path, served: Served
) -> None:
    served.start()
    out = tmp_path / "quick.txt"
    done = subprocess.run(
        [sys.executable, "-c", QUICK.replace("import json, ", "import "), "collect", "os_info", "--json"],
        env=cli_env(tmp_path, QUICK_PROBE_OUT=str(out)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    report = ast.literal_eval(out.read_text())
    assert report["code"] == 0, done.stderr
    # beyond what the interpreter loads to start (an editable install's import hook loads re, for one)
    bare = subprocess.run(
        [sys.executable, "-c", "import sys; print(repr(sorted(sys.modules)))"],
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    added = {name.split(".")[0] for name in report["modules"]} - set(ast.literal_eval(bare.stdout))
    assert not added & {"argparse", "json", "re", "rich", "pydantic", "asyncio", "socket"}, sorted(added)
    assert json.loads(done.stdout)[0]["ok"]
    # the same through the console script, against the in-process path
    there = run_cli(tmp_path, "collect", "os_info", "--json")
    assert _steady(there.stdout) == _steady(done.stdout)
    assert len(_rows(tmp_path, 2, kind="tool", transport="cli")) == 2


def test_a_request_the_server_refuses_is_asked_once_then_run_in_process(
    tmp_path: Path, served: Served
) -> None:
    served.start()
    other = f"sqlite+aiosqlite:///{tmp_path / 'other.db'}"
    subprocess.run([CLI, "migrate"], env=cli_env(tmp_path, INFRA_DATABASE_URL=other), check=True, timeout=120)
    done = run_cli(tmp_path, "collect", "os_info", "--json", INFRA_DATABASE_URL=other)
    assert done.returncode == 0 and json.loads(done.stdout)[0]["ok"], done.stderr
    # refused once by the server (another database), audited once; collected in-process
    (row,) = _rows(tmp_path, 1, kind="tool", transport="cli")
    assert row["outcome"] == "denied" and row["error_type"] == "refused"
    time.sleep(0.5)  # the batched writer would have shipped a second refusal by now
    assert len(audit(tmp_path, kind="tool", transport="cli")) == 1
    # a form left to argparse (--param) is still handed to the server, by cli.main
    done = run_cli(tmp_path, "collect", "os_info", "--param", "x=1")
    assert done.returncode == 1 and "os_info: 1/1 local invalid_parameter" in done.stderr
    last = _rows(tmp_path, 2, kind="tool", transport="cli")[-1]
    assert last["outcome"] == "ok" and last["error_type"] is None
