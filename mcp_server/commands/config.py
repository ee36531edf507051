"""Configuration commands: read one file (content and hash), hash many at once (polling), stream inotify
events (watching), and read every nginx proxy conf. Scripts are constant; the watch policy's settings and the
paths arrive as "$1"..., and the file names in their output are NUL-separated (a name may hold a newline)."""

from __future__ import annotations

from typing import Any

from mcp_server.commands.base import Arg, ArgList, CommandDefinition
from mcp_server.parsers.config_files import (
    ConfigFile,
    ConfigFileParams,
    ConfigHashes,
    ConfigHashesParams,
    ConfigWatchParams,
    InotifyEvents,
    config_file_unparsed,
    parse_config_file,
    parse_config_hashes,
    parse_inotify_events,
)
from mcp_server.parsers.config_paths import DEFAULT_ALLOW, DENY
from mcp_server.parsers.config_proxy import (
    PROXY_FILE_BYTES,
    ProxyConfigs,
    ProxyConfigsParams,
    parse_proxy_configs,
)

CATEGORY = "config"


def _case(subject: str, patterns: tuple[str, ...], action: str) -> str:
    """A `case` over constant patterns (unquoted, so they glob), or nothing when there are none."""
    return f"case {subject} in {'|'.join(patterns)}) {action};; esac" if patterns else ":"


def _names(patterns: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(p for p in patterns if "/" not in p)


def _paths(patterns: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(p for p in patterns if "/" in p)


# The watch policy on the device (parsers/config_paths.py has the same patterns and rule): $1 and $2 are the
# admin's extra allow globs and the server's own files, one per line. `why P` sets w to why P (a directory as
# P/) may not be read, or to nothing. `res P` sets r to P with symlinks resolved and rd to its resolved
# directory (a fork only for a link). `inside R D`: R lies in directory D (a site enabled in nginx's
# sites-enabled may lead to its sibling sites-available).
POLICY_SCRIPT = "\n".join(
    (
        "nl='",
        "'",
        "den='a credential store, key material, a shell history or a database: never read'",
        "own='the data of the server itself: never watched'",
        "out='outside the places configuration is watched from (INFRA_CONFIG_WATCH_ALLOW)'",
        "esc='a link out of the watched directory'",
        "xa=$1; xo=$2; shift 2",
        'm() { ml=$2; while [ -n "$ml" ]; do mp=${ml%%"$nl"*}; ml=${ml#"$mp"}; ml=${ml#"$nl"}; [ -n "$mp" ] || continue',
        "  case $mp in */*) case $1 in $mp) return 0;; esac;; *) case ${1##*/} in $mp) return 0;; esac;; esac",
        "done; return 1; }",
        "why() { w=",
        "  " + _case("${1##*/}", _names(DENY), "w=$den; return"),
        "  " + _case("$1", _paths(DENY), "w=$den; return"),
        '  if m "$1" "$xo"; then w=$own; return; fi',
        "  " + _case("${1##*/}", _names(DEFAULT_ALLOW), "return"),
        "  " + _case("$1", _paths(DEFAULT_ALLOW), "return"),
        '  m "$1" "$xa" || w=$out; }',
        'inside() { [ -n "$2" ] || return 1; case $1 in "${2%/}"/*) return 0;; esac',
        '  case $2 in */sites-enabled) case $1 in "${2%/*}"/sites-available/*) return 0;; esac;; esac; return 1; }',
        'res() { if cd -P -- "${1%/*}/" 2>/dev/null; then rd=$PWD; r=${PWD%/}/${1##*/}; else rd=; r=$1; fi',
        '  if [ -L "$1" ]; then r=$(readlink -f -- "$1" 2>/dev/null); [ -n "$r" ] || r=$1; fi; }',
    )
)

# NUL-separated fields: `@@meta`, then key/value pairs, then `@@content` and the raw bytes, or `@@end`. A
# regular file is opened once and everything (its real path, the policy check, size, hash, content) goes
# through that open file, so swapping in a symlink after the check reads nothing new. $3 is the watched
# directory the file belongs to, if any: the file must stay inside it.
FILE_SCRIPT = "\n".join(
    (
        POLICY_SCRIPT,
        'p=$1; max=$2; d=$3; res "$p"',
        "printf '@@meta\\0'",
        'refuse() { printf \'type\\0refused\\0resolved\\0%s\\0reason\\0%s\\0@@end\\0\' "$r" "$1"; exit 0; }',
        'if [ -f "$r" ]; then',
        '  [ -r "$r" ] || { echo "$p: Permission denied" >&2; exit 4; }',
        '  { command exec 3< "$r"; } 2>/dev/null || { echo "$p: cannot be opened" >&2; exit 4; }; f=/proc/$$/fd/3',
        '  if [ -e "$f" ]; then r=$(readlink "$f") || exit 4; else f=$r; fi',
        '  why "$r"; [ -z "$w" ] || refuse "$w"',
        '  [ -z "$d" ] || inside "$r" "$rd" || refuse "$esc"',
        '  s=$(wc -c < "$f") || exit 4; h=$(sha256sum < "$f") || exit 4',
        '  printf \'type\\0file\\0resolved\\0%s\\0size\\0%s\\0sha256\\0%.64s\\0@@content\\0\' "$r" $s "$h"',
        '  exec head -c "$max" < "$f"',
        'elif [ -d "$r" ]; then',
        '  why "$r/"; [ -z "$w" ] || refuse "$w"',
        '  [ -z "$d" ] || inside "$r" "$rd" || refuse "$esc"',
        "  printf 'type\\0directory\\0resolved\\0%s\\0' \"$r\"",
        'elif [ -e "$r" ]; then echo "$p is not a regular file" >&2; exit 5',
        "else printf 'type\\0missing\\0'; fi",
        "printf '@@end\\0'",
    )
)

# NUL-separated records of three fields: `f HASH PATH` per file (`-`: missing, or refused by the policy as
# config_file refuses it, so a file that turns into a link elsewhere reads as deleted; `!`: unreadable); a
# directory gives `d +|- DIR` (`-`: absent or refused) and then its files, each of which must stay inside it.
# Editor swap and backup files are skipped.
HASHES_SCRIPT = "\n".join(
    (
        POLICY_SCRIPT,
        "gone() { printf 'f\\0-\\0%s\\0' \"$1\"; }",
        'h() { if [ -n "$2" ]; then r=${2%/}/${1##*/}',
        '    if [ -L "$1" ]; then r=$(readlink -f -- "$1" 2>/dev/null); inside "$r" "$2" || { gone "$1"; return; }; fi',
        '  else res "$1"; fi',
        '  why "$r"; [ -z "$w" ] || { gone "$1"; return; }',
        '  if [ -f "$r" ] && [ -r "$r" ] && s=$(sha256sum < "$r" 2>/dev/null); then printf \'f\\0%.64s\\0%s\\0\' "$s" "$1"',
        '  elif [ -e "$1" ] || [ -L "$1" ]; then printf \'f\\0!\\0%s\\0\' "$1"; else gone "$1"; fi; }',
        'n=$1; shift; while [ "$n" -gt 0 ]; do h "$1"; shift; n=$((n - 1)); done',
        "while [ $# -gt 1 ]; do pat=$1; d=$2; shift 2; w=-",
        '  if cd -P -- "$d" 2>/dev/null; then dd=$PWD; why "$dd/"; fi',
        '  if [ -z "$w" ]; then printf \'d\\0+\\0%s\\0\' "$d"',
        '    for f in "$d"/*; do case ${f##*/} in *~|*.swp|*.swx|*.tmp) continue;; esac; [ -f "$f" ] || continue',
        '      [ "$pat" = conf ] && case $f in *.conf) ;; *) continue;; esac; h "$f" "$dd"; done',
        "  else printf 'd\\0-\\0%s\\0' \"$d\"; fi",
        "done",
        "printf '@@end\\0'",
    )
)

# inotifywait on each directory, or its nearest existing ancestor (so that creating the directory is seen).
# Each event ends with a NUL (a file name may hold a newline); inotifywait's own status lines come first.
# stdin stays open: when the channel closes, `read` returns and inotifywait is killed, so no watcher is
# left behind on the device even when sshd cannot deliver a signal.
WATCH_SCRIPT = "\n".join(
    (
        'command -v inotifywait >/dev/null 2>&1 || { echo "inotifywait: not found"; exit 127; }',
        'n=$#; while [ "$n" -gt 0 ]; do d=$1; shift; n=$((n - 1))',
        '  while [ ! -d "$d" ]; do d=${d%/*}; [ -n "$d" ] || d=/; done; set -- "$@" "$d"; done',
        "exec 3<&0",
        # inotifywait's own lines (stderr) reach the stream NUL-ended too, as they come, through a fifo
        't=$(mktemp -d) && mkfifo "$t/err" || { echo "cannot make a fifo in ${TMPDIR:-/tmp}"; exit 1; }',
        '{ rm -rf "$t"; while IFS= read -r l; do printf \'%s\\0\' "$l"; done',
        '  [ -z "$l" ] || printf \'%s\\0\' "$l"; } <"$t/err" &',
        "r=$!",
        "inotifywait -m --no-newline --format '%e %w%f%0' -e create -e modify -e close_write -e moved_to"
        ' -e moved_from -e delete -e delete_self -e move_self -e attrib -- "$@" 2>"$t/err" </dev/null &',
        "w=$!",
        '{ while read -r _; do :; done; kill "$w"; } <&3 2>/dev/null &',
        'k=$!; wait "$w"; s=$?; wait "$r"; kill "$k" 2>/dev/null; exit "$s"',
    )
)

PROXY_DIRS = ("/etc/nginx/conf.d", "/etc/nginx/sites-enabled", "/etc/nginx/http.d")
# NUL-separated records: `@@dir DIR`, `@@file PATH CONTENT` (NUL bytes dropped from the content), `@@skip
# PATH REASON` for a directory or file the policy refuses, `@@end` last. Each conf is opened once; its real
# path is checked through that open file, and it must stay inside its directory.
# SWAG and other linuxserver nginx images keep their confs under the container's /config mount.
PROXY_SCRIPT = "\n".join(
    (
        POLICY_SCRIPT,
        'skip() { printf \'@@skip\\0%s\\0%s\\0\' "$1" "$2"; }',
        "seen=$nl; files=0",
        'scan() { case $seen in *"$nl$1$nl"*) return;; esac; seen=$seen$1$nl; cd -P -- "$1" 2>/dev/null || return',
        '  dd=$PWD; why "$dd/"; [ -z "$w" ] || { skip "$1" "$w"; return; }',
        "  printf '@@dir\\0%s\\0' \"$1\"",
        '  for f in "$1"/*.conf; do [ -f "$f" ] && [ -r "$f" ] || continue',
        '    files=$((files + 1)); [ "$files" -le 500 ] || return',
        '    { command exec 3< "$f"; } 2>/dev/null || continue',
        '    r=$(readlink "/proc/$$/fd/3" 2>/dev/null) || r=$(readlink -f -- "$f" 2>/dev/null)',
        '    if inside "$r" "$dd"; then why "$r"; else w=$esc; fi',
        '    if [ -n "$w" ]; then skip "$f" "$w"',
        "    else printf '@@file\\0%s\\0' \"$f\"; head -c "
        + str(PROXY_FILE_BYTES)
        + " <&3 | tr -d '\\000'; printf '\\0'; fi",
        "    exec 3<&-; done; }",
        "for d in " + " ".join(PROXY_DIRS) + ' "$@"; do scan "$d"; done',
        "if command -v docker >/dev/null 2>&1; then",
        "  for c in $(docker ps --format '{{.ID}}:{{.Image}}' 2>/dev/null); do case ${c#*:} in",
        "    *swag*|*letsencrypt*|*nginx*)",
        "      src=$(docker inspect --format '{{range .Mounts}}{{if eq .Destination \"/config\"}}{{.Source}}{{end}}{{end}}'"
        ' "${c%%:*}" 2>/dev/null)',
        '      [ -n "$src" ] && for d in "$src/nginx/proxy-confs" "$src/nginx/site-confs"; do scan "$d"; done;;',
        "  esac; done",
        "fi",
        "printf '@@end\\0'",
    )
)

# what POLICY_SCRIPT reads from $1 and $2
POLICY_ARGS = (Arg("allow_lines"), Arg("own_lines"))

CONFIG_FILE: CommandDefinition[ConfigFile] = CommandDefinition(
    name="config_file",
    category=CATEGORY,
    summary="One configuration file: content (secrets redacted), sha256, size, and its parsed structure.",
    argv=(
        "sh",
        "-c",
        FILE_SCRIPT,
        "sh",
        *POLICY_ARGS,
        Arg("path"),
        Arg("max_bytes"),
        Arg("watched_dir_word"),
    ),
    model=ConfigFile,
    parse=parse_config_file,
    fallback=config_file_unparsed,
    params=ConfigFileParams,
    ttl=2.0,
    timeout=30.0,
    access="internal",
)

CONFIG_HASHES: CommandDefinition[ConfigHashes] = CommandDefinition(
    name="config_hashes",
    category=CATEGORY,
    summary="sha256 of many files and of the files in watched directories, in one command (polling).",
    argv=("sh", "-c", HASHES_SCRIPT, "sh", *POLICY_ARGS, Arg("file_count"), ArgList("words")),
    model=ConfigHashes,
    parse=parse_config_hashes,
    params=ConfigHashesParams,
    ttl=0.0,
    timeout=60.0,
    access="internal",
)

CONFIG_WATCH: CommandDefinition[InotifyEvents] = CommandDefinition(
    name="config_watch",
    category=CATEGORY,
    summary="A long-lived inotifywait -m stream of changes in the watched directories (streamed, never cached).",
    argv=("sh", "-c", WATCH_SCRIPT, "sh", ArgList("dirs")),
    model=InotifyEvents,
    parse=parse_inotify_events,
    params=ConfigWatchParams,
    ttl=0.0,
    timeout=0.0,
    streaming=True,
    separator=b"\0",
    access="internal",
)

PROXY_CONFIGS: CommandDefinition[ProxyConfigs] = CommandDefinition(
    name="proxy_configs",
    category=CATEGORY,
    summary="Every nginx/SWAG proxy conf (conf.d, sites-enabled, SWAG proxy-confs): domains, upstreams, TLS, auth.",
    argv=("sh", "-c", PROXY_SCRIPT, "sh", *POLICY_ARGS, ArgList("dirs")),
    model=ProxyConfigs,
    parse=parse_proxy_configs,
    params=ProxyConfigsParams,
    ttl=30.0,
    timeout=60.0,
    access="internal",
)

COMMANDS: tuple[CommandDefinition[Any], ...] = (CONFIG_FILE, CONFIG_HASHES, CONFIG_WATCH, PROXY_CONFIGS)
