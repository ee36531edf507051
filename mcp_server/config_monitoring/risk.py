"""Risk of a configuration change, with the reason for it: compose, nginx and systemd rules over the parsed
before/after, and a plain rule for any other file. Pure: text in, assessment out."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any, Literal

from mcp_server.config_monitoring.diff import cosmetic
from mcp_server.parsers.config_compose import environment, load_compose
from mcp_server.parsers.config_nginx import NginxConfig, NginxServer, parse_nginx
from mcp_server.parsers.config_systemd import unit_sections

Risk = Literal["low", "medium", "high"]
RISKS: tuple[Risk, ...] = ("low", "medium", "high")
_ORDER = {r: i for i, r in enumerate(RISKS)}

# compose keys whose change alters what runs, what it can reach or what it exposes
_COMPOSE_HIGH = {
    "image": "image",
    "ports": "published ports",
    "volumes": "mounts",
    "privileged": "privileged mode",
    "network_mode": "network mode",
    "cap_add": "added capabilities",
    "cap_drop": "dropped capabilities",
    "devices": "devices",
    "user": "user",
    "pid": "PID namespace",
    "ipc": "IPC namespace",
    "security_opt": "security options",
    "entrypoint": "entrypoint",
    "command": "command",
    "build": "build",
}
_COMPOSE_MEDIUM = {
    "restart": "restart policy",
    "depends_on": "dependencies",
    "networks": "networks",
    "env_file": "env files",
    "labels": "labels",
    "healthcheck": "health check",
    "deploy": "deploy settings",
    "container_name": "container name",
}
_SYSTEMD_HIGH = (
    "ExecStart",
    "ExecStartPre",
    "ExecStartPost",
    "ExecStop",
    "ExecReload",
    "User",
    "Group",
    "DynamicUser",
    "CapabilityBoundingSet",
    "AmbientCapabilities",
    "NoNewPrivileges",
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "ReadWritePaths",
    "RootDirectory",
)


@dataclass
class Assessment:
    risk: Risk = "low"
    reasons: list[str] = field(default_factory=list)
    affected_services: list[str] = field(default_factory=list)
    _affected: set[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._affected = set(self.affected_services)

    def raise_to(self, risk: Risk, reason: str) -> None:
        if _ORDER[risk] > _ORDER[self.risk]:
            self.risk = risk
        self.reasons.append(f"{risk}: {reason}")

    def affects(self, *names: str) -> None:
        for name in names:
            # a set beside the list: a file with thousands of services or server names stays linear
            if name and name not in self._affected:
                self._affected.add(name)
                self.affected_services.append(name)


def at_least(risk: str) -> list[str]:
    """The risk levels at or above `risk`."""
    return [r for r in RISKS if _ORDER[r] >= _ORDER[risk]]  # type: ignore[index]


def _compose(old: str, new: str, result: Assessment) -> None:
    try:
        before = (load_compose(old).get("services") or {}) if old else {}
    except ValueError:
        before = {}
    try:
        after = load_compose(new).get("services") or {}
    except ValueError as exc:
        result.raise_to(
            "high", f"the new file is not a valid compose file ({exc}); docker compose will refuse it"
        )
        return
    for name in sorted(set(before) - set(after)):
        result.raise_to("high", f"service {name} removed")
        result.affects(name)
    for name in sorted(set(after) - set(before)):
        result.raise_to("medium", f"service {name} added")
        result.affects(name)
    for name in sorted(set(before) & set(after)):
        was = before[name] if isinstance(before[name], dict) else {}
        now = after[name] if isinstance(after[name], dict) else {}
        touched = False
        for key, label in _COMPOSE_HIGH.items():
            if was.get(key) != now.get(key):
                result.raise_to(
                    "high", f"service {name}: {label} changed{_shown(key, was.get(key), now.get(key))}"
                )
                touched = True
        for key, label in _COMPOSE_MEDIUM.items():
            if was.get(key) != now.get(key):
                result.raise_to("medium", f"service {name}: {label} changed")
                touched = True
        env_was, env_now = environment(was), environment(now)
        if env_was != env_now:
            changed = sorted(k for k in env_was.keys() | env_now.keys() if env_was.get(k) != env_now.get(k))
            result.raise_to("medium", f"service {name}: environment {', '.join(changed)} changed")
            touched = True
        known = set(_COMPOSE_HIGH) | set(_COMPOSE_MEDIUM) | {"environment"}
        others = sorted(k for k in was.keys() | now.keys() if k not in known and was.get(k) != now.get(k))
        if others:
            result.raise_to("medium", f"service {name}: {', '.join(others)} changed")
            touched = True
        if touched:
            result.affects(name)


def _shown(key: str, was: Any, now: Any) -> str:
    if key == "image" and isinstance(was, str) and isinstance(now, str):
        return f" ({was} -> {now})"
    return ""


def _servers(config: NginxConfig | None) -> dict[str, NginxServer]:
    if config is None:
        return {}
    return {" ".join(s.server_names) or f"(server {i + 1})": s for i, s in enumerate(config.servers)}


def _nginx(old: str, new: str, result: Assessment) -> None:
    try:
        before: NginxConfig | None = parse_nginx(old) if old else None
    except ValueError:
        before = None
    try:
        after = parse_nginx(new)
    except ValueError as exc:
        result.raise_to(
            "high", f"the new file does not parse ({exc}); nginx -t would fail and a reload would be refused"
        )
        return
    was, now = _servers(before), _servers(after)
    for name in sorted(set(was) - set(now)):
        result.raise_to("high", f"server {name} removed or renamed (server_name changed)")
        result.affects(*name.split())
    for name in sorted(set(now) - set(was)):
        result.raise_to("high" if was else "medium", f"server {name} added" + (" or renamed" if was else ""))
        result.affects(*name.split())
    for name in sorted(set(was) & set(now)):
        a, b = was[name], now[name]
        checks: list[tuple[bool, Risk, str]] = [
            (
                a.upstreams != b.upstreams,
                "high",
                f"upstream {', '.join(a.upstreams) or 'none'} -> {', '.join(b.upstreams) or 'none'}",
            ),
            (a.ssl != b.ssl, "high", f"TLS {'on' if a.ssl else 'off'} -> {'on' if b.ssl else 'off'}"),
            (a.listen != b.listen, "high", f"listen {', '.join(a.listen)} -> {', '.join(b.listen)}"),
            (
                a.auth != b.auth,
                "high",
                f"authentication {', '.join(a.auth) or 'none'} -> {', '.join(b.auth) or 'none'}",
            ),
        ]
        for changed, risk, reason in checks:
            if changed:
                result.raise_to(risk, f"server {name}: {reason}")
                result.affects(*name.split())
        _locations(name, [loc.path for loc in a.locations], [loc.path for loc in b.locations], result)
    old_locs = [loc for loc in before.locations] if before else []
    new_locs = after.locations
    if [(x.path, x.upstream, x.auth) for x in old_locs] != [(x.path, x.upstream, x.auth) for x in new_locs]:
        _locations("(subfolder)", [x.path for x in old_locs], [x.path for x in new_locs], result)
        by_path = {x.path: x for x in reversed(new_locs)}  # the first location with each path wins
        for a_loc in old_locs:
            b_loc = by_path.get(a_loc.path)
            if b_loc is not None and (a_loc.upstream, a_loc.auth) != (b_loc.upstream, b_loc.auth):
                result.raise_to("high", f"location {a_loc.path}: upstream or authentication changed")


def _locations(server: str, was: list[str], now: list[str], result: Assessment) -> None:
    for path in sorted(set(now) - set(was)):
        result.raise_to("medium", f"server {server}: location {path} added")
    for path in sorted(set(was) - set(now)):
        result.raise_to("medium", f"server {server}: location {path} removed")


def _systemd(path: str, old: str, new: str, result: Assessment) -> None:
    unit = posixpath.basename(path)
    try:
        before = unit_sections(old) if old else {}
    except ValueError:
        before = {}
    try:
        after = unit_sections(new)
    except ValueError as exc:
        result.raise_to("high", f"the new unit does not parse ({exc}); systemd will not load it")
        result.affects(unit)
        return
    flat_before = {(s, k): v for s, keys in before.items() for k, v in keys.items()}
    flat_after = {(s, k): v for s, keys in after.items() for k, v in keys.items()}
    for section, key in sorted(flat_before.keys() | flat_after.keys()):
        if flat_before.get((section, key)) == flat_after.get((section, key)):
            continue
        risk: Risk = "high" if key in _SYSTEMD_HIGH else "medium"
        result.raise_to(risk, f"[{section}] {key} changed")
    result.affects(unit)


def _created(kind: str, path: str, text: str, result: Assessment) -> None:
    """A new file: medium, or high when what it starts is privileged."""
    result.raise_to("medium", "new file")
    if kind == "compose":
        try:
            services = load_compose(text).get("services") or {}
        except ValueError as exc:
            result.raise_to("high", f"not a valid compose file ({exc}); docker compose will refuse it")
            return
        for name, svc in services.items():
            result.affects(str(name))
            svc = svc if isinstance(svc, dict) else {}
            if svc.get("privileged") or svc.get("network_mode") == "host" or svc.get("cap_add"):
                result.raise_to(
                    "high", f"service {name} runs privileged, on the host network or with capabilities"
                )
    elif kind == "nginx":
        try:
            result.affects(*(n for s in parse_nginx(text).servers for n in s.server_names))
        except ValueError as exc:
            result.raise_to("high", f"does not parse ({exc}); nginx -t would fail")
    elif kind == "systemd":
        result.affects(posixpath.basename(path))


def classify(
    kind: str,
    path: str,
    change_type: Literal["created", "modified", "deleted"],
    old: str | None,
    new: str | None,
    *,
    hidden_change: bool = False,
) -> Assessment:
    """How risky the change from `old` to `new` (redacted texts; None: absent) is, and why.

    `hidden_change` says the raw content changed although the redacted texts are equal: a secret changed.
    """
    result = Assessment()
    if change_type == "deleted":
        result.raise_to("high", "file deleted: whatever reads it loses its configuration")
        if kind == "compose" and old:
            try:
                result.affects(*(load_compose(old).get("services") or {}))
            except ValueError:
                pass
        elif kind == "systemd":
            result.affects(posixpath.basename(path))
        return result
    old_text, new_text = old or "", new or ""
    if change_type == "created":
        _created(kind, path, new_text, result)
        return result
    if hidden_change and old_text == new_text:
        result.raise_to("medium", "a secret value changed (shown as *** in the diff)")
        return result
    if change_type == "modified" and cosmetic(kind, old_text, new_text):
        result.raise_to("low", "only comments or whitespace changed")
        return result
    if kind == "compose":
        _compose(old_text, new_text, result)
    elif kind == "nginx":
        _nginx(old_text, new_text, result)
    elif kind == "systemd":
        _systemd(path, old_text, new_text, result)
    if change_type == "modified" and not any(r.startswith(("medium", "high")) for r in result.reasons):
        result.raise_to("medium", "content changed")
    return result


def summary(change_type: str, path: str, assessment: Assessment, added: int, removed: int) -> str:
    """One line for lists: what happened, how risky, the first reason."""
    first = next((r.split(": ", 1)[1] for r in assessment.reasons if r.startswith(assessment.risk)), "")
    lines = f" (+{added}/-{removed} lines)" if change_type == "modified" else ""
    return f"{path} {change_type}{lines}; {assessment.risk} risk" + (f": {first}" if first else "")
