"""Alert rules: kept in the database, evaluated against what the server already collects, delivered to ntfy,
Gotify or a generic JSON webhook with retries.

Rules (admin: `/api/v1/alerts/rules`, `infrastructor alerts …`) name a condition and where to send it:

    disk_use      a filesystem's use at or above `threshold` % (latest disk_metrics sample, last 30 minutes)
    smart         a drive whose own SMART self-assessment failed, or rated failing (latest drive_smart result)
    device_down   a device whose breaker is open (status down) for at least `threshold` minutes
    config_risk   a configuration change at or above `min_risk` (low, medium, high): each change once

The webhook URL is a secret (ntfy topics and Gotify tokens are capabilities): it is stored encrypted with the
master key (SecretStore, `alert:<name>`), re-encrypted by `secrets rotate`, and shown only masked.

An alert fires once when its condition starts to hold for a subject (a mount, a drive, a device, a change) and
again only after it has cleared; what holds is kept in `alert_firing`, shared by replicas, and one replica
evaluates the standing conditions of each interval (a lease in `poll_leases`). Each firing is logged as an `alert` event (GET /api/v1/events) and queued for
delivery; a worker posts it, retrying with doubling backoff (INFRA_ALERT_RETRIES, INFRA_ALERT_BACKOFF), and
audits the outcome (kind `alert`). Nothing here runs on a collection's path: conditions are read from the
database every INFRA_ALERT_INTERVAL seconds, config changes arrive on the event bus and are only queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx2
from pydantic import BaseModel, Field
from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite

from mcp_server.audit import CallContext, current_call
from mcp_server.db.series import as_utc
from mcp_server.db.tables import AlertFiring, AlertRuleRow, CollectionSnapshot, EventLogRow
from mcp_server.devices import NAME_PATTERN
from mcp_server.errors import InvalidParameter
from mcp_server.events import ConfigChanged, Event
from mcp_server.polling import leases
from mcp_server.series.container_restarts import ContainerRestartRow
from mcp_server.series.disks import DiskMetricRow as DiskMetric
from mcp_server.state import AppState

log = logging.getLogger(__name__)

Kind = Literal["disk_use", "smart", "device_down", "config_risk", "container_restarts"]
Channel = Literal["ntfy", "gotify", "webhook"]
Risk = Literal["low", "medium", "high"]
RISK_ORDER = {"low": 0, "medium": 1, "high": 2}
SECRET_PREFIX = "alert:"
MAX_RULES = 200
MAX_URL_CHARS = 2048
DISK_SAMPLE_AGE = timedelta(minutes=30)
RESTART_WINDOW_MINUTES = 10  # a container_restarts rule's default window
DELIVERY_TIMEOUT = 10.0


class AlertRuleInfo(BaseModel):
    name: str
    kind: Kind
    device: str | None = Field(description="Only this device; null: every device.")
    threshold: float | None = Field(
        description="disk_use: percent; device_down: minutes; container_restarts: restarts (N)."
    )
    min_risk: Risk | None = Field(description="config_risk: the lowest risk that alerts.")
    window_minutes: int | None = Field(
        default=None, description="container_restarts: the window (M) the restarts are counted in."
    )
    channel: Channel
    url: str = Field(description="Where alerts go, masked (the stored URL is encrypted).")
    enabled: bool
    created_at: datetime
    created_by: str | None


class AlertRules(BaseModel):
    rules: list[AlertRuleInfo]
    total: int


class RemovedAlertRule(BaseModel):
    removed: str


class Delivery(BaseModel):
    rule: str
    ok: bool
    attempts: int
    status: int | None = Field(description="The receiver's last HTTP status; null when it never answered.")
    error: str | None


def mask_url(url: str) -> str:
    """scheme://host[:port]/*** — the path, query and credentials of a webhook URL are its secret."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/***"


def _check_url(url: str) -> str:
    url = url.strip()
    parts = urlsplit(url)
    if len(url) > MAX_URL_CHARS or parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidParameter(
            f"url: must be an http(s) URL of at most {MAX_URL_CHARS} characters, e.g. https://ntfy.sh/my-topic "
            "or https://gotify.example/message?token=…"
        )
    return urlunsplit(parts)


def _check_rule(
    kind: Kind, threshold: float | None, min_risk: Risk | None, window_minutes: int | None = None
) -> tuple[float | None, Risk | None, int | None]:
    if kind == "disk_use":
        if threshold is None or not 1 <= threshold <= 100:
            raise InvalidParameter("threshold: a disk_use rule needs the percent that alerts (1-100)")
        return threshold, None, None
    if kind == "device_down":
        if threshold is None or not 0 <= threshold <= 10_080:
            raise InvalidParameter(
                "threshold: a device_down rule needs the minutes down that alert (0-10080)"
            )
        return threshold, None, None
    if kind == "container_restarts":
        if threshold is None or not 1 <= threshold <= 10_000 or threshold != int(threshold):
            raise InvalidParameter(
                "threshold: a container_restarts rule needs the number of restarts that alerts (1-10000)"
            )
        window = RESTART_WINDOW_MINUTES if window_minutes is None else window_minutes
        if not 1 <= window <= 10_080:
            raise InvalidParameter("window_minutes: the minutes restarts are counted in (1-10080)")
        return threshold, None, window
    if kind == "config_risk":
        return None, min_risk or "high", None
    return None, None, None


def _info(row: AlertRuleRow, url: str | None) -> AlertRuleInfo:
    return AlertRuleInfo(
        name=row.name,
        kind=row.kind,  # type: ignore[arg-type]
        device=row.device,
        threshold=row.threshold,
        min_risk=row.min_risk,  # type: ignore[arg-type]
        window_minutes=row.window_minutes,
        channel=row.channel,  # type: ignore[arg-type]
        url=mask_url(url) if url else "(missing)",
        enabled=row.enabled,
        created_at=as_utc(row.created_at),
        created_by=row.created_by,
    )


# ---- the operations (the API routes and the CLI call these) ----------------------------------------------


RuleName = Annotated[str, Field(pattern=NAME_PATTERN, description="The rule's name (slug), e.g. 'disk-90'.")]


async def list_alert_rules(state: AppState) -> AlertRules:
    """Every alert rule, its webhook URL masked."""
    async with state.db.read_session() as session:
        rows = (await session.scalars(select(AlertRuleRow).order_by(AlertRuleRow.name))).all()
    rules = [_info(r, await state.secrets.get(SECRET_PREFIX + r.name)) for r in rows]
    return AlertRules(rules=rules, total=len(rules))


async def set_alert_rule(
    name: RuleName,
    kind: Kind,
    channel: Annotated[
        Channel, Field(description="ntfy, gotify or webhook (generic JSON, Slack/Discord-ready).")
    ],
    url: Annotated[str, Field(max_length=MAX_URL_CHARS, description="The topic, message or webhook URL.")],
    device: Annotated[str | None, Field(description="Only this device (default: every device).")] = None,
    threshold: Annotated[
        float | None,
        Field(description="disk_use: percent; device_down: minutes; container_restarts: restarts (N)."),
    ] = None,
    min_risk: Annotated[
        Risk | None, Field(description="config_risk: lowest risk that alerts (high).")
    ] = None,
    window_minutes: Annotated[
        int | None,
        Field(
            description=f"container_restarts: minutes the restarts are counted in ({RESTART_WINDOW_MINUTES})."
        ),
    ] = None,
    enabled: bool = True,
    *,
    state: AppState,
) -> AlertRuleInfo:
    """Create or replace an alert rule (the URL is stored encrypted and shown masked)."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise InvalidParameter(f"name: must match {NAME_PATTERN} (a slug such as disk-90)")
    checked_url = _check_url(url)
    threshold, min_risk, window_minutes = _check_rule(kind, threshold, min_risk, window_minutes)
    if device is not None:
        state.devices.get(device)  # unknown devices fail here, naming the known ones
    values = {
        "kind": kind,
        "device": device,
        "threshold": threshold,
        "min_risk": min_risk,
        "window_minutes": window_minutes,
        "channel": channel,
        "enabled": enabled,
    }
    async with state.db.session() as session, session.begin():
        row = await session.scalar(select(AlertRuleRow).where(AlertRuleRow.name == name))
        if row is None:
            count = len((await session.scalars(select(AlertRuleRow.id))).all())
            if count >= MAX_RULES:
                raise InvalidParameter(f"name: at most {MAX_RULES} alert rules; remove one first")
            row = AlertRuleRow(
                name=name, created_at=datetime.now(UTC), created_by=current_call().subject, **values
            )
            session.add(row)
        else:
            for key, value in values.items():
                setattr(row, key, value)
    await state.secrets.put(SECRET_PREFIX + name, checked_url)
    await _forget(state, name)  # what held under the old rule may fire under the new one
    return _info(row, checked_url)


async def _forget(state: AppState, rule: str) -> None:
    async with state.db.session() as session, session.begin():
        await session.execute(delete(AlertFiring).where(AlertFiring.rule == rule))


async def remove_alert_rule(name: RuleName, *, state: AppState) -> RemovedAlertRule:
    """Delete an alert rule and its stored URL."""
    async with state.db.session() as session, session.begin():
        gone = await session.execute(delete(AlertRuleRow).where(AlertRuleRow.name == name))
    if not getattr(gone, "rowcount", 0):
        known = ", ".join(r.name for r in (await list_alert_rules(state)).rules) or "none"
        raise InvalidParameter(f"name: no alert rule {name!r}. Rules: {known}.")
    await state.secrets.delete(SECRET_PREFIX + name)
    await _forget(state, name)
    return RemovedAlertRule(removed=name)


async def test_alert_rule(name: RuleName, *, state: AppState) -> Delivery:
    """Send a test alert through a rule's channel now (with the retries), and say how it went."""
    rule = await _rule(state, name)
    alert = Alert(
        rule.name, rule.channel, "test", None, "Test alert", f"Infrastructor test alert for rule {name}"
    )
    return await deliver(state, alert, await _url(state, name))


async def _rule(state: AppState, name: str) -> AlertRuleRow:
    async with state.db.read_session() as session:
        row = await session.scalar(select(AlertRuleRow).where(AlertRuleRow.name == name))
    if row is None:
        known = ", ".join(r.name for r in (await list_alert_rules(state)).rules) or "none"
        raise InvalidParameter(f"name: no alert rule {name!r}. Rules: {known}.")
    return row


async def _url(state: AppState, name: str) -> str:
    url = await state.secrets.get(SECRET_PREFIX + name)
    if url is None:
        raise InvalidParameter(f"name: rule {name!r} has no stored URL; set it again")
    return url


# ---- delivery ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Alert:
    rule: str
    channel: str
    subject: str  # what it is about: device/mount, device/drive, device, change id
    device: str | None
    title: str
    message: str
    priority: int = 4  # ntfy 1-5, Gotify 0-10 (doubled)


def payload(alert: Alert) -> tuple[dict[str, str], bytes | None, dict[str, Any] | None]:
    """(headers, raw body, JSON body) of an alert in its channel's format."""
    if alert.channel == "ntfy":
        headers = {"Title": alert.title, "Priority": str(alert.priority), "Tags": "warning"}
        return headers, alert.message.encode(), None
    if alert.channel == "gotify":
        return {}, None, {"title": alert.title, "message": alert.message, "priority": alert.priority * 2}
    body = {
        "text": f"{alert.title}: {alert.message}",  # Slack
        "content": f"**{alert.title}**\n{alert.message}",  # Discord
        "alert": {
            "rule": alert.rule,
            "subject": alert.subject,
            "device": alert.device,
            "title": alert.title,
            "message": alert.message,
        },
    }
    return {}, None, body


async def deliver(state: AppState, alert: Alert, url: str) -> Delivery:
    """POST the alert, retrying a failure (no answer, or 5xx/429) with doubling backoff; audited once."""
    settings = state.settings
    headers, content, body = payload(alert)
    attempts, status, error = 0, None, None
    started = time.perf_counter()
    async with httpx2.AsyncClient(timeout=DELIVERY_TIMEOUT, follow_redirects=False) as http:
        for attempt in range(settings.alert_retries + 1):
            attempts = attempt + 1
            try:
                response = await http.post(url, headers=headers, content=content, json=body)
                status, error = response.status_code, None
                if response.status_code < 400:
                    break
                error = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code != 429:
                    break  # the receiver refuses it: retrying would not help
            except httpx2.HTTPError as exc:
                status, error = None, f"{type(exc).__name__}: no answer from {mask_url(url)}"
            if attempt < settings.alert_retries:
                await asyncio.sleep(settings.alert_backoff * 2**attempt)
    ok = error is None
    ctx = CallContext(transport="alerts", tool=f"alert:{alert.rule}", subject="alerts")
    record = ctx.to_audit(
        "alert",
        outcome="ok" if ok else "error",
        error_type=None if ok else "delivery_failed",
        error_message=error,
        arguments={
            "rule": alert.rule,
            "channel": alert.channel,
            "url": mask_url(url),
            "subject": alert.subject,
            "attempts": attempts,
            "status": status,
        },
        device=alert.device,
        started=started,
    )
    state.writer.audit(record)
    return Delivery(rule=alert.rule, ok=ok, attempts=attempts, status=status, error=error)


# ---- evaluation -------------------------------------------------------------------------------------------


class AlertService:
    """Evaluates the rules every INFRA_ALERT_INTERVAL seconds (and config changes as they come) and delivers
    what fires, off the collection path."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.queue: asyncio.Queue[Alert] = asyncio.Queue(maxsize=1000)
        self.delivered: list[Delivery] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubscribe: Any = None
        self._pending_changes: list[ConfigChanged] = []

    def start(self) -> None:
        self._unsubscribe = self.state.events.subscribe(self._on_event, types=(ConfigChanged,))
        self._tasks = [
            asyncio.create_task(self._evaluate_forever(), name="infra-alerts-evaluate"),
            asyncio.create_task(self._deliver_forever(), name="infra-alerts-deliver"),
        ]

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def _on_event(self, event: Event) -> None:
        if isinstance(event, ConfigChanged) and not event.remote:
            # only queued: evaluated in the next pass; a change another replica saw is that replica's to alert
            self._pending_changes.append(event)

    async def _evaluate_forever(self) -> None:
        while True:
            try:
                await self.evaluate()
            except Exception:
                log.exception("alert evaluation failed")
            await asyncio.sleep(self.state.settings.alert_interval)

    async def _deliver_forever(self) -> None:
        while True:
            alert = await self.queue.get()
            try:
                self.delivered.append(await deliver(self.state, alert, await _url(self.state, alert.rule)))
                del self.delivered[:-100]
            except Exception:
                log.exception("alert delivery failed")

    async def evaluate(self, *, claim: bool = True) -> list[Alert]:
        """One pass: configuration changes this replica saw, and, when this replica wins the interval's lease
        (one replica per slot; `claim=False` skips the lease), the standing conditions. Returns (and queues)
        what fired."""
        async with self.state.db.read_session() as session:
            rules = (await session.scalars(select(AlertRuleRow).where(AlertRuleRow.enabled))).all()
        changes, self._pending_changes = self._pending_changes, []
        standing = not claim or await self._claim()
        fired: list[Alert] = []
        for rule in rules:
            if rule.kind != "config_risk" and not standing:
                continue
            holding = await self._holding(rule, changes)
            for subject, (device, title, message) in holding.items():
                if rule.kind == "config_risk" or await self._starts(rule.name, subject):
                    fired.append(Alert(rule.name, rule.channel, subject, device, title, message))
            if rule.kind != "config_risk":
                async with self.state.db.session() as session, session.begin():
                    # what no longer holds has cleared: it may fire again
                    await session.execute(
                        delete(AlertFiring).where(
                            AlertFiring.rule == rule.name, AlertFiring.subject.not_in(list(holding))
                        )
                    )
        for alert in fired:
            self._log(alert)
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.put_nowait(alert)
        return fired

    async def _claim(self) -> bool:
        """This replica evaluates the standing conditions of this interval (a lease, as maintenance takes)."""
        every = self.state.settings.alert_interval
        now = datetime.now(UTC)
        taken = await leases.claim(
            self.state.db,
            "*",
            "alerts",
            int(now.timestamp() // every),
            owner=self.state.settings.replica_name,
            ttl=timedelta(seconds=every),
            now=now,
        )
        return taken.ours

    async def _starts(self, rule: str, subject: str) -> bool:
        """Record that the condition holds; True when it did not hold before (it fires now), in every
        replica's view: the firing rows are shared."""
        insert = (postgresql if self.state.db.dialect == "postgresql" else sqlite).insert(AlertFiring)
        statement = (
            insert.values(rule=rule, subject=subject[:512], fired_at=datetime.now(UTC))
            .on_conflict_do_nothing(index_elements=["rule", "subject"])
            .returning(AlertFiring.rule)
        )
        async with self.state.db.session() as session, session.begin():
            return (await session.execute(statement)).scalar_one_or_none() is not None

    def _log(self, alert: Alert) -> None:
        self.state.writer.add(
            EventLogRow,
            {
                "occurred_at": datetime.now(UTC),
                "kind": "alert",
                "device": alert.device,
                "data": {
                    "rule": alert.rule,
                    "subject": alert.subject,
                    "title": alert.title,
                    "message": alert.message,
                },
            },
        )

    async def _holding(
        self, rule: AlertRuleRow, changes: list[ConfigChanged]
    ) -> dict[str, tuple[str | None, str, str]]:
        """subject -> (device, title, message) for every subject the rule's condition holds for now."""
        state = self.state
        now = datetime.now(UTC)
        out: dict[str, tuple[str | None, str, str]] = {}
        if rule.kind == "config_risk":
            least = RISK_ORDER[rule.min_risk or "high"]
            for c in changes:
                if RISK_ORDER.get(c.risk, 0) >= least and rule.device in (None, c.device):
                    title = f"{c.risk} risk config change on {c.device}"
                    out[f"change:{c.event_id}"] = (c.device, title, f"{c.path}: {c.summary}")
        elif rule.kind == "disk_use":
            latest: dict[tuple[str, str], DiskMetric] = {}
            query = select(DiskMetric).where(DiskMetric.collected_at >= now - DISK_SAMPLE_AGE)
            if rule.device is not None:
                query = query.where(DiskMetric.device == rule.device)
            async with state.db.read_session() as session:
                for row in (
                    await session.scalars(query.order_by(DiskMetric.collected_at).limit(50_000))
                ).all():
                    latest[(row.device, row.mount)] = row
            for (device, mount), row in latest.items():
                if row.used_percent >= (rule.threshold or 100):
                    title = f"{device}: {mount} is {row.used_percent:.0f}% full"
                    out[f"{device}:{mount}"] = (
                        device,
                        title,
                        f"{mount} at {row.used_percent:.1f}% (rule: {rule.threshold:g}%)",
                    )
        elif rule.kind == "device_down":
            await state.health.refresh(force=True)
            for device in state.devices.names():
                if rule.device not in (None, device):
                    continue
                health = state.health.get(device)
                if health is None or health.status != "down":
                    continue
                since = health.last_success_at
                minutes = (now - since).total_seconds() / 60 if since is not None else None
                if minutes is None or minutes >= (rule.threshold or 0):
                    title = f"{device} is down"
                    out[device] = (device, title, f"{health.last_error_type}: {health.last_error}")
        elif rule.kind == "container_restarts":
            minutes = rule.window_minutes or RESTART_WINDOW_MINUTES
            counts = (
                select(
                    ContainerRestartRow.device,
                    ContainerRestartRow.container,
                    func.max(ContainerRestartRow.restart_count) - func.min(ContainerRestartRow.restart_count),
                )
                .where(ContainerRestartRow.collected_at >= now - timedelta(minutes=minutes))
                .group_by(
                    ContainerRestartRow.device,
                    ContainerRestartRow.container,
                    ContainerRestartRow.container_id,
                )
            )
            if rule.device is not None:
                counts = counts.where(ContainerRestartRow.device == rule.device)
            async with state.db.read_session() as session:
                grown = (await session.execute(counts)).all()
            for device, container, restarts in grown:
                if restarts >= (rule.threshold or 1):
                    title = f"{container} on {device} restarted {restarts} times in {minutes} min"
                    detail = f"list_containers(device={device!r}, status='restarting') shows its restart loop"
                    out[f"{device}:{container}"] = (device, title, detail)
        elif rule.kind == "smart":
            snapshots = select(CollectionSnapshot).where(CollectionSnapshot.command == "drive_smart")
            if rule.device is not None:
                snapshots = snapshots.where(CollectionSnapshot.device == rule.device)
            async with state.db.read_session() as session:
                for snap in (await session.scalars(snapshots)).all():
                    data = snap.data or {}
                    if data.get("smart_passed") is False or data.get("status") == "failing":
                        drive = str(data.get("path") or snap.params)
                        title = f"{snap.device}: drive {drive} is failing"
                        out[f"{snap.device}:{drive}"] = (
                            snap.device,
                            title,
                            str(data.get("verdict") or "failing"),
                        )
        return out
