"""A command's output -> its parsed, redacted result: on the event loop when small, in a worker when large.

Every parser and the redactor are linear in their input, so a small output costs a few milliseconds at most
and is parsed in place; a large one (a megabyte of journal, a big compose file, a hostile host's output)
goes to a worker process with a deadline and a memory cap, so one host's content never stalls the others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from mcp_server.commands import CommandDefinition
from mcp_server.errors import ParseError
from mcp_server.redact import REDACTED, redact_args, redact_text, secret_name
from mcp_server.workers import WorkerPool, WorkLimitExceeded

# Outputs up to this size are parsed on the event loop (well under 50 ms for every parser:
# bench/bench_hostile.py); larger ones in a worker.
INLINE_CHARS = 65_536


def _masked(value: Any) -> tuple[Any, bool]:
    """(value with secrets in its strings masked, whether anything changed); types are kept."""
    if isinstance(value, dict):
        changed = False
        out: dict[Any, Any] = {}
        for key, item in value.items():
            if isinstance(item, str) and item and isinstance(key, str) and secret_name(key):
                out[key], hit = REDACTED, item != REDACTED
            else:
                out[key], hit = _masked(item)
            changed |= hit
        return out, changed
    if isinstance(value, list | tuple):
        if value and all(isinstance(item, str) for item in value):  # maybe an argv (a compose command)
            shown = redact_args(list(value))
            return type(value)(shown), shown != list(value)
        items = [_masked(item) for item in value]
        return type(value)(item for item, _ in items), any(hit for _, hit in items)
    if isinstance(value, str):
        masked = redact_text(value)
        return masked, masked != value
    return value, False


def redact_result(value: BaseModel, command: str) -> BaseModel:
    """A parsed result with every secret-looking string masked (process command lines, log lines, labels,
    configuration values), before it is cached, returned or stored."""
    masked, changed = _masked(value.model_dump())
    if not changed:
        return value
    try:
        return type(value).model_validate(masked)
    except ValidationError:
        raise ParseError(
            f"the output of {command} (a secret-looking value sits in a constrained field)"
        ) from None


def parse_redacted(
    parse: Callable[[str, Any], BaseModel], command: str, stdout: str, params: Any
) -> BaseModel:
    """parse(stdout, params), redacted: the whole step, in place or in a worker."""
    return redact_result(parse(stdout, params), command)


def fallback_redacted(
    fallback: Callable[[str, Any, str], BaseModel], command: str, stdout: str, params: Any, reason: str
) -> BaseModel:
    return redact_result(fallback(stdout, params, reason), command)


async def parse_output(
    definition: CommandDefinition[Any],
    stdout: str,
    params: BaseModel,
    *,
    workers: WorkerPool,
    deadline: float,
) -> BaseModel:
    """The command's parsed, redacted result. A large output that exceeds the worker's deadline or memory is
    refused with a ParseError, or given the command's cheaper `fallback` parse when it has one."""
    if len(stdout) <= INLINE_CHARS:
        return parse_redacted(definition.parse, definition.name, stdout, params)
    what = f"Parsing the {len(stdout):,}-character output of {definition.name}"
    try:
        return await workers.call(
            parse_redacted, definition.parse, definition.name, stdout, params, deadline=deadline, what=what
        )
    except WorkLimitExceeded as exc:
        if definition.fallback is None:
            raise ParseError(f"the output of {definition.name}: {exc}; it was refused") from None
        reason = f"not parsed: {exc}"
    try:
        return await workers.call(
            fallback_redacted,
            definition.fallback,
            definition.name,
            stdout,
            params,
            reason,
            deadline=deadline,
            what=what,
        )
    except WorkLimitExceeded as exc:
        raise ParseError(f"the output of {definition.name}: {exc}; it was refused") from None
