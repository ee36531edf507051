"""What `infrastructor collect` prints, from each device's outcome as JSON (DeviceOutcome.model_dump(mode="json")).

One renderer for both ways a collect runs: in the CLI process, and in a running server that the CLI handed the
request to (control.py), which renders onto a console shaped like the CLI's (CliConsoles); the output is the
same either way.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

Outcome = dict[str, Any]  # one device's DeviceOutcome, dumped as JSON


def table(*columns: str, title: str | None = None) -> Table:
    """A table that prints every value whole: long words fold onto the next line instead of being cut."""
    shown = Table(title=title, title_justify="left")
    for column in columns:
        shown.add_column(column, overflow="fold")
    return shown


def cell(value: Any) -> Text:
    """One value for a table cell, as plain text (never read as markup)."""
    if value is None:
        return Text("")
    if isinstance(value, str):
        return Text(value)
    if isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
        return Text(", ".join("" if v is None else str(v) for v in value) if value else "(none)")
    if isinstance(value, dict | list):
        return Text(json.dumps(value, separators=(", ", ": ")))
    return Text(str(value))


def step_line(what: str, done: int, total: int, message: str) -> str:
    """A finished device as a plain line (stderr not a terminal)."""
    return f"{what}: {done}/{total} {message}"


def print_error(console: Console, message: str) -> None:
    """A usage error or a refusal, as every command prints it (exit status 2)."""
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)


def print_json(console: Console, outcomes: Sequence[Outcome]) -> None:
    console.print_json(json.dumps(list(outcomes)))


def print_outcomes(console: Console, command: str, outcomes: Sequence[Outcome]) -> None:
    """The whole result for humans: a table of the single values (a row per device), one table per list
    of records in the result (with a device column when several devices answered), then the failures."""
    several = len(outcomes) > 1
    singles: list[tuple[str, dict[str, Any]]] = []
    lists: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for o in outcomes:
        result = o.get("result")
        if result is None:
            continue
        dumped = result["data"]
        if not isinstance(dumped, dict):
            dumped = {"value": dumped}
        values: dict[str, Any] = {"age (s)": f"{result['age_seconds']:.1f}"}
        for key, value in dumped.items():
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                lists.setdefault(key, []).extend((o["device"], row) for row in value)
            else:
                values[key] = value
        singles.append((o["device"], values))
    if singles and not several:
        device, values = singles[0]
        age = values.pop("age (s)")
        console.print(f"{command} on {device}, collected {age} s ago", markup=False, highlight=False)
        if values:
            fields = table("field", "value")
            for key, value in values.items():
                fields.add_row(key, cell(value))
            console.print(fields)
    elif singles:
        keys = list(dict.fromkeys(k for _, values in singles for k in values))
        rows = table("device", *keys, title=command)
        for device, values in singles:
            rows.add_row(device, *(cell(values.get(k)) for k in keys))
        console.print(rows)
    for name, records in lists.items():
        keys = list(dict.fromkeys(k for _, row in records for k in row))
        listed = table(*(["device"] if several else []), *keys, title=name)
        for device, row in records:
            listed.add_row(*([device] if several else []), *(cell(row.get(k)) for k in keys))
        console.print(listed)
    failed = [o for o in outcomes if o.get("result") is None]
    if failed:
        failures = table("device", "error type", "error", title="failed")
        for o in failed:
            failures.add_row(o["device"], o.get("error_type") or "", cell(o.get("error")))
        console.print(failures)


@dataclass(frozen=True)
class CliConsoles:
    """The shape of a CLI process's stdout and stderr when neither is a terminal: what rich would make of
    them there (width, encoding, the environment variables it reads), measured by the CLI (control_client.py)."""

    out_width: int
    err_width: int
    out_encoding: str
    err_encoding: str
    environ: dict[str, str]

    def console(self, stderr: bool) -> tuple[Console, io.StringIO]:
        """A console that renders as the CLI's own would, into a buffer."""
        buffer = _Buffer(self.err_encoding if stderr else self.out_encoding)
        console = Console(
            file=buffer,
            width=self.err_width if stderr else self.out_width,
            height=25,
            force_terminal=False,
            force_jupyter=False,
            force_interactive=False,
            legacy_windows=False,
            _environ=self.environ,
        )
        return console, buffer


class _Buffer(io.StringIO):
    """A text buffer that reports the encoding of the stream it stands for (rich picks box characters by it)."""

    def __init__(self, encoding: str) -> None:
        super().__init__()
        self._encoding = encoding

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._encoding

    def isatty(self) -> bool:
        return False
