"""Configuration commands: read one file (content and hash), hash many at once (polling), stream inotify
events (watching), and read every nginx proxy conf. Scripts are constant; paths arrive as "$1"..."""

from __future__ import annotations

from typing import Any

from mcp_server.commands.base import Arg, ArgList, CommandDefinition
from mcp_server.parsers.config_files import (
    PROXY_FILE_BYTES,
    ConfigFile,
    ConfigFileParams,
    ConfigHashes,
    ConfigHashesParams,
    ConfigWatchParams,
    InotifyEvents,
    ProxyConfigs,
    ProxyConfigsParams,
    config_file_unparsed,
    parse_config_file,
    parse_config_hashes,
    parse_inotify_events,
    parse_proxy_configs,
)
from mcp_server.parsers.config_paths import SECRET_PATHS

CATEGORY = "config"
# the same patterns the path validator refuses, applied on the device after symlinks are resolved
_SECRETS_CASE = "|".join(SECRET_PATHS)

FILE_SCRIPT = "\n".join(
    (
        'p=$1; max=$2; r=$(readlink -f -- "$p" 2>/dev/null); [ -n "$r" ] || r=$p',
        f'case $r in {_SECRETS_CASE}) echo "$p resolves to $r, a credential store the server never reads" >&2;'
        " exit 3;; esac",
        "echo @@meta",
        'if [ -f "$r" ]; then',
        '  [ -r "$r" ] || { echo "$p: Permission denied" >&2; exit 4; }',
        '  s=$(wc -c < "$r") || exit 4; h=$(sha256sum < "$r") || exit 4',
        "  echo type file; printf 'resolved %s\\n' \"$r\"; echo size $s; printf 'sha256 %.64s\\n' \"$h\"",
        '  echo @@content; exec head -c "$max" -- "$r"',
        'elif [ -d "$r" ]; then echo type directory; printf \'resolved %s\\n\' "$r"',
        'elif [ -e "$r" ]; then echo "$p is not a regular file" >&2; exit 5',
        "else echo type missing; fi",
        "echo @@end",
    )
)

# `f HASH PATH` per file; a directory prints `d +|- DIR` and then its files. Editor swap and backup files
# are skipped. Unreadable files print `!` so that one of them does not hide the others.
HASHES_SCRIPT = "\n".join(
    (
        "h() { case $1 in " + _SECRETS_CASE + ") printf 'f ! %s\\n' \"$1\"; return;; esac",
        '  if [ -L "$1" ]; then case $(readlink -f -- "$1") in '
        + _SECRETS_CASE
        + ") printf 'f ! %s\\n' \"$1\"; return;; esac; fi",
        '  if [ -f "$1" ] && [ -r "$1" ] && s=$(sha256sum < "$1" 2>/dev/null); then printf \'f %.64s %s\\n\' "$s" "$1";',
        '  elif [ -e "$1" ] || [ -L "$1" ]; then printf \'f ! %s\\n\' "$1"; else printf \'f - %s\\n\' "$1"; fi; }',
        'n=$1; shift; while [ "$n" -gt 0 ]; do h "$1"; shift; n=$((n - 1)); done',
        "while [ $# -gt 1 ]; do pat=$1; d=$2; shift 2",
        '  if [ -d "$d" ]; then printf \'d + %s\\n\' "$d"',
        '    for f in "$d"/*; do case $f in *~|*.swp|*.swx|*.tmp) continue;; esac; [ -f "$f" ] || continue',
        '      [ "$pat" = conf ] && case $f in *.conf) ;; *) continue;; esac; h "$f"; done',
        "  else printf 'd - %s\\n' \"$d\"; fi",
        "done",
        "echo @@end",
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
# SWAG and other linuxserver nginx images keep their confs under the container's /config mount
PROXY_SCRIPT = "\n".join(
    (
        "show() { printf '@@file %s\\n' \"$1\"; head -c "
        + str(PROXY_FILE_BYTES)
        + ' -- "$1" | awk \'{print "|" $0}\'; }',
        "seen=' '; files=0",
        'scan() { case $seen in *" $1 "*) return;; esac; seen="$seen$1 "; [ -d "$1" ] || return',
        "  printf '@@dir %s\\n' \"$1\"",
        '  for f in "$1"/*.conf; do [ -f "$f" ] && [ -r "$f" ] || continue',
        '    files=$((files + 1)); [ "$files" -le 500 ] || return; show "$f"; done; }',
        "for d in " + " ".join(PROXY_DIRS) + ' "$@"; do scan "$d"; done',
        "if command -v docker >/dev/null 2>&1; then",
        "  for c in $(docker ps --format '{{.ID}}:{{.Image}}' 2>/dev/null); do case ${c#*:} in",
        "    *swag*|*letsencrypt*|*nginx*)",
        "      src=$(docker inspect --format '{{range .Mounts}}{{if eq .Destination \"/config\"}}{{.Source}}{{end}}{{end}}'"
        ' "${c%%:*}" 2>/dev/null)',
        '      [ -n "$src" ] && for d in "$src/nginx/proxy-confs" "$src/nginx/site-confs"; do scan "$d"; done;;',
        "  esac; done",
        "fi",
        "echo @@end",
    )
)

CONFIG_FILE: CommandDefinition[ConfigFile] = CommandDefinition(
    name="config_file",
    category=CATEGORY,
    summary="One configuration file: content (secrets redacted), sha256, size, and its parsed structure.",
    argv=("sh", "-c", FILE_SCRIPT, "sh", Arg("path"), Arg("max_bytes")),
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
    argv=("sh", "-c", HASHES_SCRIPT, "sh", Arg("file_count"), ArgList("words")),
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
    argv=("sh", "-c", PROXY_SCRIPT, "sh", ArgList("dirs")),
    model=ProxyConfigs,
    parse=parse_proxy_configs,
    params=ProxyConfigsParams,
    ttl=30.0,
    timeout=60.0,
    access="internal",
)

COMMANDS: tuple[CommandDefinition[Any], ...] = (CONFIG_FILE, CONFIG_HASHES, CONFIG_WATCH, PROXY_CONFIGS)
