"""The output of the proxy scan (every nginx / SWAG proxy conf on a device) -> routes: domain -> upstream,
with TLS and authentication. Conf text is redacted before it is parsed or returned."""

from __future__ import annotations

import posixpath

from pydantic import BaseModel, Field, model_validator

from mcp_server.parsers.common import parse_errors_as
from mcp_server.parsers.config_files import PolicyParams, nul_records, redact_config
from mcp_server.parsers.config_nginx import NginxConfig, NginxLocation, parse_nginx
from mcp_server.parsers.config_paths import ConfigPath

PROXY_FILE_BYTES = 262_144


class ProxyConfigsParams(PolicyParams):
    dirs: tuple[ConfigPath, ...] = Field(
        default=(),
        max_length=20,
        description="More directories of *.conf files to read besides the usual ones.",
    )

    @model_validator(mode="after")
    def _allowed(self) -> ProxyConfigsParams:
        for path in self.dirs:
            self.check(path, True)
        return self


class ProxyRoute(BaseModel):
    """One way into the proxy: a domain (or a subfolder path) and where it leads."""

    domain: str = Field(description="server_name, or '(subfolder)' for a location included in a server.")
    location: str = Field(description="The location path.")
    upstream: str | None = Field(description="host:port the location proxies to.")
    redirect: str | None = Field(description="A `return` (redirect) instead of an upstream, if any.")
    ssl: bool | None = Field(
        description="TLS on the server block; null for a subfolder conf (its includer's)."
    )
    auth: list[str] = Field(description="Authentication in force: empty means none.")
    file: str


class ProxyConfigFile(BaseModel):
    path: str
    name: str = Field(description="File name, e.g. grafana.subdomain.conf.")
    server_names: list[str]
    upstreams: list[str]
    ssl: bool
    auth: list[str]
    config: NginxConfig | None
    parse_error: str | None


class SkippedFile(BaseModel):
    path: str
    reason: str


class ProxyConfigs(BaseModel):
    dirs: list[str] = Field(description="Directories read.")
    files: list[ProxyConfigFile]
    routes: list[ProxyRoute] = Field(description="Every domain/location -> upstream, with TLS and auth.")
    skipped: list[SkippedFile] = Field(
        default_factory=list,
        description="Directories and files not read: the watch policy refuses them, or a link leads out of "
        "its directory.",
    )
    total: int
    truncated: bool


def _routes(name: str, path: str, config: NginxConfig) -> list[ProxyRoute]:
    routes: list[ProxyRoute] = []
    for server in config.servers:
        for domain in server.server_names or ["_"]:
            for loc in server.locations or [
                NginxLocation(path="/", proxy_pass=None, upstream=None, auth=[], includes=[], redirect=None)
            ]:
                routes.append(
                    ProxyRoute(
                        domain=domain,
                        location=loc.path,
                        upstream=loc.upstream,
                        redirect=loc.redirect,
                        ssl=server.ssl,
                        auth=loc.auth,
                        file=path,
                    )
                )
    for loc in config.locations:
        routes.append(
            ProxyRoute(
                domain="(subfolder)",
                location=loc.path,
                upstream=loc.upstream,
                redirect=loc.redirect,
                ssl=None,
                auth=loc.auth,
                file=path,
            )
        )
    return routes


def proxy_file(path: str, text: str) -> ProxyConfigFile:
    """One proxy conf's summary from its (already redacted) text."""
    name = posixpath.basename(path)
    try:
        config = parse_nginx(text)
    except ValueError as exc:
        return ProxyConfigFile(
            path=path,
            name=name,
            server_names=[],
            upstreams=[],
            ssl=False,
            auth=[],
            config=None,
            parse_error=str(exc),
        )
    servers = config.servers
    return ProxyConfigFile(
        path=path,
        name=name,
        server_names=[n for s in servers for n in s.server_names],
        upstreams=list(
            dict.fromkeys(
                [u for s in servers for u in s.upstreams]
                + [loc.upstream for loc in config.locations if loc.upstream]
            )
        ),
        ssl=any(s.ssl for s in servers),
        auth=list(
            dict.fromkeys(
                [a for s in servers for a in s.auth] + [a for loc in config.locations for a in loc.auth]
            )
        ),
        config=config,
        parse_error=None,
    )


@parse_errors_as("proxy_configs")
def parse_proxy_configs(stdout: str, params: ProxyConfigsParams) -> ProxyConfigs:
    """NUL-separated `@@dir DIR`, `@@file PATH CONTENT`, `@@skip PATH REASON` records; `@@end` last."""
    dirs: list[str] = []
    texts: dict[str, str] = {}
    skipped: list[SkippedFile] = []
    for tag, path, *rest in nul_records(stdout, {"@@dir": 1, "@@file": 2, "@@skip": 2}):
        if not path.startswith("/"):
            raise ValueError(f"{tag} record with a relative path {path[:80]!r}")
        if tag == "@@dir":
            dirs.append(path)
        elif tag == "@@skip":
            skipped.append(SkippedFile(path=path, reason=rest[0]))
        else:
            texts.setdefault(path, rest[0])
    files = [proxy_file(path, redact_config("nginx", text)) for path, text in texts.items()]
    routes = [r for f in files if f.config is not None for r in _routes(f.name, f.path, f.config)]
    return ProxyConfigs(
        dirs=dirs, files=files, routes=routes, skipped=skipped, total=len(files), truncated=False
    )
