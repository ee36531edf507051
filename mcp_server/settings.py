"""Settings: one pydantic-settings model (prefix INFRA_), loaded once at start and passed down."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mcp_server import TOOLSETS as TOOLSETS  # re-exported: its home before the CLI needed it cheaply
from mcp_server.errors import ConfigurationError
from mcp_server.parsers.config_paths import check_glob


def comma_list(value: str) -> list[str]:
    """The entries of a comma-separated setting, trimmed, empty ones dropped."""
    return [v.strip() for v in value.split(",") if v.strip()]


class Settings(BaseSettings):
    """Every tunable of the server. Environment variables are INFRA_<FIELD NAME>."""

    model_config = SettingsConfigDict(env_prefix="INFRA_", extra="ignore", frozen=True)

    data_dir: Path = Field(
        default=Path("~/.local/share/infrastructor"),
        description="Where the SQLite database, the master key and spool files live.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy async URL; default sqlite+aiosqlite:///<data_dir>/infrastructor.db. "
        "PostgreSQL: postgresql+asyncpg://user@host/db.",
    )
    database_admin_url: SecretStr | None = Field(
        default=None,
        description="PostgreSQL owner URL, used only by migrate and db bootstrap/rotate-credentials; "
        "the server never keeps it.",
    )
    master_key: SecretStr | None = Field(
        default=None,
        description="Fernet key(s) that encrypt stored secrets, comma-separated, newest first; "
        "default: generated into <data_dir>/master.key (mode 0600).",
    )
    local_device: bool = Field(default=True, description="Offer the built-in 'local' device.")
    max_devices: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Most SSH devices that may be registered (the built-in 'local' is not counted); "
        "add_device and import_ssh_config refuse more.",
    )

    cache_max_entries: int = Field(default=2048, ge=1, le=1_000_000)
    audit_flush_interval: float = Field(
        default=0.25, gt=0, le=60, description="Seconds between shipments of the audit journal when idle."
    )
    audit_sync: Literal["write", "fsync", "off"] = Field(
        default="write",
        description="When a call's answer may leave: 'write' once its audit rows are written to the journal "
        "(they survive any crash of the server) and fsynced within 20 ms; 'fsync' once they are fsynced "
        "(they survive a power loss too; group commit); 'off' at once (journaled within the flush interval). "
        "true and false are read as fsync and off.",
    )
    audit_write_timeout: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description="Deadline of one database write of journaled rows; past it the rows stay journaled "
        "and are shipped when the database answers again.",
    )
    db_read_timeout: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description="Seconds a tool call or resource read waits for one database read; past it the call fails "
        "with a 'database did not answer' error (audited) instead of hanging with the database.",
    )
    audit_queue_max: int = Field(
        default=10_000,
        ge=1,
        le=10_000_000,
        description="Rows waiting for the journal beyond which new calls are refused (503, Retry-After).",
    )
    audit_journal_max_mb: float = Field(
        default=1024,
        gt=0,
        le=1_000_000,
        description="Journaled MiB not yet in the database beyond which new calls are refused.",
    )
    audit_lag_warning: float = Field(
        default=30.0,
        gt=0,
        le=86_400,
        description="get_service_health warns when the oldest row not yet in the database is older.",
    )

    ssh_connect_timeout: float = Field(default=10.0, gt=0, le=300)
    ssh_command_timeout: float = Field(
        default=60.0, gt=0, le=3600, description="Upper bound for any command."
    )
    ssh_keepalive_interval: float = Field(default=15.0, ge=0, le=3600)
    ssh_idle_timeout: float = Field(default=300.0, gt=0, le=86_400)
    ssh_max_sessions: int = Field(
        default=8,
        ge=1,
        le=64,
        description="Concurrent channels per device; keep below sshd's MaxSessions (10).",
    )
    ssh_known_hosts: Path = Field(default=Path("~/.ssh/known_hosts"))
    ssh_host_key_policy: Literal["tofu", "strict"] = "tofu"

    fanout_concurrency: int = Field(default=32, ge=1, le=1024)
    max_output_bytes: int = Field(
        default=16_777_216,
        ge=65_536,
        le=1_073_741_824,
        description="Most bytes of output one command may write; a command that writes more is stopped.",
    )
    parse_timeout: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="Seconds a parse, diff or risk assessment of a large output may take (in a worker process).",
    )
    parse_memory_mb: int = Field(
        default=1024,
        ge=256,
        le=65_536,
        description="Address space of each parse worker process (MiB); more is refused as too costly.",
    )
    max_result_chars: int = Field(default=40_000, ge=1_000, le=10_000_000)

    config_watch: bool = Field(
        default=True,
        description="Watch configuration files for changes (inotify, or polling where inotify is missing).",
    )
    config_poll_interval: float = Field(
        default=5.0,
        ge=0.2,
        le=3600,
        description="Seconds between hash checks on devices without inotifywait.",
    )
    config_reconcile_interval: float = Field(
        default=300.0,
        ge=1,
        le=86_400,
        description="Seconds between full hash checks while inotify watches, for changes inotify cannot see "
        "(network and FUSE filesystems, a directory swapped by a symlink).",
    )
    config_debounce: float = Field(
        default=0.05, ge=0, le=10, description="Quiet seconds after a burst of file events before reading."
    )
    config_watch_allow: str = Field(
        default="",
        description="Comma-separated globs of more files that may be watched, besides the usual configuration "
        "places (compose projects in /opt, /srv, /home; /etc/nginx and SWAG confs; systemd units; service "
        "configs in /etc; Unraid). A glob with '/' matches the whole path and its * spans directories "
        "(/data/stacks/*); one without '/' matches a file name. Credential stores, keys, histories and the "
        "server's own data stay refused.",
    )
    config_max_file_bytes: int = Field(default=1_048_576, ge=1024, le=16_777_216)
    config_discovery: bool = Field(
        default=True,
        description="Watch the compose files and proxy-conf directories that list_compose_stacks and "
        "list_proxy_configs find.",
    )

    auth: bool = Field(
        default=True, description="Require a bearer JWT on HTTP; false is allowed only on loopback."
    )
    jwt_secret: SecretStr | None = Field(default=None, description="HS256 shared secret for bearer tokens.")
    jwt_public_key: str | None = Field(
        default=None, description="RS256 public key (PEM text or a file path)."
    )
    jwks_url: str | None = Field(
        default=None, description="RS256 keys from an identity provider's JWKS endpoint."
    )
    jwt_issuer: str | None = Field(default=None, description="Required `iss` claim, when set.")
    jwt_audience: str | None = Field(default=None, description="Required `aud` claim, when set.")
    trusted_proxies: str = Field(
        default="",
        description="Comma-separated IPs/CIDRs of reverse proxies whose X-Forwarded-For is believed.",
    )
    allowed_hosts: str = Field(
        default="",
        description="Comma-separated extra Host header values accepted (DNS-rebinding protection).",
    )

    jwt_max_ttl: int = Field(
        default=30 * 86_400,
        ge=60,
        le=10 * 365 * 86_400,
        description="Longest token lifetime accepted (exp minus iat, or minus now), in seconds; tokens "
        "without exp are refused.",
    )
    jwt_leeway: int = Field(
        default=30,
        ge=0,
        le=300,
        description="Seconds of clock skew allowed when checking exp, nbf and iat.",
    )
    console_session_ttl: int = Field(
        default=3600,
        ge=60,
        le=86_400,
        description="Longest life of a console (/ui) session cookie, in seconds; it never outlives the "
        "token it was signed in with.",
    )

    max_argument_chars: int = Field(
        default=65_536,
        ge=1024,
        le=10_000_000,
        description="Largest tool-call arguments (as JSON) or resource URI accepted; a bigger call is "
        "refused before it is authorised, run or audited in full.",
    )
    http_max_body_bytes: int = Field(
        default=2 * 1024 * 1024,
        ge=65_536,
        le=256 * 1024 * 1024,
        description="Largest HTTP request body; bigger requests get 413.",
    )
    http_rate_limit: int = Field(
        default=600,
        ge=1,
        le=1_000_000,
        description="HTTP requests per minute allowed per token subject (per client IP without a valid "
        "token); beyond it, 429 with Retry-After.",
    )
    http_rate_burst: int = Field(
        default=120,
        ge=1,
        le=1_000_000,
        description="Requests a subject may send at once before the rate applies.",
    )
    http_max_sessions: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="Open MCP sessions (2025-11-25 protocol clients) in all; admin tokens may exceed it "
        "up to their own per-subject cap.",
    )
    http_max_sessions_per_subject: int = Field(
        default=32,
        ge=1,
        le=100_000,
        description="Open MCP sessions one token subject may hold; beyond it, 429 with Retry-After.",
    )
    http_session_idle_timeout: float = Field(
        default=300.0, gt=0, le=86_400, description="Seconds an MCP session may sit idle before it is closed."
    )
    http_header_timeout: float = Field(
        default=10.0, gt=0, le=600, description="Seconds a client has to send a request's headers."
    )
    http_body_timeout: float = Field(
        default=30.0, gt=0, le=3600, description="Seconds a client has to send a request's body."
    )
    http_max_connections: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="Open HTTP connections accepted at once. At the cap a new connection takes the place of "
        "the one that has waited longest without sending a byte of a request; if none has, it is refused.",
    )
    http_max_connections_per_ip: int = Field(
        default=64,
        ge=1,
        le=100_000,
        description="Open HTTP connections accepted at once from one client IP (the socket peer); "
        "INFRA_TRUSTED_PROXIES are held only to INFRA_HTTP_MAX_CONNECTIONS.",
    )
    max_subscriptions_per_session: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="Resources one MCP session (or one subscriptions/listen stream) may subscribe to.",
    )
    audit_auth_failures_per_minute: int = Field(
        default=60,
        ge=0,
        le=100_000,
        description="Rejected-token attempts written to the audit log per minute (a tenth of it per client "
        "IP); the rest are counted in the next row written.",
    )
    ssh_file_dirs: str = Field(
        default="",
        description="Comma-separated directories that key_path and import_ssh_config may read from; "
        "default ~/.ssh and <data_dir>/keys.",
    )

    allow_run_command: bool = Field(default=False, description="Offer run_command (admin scope) at all.")
    read_only: bool = Field(
        default=False,
        description="Offer only the tools that change nothing (no device, container or service writes).",
    )
    tool_schemas: Literal["compact", "full"] = Field(
        default="compact",
        description="How tools/list shows schemas: compact (result fields one level deep; ~14k tokens for every "
        "tool) or full (every nested field and description, for clients that generate types; ~38k tokens).",
    )
    toolsets: str = Field(
        default="",
        description=f"Comma-separated toolsets to offer ({', '.join(TOOLSETS)}); default all of them.",
    )
    run_command_allowlist: str = Field(
        default="",
        description="Comma-separated programs run_command may start: names (uptime) or absolute paths (/usr/bin/uptime).",
    )

    # History, retention and the polling service (issue: time-series storage and polling).
    retention_metrics_days: float = Field(
        default=30.0,
        ge=0,
        le=36_500,
        description="Keep the metric series get_metrics_history answers from; 0 = forever.",
    )
    retention_audit_days: float = Field(
        default=365.0, ge=0, le=36_500, description="Keep audit rows; 0 = forever."
    )
    retention_performance_days: float = Field(
        default=30.0, ge=0, le=36_500, description="Keep service performance and cache rows; 0 = forever."
    )
    retention_config_changes_days: float = Field(
        default=365.0, ge=0, le=36_500, description="Keep configuration change events; 0 = forever."
    )
    retention_rollup_days: float = Field(
        default=365.0,
        ge=0,
        le=36_500,
        description="Keep the hourly system-metrics rollup (TimescaleDB); 0 = forever.",
    )
    compression_after_days: float = Field(
        default=7.0, ge=0, le=36_500, description="Compress TimescaleDB chunks older than this; 0 = never."
    )
    maintenance_interval: float = Field(
        default=3600.0,
        ge=10,
        le=86_400,
        description="Seconds between retention and partition maintenance runs.",
    )
    timescale_run_jobs: Literal["failing", "always", "never"] = Field(
        default="failing",
        description="TimescaleDB: which policy jobs the maintenance loop (and `migrate`) runs itself with "
        "CALL run_job: those whose last scheduler run failed or that are overdue, every one, or none.",
    )
    alert_interval: float = Field(
        default=60.0, ge=1, le=3600, description="Seconds between evaluations of the alert rules."
    )
    alert_retries: int = Field(default=3, ge=0, le=10, description="Retries of a failed alert delivery.")
    alert_backoff: float = Field(
        default=2.0, ge=0, le=300, description="Seconds before the first retry of an alert; doubles after."
    )
    poll_enabled: bool = Field(default=True, description="Poll every device in the background while serving.")
    poll_system_interval: float = Field(
        default=60.0, ge=0, le=86_400, description="Seconds between system_metrics polls; 0 = off."
    )
    poll_network_interval: float = Field(
        default=60.0, ge=0, le=86_400, description="Seconds between network_interfaces polls; 0 = off."
    )
    poll_disk_interval: float = Field(
        default=300.0, ge=0, le=86_400, description="Seconds between disk_usage polls; 0 = off."
    )
    poll_containers_interval: float = Field(
        default=120.0, ge=0, le=86_400, description="Seconds between container_stats polls; 0 = off."
    )
    poll_drives_interval: float = Field(
        default=3600.0,
        ge=0,
        le=86_400,
        description="Seconds between SMART drive health (and temperature) polls; 0 = off.",
    )
    poll_jitter: float = Field(
        default=0.9,
        ge=0,
        le=0.9,
        description="Share of each interval over which devices' polls are spread (a hash of device and "
        "category picks each one's offset); the rest of the interval is left for the last polls to finish.",
    )
    poll_concurrency: int = Field(
        default_factory=lambda: min(64, 16 * (os.cpu_count() or 1)),
        ge=1,
        le=256,
        description="Polls running at once, in all (default 16 per core, at most 64).",
    )
    poll_device_concurrency: int = Field(
        default=2, ge=1, le=16, description="Polls running at once per device."
    )
    poll_connect_concurrency: int = Field(
        default_factory=lambda: min(32, 4 * (os.cpu_count() or 1)),
        ge=1,
        le=256,
        description="SSH connections the poller opens at once while a fleet connects (default 4 per core, "
        "at most 32); polls waiting for their device's connection hold no poll slot.",
    )
    poll_breaker_threshold: int = Field(
        default=3, ge=1, le=100, description="Consecutive failed polls that open a device's circuit breaker."
    )
    poll_breaker_backoff: float = Field(
        default=60.0,
        ge=0.1,
        le=86_400,
        description="First wait (seconds) before polling an open device again.",
    )
    poll_breaker_max_backoff: float = Field(
        default=3600.0, ge=0.1, le=86_400, description="Longest wait; the backoff doubles up to it."
    )
    poll_report_interval: float = Field(
        default=60.0, ge=1, le=86_400, description="Seconds between this replica's service health rows."
    )
    replica_name: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}"[:128],
        min_length=1,
        max_length=128,
        description="This server's name in leases and service health; default <hostname>-<pid>.",
    )

    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8765, ge=1, le=65535)
    http_path: str = "/mcp"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("data_dir", "ssh_known_hosts")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        return value

    @field_validator(
        "poll_system_interval",
        "poll_network_interval",
        "poll_disk_interval",
        "poll_containers_interval",
        "poll_drives_interval",
    )
    @classmethod
    def _poll_interval(cls, value: float) -> float:
        if 0 < value < 1:
            raise ValueError("must be 0 (off) or at least 1 second")
        return value

    @field_validator("audit_sync", mode="before")
    @classmethod
    def _sync_mode(cls, value: object) -> object:
        word = str(value).strip().lower() if isinstance(value, str | bool) else value
        return {"true": "fsync", "1": "fsync", "yes": "fsync", "false": "off", "0": "off", "no": "off"}.get(
            word, word
        )  # type: ignore[call-overload]

    @field_validator("poll_breaker_max_backoff")
    @classmethod
    def _backoff_cap(cls, value: float, info: ValidationInfo) -> float:
        first = info.data.get("poll_breaker_backoff")
        if first is not None and value < first:
            raise ValueError(f"must be at least INFRA_POLL_BREAKER_BACKOFF ({first:g})")
        return value

    @field_validator("http_path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        for item in comma_list(value):
            ipaddress.ip_network(item, strict=False)  # raises ValueError naming the bad entry
        return value

    @property
    def trusted_proxy_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(v, strict=False) for v in comma_list(self.trusted_proxies)]

    @field_validator("toolsets")
    @classmethod
    def _known_toolsets(cls, value: str) -> str:
        unknown = [v for v in comma_list(value) if v not in TOOLSETS]
        if unknown:
            raise ValueError(f"unknown toolset {', '.join(unknown)}; valid: {', '.join(TOOLSETS)}")
        return value

    @property
    def offered_toolsets(self) -> tuple[str, ...]:
        """The toolsets whose tools are registered (all unless INFRA_TOOLSETS names some)."""
        return tuple(comma_list(self.toolsets)) or TOOLSETS

    @field_validator("config_watch_allow")
    @classmethod
    def _globs(cls, value: str) -> str:
        for item in comma_list(value):
            check_glob(item)  # raises ValueError naming the bad glob
        return value

    @field_validator("ssh_file_dirs")
    @classmethod
    def _absolute_dirs(cls, value: str) -> str:
        for item in comma_list(value):
            if not Path(item).expanduser().is_absolute():
                raise ValueError(f"{item!r} is not an absolute directory (use /path or ~/path)")
        return value

    @property
    def ssh_file_directories(self) -> tuple[Path, ...]:
        """Where key files and SSH configs may be read from (INFRA_SSH_FILE_DIRS, or ~/.ssh and the keys dir)."""
        listed = [Path(v).expanduser() for v in comma_list(self.ssh_file_dirs)]
        return tuple(listed) if listed else (Path("~/.ssh").expanduser(), self.data_dir / "keys")

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'infrastructor.db'}"


def load_settings(**overrides: object) -> Settings:
    """Read INFRA_* from the environment; a bad value raises ConfigurationError naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "?"
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        raise ConfigurationError(f"INFRA_{field.upper()}: {err['msg']}{shown}") from None
