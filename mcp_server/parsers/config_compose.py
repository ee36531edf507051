"""A Docker Compose file's text -> ComposeFile: services with image, ports, volumes, environment names,
networks, dependencies and restart policy. Environment values never appear in the model."""

from __future__ import annotations

import re
from typing import Any

import yaml
from pydantic import BaseModel, Field

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Redaction leaves `KEY: ***`, which YAML reads as an alias; quoted, it is the plain text it stands for.
# Possessive runs: the indent, the key and the spaces cannot trade characters, so a line costs one pass.
_REDACTED_VALUE = re.compile(r"^([ \t]*+(?:- )?[^#\n:]++:[ \t]++)\*\*\*([ \t]*+(?:#.*)?)$", re.M)

# Bounds far above any real compose file. Aliases are counted expanded: a few hundred bytes of anchors can
# stand for billions of nodes, and anything that walks the data (validation, str(), ==) pays for each one.
MAX_CHARS = 1_048_576
MAX_NODES = 100_000
MAX_SCALAR_CHARS = 4 * MAX_CHARS
MAX_DEPTH = 64
MAX_SERVICES = 1_000


class ComposeSyntaxError(ValueError):
    """Text docker compose would refuse: not YAML, or not a mapping of services."""


class ComposeServiceConfig(BaseModel):
    name: str = Field(description="Service name.")
    image: str | None = Field(description="Image reference, with tag or digest (variables unexpanded).")
    build: str | None = Field(description="Build context, when the service is built locally.")
    container_name: str | None
    ports: list[str] = Field(description="Published ports as 'host:container[/proto]'.")
    volumes: list[str] = Field(description="Mounts as 'source:target[:mode]'.")
    environment: list[str] = Field(description="Environment variable names; values are never shown.")
    env_file: list[str]
    networks: list[str]
    network_mode: str | None
    depends_on: list[str]
    restart: str | None = Field(description="Restart policy (no, always, unless-stopped, on-failure).")
    privileged: bool
    cap_add: list[str]
    devices: list[str]
    user: str | None
    labels: list[str] = Field(description="Label names.")
    healthcheck: bool = Field(description="A health check is defined (and not disabled).")


class ComposeFile(BaseModel):
    name: str | None = Field(description="Project name set in the file, if any.")
    services: list[ComposeServiceConfig]
    networks: list[str]
    volumes: list[str]
    secrets: list[str]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def check_expansion(root: yaml.Node) -> None:
    """Refuse a node graph that, with every alias expanded, has more than MAX_NODES nodes, MAX_SCALAR_CHARS
    characters of scalars or MAX_DEPTH levels, or that contains itself. Each distinct node is visited once
    (sizes are memoised), so the check is linear in the text however much the aliases multiply."""
    done: dict[int, tuple[int, int, int]] = {}  # id(node) -> (nodes, scalar characters, depth) expanded
    open_: set[int] = set()  # collections whose children are being counted
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_counted = stack.pop()
        key = id(node)
        if children_counted:
            sizes = [done[id(child)] for child in _children(node)]
            nodes = 1 + sum(s[0] for s in sizes)
            chars = sum(s[1] for s in sizes)
            depth = 1 + max((s[2] for s in sizes), default=0)
            open_.discard(key)
        elif key in done:
            continue
        elif key in open_:
            raise ComposeSyntaxError(
                f"an alias at line {node.start_mark.line + 1} refers to a node that contains it"
            )
        elif isinstance(node, yaml.ScalarNode):
            nodes, chars, depth = 1, len(node.value), 1
        else:
            open_.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node))
            continue
        if nodes > MAX_NODES:
            raise ComposeSyntaxError(
                f"the YAML expands to more than {MAX_NODES} nodes through aliases (or is far larger than a "
                "compose file)"
            )
        if chars > MAX_SCALAR_CHARS:
            raise ComposeSyntaxError(
                f"the YAML expands to more than {MAX_SCALAR_CHARS} characters through aliases"
            )
        if depth > MAX_DEPTH:
            raise ComposeSyntaxError(
                f"the YAML nests deeper than {MAX_DEPTH} levels (counting through aliases)"
            )
        done[key] = (nodes, chars, depth)


def _yaml(text: str) -> Any:
    """The one YAML document, refused before any Python object is built when it expands too far."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        check_expansion(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_compose(text: str) -> dict[str, Any]:
    """The YAML document as a mapping; ComposeSyntaxError when it is not one compose could use."""
    if len(text) > MAX_CHARS:
        raise ComposeSyntaxError(
            f"the file has {len(text)} characters; a compose file has at most {MAX_CHARS}"
        )
    text = _REDACTED_VALUE.sub(r'\1"***"\2', text) if "***" in text else text
    try:
        data = _yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ComposeSyntaxError(f"not valid YAML{where}: {problem}") from None
    except (ValueError, OverflowError) as exc:
        if isinstance(exc, ComposeSyntaxError):
            raise
        # a scalar that resolves to a type it cannot be: a timestamp of month 13, an integer of 5000 digits
        raise ComposeSyntaxError(f"not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ComposeSyntaxError(f"the document is a {type(data).__name__}, not a mapping")
    services = data.get("services", {})
    if services is not None and not isinstance(services, dict):
        raise ComposeSyntaxError("'services' must be a mapping of service names to definitions")
    if services and len(services) > MAX_SERVICES:
        raise ComposeSyntaxError(f"{len(services)} services; a compose file here has at most {MAX_SERVICES}")
    return data


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, dict):
        return [str(k) for k in value]
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return [str(value)]


def _port(item: Any) -> str:
    if isinstance(item, dict):
        published = item.get("published")
        host = item.get("host_ip")
        target = item.get("target")
        text = f"{published}:{target}" if published is not None else str(target)
        if host:
            text = f"{host}:{text}"
        protocol = item.get("protocol")
        return f"{text}/{protocol}" if protocol and protocol != "tcp" else text
    return str(item)


def _volume(item: Any) -> str:
    if isinstance(item, dict):
        source = item.get("source")
        target = item.get("target", "")
        text = f"{source}:{target}" if source else str(target)
        return f"{text}:ro" if item.get("read_only") else text
    return str(item)


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    """A service's environment as NAME -> value (None for a bare NAME that is passed through)."""
    env = service.get("environment")
    if isinstance(env, dict):
        return {str(k): None if v is None else str(v) for k, v in env.items()}
    found: dict[str, str | None] = {}
    for item in env or []:
        name, sep, value = str(item).partition("=")
        found[name] = value if sep else None
    return found


def _healthcheck(service: dict[str, Any]) -> bool:
    check = service.get("healthcheck")
    return isinstance(check, dict) and not check.get("disable", False) and "test" in check


def _service(name: str, svc: Any) -> ComposeServiceConfig:
    svc = svc if isinstance(svc, dict) else {}
    build = svc.get("build")
    if isinstance(build, dict):
        build = build.get("context", ".")
    restart = svc.get("restart")
    if restart is None and isinstance(svc.get("deploy"), dict):
        policy = svc["deploy"].get("restart_policy")
        restart = policy.get("condition") if isinstance(policy, dict) else None
    return ComposeServiceConfig(
        name=name,
        image=str(svc["image"]) if svc.get("image") is not None else None,
        build=str(build) if build is not None else None,
        container_name=str(svc["container_name"]) if svc.get("container_name") else None,
        ports=[_port(p) for p in svc.get("ports") or []],
        volumes=[_volume(v) for v in svc.get("volumes") or []],
        environment=list(environment(svc)),
        env_file=_strings(svc.get("env_file")),
        networks=_strings(svc.get("networks")),
        network_mode=str(svc["network_mode"]) if svc.get("network_mode") else None,
        depends_on=_strings(svc.get("depends_on")),
        restart=str(restart) if restart is not None else None,
        privileged=bool(svc.get("privileged", False)),
        cap_add=_strings(svc.get("cap_add")),
        devices=[_volume(d) if isinstance(d, dict) else str(d) for d in svc.get("devices") or []],
        user=str(svc["user"]) if svc.get("user") is not None else None,
        labels=_strings(svc.get("labels"))
        if isinstance(svc.get("labels"), dict)
        else [str(label).split("=", 1)[0] for label in svc.get("labels") or []],
        healthcheck=_healthcheck(svc),
    )


def parse_compose_file(text: str) -> ComposeFile:
    """Parse a compose file; raises ComposeSyntaxError (a ValueError) for text compose would refuse."""
    data = load_compose(text)
    services = data.get("services") or {}
    return ComposeFile(
        name=str(data["name"]) if data.get("name") else None,
        services=[_service(str(name), svc) for name, svc in services.items()],
        networks=_strings(data.get("networks")),
        volumes=_strings(data.get("volumes")),
        secrets=_strings(data.get("secrets")),
    )
