"""nginx (and SWAG proxy-conf) configuration text -> NginxConfig: server blocks, locations, upstreams, auth.

A real tokenizer (quotes, escapes, comments, blocks), not line matching: SWAG confs put the upstream in
`set` variables (`proxy_pass $upstream_proto://$upstream_app:$upstream_port`), which are resolved per scope.
"""

from __future__ import annotations

import re
from collections import ChainMap
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

# includes that switch on an authentication provider (SWAG ships one conf per provider)
_AUTH_INCLUDES = ("authelia", "authentik", "ldap", "tinyauth", "oauth2-proxy", "oauth2_proxy", "organizr")
_PASS_DIRECTIVES = ("proxy_pass", "fastcgi_pass", "grpc_pass", "uwsgi_pass", "scgi_pass")
_VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")
# Real configs nest http > server > location > location > if; past this the text is hostile, and the walks
# below recurse once per level.
MAX_DEPTH = 32
# `set $b $a$a; set $c $b$b; ...` doubles a value per line; one that resolves longer stays unresolved.
MAX_RESOLVED_CHARS = 512


class NginxSyntaxError(ValueError):
    """Text nginx itself would refuse (unbalanced braces, an unterminated quote or directive)."""


@dataclass
class Directive:
    name: str
    args: list[str]
    line: int
    block: list[Directive] | None = None
    comments: list[str] = field(default_factory=list)


def _tokens(text: str) -> list[tuple[str, int, bool]]:
    """(token, line, quoted) for every word, quoted string, '{', '}' and ';'; comments dropped."""
    out: list[tuple[str, int, bool]] = []
    i, line, n = 0, 1, len(text)
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
            i += 1
        elif ch in " \t\r\f\v":
            i += 1
        elif ch == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif ch in "{};":
            out.append((ch, line, False))
            i += 1
        elif ch in "\"'":
            start_line = line
            j = i + 1
            buf: list[str] = []
            while j < n and text[j] != ch:
                if text[j] == "\\" and j + 1 < n:
                    buf.append(text[j + 1] if text[j + 1] in "\"'\\" else text[j : j + 2])
                    j += 2
                    continue
                if text[j] == "\n":
                    line += 1
                buf.append(text[j])
                j += 1
            if j >= n:
                raise NginxSyntaxError(f"unterminated quote opened on line {start_line}")
            out.append(("".join(buf), start_line, True))
            i = j + 1
        else:
            j = i
            while j < n and text[j] not in " \t\r\n\f\v;{}\"'":
                if text[j] == "\\" and j + 1 < n:
                    j += 2
                    continue
                j += 1
            # a '{' that is part of a word (${var} or a regex quantifier) stays in it
            while j < n and text[j] == "{" and j > i and text[j - 1] == "$":
                close = text.find("}", j)
                j = n if close < 0 else close + 1
                while j < n and text[j] not in " \t\r\n\f\v;{}\"'":
                    j += 1
            out.append((text[i:j], line, False))
            i = j
    return out


def parse_directives(text: str) -> list[Directive]:
    """The directive tree of a configuration text; NginxSyntaxError names the first problem."""
    tokens = _tokens(text)
    stack: list[list[Directive]] = [[]]
    name: str | None = None
    args: list[str] = []
    line = 0
    for token, at, quoted in tokens:
        if not quoted and token == ";":
            if name is None:
                continue  # a stray ';' is harmless to nginx
            stack[-1].append(Directive(name, args, line))
            name, args = None, []
        elif not quoted and token == "{":
            if name is None:
                raise NginxSyntaxError(f"block without a directive name on line {at}")
            if len(stack) > MAX_DEPTH:
                raise NginxSyntaxError(f"blocks nest deeper than {MAX_DEPTH} levels on line {at}")
            directive = Directive(name, args, line, block=[])
            stack[-1].append(directive)
            stack.append(directive.block)  # type: ignore[arg-type]
            name, args = None, []
        elif not quoted and token == "}":
            if name is not None:
                raise NginxSyntaxError(f"directive {name!r} on line {line} has no ';'")
            if len(stack) == 1:
                raise NginxSyntaxError(f"unexpected '}}' on line {at}")
            stack.pop()
        elif name is None:
            name, args, line = token, [], at
        else:
            args.append(token)
    if name is not None:
        raise NginxSyntaxError(f"directive {name!r} on line {line} has no ';'")
    if len(stack) != 1:
        raise NginxSyntaxError("a '{' is never closed")
    return stack[0]


class NginxLocation(BaseModel):
    path: str = Field(description="The location's match, with its modifier: '/', '^~ /app/', '~ ^/api'.")
    proxy_pass: str | None = Field(description="Where requests go, with variables resolved where known.")
    upstream: str | None = Field(description="host:port (or unix socket) of proxy_pass, when it resolves.")
    auth: list[str] = Field(description="Authentication in force here: basic, auth_request, authelia, ...")
    includes: list[str] = Field(description="Files included in this location.")
    redirect: str | None = Field(description="A `return` directive's code and target, if any.")


class NginxServer(BaseModel):
    server_names: list[str] = Field(description="server_name values ('_' is the catch-all).")
    listen: list[str] = Field(description="Each listen directive's arguments, e.g. '443 ssl http2'.")
    ssl: bool = Field(description="TLS is on: a listen with ssl, `ssl on` or a certificate.")
    default_server: bool
    locations: list[NginxLocation]
    upstreams: list[str] = Field(description="Every distinct upstream the server proxies to.")
    auth: list[str] = Field(description="Authentication in force anywhere in the server.")
    includes: list[str]


class NginxConfig(BaseModel):
    servers: list[NginxServer]
    locations: list[NginxLocation] = Field(
        description="Top-level location blocks (SWAG subfolder confs are included inside a server)."
    )
    upstream_blocks: dict[str, list[str]] = Field(description="upstream NAME { server ...; } blocks.")
    includes: list[str] = Field(description="Top-level includes.")


Scope = Mapping[str, str | None]  # variable -> value; None: too long to resolve


def _resolve(value: str, scope: Scope) -> str | None:
    """value with the variables `set` in scope substituted; None when it would pass MAX_RESOLVED_CHARS or uses
    a variable that did."""
    parts: list[str] = []
    size, end = 0, 0
    for match in _VARIABLE.finditer(value):
        text = scope.get(match.group(1), match.group(0))
        if text is None:
            return None
        parts += (value[end : match.start()], text)
        size += match.start() - end + len(text)
        end = match.end()
        if size > MAX_RESOLVED_CHARS:
            return None
    return "".join(parts) + value[end:] if parts else value


def _upstream(target: str) -> str | None:
    if "$" in target:
        return None
    rest = target.split("://", 1)[1] if "://" in target else target
    if rest.startswith("unix:"):
        return rest.split(":", 2)[0] + ":" + rest.split(":", 2)[1]
    host = rest.split("/", 1)[0]
    return host or None


def _auth(block: list[Directive], scope: Scope) -> list[str]:
    found: list[str] = []
    for d in block:
        if d.name == "auth_basic" and d.args and _resolve(d.args[0], scope) != "off":
            found.append("basic")
        elif d.name == "auth_request" and d.args and d.args[0] != "off":
            found.append("auth_request")
        elif d.name == "include" and d.args:
            lowered = d.args[0].lower()
            found.extend(p.replace("_", "-") for p in _AUTH_INCLUDES if p in lowered.rsplit("/", 1)[-1])
        elif d.name in ("allow", "deny") and d.args:
            found.append("ip_rules")
    return list(dict.fromkeys(found))


def _sets(block: list[Directive], scope: Scope) -> Scope:
    """The scope inside a block: its own `set`s layered over the outer ones (never a copy of them, which
    made a server with many `set`s and many locations quadratic)."""
    own: dict[str, str | None] = {}
    inner = ChainMap(own, *(scope.maps if isinstance(scope, ChainMap) else [scope]))
    for d in block:
        if d.name == "set" and len(d.args) >= 2:
            own[d.args[0].lstrip("$")] = _resolve(d.args[1], inner)
    return inner if own else scope


def _location(
    d: Directive, scope: Scope, blocks: dict[str, list[str]], inherited: list[str]
) -> NginxLocation:
    body = d.block or []
    inner = _sets(body, scope)
    target = next((c.args[0] for c in body if c.name in _PASS_DIRECTIVES and c.args), None)
    resolved = (_resolve(target, inner) or target) if target else None
    ret = next((" ".join(c.args) for c in body if c.name == "return" and c.args), None)
    own = _auth(body, inner)
    return NginxLocation(
        path=" ".join(d.args),
        proxy_pass=resolved,
        upstream=_upstream(resolved) if resolved else None,
        auth=list(dict.fromkeys(inherited + own)),
        includes=[c.args[0] for c in body if c.name == "include" and c.args],
        redirect=ret,
    )


def _locations(
    block: list[Directive], scope: Scope, blocks: dict[str, list[str]], inherited: list[str]
) -> list[NginxLocation]:
    found: list[NginxLocation] = []
    for d in block:
        if d.name == "location" and d.block is not None:
            found.append(_location(d, scope, blocks, inherited))
            # nested locations inherit the outer one's variables and auth
            outer = _sets(d.block, scope)
            found.extend(_locations(d.block, outer, blocks, inherited + _auth(d.block, outer)))
        elif d.name == "if" and d.block is not None:
            found.extend(_locations(d.block, scope, blocks, inherited))
    return found


def _server(d: Directive, blocks: dict[str, list[str]]) -> NginxServer:
    body = d.block or []
    scope = _sets(body, {})
    listen = [" ".join(c.args) for c in body if c.name == "listen"]
    names = [name for c in body if c.name == "server_name" for name in c.args]
    server_auth = _auth(body, scope)
    locations = _locations(body, scope, blocks, server_auth)
    ssl = (
        any("ssl" in c.args or "quic" in c.args for c in body if c.name == "listen")
        or any(c.name == "ssl" and c.args == ["on"] for c in body)
        or any(c.name == "ssl_certificate" for c in body)
    )
    upstreams = [loc.upstream or loc.proxy_pass for loc in locations if loc.proxy_pass]
    return NginxServer(
        server_names=names,
        listen=listen,
        ssl=ssl,
        default_server=any(
            "default_server" in c.args or "default" in c.args for c in body if c.name == "listen"
        ),
        locations=locations,
        upstreams=[u for u in dict.fromkeys(upstreams) if u],
        auth=list(dict.fromkeys(server_auth + [a for loc in locations for a in loc.auth])),
        includes=[c.args[0] for c in body if c.name == "include" and c.args],
    )


def _walk_servers(block: list[Directive], blocks: dict[str, list[str]]) -> list[NginxServer]:
    servers: list[NginxServer] = []
    for d in block:
        if d.name == "server" and d.block is not None:
            servers.append(_server(d, blocks))
        elif d.name in ("http", "stream") and d.block is not None:
            servers.extend(_walk_servers(d.block, blocks))
    return servers


def _upstream_blocks(block: list[Directive]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for d in block:
        if d.name == "upstream" and d.block is not None and d.args:
            found[d.args[0]] = [" ".join(c.args) for c in d.block if c.name == "server"]
        elif d.name in ("http", "stream") and d.block is not None:
            found.update(_upstream_blocks(d.block))
    return found


def parse_nginx(text: str) -> NginxConfig:
    """Parse nginx configuration text; raises NginxSyntaxError (a ValueError) for text nginx would refuse."""
    tree = parse_directives(text)
    blocks = _upstream_blocks(tree)
    return NginxConfig(
        servers=_walk_servers(tree, blocks),
        locations=_locations(tree, {}, blocks, []),
        upstream_blocks=blocks,
        includes=[d.args[0] for d in tree if d.name == "include" and d.args],
    )
