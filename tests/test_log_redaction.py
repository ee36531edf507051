"""What the server logs is redacted like what it returns: messages, their arguments, tracebacks and stacks, on
every handler the running server has (root, FastMCP's, uvicorn's; asyncssh and our modules propagate to root)."""

from __future__ import annotations

import io
import logging
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from rich.logging import RichHandler
from uvicorn.logging import AccessFormatter

from mcp_server.logs import RedactingFilter
from tests.helpers import free_port, serving
from tests.secret_corpus import CONTROL, SHAPES, leaks
from tests.test_entry_points import ENTRY_POINTS, REPO, _env
from tests.test_security import serve

URL = next(s for s in SHAPES if s.name == "url password")
KEY = next(s for s in SHAPES if s.name == "pem RSA PRIVATE KEY ending RSA PRIVATE KEY")
COMMAND = next(s for s in SHAPES if s.name == "mysql -p glued")


def _fail() -> None:
    """Raise an error whose text, and whose cause's text, hold secrets: what a traceback prints."""
    try:
        raise KeyError(f"{KEY.text}\n{CONTROL}")
    except KeyError as cause:
        raise RuntimeError(f"connecting with {URL.text} failed; ran {COMMAND.text}") from cause


def _log_failure(logger: logging.Logger) -> None:
    try:
        _fail()
    except RuntimeError:
        logger.error("worker failed: %s (%s)", COMMAND.text, CONTROL, exc_info=True, stack_info=True)


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A real logger with a real stream handler and formatter, redacted, writing to a buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    log = logging.getLogger("tests.redacted")
    log.propagate = False
    log.addHandler(handler)
    try:
        yield log, stream
    finally:
        log.removeHandler(handler)


def test_a_traceback_its_cause_and_the_stack_are_redacted_before_a_handler_writes_them(
    logger: tuple[logging.Logger, io.StringIO],
) -> None:
    log, stream = logger
    _log_failure(log)
    written = stream.getvalue()
    assert "Traceback (most recent call last)" in written and "RuntimeError: connecting with" in written
    assert (
        "Stack (most recent call last)" in written and "The above exception was the direct cause" in written
    )
    assert written.count(CONTROL) == 2  # in the message and in the cause's text: nothing else was cut
    assert leaks(written) == {}


def test_a_record_that_reaches_a_second_handler_is_redacted_there_too(
    logger: tuple[logging.Logger, io.StringIO],
) -> None:
    log, first = logger
    second = io.StringIO()
    plain = logging.StreamHandler(second)  # no filter of its own: the record was redacted in place
    log.addHandler(plain)
    try:
        _log_failure(log)
    finally:
        log.removeHandler(plain)
    assert CONTROL in second.getvalue() and leaks(second.getvalue()) == leaks(first.getvalue()) == {}


def test_uvicorn_access_lines_keep_their_arguments_so_its_formatter_still_formats_them() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False)
    )
    handler.addFilter(RedactingFilter())
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", f"/health?access_token=tok{CONTROL}x&m={CONTROL}", "1.1", 200), None,
    )  # fmt: skip
    handler.handle(record)
    assert (
        stream.getvalue() == f'127.0.0.1:5000 - "GET /health?access_token=***&m={CONTROL} HTTP/1.1" 200 OK\n'
    )


def _outputs(loggers: list[logging.Logger]) -> Iterator[tuple[logging.Handler, io.StringIO]]:
    """Every handler of `loggers`, pointed at a buffer of its own (through its public API)."""
    for logger in loggers:
        for handler in logger.handlers:
            buffer = io.StringIO()
            if isinstance(handler, RichHandler):
                handler.console = Console(file=buffer, width=400)
            elif type(handler) is logging.StreamHandler:  # uvicorn's (pytest's are subclasses)
                handler.setStream(buffer)
            else:
                continue
            yield handler, buffer


async def test_every_handler_of_the_running_server_redacts_what_each_library_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The server's own set-up, as `serve` and `fastmcp run` have it once started: FastMCP's rich handlers,
    uvicorn's (made when its config is), and the root's (here pytest's, which asyncssh and ours reach)."""
    caplog.set_level(logging.INFO)
    async with serve(tmp_path):
        assert all(
            any(isinstance(f, RedactingFilter) for f in handler.filters)
            for name in ("", "fastmcp", "uvicorn", "uvicorn.access")
            for handler in logging.getLogger(name).handlers
        )
        # the root's handler is pytest's (caplog); the others are pointed at buffers for a while
        handled = [logging.getLogger(name) for name in ("fastmcp", "uvicorn", "uvicorn.access")]
        saved: dict[logging.Handler, Any] = {
            h: (h.console if isinstance(h, RichHandler) else getattr(h, "stream", None))
            for lg in handled
            for h in lg.handlers
        }
        outputs = list(_outputs(handled))
        try:
            for name in ("fastmcp.server.server", "uvicorn.error", "asyncssh", "mcp_server.collection"):
                _log_failure(logging.getLogger(name))
            logging.getLogger("uvicorn.access").warning(  # serve() logs uvicorn at warning
                '%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", f"/mcp?token=tok{CONTROL}x", "1.1", 401
            )
        finally:
            for handler, target in saved.items():
                if isinstance(handler, RichHandler):
                    handler.console = target
                elif isinstance(handler, logging.StreamHandler) and target is not None:
                    handler.setStream(target)
    assert [h.__class__.__name__ for h, _ in outputs] == [
        "RichHandler",
        "RichHandler",
        "StreamHandler",
    ] * 1 + ["StreamHandler"]
    names = ("fastmcp", "fastmcp tracebacks", "uvicorn", "uvicorn.access")
    written = {name: buffer.getvalue() for (_, buffer), name in zip(outputs, names, strict=True)}
    written["root (asyncssh, ours)"] = caplog.text
    assert "RuntimeError: connecting with" in written["fastmcp tracebacks"]
    assert written["uvicorn"].count("RuntimeError: connecting with") == 1
    assert "GET /mcp?token=*** HTTP/1.1" in written["uvicorn.access"]
    assert (
        caplog.text.count("RuntimeError: connecting with") >= 2 and CONTROL in caplog.text
    )  # asyncssh, ours
    assert {name: leaks(text) for name, text in written.items()} == {name: {} for name in written}


@pytest.mark.parametrize("entry_point", list(ENTRY_POINTS))
def test_a_served_process_logs_requests_without_the_secrets_in_their_query_strings(
    entry_point: str, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "server.log"
    env = _env(tmp_path, INFRA_JWT_SECRET="s" * 48, INFRA_LOG_LEVEL="INFO")
    with serving(ENTRY_POINTS[entry_point]("127.0.0.1", port), port, env, log, cwd=REPO) as url:
        base = url.rsplit("/", 1)[0]
        for query in (f"marker={CONTROL}", f"access_token={URL.fragments[0]}"):
            with urllib.request.urlopen(f"{base}/health?{query}", timeout=30) as response:
                assert response.status == 200
    written = log.read_text()
    assert f"GET /health?marker={CONTROL}" in written, written[-3000:]
    assert leaks(written) == {} and "access_token=***" in written
