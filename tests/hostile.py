"""Commands whose parsers misbehave on purpose: slow, greedy or failing. Module-level, so that parse worker
processes (which import a parser by its module and name) can run them."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from mcp_server.commands import CommandDefinition, CommandRegistry, default_registry
from mcp_server.errors import ParseError


class Text(BaseModel):
    text: str
    note: str | None = None


def text(stdout: str, _params: Any) -> Text:
    return Text(text=stdout[:100].strip())


def backtracking(stdout: str, _params: Any) -> Text:
    """Exponential on a run of 'a' followed by anything else: stands for a parser bug."""
    re.match(r"(a+)+$", stdout)
    return Text(text=stdout[:100].strip())


def greedy(stdout: str, _params: Any) -> Text:
    """Asks for gigabytes (an alias bomb's expansion, say)."""
    blocks = [bytearray(64 << 20) for _ in range(64)]
    return Text(text=str(len(blocks)))


def refusing(stdout: str, _params: Any) -> Text:
    raise ParseError("refusing output", stdout)


def first_line(stdout: str, _params: Any, reason: str) -> Text:
    """The cheap fallback: the first line, and why the full parse was not done."""
    return Text(text=stdout.split("\n", 1)[0][:100], note=reason)


def _command(name: str, script: str, parse: Any, **extra: Any) -> CommandDefinition[Text]:
    return CommandDefinition(
        name=name,
        category="test",
        summary=name,
        argv=("sh", "-c", script),
        model=Text,
        parse=parse,
        ttl=30,
        **extra,
    )


# more than parsing.INLINE_CHARS, so these are parsed in a worker
BIG_A = "head -c 200000 /dev/zero | tr '\\0' a; echo b"
HOSTILE_COMMANDS = (
    _command("big_text", BIG_A, text),
    _command("big_backtracking", BIG_A, backtracking),
    _command("big_backtracking_with_fallback", BIG_A, backtracking, fallback=first_line),
    _command("big_greedy", BIG_A, greedy),
    _command("big_refusing", BIG_A, refusing),
    _command("small_text", "echo small", text),
    _command("flood", "yes 0123456789abcdef | head -c 3000000", text),
    _command("stderr_flood", "yes 0123456789abcdef | head -c 3000000 >&2; echo done", text),
)


def hostile_registry() -> CommandRegistry:
    return CommandRegistry([*default_registry(), *HOSTILE_COMMANDS])
