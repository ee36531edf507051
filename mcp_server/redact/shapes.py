"""Credentials recognised by their shape, whatever they are called: private key blocks (PEM, SSH2, PuTTY), URL
passwords, Authorization headers, bearer and basic credentials, JWTs and tokens with a well-known prefix.

Each pattern opens with a literal (a word-boundary check comes after it), so the engine skips to the next
candidate at C speed; each rule runs only when its literal occurs in the text at all.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Iterator

from mcp_server.redact.names import REDACTED, lowered, masked_value

# PEM (-----BEGIN RSA PRIVATE KEY-----) and SSH2 (---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----) armour. A whole
# block is masked from its armour to its END line (whatever that says), when only key text lies between (base64,
# header lines, line breaks as they are written: JSON's \n, ps's spaces) within 64 KiB: a 16384-bit RSA key
# takes 12. A block cut short loses its key lines, and nothing after them: text that follows keeps its context.
_ARMOUR_BEGIN = re.compile(r"-----BEGIN ([A-Z0-9 ]{1,48}+)-----|---- BEGIN ([A-Z0-9 ]{1,48}+)----")
_ARMOUR_END = re.compile(r"-{4,5}+ ?END [A-Z0-9 ]{1,48}+-{4,5}+")
_KEY_TEXT = re.compile(r"[A-Za-z0-9+/=\s\\:,.\"-]{0,65536}+")
_LINE_BREAK = r"(?:\r?\n|\\r\\n|\\n)"
_LINE_END = r"(?=[\r\n\\\"']|$)"
# a whole line of a key: base64, a header (Proc-Type: 4,ENCRYPTED), or empty...
_KEY_LINE = re.compile(
    rf"{_LINE_BREAK}(?:[A-Za-z0-9+/=]{{1,128}}+|[A-Za-z][\w-]{{0,40}}+:[^\r\n\\]{{0,256}}+)?+{_LINE_END}"
)
# ...or, its lines joined by spaces (ps), a word no ordinary one looks like: long, or ending in =
_BASE64_WORD = r"(?:[A-Za-z0-9+/]{16,128}+={0,2}+|[A-Za-z0-9+/]{1,128}+={1,2}+)"
_KEY_WORD = re.compile(rf"[ \t]++{_BASE64_WORD}(?=[ \t\"']|$)")
# the start of a key line cut short, with something else after it on its line
_KEY_TAIL = re.compile(rf"{_LINE_BREAK}[A-Za-z0-9+/]{{16,128}}+={{0,2}}+")
# PuTTY .ppk: the N lines after Private-Lines: N (however the text breaks its lines), and the MAC.
_PUTTY = re.compile(r"Private-Lines:[ \t]{0,8}+(\d{1,5}+)")
_PUTTY_LINE = re.compile(rf"(?:{_LINE_BREAK}|[ \t]){_BASE64_WORD}(?=[\s\\\"']|$)")
_PUTTY_MAC = re.compile(rf"(?:{_LINE_BREAK}|[ \t])Private-MAC:[ \t]*+\w{{0,128}}+")
# ://user:password@ — the password may hold "/" and "@"; see _url_passwords for where it ends.
_URL_USER = re.compile(r"://[^/\s:\"'<>]{0,256}+:")
_URL_REST = re.compile(r"[^\s\"'<>`]{0,2048}+")
_PORT_PATH = re.compile(r"\d{1,5}+/")
# These three run on the lower-cased text. Authorization: <scheme> <credentials> as a header, a JSON field
# or an assignment (X-Authorization too); a scheme whose credentials are a list (Digest, AWS4-HMAC-SHA256)
# has the whole list masked, and a bare value only when it has a digit or is long ("Authorization: denied").
_AUTH_HEADER = re.compile(
    r"authorization(?:\\{0,3}+[\"'])?+[ \t]{0,4}+[:=][ \t]{0,4}+(?:\\{0,3}+[\"'])?+"
    r"(?:(?P<list>digest|aws4-hmac-sha256|hmac|oauth|signature)[ \t]{1,8}+"
    r"|(?P<scheme>basic|bearer|token|apikey|api-key|key|sso-key|negotiate|ntlm)[ \t]{1,8}+)?+"
)
_AUTH_VALUE = re.compile(r"[^\s\"',;\\]{1,8192}+")
_AUTH_LIST = re.compile(
    r"(?:[\w-]{1,64}+=(?:\"[^\"\r\n]{0,1024}+\"|\\{1,3}+\"(?:[^\"\\\r\n]|\\[^\"\r\n]){0,1024}+\\{1,3}+\""
    r"|[^\s,\"'\\]{0,1024}+)(?:[ \t]*+,[ \t]*+)?+){1,16}+"
)
_DIGIT = re.compile(r"\d")
_BEARER = re.compile(r"bearer(?<!\wbearer)[ \t]{1,8}+([^\s\"',;]{1,8192}+)")
# "Basic <base64 of user:password>" anywhere (a curl -v dump, a log line): masked when it decodes to one.
_BASIC = re.compile(r"basic(?<!\wbasic)[ \t]{1,8}+([a-z0-9+/]{8,4096}+={0,2}+)(?![\w+/=])")
_JWT = re.compile(r"eyJ(?<![\w-]eyJ)[\w-]{8,}+\.eyJ[\w-]*+\.[\w-]*+")
# Tokens whose prefix says what they are: GitHub, GitLab, Slack, AWS key ids, Stripe, Google, npm, PyPI,
# Hugging Face, OpenAI and Anthropic; masked wherever they are, e.g. as a URL's user (https://ghp_…@github.com).
_KNOWN_TOKEN = re.compile(
    r"ghp_[A-Za-z0-9]{30,255}+|gho_[A-Za-z0-9]{30,255}+|ghu_[A-Za-z0-9]{30,255}+|ghs_[A-Za-z0-9]{30,255}+"
    r"|ghr_[A-Za-z0-9]{30,255}+|github_pat_\w{30,255}+|glpat-[\w-]{20,255}+|xoxb-[\w-]{10,255}+"
    r"|xoxp-[\w-]{10,255}+|xoxa-[\w-]{10,255}+|xoxs-[\w-]{10,255}+|xoxr-[\w-]{10,255}+|AKIA[0-9A-Z]{16}+"
    r"|ASIA[0-9A-Z]{16}+|sk_live_[0-9A-Za-z]{16,255}+|rk_live_[0-9A-Za-z]{16,255}+|AIza[\w-]{35}+"
    r"|npm_[A-Za-z0-9]{36}+|pypi-AgE[\w-]{40,4096}+|hf_[A-Za-z0-9]{30,255}+|sk-ant-[\w-]{32,255}+"
    r"|sk-proj-[\w-]{32,255}+|sk-[A-Za-z0-9]{32,255}+"
)
KNOWN_PREFIXES = ("gh", "github_pat_", "glpat-", "xox", "AKIA", "ASIA", "k_live_", "AIza", "npm_", "pypi-", "hf_", "sk-")  # fmt: skip
_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def replace(text: str, edits: Iterable[tuple[int, int, str]]) -> str:
    """`text` with each (start, end, replacement) of `edits` (in order) applied; one that overlaps the
    edit before it is dropped."""
    out: list[str] = []
    pos = 0
    for start, end, replacement in edits:
        if start >= pos and text[start:end] != replacement:
            out += (text[pos:start], replacement)
            pos = end
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


def _private_keys(text: str) -> Iterator[tuple[int, int, str]]:
    """Private key blocks: the body between the armour lines, or the key lines of a block cut short.

    Linear however many BEGIN lines there are: the next END line is searched once for all of them, and key
    text is checked between a BEGIN and that END at most once (a character no key holds, once found, rules
    out every BEGIN before it)."""
    pos = 0
    end: re.Match[str] | None = None
    searched = -1  # `end` is the first END line at or after this position (None: there is none)
    junk = -1
    for begin in _ARMOUR_BEGIN.finditer(text):
        start = begin.end()
        if begin.start() < pos or "PRIVATE KEY" not in (begin.group(1) or begin.group(2)):
            continue
        if searched < 0 or (end is not None and end.start() < start):
            end, searched = _ARMOUR_END.search(text, start), start
        if end is not None and end.start() - start <= 65536 and not start <= junk < end.start():
            body = _KEY_TEXT.match(text, start, end.start())
            if body is not None and body.end() == end.start():
                yield start, end.start(), REDACTED
                pos = end.end()
                continue
            junk = body.end() if body is not None else start
        pos = _cut_key(text, start)
        if pos > start:
            yield start, pos, REDACTED


def _cut_key(text: str, start: int) -> int:
    """Where the key lines after a BEGIN line with no END line end."""
    for pattern in (_KEY_LINE, _KEY_WORD):
        at = start
        for _ in range(4096):
            line = pattern.match(text, at)
            if line is None or line.end() == at:
                break
            at = line.end()
        if at > start:
            tail = _KEY_TAIL.match(text, at) if pattern is _KEY_LINE else None
            return tail.end() if tail is not None else at
    return start


def _putty(text: str) -> Iterator[tuple[int, int, str]]:
    """PuTTY keys: the N private lines Private-Lines: N announces, and the MAC after them."""
    pos = 0
    for lines in _PUTTY.finditer(text):
        if lines.start() < pos:
            continue
        at = lines.end()
        for _ in range(int(lines.group(1))):
            line = _PUTTY_LINE.match(text, at)
            if line is None:
                break
            at = line.end()
        mac = _PUTTY_MAC.match(text, at)
        pos = mac.end() if mac is not None else at
        if pos > lines.end():
            yield lines.end(), pos, REDACTED


def _url_passwords(text: str) -> Iterator[tuple[int, int, str]]:
    """URL passwords. One ends at the last "@" before the host: not one that opens a path segment
    ("/@scope"), nor one in the query or fragment; "host:8080/path@x" has a port, not a password."""
    search = 0
    while (user := _URL_USER.search(text, search)) is not None:
        start = user.end()
        rest = _URL_REST.match(text, start)
        end = rest.end() if rest is not None else start
        run = text[start:end]
        first = run.find("@")
        stop = min((i for i in (run.find("?", first), run.find("#", first)) if i >= 0), default=len(run))
        at = run.rfind("@", 0, stop)
        while at > 0 and run[at - 1] == "/":
            at = run.rfind("@", 0, at)
        if first < 0 or at <= 0 or _PORT_PATH.match(run):
            search = max(end, user.start() + 3)  # a later "://" inside this run sees no more of it
            continue
        yield start, start + at, REDACTED
        search = start + at


def _auth_headers(text: str, low: str) -> Iterator[tuple[int, int, str]]:
    for header in _AUTH_HEADER.finditer(low):
        listed, scheme = header.group("list"), header.group("scheme")
        masked = masked_value(text, header.end(), _AUTH_LIST if listed else _AUTH_VALUE)
        if masked is None or text.startswith(REDACTED, header.end()):
            continue
        if listed or scheme or masked[1] - header.end() >= 16 or _DIGIT.search(text, header.end(), masked[1]):
            yield header.end(), masked[1], masked[0]


def _basic(text: str, low: str) -> Iterator[tuple[int, int, str]]:
    for match in _BASIC.finditer(low):
        try:
            decoded = base64.b64decode(text[match.start(1) : match.end(1)], validate=True)
        except (binascii.Error, ValueError):
            continue
        if b":" in decoded:
            yield match.start(1), match.end(1), REDACTED


def _known_tokens(text: str) -> Iterator[tuple[int, int, str]]:
    for match in _KNOWN_TOKEN.finditer(text):
        start, end = match.span()
        if (start == 0 or text[start - 1] not in _WORD_CHARS) and (
            end == len(text) or text[end] not in _WORD_CHARS
        ):
            yield start, end, REDACTED


def redact_key_blocks(text: str) -> str:
    """`text` with its private key blocks (PEM, SSH2, PuTTY) masked: the rules that span lines, for a text
    about to be split into lines (log output) however long it is."""
    if "PRIVATE KEY" in text:
        text = replace(text, _private_keys(text))
    if "Private-Lines:" in text:
        text = replace(text, _putty(text))
    return text


def redact_shapes(text: str) -> str:
    """`text` with every credential recognised by its shape replaced by ***."""
    text = redact_key_blocks(text)
    if "://" in text:
        text = replace(text, _url_passwords(text))
    low = lowered(text)
    if "authorization" in low:
        text = replace(text, _auth_headers(text, low))
        low = lowered(text)
    if "bearer" in low:
        text = replace(text, ((m.start(1), m.end(1), REDACTED) for m in _BEARER.finditer(low)))
        low = lowered(text)
    if "basic" in low:
        text = replace(text, _basic(text, low))
    if "eyJ" in text:
        text = _JWT.sub(REDACTED, text)
    if any(prefix in text for prefix in KNOWN_PREFIXES):
        text = replace(text, _known_tokens(text))
    return text
