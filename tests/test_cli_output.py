"""cli_output draws plain tables itself (a piped `collect`): the lines must be exactly what rich's Table
prints, on random tables of every shape, width and encoding; anything else is left to rich."""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from rich.console import Console
from rich.text import Text

from mcp_server import cli_output
from mcp_server.cli_output import (
    Cell,
    CliConsoles,
    cell,
    plain_line,
    plain_table,
    print_outcomes,
    print_table,
    table,
)

WORDS = [
    "a",
    "os",
    "debian",
    "x86_64",
    "Intel(R)",
    "Xeon(R)",
    "",
    " ",
    "  lead",
    "trail  ",
    "a  b",
    "-",
    "{}",
]


def _rich(
    console: Console, columns: Sequence[str], rows: Sequence[Sequence[Cell]], title: str | None
) -> None:
    shown = table(*columns, title=title)
    for row in rows:
        shown.add_row(*row)
    console.print(shown)


def _console(width: int, encoding: str = "utf-8") -> tuple[Console, io.StringIO]:
    return CliConsoles(
        out_width=width, err_width=width, out_encoding=encoding, err_encoding=encoding, environ={}
    ).console(False)


def _text(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.1:
        return ""
    if kind < 0.2:
        return "x" * rng.randint(1, 90)  # one long word: folded
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))


def _drawn(draw: Callable[..., None], width: int, encoding: str, *args: Any) -> str:
    """What draw(console, *args) prints on a console of that width and encoding."""
    console, buffer = _console(width, encoding)
    draw(console, *args)
    return buffer.getvalue()


def test_plain_tables_are_drawn_exactly_as_rich_draws_them() -> None:
    rng = random.Random(17)
    drawn = 0
    for _ in range(400):
        n = rng.randint(1, 9)
        columns = [
            rng.choice(["device", "age (s)", "hostname", "a", "kernel_release", "x" * rng.randint(1, 30)])
            for _ in range(n)
        ]
        rows: list[list[Cell]] = [
            [f"h{i:02d}" if c == 0 and rng.random() < 0.5 else cell(_text(rng)) for c in range(n)]
            for i in range(rng.randint(0, 6))
        ]
        title = rng.choice(
            [None, "os_info", "failed", "a title longer than some of the narrower tables here"]
        )
        width = rng.choice([20, 30, 45, 60, 80, 120, 200, 400])
        encoding = rng.choice(["utf-8", "ascii", "latin-1"])
        console, _ = _console(width, encoding)
        drawn += plain_table(console, columns, rows, title) is not None
        ours = _drawn(print_table, width, encoding, columns, rows, title)
        theirs = _drawn(_rich, width, encoding, columns, rows, title)
        assert ours == theirs, (columns, rows, title, width, encoding)
    assert drawn > 300  # most of them were drawn here, not by rich


@pytest.mark.parametrize(
    "value",
    [
        "caf\u00e9",  # not ASCII: cell widths
        "\u6f22\u5b57 wide",
        "tab\there",
        "two\nlines",
        "\x1b[31mred",
    ],
)
def test_what_is_not_plain_ascii_is_left_to_rich_and_printed_the_same(value: str) -> None:
    columns = ["device", "value"]
    rows: list[list[Cell]] = [["h00", cell(value)], ["h01", cell("plain")]]
    console, _ = _console(80)
    assert plain_table(console, columns, rows, "t") is None
    assert _drawn(print_table, 80, "utf-8", columns, rows, "t") == _drawn(
        _rich, 80, "utf-8", columns, rows, "t"
    )


def test_markup_emoji_styles_and_colours_are_left_to_rich() -> None:
    console, _ = _console(80)
    assert plain_table(console, ["device", "[bold]x[/bold]"], [["h00", cell("1")]], None) is None
    assert plain_table(console, ["device", "v"], [["h00:smile:", cell("1")]], None) is None
    assert plain_table(console, ["device", "v"], [["h00", Text("1", style="red")]], None) is None
    assert plain_table(console, ["device", "v"], [["h00", cell("1")]], "[b]t[/b]") is None
    coloured = Console(file=io.StringIO(), width=80, force_terminal=True, color_system="truecolor")
    assert plain_table(coloured, ["device", "v"], [["h00", cell("1")]], None) is None
    assert plain_table(console, ["device", "v"], [["h00", cell("1"), cell("2")]], None) is None  # ragged


def test_collect_output_is_the_same_drawn_here_or_by_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    outcomes = [
        {
            "device": f"h{i:02d}",
            "ok": True,
            "result": {
                "age_seconds": 1.25,
                "data": {
                    "hostname": "vm",
                    "distro": {"id": "debian", "pretty_name": "Debian GNU/Linux 12 (bookworm)"},
                    "cpus": [{"model": "Intel(R) Xeon(R) Processor", "mhz": 2000.0}],
                    "flags": ["fpu", "vme"],
                    "none": None,
                },
            },
        }
        for i in range(21)
    ]
    outcomes.append(
        {"device": "gone", "ok": False, "result": None, "error_type": "host_unreachable", "error": "refused"}
    )
    for width in (60, 200):
        for shown in (outcomes, outcomes[:1]):
            ours = _drawn(print_outcomes, width, "utf-8", "os_info", shown)
            with monkeypatch.context() as patched:
                patched.setattr(cli_output, "plain_table", lambda *_args: None)
                theirs = _drawn(print_outcomes, width, "utf-8", "os_info", shown)
            assert ours == theirs and "h00" in ours and "cpus" in ours


@pytest.mark.parametrize(
    "text",
    [
        "os_info: 1/21 h00 ok",
        "os_info: 2/21 h01 host_unreachable: connection refused",
        "os_info: 3/3 db :smile: ok",  # an emoji code
        "x" * 79,
        "x" * 80,
        "x" * 81,  # wrapped
        "words " * 20,
        "trailing ",
        "caf\u00e9",
        "",
        "[bold]not markup[/bold]",
    ],
)
def test_a_progress_line_is_written_as_rich_prints_it(text: str) -> None:
    for encoding in ("utf-8", "ascii"):
        console, buffer = _console(80, encoding)
        console.print(text, markup=False, highlight=False)
        shown = plain_line(_console(80, encoding)[0], text)
        assert shown is None or shown == buffer.getvalue()
    drawn_here = ("os_info: 1/21 h00 ok", "x" * 79, "x" * 80, "[bold]not markup[/bold]")
    assert (plain_line(_console(80)[0], text) is not None) == (text in drawn_here)
