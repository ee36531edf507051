"""OpenSSH client config import: ssh_config(5) resolution of each concrete Host alias."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError

from mcp_server.errors import InvalidParameter
from mcp_server.server import build_server
from mcp_server.settings import Settings
from mcp_server.ssh_config import (
    SSHHostEntry,
    load_ssh_config,
    load_ssh_config_with_warnings,
    parse_ssh_config,
    parse_ssh_config_with_warnings,
)
from mcp_server.state import open_state
from tests.helpers import structured
from tests.test_transports import run_cli

HOME = Path(__file__).parent / "data" / "ssh_config" / "home"
FAKE_HOME = Path("/home/alice")


def parse(text: str, files: dict[str, str] | None = None) -> tuple[dict[str, SSHHostEntry], list[str]]:
    """Parse with an in-memory file tree under /home/alice; glob patterns match exact names or `*.conf`."""
    files = files or {}

    def read(path: Path) -> str:
        if str(path) not in files:
            raise FileNotFoundError(2, "No such file or directory")
        if files[str(path)] == "<dir>":
            raise IsADirectoryError(21, "Is a directory")
        return files[str(path)]

    def glob(pattern: str) -> list[Path]:
        if pattern.endswith("*.conf"):
            prefix = pattern[: -len("*.conf")]
            return sorted(Path(p) for p in files if p.startswith(prefix) and p.endswith(".conf"))
        return [Path(pattern)] if pattern in files else []

    entries, warnings = parse_ssh_config_with_warnings(
        text, home=FAKE_HOME, read=read, glob=glob, local_user="alice"
    )
    return {entry.alias: entry for entry in entries}, warnings


def test_a_realistic_config_resolves_every_concrete_alias_in_file_order() -> None:
    config = HOME / ".ssh" / "config"
    entries, warnings = parse_ssh_config_with_warnings(
        config.read_text(), path=config, home=HOME, local_user="alice"
    )
    ssh = HOME / ".ssh"
    assert entries == [
        SSHHostEntry(
            "work-vm", "10.0.0.5", 22, "defaultuser", f"{ssh}/id_ed25519", "admin@bastion.example.com:2200"
        ),
        SSHHostEntry("media", "media.home.arpa", 22, "plex", f"{ssh}/id_ed25519", None),
        SSHHostEntry("nas01", "192.168.1.10", 22, "admin", f"{ssh}/keys/nas key", None),
        SSHHostEntry("nas", "192.168.1.10", 22, "admin", f"{ssh}/keys/nas key", None),
        SSHHostEntry(
            "web01", "web01.internal.example.com", 2222, "defaultuser", f"{ssh}/id_ed25519", "bastion"
        ),
        SSHHostEntry(
            "bastion", "bastion.example.com", 22, "jump", f"{HOME}/.ssh/id_bastion.example.com", None
        ),
        SSHHostEntry("db.lab", "db.lab", 2200, "defaultuser", f"{ssh}/id_ed25519", None),
        SSHHostEntry("app.lab", "app.lab", 2200, "labuser", f"{ssh}/id_ed25519", None),
    ]
    assert len(warnings) == 2
    assert warnings[0].startswith(f"{config}:25: Match blocks are not supported")
    assert warnings[1] == f"{config}:31: bad Port '99999' for host broken; host skipped"


def test_parse_ssh_config_returns_the_entries_alone() -> None:
    config = HOME / ".ssh" / "config"
    entries = parse_ssh_config(config.read_text(), path=config, home=HOME, local_user="alice")
    assert [e.alias for e in entries][:2] == ["work-vm", "media"]


def test_a_host_line_with_several_patterns_registers_each_concrete_alias() -> None:
    entries, _ = parse("Host nas nas01 *.nas ?x !old\n  HostName 10.0.0.2\n")
    assert sorted(entries) == ["nas", "nas01"]
    assert entries["nas"].hostname == entries["nas01"].hostname == "10.0.0.2"


def test_host_star_at_the_end_only_fills_what_earlier_blocks_left_unset() -> None:
    entries, _ = parse("Host a\n  User root\nHost b\n  Port 2022\nHost *\n  User deploy\n  Port 2200\n")
    assert (entries["a"].user, entries["a"].port) == ("root", 2200)
    assert (entries["b"].user, entries["b"].port) == ("deploy", 2022)


def test_host_star_at_the_top_overrides_later_blocks() -> None:
    entries, _ = parse("Host *\n  User everyone\nHost a\n  User root\n  HostName a.example\n")
    assert (entries["a"].user, entries["a"].hostname) == ("everyone", "a.example")


def test_options_before_the_first_host_line_apply_to_every_alias() -> None:
    entries, _ = parse("User early\nPort 2022\n\nHost a\n  User late\n")
    assert (entries["a"].user, entries["a"].port) == ("early", 2022)


def test_a_negated_pattern_keeps_a_wildcard_block_from_applying() -> None:
    text = "Host db web\nHost * !db\n  User app\nHost *\n  User fallback\n"
    entries, _ = parse(text)
    assert entries["web"].user == "app"
    assert entries["db"].user == "fallback"


def test_an_alias_negated_on_its_own_host_line_is_not_registered() -> None:
    entries, _ = parse("Host foo !foo\n  User x\nHost bar\n")
    assert list(entries) == ["bar"]


def test_question_mark_matches_exactly_one_character() -> None:
    entries, _ = parse("Host web1 web10\nHost web?\n  User single\n")
    assert entries["web1"].user == "single"
    assert entries["web10"].user is None


def test_an_alias_in_several_blocks_is_listed_once_with_merged_settings() -> None:
    entries, _ = parse("Host a\n  User u\nHost b\nHost a\n  Port 2022\n  User ignored\n")
    assert list(entries) == ["a", "b"]
    assert (entries["a"].user, entries["a"].port) == ("u", 2022)


def test_keywords_are_case_insensitive_and_accept_key_equals_value() -> None:
    text = "HOST a\n  hostname=a.example\n  PORT = 2201\n  User= bob\nhost b\n  HostName\t b.example\n"
    entries, _ = parse(text)
    assert entries["a"] == SSHHostEntry("a", "a.example", 2201, "bob", None, None)
    assert entries["b"].hostname == "b.example"


def test_hostname_defaults_to_the_alias_and_expands_percent_h() -> None:
    entries, _ = parse("Host plain templ\nHost templ\n  HostName %h.lan.example\n")
    assert entries["plain"].hostname == "plain"
    assert entries["templ"].hostname == "templ.lan.example"


def test_comments_are_ignored_but_a_quoted_hash_is_kept() -> None:
    text = '# header\nHost a # trailing comment\n  # indented comment\n  IdentityFile "~/.ssh/key#1" # why\n'
    entries, warnings = parse(text)
    assert list(entries) == ["a"]
    assert entries["a"].identity_file == "/home/alice/.ssh/key#1"
    assert warnings == []


def test_quoted_identity_file_with_spaces_and_escapes() -> None:
    text = "Host a\n  IdentityFile \"/keys/my key\"\nHost b\n  IdentityFile /keys/other\\ key\nHost c\n  IdentityFile '~/q k'\n"
    entries, _ = parse(text)
    assert entries["a"].identity_file == "/keys/my key"
    assert entries["b"].identity_file == "/keys/other key"
    assert entries["c"].identity_file == "/home/alice/q k"


def test_identity_file_tokens_are_expanded() -> None:
    text = (
        "Host box\n  HostName box.example\n  User deploy\n  Port 2022\n"
        "  IdentityFile %d/.ssh/id_%h_%r_%u_%n_%p_100%%\n"
    )
    entries, warnings = parse(text)
    assert entries["box"].identity_file == "/home/alice/.ssh/id_box.example_deploy_alice_box_2022_100%"
    assert warnings == []


def test_percent_r_falls_back_to_the_local_user_when_no_user_is_set() -> None:
    entries, _ = parse("Host box\n  IdentityFile ~/.ssh/%r\n")
    assert entries["box"].identity_file == "/home/alice/.ssh/alice"
    assert entries["box"].user is None


def test_an_unknown_token_is_left_as_is_with_a_warning() -> None:
    entries, warnings = parse("Host box\n  IdentityFile ~/.ssh/%C\n")
    assert entries["box"].identity_file == "/home/alice/.ssh/%C"
    assert warnings == ["<ssh config>:2: unsupported token %C in '/home/alice/.ssh/%C' left as is"]


def test_the_first_identity_file_wins() -> None:
    entries, _ = parse(
        "Host a\n  IdentityFile ~/.ssh/first\n  IdentityFile ~/.ssh/second\nHost *\n  IdentityFile x\n"
    )
    assert entries["a"].identity_file == "/home/alice/.ssh/first"


@pytest.mark.parametrize("port", ["0", "65536", "99999", "ssh", "-1", "22x", "\uff12\uff12"])
def test_a_bad_port_skips_that_host_with_a_warning(port: str) -> None:
    entries, warnings = parse(f"Host bad\n  Port {port}\nHost good\n  Port 65535\n")
    assert list(entries) == ["good"]
    assert entries["good"].port == 65535
    assert warnings == [f"<ssh config>:2: bad Port {port!r} for host bad; host skipped"]


def test_a_bad_port_that_another_block_overrides_first_is_harmless() -> None:
    entries, warnings = parse("Host a\n  Port 2222\nHost *\n  Port nope\n")
    assert entries["a"].port == 2222
    assert warnings == []


def test_proxy_jump_is_kept_verbatim() -> None:
    text = "Host a\n  ProxyJump bastion\nHost b\n  ProxyJump ops@gw.example:2200\nHost c\n  ProxyJump ssh://ops@gw:22\n"
    entries, _ = parse(text)
    assert entries["a"].proxy_jump == "bastion"
    assert entries["b"].proxy_jump == "ops@gw.example:2200"
    assert entries["c"].proxy_jump == "ssh://ops@gw:22"


def test_proxy_jump_none_disables_a_later_default() -> None:
    entries, _ = parse("Host a\n  ProxyJump none\nHost *\n  ProxyJump bastion\n")
    assert entries["a"].proxy_jump is None


def test_a_multi_hop_proxy_jump_keeps_the_first_hop_and_warns() -> None:
    entries, warnings = parse("Host deep\n  ProxyJump hop1,hop2:2222\n")
    assert entries["deep"].proxy_jump == "hop1"
    assert warnings == ["<ssh config>:2: ProxyJump 'hop1,hop2:2222' has several hops; deep keeps only 'hop1'"]


def test_a_proxy_command_obtained_first_shadows_proxy_jump_with_a_warning() -> None:
    entries, warnings = parse("Host a\n  ProxyCommand ssh -W %h:%p gw\nHost *\n  ProxyJump bastion\n")
    assert entries["a"].proxy_jump is None
    assert warnings == ["<ssh config>:2: ProxyCommand is not supported; a imported without it"]


def test_match_blocks_are_skipped_until_the_next_host_line() -> None:
    text = "Match user root\n  User matched\n  Include extra.conf\nHost a\n  Port 2022\n"
    entries, warnings = parse(text, {"/home/alice/.ssh/extra.conf": "Host hidden\n"})
    assert entries == {"a": SSHHostEntry("a", "a", 2022, None, None, None)}
    assert warnings == ["<ssh config>:1: Match blocks are not supported; the options under it are ignored"]


def test_include_is_relative_to_dot_ssh_and_expands_globs_in_lexical_order() -> None:
    files = {
        "/home/alice/.ssh/conf.d/20-b.conf": "Host b\n  User from-b\n",
        "/home/alice/.ssh/conf.d/10-a.conf": "Host a\n  User from-a\nHost b\n  Port 2010\n",
    }
    entries, _ = parse("Include conf.d/*.conf\nHost *\n  User default\n  Port 2200\n", files)
    assert list(entries) == ["a", "b"]
    assert (entries["a"].user, entries["a"].port) == ("from-a", 2200)
    assert (entries["b"].user, entries["b"].port) == ("from-b", 2010)


def test_include_accepts_absolute_and_tilde_paths_and_several_arguments() -> None:
    files = {"/etc/ssh/shared": "Host shared\n", "/home/alice/extra": "Host extra\n"}
    entries, _ = parse("Include /etc/ssh/shared ~/extra\n", files)
    assert list(entries) == ["shared", "extra"]


def test_options_after_an_include_come_after_the_included_ones() -> None:
    files = {"/home/alice/.ssh/inc": "User included\n"}
    entries, _ = parse("Host a\n  Include inc\n  User after\n", files)
    assert entries["a"].user == "included"


def test_an_include_inside_a_host_block_applies_only_to_that_host() -> None:
    files = {"/home/alice/.ssh/inc": "Port 2022\nHost other\n  User nested\n"}
    entries, _ = parse("Host a other\n  User a-user\nHost a\n  Include inc\nHost b\n", files)
    assert entries["a"].port == 2022
    assert entries["b"].port == 22
    assert (entries["other"].user, entries["other"].port) == ("a-user", 22)


def test_a_missing_include_is_ignored_like_ssh_does() -> None:
    entries, warnings = parse("Include nothing-here\nHost a\n")
    assert list(entries) == ["a"]
    assert warnings == []


def test_an_unreadable_include_is_reported_and_skipped() -> None:
    files = {"/home/alice/.ssh/dir": "<dir>"}
    entries, warnings = parse("Include dir\nHost a\n", files)
    assert list(entries) == ["a"]
    assert warnings == ["<ssh config>:1: cannot read included file /home/alice/.ssh/dir: Is a directory"]


def test_a_file_that_includes_itself_is_refused_naming_the_depth_limit_and_the_file() -> None:
    files = {"/home/alice/.ssh/loop": "Include loop loop\nHost looped\n"}
    started = time.perf_counter()
    with pytest.raises(InvalidParameter) as refused:
        parse("Include loop\n", files)
    assert time.perf_counter() - started < 5  # was 2^16 parses of the file
    assert "/home/alice/.ssh/loop:1: Include 'loop' nests files deeper than 16 levels" in str(refused.value)
    assert "Remove the Include that leads back" in str(refused.value)


def test_files_that_include_each_other_are_refused() -> None:
    files = {"/home/alice/.ssh/a": "Include b\n", "/home/alice/.ssh/b": "Include a\n"}
    with pytest.raises(InvalidParameter, match="Include '[ab]' nests files deeper than 16 levels"):
        parse("Include a\n", files)


def test_a_chain_of_seventeen_distinct_files_is_one_too_deep() -> None:
    files = {f"/home/alice/.ssh/f{i}": f"Include f{i + 1}\nHost h{i}\n" for i in range(17)}
    files["/home/alice/.ssh/f16"] = "Host h16\n"
    with pytest.raises(InvalidParameter, match=r"/home/alice/\.ssh/f15:1: Include 'f16' nests files deeper"):
        parse("Include f0\n", files)
    del files["/home/alice/.ssh/f16"]
    files["/home/alice/.ssh/f15"] = "Host h15\n"
    entries, _ = parse("Include f0\n", files)
    assert len(entries) == 16


def test_a_glob_include_that_matches_itself_stops_at_the_file_limit() -> None:
    files = {f"/home/alice/.ssh/conf.d/{i}.conf": "Include conf.d/*.conf\n" for i in range(3)}
    with pytest.raises(InvalidParameter) as refused:
        parse("Include conf.d/*.conf\n", files)
    assert "nests files deeper than 16 levels" in str(refused.value)
    wide = {f"/home/alice/.ssh/conf.d/{i:02}.conf": f"Host h{i}\n" for i in range(65)}
    with pytest.raises(InvalidParameter) as refused:
        parse("Include conf.d/*.conf\n", wide)
    assert (
        "SSH config <ssh config> is too large to import: <ssh config>:1: Include 'conf.d/*.conf' would read "
        "more than 64 included files in all (the limit" in str(refused.value)
    )


def test_included_files_adding_up_to_more_than_a_mebibyte_are_refused_naming_the_file() -> None:
    big = "# " + "x" * (256 * 1024 - 3) + "\n"
    files = {f"/home/alice/.ssh/big{i}": big for i in range(5)}
    with pytest.raises(
        InvalidParameter, match=r"with /home/alice/\.ssh/big3 it holds more than 1,048,576 char"
    ):
        parse("Include big0 big1 big2 big3 big4\n", files)


def test_more_than_twenty_thousand_lines_are_refused() -> None:
    files = {"/home/alice/.ssh/long": "# a comment\n" * 20_000}
    with pytest.raises(
        InvalidParameter, match=r"with /home/alice/\.ssh/long it holds more than 20,000 lines"
    ):
        parse("Host a\nInclude long\n", files)


def test_more_than_two_thousand_host_aliases_are_refused() -> None:
    assert len(parse("".join(f"Host h{i}\n" for i in range(2000)))[0]) == 2000
    with pytest.raises(InvalidParameter, match="it names more than 2,000 Host aliases"):
        parse("".join(f"Host h{i}\n" for i in range(2001)))


def test_a_large_config_with_defaults_for_every_host_resolves_quickly() -> None:
    text = "".join(f"Host h{i} alias{i}\n  HostName 10.0.{i // 250}.{i % 250}\n" for i in range(1000))
    text += "Host *.lab h1*\n  Port 2222\nHost *\n  User ops\n  IdentityFile ~/.ssh/%n.key\n" * 10
    started = time.perf_counter()
    entries, warnings = parse(text)
    assert time.perf_counter() - started < 5  # was over 15 s
    assert len(entries) == 2000 and warnings == []
    assert entries["h999"] == SSHHostEntry("h999", "10.0.3.249", 22, "ops", "/home/alice/.ssh/h999.key", None)
    assert entries["h12"].port == 2222


def test_many_wildcard_blocks_against_many_aliases_are_refused_at_the_matching_limit() -> None:
    text = "".join(f"Host h{i}\n" for i in range(1000)) + "Host *\n  User x\n" * 600
    started = time.perf_counter()
    with pytest.raises(InvalidParameter, match="takes more than 500,000 pattern checks"):
        parse(text)
    assert time.perf_counter() - started < 10


def test_a_pattern_with_many_stars_matches_in_linear_time() -> None:
    # a backtracking regex takes minutes on this alias
    text = f"Host {'a' * 40} ab\nHost *a*a*a*a*a*a*a*a*a*a*a*a*b\n  User starred\n"
    started = time.perf_counter()
    entries, _ = parse(text)
    assert time.perf_counter() - started < 5
    assert entries["a" * 40].user is None
    assert entries["ab"].user is None
    entries, _ = parse("Host aaab abab xaby ab\nHost *a*b a?a*\n  User m\n")
    assert {alias: entry.user for alias, entry in entries.items()} == {
        "aaab": "m",
        "abab": "m",
        "xaby": None,
        "ab": "m",
    }


def test_a_host_pattern_longer_than_255_characters_is_ignored_with_a_warning() -> None:
    entries, warnings = parse(f"Host {'x' * 256} a\n  User long\nHost a\n")
    assert entries == {"a": SSHHostEntry("a", "a", 22, None, None, None)}
    assert warnings == [
        "<ssh config>:1: Host pattern longer than 255 characters; the options under it are ignored"
    ]


def test_warnings_are_capped_at_a_hundred_with_a_count_of_the_rest() -> None:
    _, warnings = parse("Host a\n" + "  Port\n" * 150)
    assert len(warnings) == 101
    assert warnings[-1] == "... and 50 more warnings"


def test_an_unterminated_quote_ignores_only_that_line() -> None:
    entries, warnings = parse('Host a\n  IdentityFile "/keys/broken\n  User ok\n')
    assert entries["a"] == SSHHostEntry("a", "a", 22, "ok", None, None)
    assert warnings == ["<ssh config>:2: unterminated quote; line ignored"]


def test_empty_host_lines_and_valueless_options_are_reported() -> None:
    entries, warnings = parse("Host\n  User nobody\nHost a\n  Port\n")
    assert entries == {"a": SSHHostEntry("a", "a", 22, None, None, None)}
    assert warnings == [
        "<ssh config>:1: Host without patterns; the options under it are ignored",
        "<ssh config>:4: port without a value; ignored",
    ]


def test_an_empty_config_has_no_hosts() -> None:
    assert parse("")[0] == {}
    assert parse("# only a comment\n\n   \n")[0] == {}


def test_load_ssh_config_reads_a_file(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("Host a\n  HostName a.example\n  Port 2022\nHost b\n  Port 0\n")
    assert load_ssh_config(config) == [SSHHostEntry("a", "a.example", 2022, None, None, None)]
    entries, warnings = load_ssh_config_with_warnings(config)
    assert len(entries) == 1
    assert warnings == [f"{config}:5: bad Port '0' for host b; host skipped"]


def test_load_ssh_config_of_a_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(InvalidParameter, match=f"Cannot read SSH config {missing}: No such file"):
        load_ssh_config(missing)


# ---- through the tool and the CLI -------------------------------------------------------------------------


@pytest.fixture
async def sqlite_client(sqlite_settings: Settings) -> AsyncIterator[Client[Any]]:
    async with open_state(sqlite_settings) as state, Client(build_server(sqlite_settings, state=state)) as c:
        yield c


async def test_import_ssh_config_refuses_a_self_including_config_at_once(
    sqlite_client: Client[Any], tmp_path: Path
) -> None:
    config = tmp_path / "config"
    config.write_text(f"Include {config} {config}\nHost looped\n")
    with pytest.raises(ToolError, match=rf"{config}:1: Include '{config}' nests files deeper than 16 levels"):
        await sqlite_client.call_tool("import_ssh_config", {"path": str(config)})
    assert [d["name"] for d in structured(await sqlite_client.call_tool("list_devices", {}))["devices"]] == [
        "local"
    ]


async def test_import_ssh_config_parses_off_the_event_loop(
    sqlite_client: Client[Any], tmp_path: Path
) -> None:
    # nearly as much matching work as the limits allow (2,000 aliases x 120 wildcard blocks)
    config = tmp_path / "config"
    config.write_text("".join(f"Host h{i}\n" for i in range(2000)) + "Host *\n  User x\n" * 120)
    started = time.perf_counter()
    parse_ssh_config(config.read_text(), home=FAKE_HOME)
    parse_seconds = time.perf_counter() - started
    small = tmp_path / "small"
    small.write_text("Host one\n")
    await sqlite_client.call_tool("import_ssh_config", {"path": str(small), "hosts": ["none"]})  # warm up
    gaps: list[float] = []

    async def heartbeat() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    # a full garbage collection of the test process's heap pauses every thread alike: keep it out
    gc.collect()
    gc.freeze()
    beating = asyncio.create_task(heartbeat())
    try:
        result = await sqlite_client.call_tool("import_ssh_config", {"path": str(config), "hosts": ["none"]})
    finally:
        beating.cancel()
        gc.unfreeze()
    assert structured(result)["added"] == 0
    # the loop kept turning while the config was parsed: on the loop, one gap would last the whole parse
    assert max(gaps) < parse_seconds / 2, (max(gaps), parse_seconds)


def test_the_cli_import_names_the_limit_a_config_passes(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("".join(f"Host h{i}\n" for i in range(2001)))
    result = run_cli(tmp_path, "devices", "import-ssh-config", str(config))
    assert result.returncode != 0
    assert "it names more than 2,000 Host aliases (the limit)" in result.stderr
