"""Property-based fuzzing of everything that reads text from a host: every registered command's parser, the
config-file parsers per kind, the config redaction, the risk classifier, the diff and the redactor.

Each target gets random text and text mutated from its golden files (lines duplicated, truncated, spliced,
replacement characters, NULs, pumped substrings, deep nesting, repeated separators), plus fixed hostile
inputs (1 MB lines, 10k lines, YAML alias bombs, deep JSON and brackets). Two properties hold for each
input: nothing but a ParseError escapes (a parser returns its model or refuses), and the work is bounded by a
linear budget in the input's size. Runs are derandomized with a fixed example count, so CI is reproducible.
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from mcp_server import redact
from mcp_server.commands import CommandDefinition, default_registry
from mcp_server.config_monitoring import diff, risk
from mcp_server.errors import ParseError
from mcp_server.parsers.config_files import parse_content, redact_config

GOLDEN = Path(__file__).parent / "golden"
REGISTRY = default_registry()

# Work allowed per input: a fixed part for interpreter noise on a loaded 2-core machine, and a part per
# character. Linear parsers stay 10-100x under it; a quadratic one at 20k characters or a cubic one at 2k
# exceeds it. CPU time of this thread, so other processes on the machine do not count.
BASE_SECONDS = 0.05
SECONDS_PER_CHAR = 20e-6
# examples per target in CI; set INFRA_FUZZ_EXAMPLES higher for a deeper run by hand
EXAMPLES = int(os.environ.get("INFRA_FUZZ_EXAMPLES", "80"))

FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[
        Phase.explicit,
        Phase.generate,
    ],  # a shrink re-runs slow inputs many times; the message says enough
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def budget(size: int) -> float:
    return BASE_SECONDS + SECONDS_PER_CHAR * size


def _cpu_seconds(run: Callable[[], object]) -> tuple[float, object]:
    gc.disable()  # a collection of everything the test process holds is no cost of this input
    try:
        started = time.thread_time()
        result = run()
        return time.thread_time() - started, result
    finally:
        gc.enable()


def within_budget(label: str, size: int, run: Callable[[], object]) -> object:
    """run(), failing when it took more CPU time than the linear budget for `size` characters, twice (one
    slow run can be the machine; a super-linear input is slow every time)."""
    spent, result = _cpu_seconds(run)
    if spent > budget(size):
        spent = min(spent, _cpu_seconds(run)[0])
    assert spent <= budget(size), f"{label}: {spent:.3f}s for {size} characters (budget {budget(size):.3f}s)"
    return result


def _excerpt(text: str) -> str:
    return repr(text[:120]) + (f"... ({len(text)} characters)" if len(text) > 120 else "")


# ---- seeds: the golden captures ---------------------------------------------------------------------------


def _golden(command: str) -> list[tuple[str, dict[str, Any]]]:
    """(output, params) of every golden case of a command."""
    cases = []
    for case in sorted((GOLDEN / command).glob("*.txt")):
        params_file = case.with_name(case.stem + ".params.json")
        params = json.loads(params_file.read_text()) if params_file.exists() else {}
        cases.append((case.read_text(), params))
    return cases


ALL_SEEDS = [text for case in sorted(GOLDEN.glob("*/*.txt")) for text in [case.read_text()]]


def _config_text(name: str) -> str:
    """A config file's (redacted) text, from the expected model of its config_file golden case."""
    return str(json.loads((GOLDEN / "config_file" / f"{name}.json").read_text())["content"])


CONFIG_SEEDS: dict[str, list[str]] = {
    "compose": [_config_text("compose_immich"), _config_text("compose_nextcloud_env_list")],
    "nginx": [_config_text("nginx_swag_bitwarden"), _config_text("nginx_swag_default_site")],
    "systemd": [_config_text("systemd_postgresql_template"), _config_text("systemd_ssh_service")],
}
CONFIG_SEEDS["file"] = [text for seeds in CONFIG_SEEDS.values() for text in seeds]
CONFIG_PATHS = {
    "compose": "/opt/stacks/app/compose.yaml",
    "nginx": "/etc/nginx/conf.d/app.conf",
    "systemd": "/etc/systemd/system/app.service",
    "file": "/etc/app.ini",
}

# ---- mutations --------------------------------------------------------------------------------------------

# what real outputs repeat: field and record separators, markers, openers of nested structures
SEPARATORS = [" ", "\t", "\n", "\r", "\x0b", ":", ",", ";", "=", "/", "-", "|", ".", "@@", "\\", "#", "*"]
OPENERS = ["[", "{", '{"a":', '[{"a":', "- ", "  ", "a:\n ", "location / {", "http {", "(", '"', "'", "${"]

T = TypeVar("T")


class Draw(Protocol):
    def __call__(self, strategy: st.SearchStrategy[T], /) -> T: ...


def _at(draw: Draw, text: str) -> int:
    return int(draw(st.integers(0, len(text))))


def _lines(text: str) -> list[str]:
    return text.split("\n")


def _duplicate_line(draw: Draw, text: str) -> str:
    lines = _lines(text)
    i = draw(st.integers(0, len(lines) - 1))
    copies = draw(st.integers(1, 2_000))
    return "\n".join(lines[: i + 1] + [lines[i]] * copies + lines[i + 1 :])


def _truncate(draw: Draw, text: str) -> str:
    return text[: _at(draw, text)]


def _splice(draw: Draw, text: str) -> str:
    other = draw(st.sampled_from(ALL_SEEDS))
    return text[: _at(draw, text)] + other[_at(draw, other) :]


def _replacement_chars(draw: Draw, text: str) -> str:
    # what errors="replace" leaves of invalid UTF-8
    at = _at(draw, text)
    return text[:at] + "\ufffd" * draw(st.integers(1, 64)) + text[at + 1 :]


def _nul(draw: Draw, text: str) -> str:
    at = _at(draw, text)
    return text[:at] + "\x00" * draw(st.integers(1, 4096)) + text[at:]


def _pump(draw: Draw, text: str) -> str:
    """Repeat a short piece of the text in place: the shape of every regular-expression blow-up."""
    at = _at(draw, text)
    piece = text[at : at + draw(st.integers(1, 12))] or "a"
    return text[:at] + piece * draw(st.integers(2, 40_000 // len(piece))) + text[at:]


def _nest(draw: Draw, text: str) -> str:
    at = _at(draw, text)
    opener = draw(st.sampled_from(OPENERS))
    return text[:at] + opener * draw(st.integers(1, 20_000 // len(opener))) + text[at:]


def _stretch(draw: Draw, text: str) -> str:
    """Repeat one character wherever it occurs in a line: long runs of digits, spaces or hyphens side by side."""
    lines = _lines(text)
    i = draw(st.integers(0, len(lines) - 1))
    line = lines[i] or "a"
    char = line[draw(st.integers(0, len(line) - 1))]
    lines[i] = line.replace(char, char * draw(st.integers(2, max(2, 20_000 // len(line)))))
    return "\n".join(lines)


def _separators(draw: Draw, text: str) -> str:
    at = _at(draw, text)
    return text[:at] + draw(st.sampled_from(SEPARATORS)) * draw(st.integers(1, 20_000)) + text[at:]


def _random_insert(draw: Draw, text: str) -> str:
    at = _at(draw, text)
    return text[:at] + draw(st.text(max_size=40)) + text[at:]


def _drop_line(draw: Draw, text: str) -> str:
    lines = _lines(text)
    del lines[draw(st.integers(0, len(lines) - 1))]
    return "\n".join(lines)


# values of every JSON type and range a parser may not expect where it reads a field
ODD_JSON: list[Any] = [
    None,
    True,
    -1,
    0,
    10**30,
    1e308,
    "",
    "x",
    "1e400",
    "9" * 400,
    "-",
    [],
    [1],
    ["x"],
    {},
    {"a": 1},
    [[[[]]]],
]
# words a text parser may not expect where it reads a field
ODD_WORDS = [
    "",
    "-",
    "--",
    "0",
    "-1",
    "9" * 400,
    "1e400",
    "nan",
    "inf",
    "²",
    "٣",
    "0x1f",
    "1.2.3",
    "@@end",
    "\ufffd",
]


def _json_slots(value: Any) -> list[tuple[Any, Any]]:
    """(container, key) of every value inside a JSON document, outermost first."""
    slots: list[tuple[Any, Any]] = []
    stack = [value]
    while stack:
        node = stack.pop()
        keys = list(node) if isinstance(node, dict) else range(len(node)) if isinstance(node, list) else []
        for key in keys:
            slots.append((node, key))
            stack.append(node[key])
    return slots


def _json_field(draw: Draw, text: str) -> str:
    """Put a value of another type or range in one field of the JSON document (or JSON line) in the text."""
    lines = _lines(text)
    for start, end in ((0, len(lines)), *((i, i + 1) for i in range(len(lines)))):
        try:
            document = json.loads("\n".join(lines[start:end]))
        except (ValueError, RecursionError):
            continue
        slots = _json_slots(document)
        if not slots:
            break
        container, key = slots[draw(st.integers(0, len(slots) - 1))]
        container[key] = draw(st.sampled_from(ODD_JSON))
        try:
            return "\n".join([*lines[:start], json.dumps(document), *lines[end:]])
        except RecursionError:
            break
    return text


def _text_field(draw: Draw, text: str) -> str:
    """Replace one whitespace-separated word of a line with a word of another type or range."""
    lines = _lines(text)
    i = draw(st.integers(0, len(lines) - 1))
    words = lines[i].split(" ")
    words[draw(st.integers(0, len(words) - 1))] = draw(st.sampled_from(ODD_WORDS))
    lines[i] = " ".join(words)
    return "\n".join(lines)


MUTATIONS = [
    _json_field,
    _text_field,
    _duplicate_line,
    _truncate,
    _splice,
    _replacement_chars,
    _nul,
    _pump,
    _stretch,
    _nest,
    _separators,
    _random_insert,
    _drop_line,
]


@st.composite
def hostile_text(draw: Draw, seeds: Sequence[str]) -> str:
    """Random text, or a seed put through a few mutations."""
    if draw(st.integers(0, 9)) == 0:
        return str(draw(st.text(max_size=300)))
    text = str(draw(st.sampled_from(list(seeds))))
    for _ in range(draw(st.integers(1, 4))):
        text = draw(st.sampled_from(MUTATIONS))(draw, text)
    return text


# ---- fixed hostile inputs ---------------------------------------------------------------------------------

MB = 1_048_576


def alias_bomb(levels: int = 9) -> str:
    """The 'billion laughs' YAML: each level lists the one before nine times."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nservices:\n  app:\n    image: *a{levels - 1}\n"


def hostile_inputs(seed: str) -> list[tuple[str, str]]:
    """(name, text): huge lines, many lines, bombs and deep nesting, alone and inside a real capture."""
    lines = seed.split("\n")
    middle = len(lines) // 2
    longest = max(lines, key=len) or "a"
    return [
        ("1 MB line of one letter", "a" * MB),
        ("1 MB line of spaces", " " * MB),
        ("1 MB line of digits and tabs", "0\t" * (MB // 2)),
        (
            "capture with a 1 MB line",
            "\n".join([*lines[:middle], longest * (MB // len(longest)), *lines[middle:]]),
        ),
        ("capture with 10k copies of its lines", "\n".join(lines * (10_000 // len(lines) + 1))),
        ("10k empty lines", "\n" * 10_000),
        ("NUL bytes", "\x00" * MB),
        ("YAML alias bomb", alias_bomb()),
        ("deep JSON arrays", "[" * 100_000 + "]" * 100_000),
        ("deep JSON objects", '{"a":' * 100_000 + "1" + "}" * 100_000),
        ("deep braces", "http {" * 100_000),
        ("deep YAML sequences", "[" * 100_000),
        ("deep YAML mappings", "".join(f"{' ' * i}a:\n" for i in range(2_000))),
    ]


# ---- targets ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Target:
    """One fuzzed entry point: how to run it on a text (with a golden case's params), and its golden cases."""

    name: str
    run: Callable[[str, Any], object]
    cases: list[tuple[str, Any]]

    def __repr__(self) -> str:
        return self.name


def _command_target(command: CommandDefinition[Any]) -> Target:
    def run(text: str, params: BaseModel) -> object:
        try:
            result = command.parse(text, params)
        except ParseError:
            return None
        assert isinstance(result, command.model), f"{command.name} returned {type(result).__name__}"
        return result

    # params.json beside a golden case holds valid parameters, required ones included
    cases = [(text, command.validate(params)) for text, params in _golden(command.name)]
    return Target(command.name, run, cases)


def _config_target(kind: str) -> Target:
    def run(text: str, _: None) -> object:
        parsed, error = parse_content(kind, text)  # type: ignore[arg-type]
        assert error is None or isinstance(error, str)
        return parsed

    return Target(f"parse_content[{kind}]", run, [(text, None) for text in CONFIG_SEEDS[kind]])


def _redact_config_target(kind: str) -> Target:
    return Target(
        f"redact_config[{kind}]",
        lambda text, _: redact_config(kind, text),  # type: ignore[arg-type]
        [(text, None) for text in CONFIG_SEEDS[kind]],
    )


TEXT_TARGETS = (
    [_command_target(command) for command in REGISTRY]
    + [_config_target(kind) for kind in ("compose", "nginx", "systemd")]
    + [_redact_config_target(kind) for kind in ("compose", "nginx", "systemd")]
    + [
        Target("redact_text", lambda text, _: redact.redact_text(text), [(t, None) for t in ALL_SEEDS]),
        Target(
            "redact_args",
            lambda text, _: redact.redact_args(text.split("\n")),
            [(t, None) for t in ALL_SEEDS],
        ),
    ]
)
IDS = [t.name for t in TEXT_TARGETS]


# ---- the properties ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TEXT_TARGETS, ids=IDS)
@FUZZ
@given(data=st.data())
def test_mutated_output_is_parsed_or_refused_in_linear_time(target: Target, data: st.DataObject) -> None:
    seed, params = data.draw(st.sampled_from(target.cases), label="case")
    text = data.draw(hostile_text([seed]), label="text")
    within_budget(f"{target.name} on {_excerpt(text)}", len(text), lambda: target.run(text, params))


@pytest.mark.parametrize("target", TEXT_TARGETS, ids=IDS)
def test_fixed_hostile_inputs_are_parsed_or_refused_in_linear_time(target: Target) -> None:
    seed, params = target.cases[0]
    for name, text in hostile_inputs(seed):
        within_budget(f"{target.name} on {name}", len(text), partial(target.run, text, params))


CHANGE_KINDS = ["compose", "nginx", "systemd", "file"]


@st.composite
def config_change(draw: Draw) -> tuple[str, str, str]:
    """(kind, old, new): a config text and a mutation of it."""
    kind = draw(st.sampled_from(CHANGE_KINDS))
    old = draw(hostile_text(CONFIG_SEEDS[kind]))
    new = old if draw(st.booleans()) else draw(hostile_text([old]))
    return kind, old, new


@FUZZ
@given(change=config_change(), change_type=st.sampled_from(["created", "modified", "deleted"]))
def test_risk_of_any_change_is_classified_in_linear_time(
    change: tuple[str, str, str], change_type: str
) -> None:
    kind, old, new = change
    assessment = within_budget(
        f"classify {kind} {change_type} {_excerpt(old)} -> {_excerpt(new)}",
        len(old) + len(new),
        lambda: risk.classify(kind, CONFIG_PATHS[kind], change_type, old, new),  # type: ignore[arg-type]
    )
    assert isinstance(assessment, risk.Assessment) and assessment.risk in risk.RISKS


@FUZZ
@given(change=config_change())
def test_diff_of_any_change_is_computed_in_linear_time(change: tuple[str, str, str]) -> None:
    kind, old, new = change

    def run() -> None:
        text = diff.unified_diff(old, new, "a", "b")
        diff.counts(text)
        diff.cosmetic(kind, old, new)

    within_budget(f"diff {kind} {_excerpt(old)} -> {_excerpt(new)}", len(old) + len(new), run)


@pytest.mark.parametrize("kind", CHANGE_KINDS)
def test_risk_and_diff_of_hostile_files_stay_in_linear_time(kind: str) -> None:
    seed = CONFIG_SEEDS[kind][0]
    for name, text in hostile_inputs(seed):
        for old, new in ((seed, text), (text, seed)):
            size = len(old) + len(new)
            within_budget(
                f"classify {kind} {name}",
                size,
                partial(risk.classify, kind, CONFIG_PATHS[kind], "modified", old, new),
            )
            within_budget(f"diff {kind} {name}", size, partial(diff.unified_diff, old, new, "a", "b"))
        within_budget(
            f"classify created {kind} {name}",
            len(text),
            partial(risk.classify, kind, CONFIG_PATHS[kind], "created", None, text),
        )


# ---- inputs that once took super-linear time --------------------------------------------------------------


Case = tuple[Callable[[], object], int]  # what to run, and the characters it reads


def _parse(command: str, stdout: str) -> Case:
    definition = REGISTRY.get(command)

    def run() -> object:
        try:
            return definition.parse(stdout, definition.validate({}))
        except ParseError:
            return None  # refusing is fine; taking long is not

    return run, len(stdout)


def _df(line: str) -> str:
    header = "Filesystem Type 1B-blocks Used Avail Use% Inodes IUsed IFree IUse% Mounted on"
    return f"@@df-gnu\n{header}\n{line}\n@@mounts\n@@end\n"


def _stats(memory: str) -> str:
    return json.dumps(
        {"ID": "a", "MemUsage": memory, "NetIO": "0B / 0B", "BlockIO": "0B / 0B", "CPUPerc": "1%"}
    )


def _text(run: Callable[[str], object], text: str) -> Case:
    return lambda: run(text), len(text)


def _diff(old: str, new: str) -> Case:
    return lambda: diff.unified_diff(old, new, "a", "b"), len(old) + len(new)


SUPER_LINEAR_ONCE: dict[str, Case] = {
    # cubic: `[^\s:]*\d[^\s:]*-[^\s:]+$` tried every digit against every hyphen (4,001 characters: 112 s)
    "dnf version of digits then hyphens": _parse(
        "package_updates", f"@@dnf\nbash.x86_64 {'1' * 500}{'-' * 500}: updates\n@@end\n"
    ),
    # quadratic: a lazy source before backtracking `\s+` runs
    "df line with a long run of spaces": _parse("disk_usage", _df("a" + " " * 30_000 + "b")),
    # quadratic: re.search of `\S+ repaired` from every character of a long word
    "zpool scan progress of one long word": _parse(
        "zpool_status",
        "  pool: t\n state: ONLINE\n  scan: scrub in progress since x\n\t" + "." * 30_000 + "\n",
    ),
    # quadratic: `\s*([A-Za-z]*)\s*$` traded spaces between the two runs
    "docker size padded with spaces": _parse("container_stats", _stats("0" + " " * 30_000 + "! / 1B")),
    # quadratic: a lazy value before `[ \t]*;` rescanned the spaces at each step
    "nginx credential line without a semicolon": _text(
        lambda text: redact_config("nginx", text), "set $api_token x" + " " * 60_000 + "x\n"
    ),
    # quadratic: `[ \t]*` and `[^#\n:]+` traded indentation in the compose redaction marker rule
    "compose line of tabs with a redaction marker": _text(
        lambda text: parse_content("compose", text), " " + "\t" * 60_000 + " ***"
    ),
    # quadratic: each affected name was checked against a list of all those before it
    "nginx server with 70k names": _text(
        lambda text: risk.classify("nginx", "/etc/nginx/a.conf", "created", None, text),
        f"server {{ server_name {' '.join(map(str, range(70_000)))}; }}",
    ),
    # quadratic or worse: difflib matched 10k repetitive lines against each other (over 2 minutes)
    "diff of 10k repetitive lines": _diff(
        "".join(f"v{i % 100}\n" for i in range(10_000)), "".join(f"v{i * 7 % 100}\n" for i in range(10_000))
    ),
}


@pytest.mark.parametrize("case", list(SUPER_LINEAR_ONCE))
def test_inputs_that_once_took_super_linear_time_now_take_linear_time(case: str) -> None:
    run, size = SUPER_LINEAR_ONCE[case]
    within_budget(case, size, run)
