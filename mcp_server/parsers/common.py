"""Helpers every parser shares: marker-delimited script output, parse-error translation, percentages."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import wraps
from typing import ParamSpec, TypeVar

from mcp_server.errors import ParseError

P = ParamSpec("P")
R = TypeVar("R")

_MARKER = re.compile(r"^@@([a-z0-9_-]+)$")


_MALFORMED = (ValueError, IndexError, KeyError, TypeError, AttributeError, ArithmeticError, RecursionError)


def parse_errors_as(what: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Turn what malformed output raises into a ParseError: ValueError, IndexError, KeyError, TypeError, an
    AttributeError (JSON of the wrong shape: a list where an object belongs), an ArithmeticError (a number out
    of range: a 400-digit size, a timestamp past year 9999) and a RecursionError (data nested deeper than the
    interpreter recurses)."""

    def decorate(parse: Callable[P, R]) -> Callable[P, R]:
        @wraps(parse)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return parse(*args, **kwargs)
            except _MALFORMED as exc:
                stdout = args[0] if args and isinstance(args[0], str) else ""
                raise ParseError(f"{what} output ({type(exc).__name__}: {exc})", stdout) from exc

        return guarded

    return decorate


def split_sections(stdout: str, required: Iterable[str]) -> dict[str, list[str]]:
    """Split script output at `@@name` marker lines.

    Scripts end with `@@end`, so output cut short (a killed shell, a dropped channel) is an error rather
    than a silently partial result; so is a required section that is absent.
    """
    # split("\n"), not splitlines(): /proc text may hold \x1c-\x1e and \x85, which splitlines breaks on
    lines = stdout.rstrip("\n").split("\n")
    if lines[-1] != "@@end":
        raise ValueError("output is incomplete (no @@end marker)")
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines[:-1]:
        marker = _MARKER.match(line)
        # a marker opens a section once; a repeat can only be data that looks like one (a command line)
        if marker and marker.group(1) not in sections and marker.group(1) != "end":
            current = sections[marker.group(1)] = []
        elif current is not None and line:
            current.append(line)
    for name in required:
        if name not in sections:
            raise ValueError(f"section @@{name} missing")
    return sections


def percent(part: float, whole: float) -> float:
    """part/whole as a percentage rounded to 2 decimals; 0 when whole is 0."""
    return round(part * 100.0 / whole, 2) if whole else 0.0
