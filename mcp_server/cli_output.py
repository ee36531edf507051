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

from rich import box
from rich._ratio import ratio_reduce
from rich._wrap import divide_line
from rich.console import Console, ConsoleOptions, RenderResult
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

Outcome = dict[str, Any]  # one device's DeviceOutcome, dumped as JSON
# A cell: a string read as markup (a device name, a column name: as rich prints a str) or plain text.
Cell = str | Text


def table(*columns: str, title: str | None = None) -> Table:
    """A table that prints every value whole: long words fold onto the next line instead of being cut."""
    shown = Table(title=title, title_justify="left")
    for column in columns:
        shown.add_column(column, overflow="fold")
    return shown


def cell(value: Any) -> Text:
    """One value for a table cell, as plain text (never read as markup)."""
    return Text(cell_text(value))


def cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
        return ", ".join("" if v is None else str(v) for v in value) if value else "(none)"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(", ", ": "))
    return str(value)


def print_table(
    console: Console, columns: Sequence[str], rows: Sequence[Sequence[Cell]], title: str | None
) -> None:
    """`table(*columns, title=title)` with these rows, printed: drawn here when every cell is plain printable
    ASCII and the console draws no colours (what a piped `collect` prints; rich takes a tenth of the time it
    takes rich's Table), else by rich. The output is the same either way (tests/test_cli_output.py compares
    the two on random tables)."""
    lines = plain_table(console, columns, rows, title)
    if lines is not None:
        console.print(_Lines(lines))
        return
    shown = table(*columns, title=title)
    for row in rows:
        shown.add_row(*row)
    console.print(shown)


class _Lines:
    """Lines already drawn, printed as they are."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        newline = Segment.line()
        for line in self.lines:
            yield Segment(line)
            yield newline


def _plain(value: Cell) -> str | None:
    """A cell's text when it is printable ASCII that rich prints as it is (a str with neither markup nor
    emoji codes), else None."""
    text = value.plain if isinstance(value, Text) else value
    if not (text.isascii() and text.isprintable()):
        return None
    if isinstance(value, Text):
        return text if not value.spans and value.style == "" and value.justify is None else None
    return None if "[" in text or ":" in text else text


def _measure(text: str, max_width: int) -> tuple[int, int]:
    """rich's Measurement.get of Padding(Text(text), (0, 1)) at max_width (text: printable ASCII)."""
    if max_width < 1:
        return 0, 0
    if max_width - 2 < 1:
        return max_width, max_width
    longest = len(text)
    words = text.split()
    shortest = max(len(w) for w in words) if words else longest
    low, high = min(shortest, max_width), min(longest, max_width)
    if high < 1:
        low = high = 0
    low, high = min(low + 2, max_width), min(high + 2, max_width)
    return min(low, high), high


def _wrap(text: str, width: int) -> list[str]:
    """Text(text).wrap(width, justify="left", overflow="fold") as plain lines, each `width` long."""
    offsets = divide_line(text, width, fold=True)
    lines = [text[a:b] for a, b in zip([0, *offsets], [*offsets, len(text)], strict=True)]
    shaped = []
    for line in lines:
        if len(line) > width:  # rstrip_end: trailing spaces beyond the width go
            line = line[: len(line) - min(len(line) - len(line.rstrip()), len(line) - width)]
        shaped.append(line[:width].ljust(width))
    return shaped


def plain_table(
    console: Console, columns: Sequence[str], rows: Sequence[Sequence[Cell]], title: str | None
) -> list[str] | None:
    """The lines rich's Table (cli_output.table) prints on `console`, or None where this does not draw it
    as rich does: a console with colours or legacy Windows, a cell or title that is not plain printable ASCII,
    a width too narrow for every column."""
    if console.color_system is not None or console.legacy_windows or not columns:
        return None
    header = [_plain(c) for c in columns]
    body = [[_plain(c) for c in row] for row in rows]
    named = _plain(title) if title else ""
    if named is None or any(c is None for c in header) or any(c is None for row in body for c in row):
        return None
    grid: list[list[str]] = [header, *body]  # type: ignore[list-item]
    if any(len(row) != len(columns) for row in grid):
        return None
    shape = box.ASCII if not console.encoding.startswith("utf") else box.HEAVY_HEAD
    extra = 2 + len(columns) - 1
    available = console.width - extra
    if available < 3 * len(columns):
        return None

    def measured(column: int, max_width: int) -> int:
        if max_width < 1:
            return 0
        sizes = [_measure(row[column], max_width) for row in grid]
        return min(max(high for _, high in sizes), max_width)

    widths = [measured(i, available) or 1 for i in range(len(columns))]
    if sum(widths) > available:
        widths = Table._collapse_widths(widths, [True] * len(widths), available)
        if sum(widths) > available:
            widths = ratio_reduce(sum(widths) - available, [1] * len(widths), widths, widths)
        widths = [measured(i, w) for i, w in enumerate(widths)]
    if min(widths) < 3:
        return None
    table_width = sum(widths) + extra
    lines = _wrap(named, table_width) if title else []
    lines.append(shape.get_top(widths))
    for index, row in enumerate(grid):
        cells = [[f" {line} " for line in _wrap(text, w - 2)] for text, w in zip(row, widths, strict=True)]
        height = max(len(c) for c in cells)
        for c, w in zip(cells, widths, strict=True):
            blank = [" " * w] * (height - len(c))
            c[:] = blank + c if index == 0 else c + blank  # the header row sits at the bottom
        if index == 0:
            left, divider, right = shape.head_left, shape.head_vertical, shape.head_right
        elif index == len(grid) - 1:
            left, divider, right = shape.foot_left, shape.foot_vertical, shape.foot_right
        else:
            left, divider, right = shape.mid_left, shape.mid_vertical, shape.mid_right
        lines += [left + divider.join(c[n] for c in cells) + right for n in range(height)]
        if index == 0:
            lines.append(shape.get_row(widths, "head", edge=True))
    lines.append(shape.get_bottom(widths))
    return lines


def step_line(what: str, done: int, total: int, message: str) -> str:
    """A finished device as a plain line (stderr not a terminal)."""
    return f"{what}: {done}/{total} {message}"


def plain_line(console: Console, text: str) -> str | None:
    """What console.print(text, markup=False, highlight=False) writes, when that is the text itself on a
    line (printable ASCII within the width, no emoji code, a console without colours), else None."""
    if (
        console.color_system is None
        and not console.legacy_windows
        and text.isascii()
        and text.isprintable()
        and text.count(":") < 2  # an emoji code is :name:
        and 0 < len(text) <= console.width
        and text[-1] != " "
    ):
        return text + "\n"
    return None


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
            fields: list[list[Cell]] = [[k, cell(v)] for k, v in values.items()]
            print_table(console, ["field", "value"], fields, None)
    elif singles:
        keys = list(dict.fromkeys(k for _, values in singles for k in values))
        rows: list[list[Cell]] = [
            [device, *(cell(values.get(k)) for k in keys)] for device, values in singles
        ]
        print_table(console, ["device", *keys], rows, command)
    for name, records in lists.items():
        keys = list(dict.fromkeys(k for _, row in records for k in row))
        listed: list[list[Cell]] = [
            [*([device] if several else []), *(cell(row.get(k)) for k in keys)] for device, row in records
        ]
        print_table(console, [*(["device"] if several else []), *keys], listed, name)
    failed = [o for o in outcomes if o.get("result") is None]
    if failed:
        failures: list[list[Cell]] = [
            [o["device"], o.get("error_type") or "", cell(o.get("error"))] for o in failed
        ]
        print_table(console, ["device", "error type", "error"], failures, "failed")


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
