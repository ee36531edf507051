"""The operator console (/ui) in a real browser against a real server (uvicorn on loopback) with the sshd
fleet: sign-in exchanges a bearer token for a session cookie; the pages read the REST API with it; a change
on a host reaches the Changes page through the event stream; a read token sees no audit page and cannot
restart anything; a write without the CSRF token is refused; the pages log no errors and fetch nothing from
anywhere but their own origin. Debian's chromium, driven by Playwright (the `browser` fixture of
tests/conftest.py)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
import uvicorn
from playwright.async_api import expect

from mcp_server import console as console_package
from mcp_server.auth import ADMIN, READ, SigningKey, issue_token
from mcp_server.console import ASSETS, CSP, SESSION_COOKIE, Session, Sessions
from mcp_server.series.network import NetworkMetricRow
from mcp_server.series.system import SystemMetricRow
from mcp_server.server import build_server
from mcp_server.state import AppState, open_state
from tests.app_fixtures import add_fleet_host, audit_rows, make_settings
from tests.helpers import fixture_bin, free_port, unavailable, until
from tests.sshd import SshdFleet
from tests.test_apps import readable
from tests.test_history import system_rows

SECRET = "c" * 48
KEY = SigningKey("HS256", SECRET, None, None)
SEEDED = 20  # hourly samples of the last day recorded for "gone"
COMPOSE = "services:\n  web:\n    image: nginx:1.25\n"
CHANGED = "services:\n  web:\n    image: nginx:1.27\n    privileged: true\n"
DEVICES = 5  # alpha, beta, gone, local, svc
# what a device without docker, systemd, smartctl or ZFS answers with an error: the console shows the error text
LACKING = ("containers", "services", "drives", "zfs")
# the fleet page asks every device for its containers and failed services; only svc has systemctl
FLEET_COUNTS = tuple(
    f"/api/v1/devices/{d}/{what}"
    for d in ("alpha", "beta", "local", "svc")
    for what in ("containers", "services")
)


@dataclass
class Console:
    base: str
    state: AppState
    compose: Path

    def token(self, *scopes: str, subject: str = "operator", ttl: int = 600) -> str:
        return issue_token(KEY, self.state.settings, subject=subject, scopes=scopes, ttl_seconds=ttl)[0]


@pytest.fixture(scope="module")
async def console(sshd_fleet: SshdFleet, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Console]:
    """A server on a loopback port with alpha and beta (real sshd hosts), gone (nothing listens there, a day
    of recorded history) and a watched compose file on alpha."""
    if shutil.which("inotifywait") is None:
        unavailable("sshd", "inotifywait is not installed (apt-get install inotify-tools)")
    settings = make_settings(
        tmp_path_factory.mktemp("console"), jwt_secret=SECRET, config_debounce=0.2, config_poll_interval=0.3
    )
    async with open_state(settings) as state:
        await state.config.start()
        for name in ("alpha", "beta"):
            await add_fleet_host(state, sshd_fleet, sshd_fleet.hosts[name])
        # systemctl (the test fixture printing captured real units) first on its PATH: a services section
        units = fixture_bin(sshd_fleet.scratch_dir() / "svc", "services", ("systemctl",))
        svc = sshd_fleet.start_host("console-svc", env={"PATH": f"{units}:/usr/bin:/bin"})
        await add_fleet_host(state, sshd_fleet, svc, name="svc")
        # lo's counters before now: with the page's own collection (recorded too) a rate for the last hour
        for minutes, rx in ((20, 0), (10, 600)):
            row = {"device": "svc", "collected_at": datetime.now(UTC) - timedelta(minutes=minutes)}
            state.writer.add(NetworkMetricRow, row | {"interface": "lo", "rx_bytes": rx, "tx_bytes": 2 * rx})
        # nothing listens there: a problem on the fleet page, with history from when it answered
        await add_fleet_host(state, sshd_fleet, sshd_fleet.hosts["alpha"], name="gone", port=1)
        now = datetime.now(UTC)
        for i in range(SEEDED):
            row = system_rows()[0] | {"device": "gone", "collected_at": now - timedelta(hours=i + 2)}
            row["cpu_percent"] = float(10 + 3 * i)
            state.writer.add(SystemMetricRow, row)
        await state.writer.flush()
        compose = sshd_fleet.scratch_dir() / "compose.yaml"
        compose.write_text(COMPOSE)
        await state.config.watch("alpha", str(compose))
        await until(lambda: state.config.status("alpha").mode == "inotify", 20)
        server = build_server(settings, transport="http", state=state, signing_key=KEY)
        port = free_port()
        uv = uvicorn.Server(
            uvicorn.Config(
                server.http_app(path="/mcp"), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
            )
        )
        task = asyncio.create_task(uv.serve())
        deadline = time.monotonic() + 15
        while not uv.started:
            assert time.monotonic() < deadline and not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.02)
        try:
            yield Console(f"http://127.0.0.1:{port}", state, compose)
        finally:
            uv.should_exit = True
            await asyncio.wait_for(task, 15)


@contextlib.asynccontextmanager
async def signed_in(
    browser: Any,
    console: Console,
    *scopes: str,
    name: str = "",
    failing: tuple[str, ...] = (),
    **options: Any,
) -> AsyncIterator[Any]:
    """A fresh browser context (`options`: viewport, color_scheme) signed in through the form with a token of
    `scopes`; on leaving: no console errors or warnings, no error answer but from the `failing` paths (which
    the test expects to fail) and the fleet's count requests (FLEET_COUNTS), and no request left the server's
    origin."""
    context = await browser.new_context(**({"viewport": {"width": 1280, "height": 800}} | options))
    page = await context.new_page()
    errors: list[str] = []
    requests: list[str] = []
    page.on(
        "console", lambda m: errors.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None
    )
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("request", lambda r: requests.append(r.url))
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    try:
        await page.goto(f"{console.base}/ui/")
        await expect(page).to_have_url(f"{console.base}/ui/signin")
        await page.get_by_label("Bearer token").fill(console.token(*scopes))
        await page.get_by_role("button", name="Sign in").click()
        await expect(page).to_have_url(re.compile(r"/ui/#?$"))
        yield page
        if name and os.environ.get(
            "INFRA_TEST_SCREENSHOTS"
        ):  # the pictures in docs/console.md come from here
            await page.screenshot(path=Path(os.environ["INFRA_TEST_SCREENSHOTS"]) / f"console-{name}.png")
        unexpected = [
            e
            for e in errors
            if not any(f"{console.base}{path}" in e for path in failing + FLEET_COUNTS)
            and "Failed to load resource" not in e  # the console's line names no URL
        ]
        assert unexpected == [], unexpected
        assert [r for r in requests if not r.startswith((console.base + "/", "data:", "about:"))] == []
    finally:
        await context.close()


async def test_sign_in_sets_a_strict_session_cookie_and_the_fleet_lists_the_real_devices(
    browser: Any, console: Console
) -> None:
    async with signed_in(browser, console, ADMIN, name="fleet") as page:
        cookies = {c["name"]: c for c in await page.context.cookies()}
        session = cookies[SESSION_COOKIE]
        assert session["httpOnly"] and session["sameSite"] == "Strict" and not session["secure"]  # plain http
        assert 0 < session["expires"] - time.time() <= 600  # no later than the token's expiry
        assert cookies["infra_csrf"]["sameSite"] == "Strict" and not cookies["infra_csrf"]["httpOnly"]
        rows = page.locator("table.data tbody tr")
        await expect(rows).to_have_count(DEVICES, timeout=30_000)
        assert sorted(await rows.locator("th").all_inner_texts()) == ["alpha", "beta", "gone", "local", "svc"]
        await expect(rows.first).to_have_class("problem")  # problems first
        await expect(rows.first.locator("th")).to_have_text("gone")
        alpha = rows.filter(has=page.locator("th", has_text="alpha"))
        await expect(alpha.locator(".badge")).to_have_text("up")
        await expect(alpha.locator("td").nth(1)).to_have_text(re.compile(r"^\d+\.\d$"))  # CPU % now
        await expect(page.get_by_role("link", name="Audit")).to_be_visible()
        rows_audited = await audit_rows(console.state, kind="session")
        assert ("console.sign_in", "operator", "ok") in [(r.tool, r.subject, r.outcome) for r in rows_audited]
        # every console response carries the strict CSP; no inline script anywhere
        response = await page.request.get(f"{console.base}/ui/")
        assert response.headers["content-security-policy"] == CSP
        assert "<script>" not in await response.text()


async def event_stream_open(page: Any) -> None:
    """Wait until the page's event stream is open: the server has fixed where it starts, so an event logged
    after this reaches the page (one logged before the stream opened is not replayed to a new page)."""
    await expect(page.locator("#live[data-stream='open']")).to_have_count(1, timeout=20_000)


async def test_a_change_on_a_host_appears_on_changes_without_reload_with_its_diff(
    browser: Any, console: Console
) -> None:
    async with signed_in(browser, console, READ, name="changes") as page:
        await page.get_by_role("link", name="Changes").click()
        await expect(page.get_by_role("heading", name="Changes")).to_be_visible()
        await expect(page.locator("ol.changes > li")).to_have_count(0)
        marker = await page.evaluate("() => { window.notReloaded = 1; return window.notReloaded; }")
        await event_stream_open(page)
        console.compose.write_text(CHANGED)  # on the host, over SSH's inotify watch
        change = page.locator("ol.changes > li").first
        await expect(change).to_contain_text(str(console.compose), timeout=20_000)
        await expect(change.locator(".badge")).to_have_text("high risk")
        await change.get_by_role("button", name="Show diff").click()
        await expect(change.locator("table.diff td.del")).to_have_text(["    image: nginx:1.25"])
        await expect(change.locator("table.diff td.add")).to_have_text(
            ["    image: nginx:1.27", "    privileged: true"]
        )
        assert await page.evaluate("() => window.notReloaded") == marker  # the same page, live


async def test_a_read_token_sees_no_audit_page_and_cannot_restart_anything(
    browser: Any, console: Console
) -> None:
    failing = (
        *(f"/api/v1/devices/alpha/{what}" for what in LACKING),  # no docker, systemd, smartctl, ZFS there
        "/api/v1/devices/alpha/containers/web/restart",
        "/api/v1/audit",
    )
    async with signed_in(browser, console, READ, failing=failing) as page:
        await expect(page.locator("table.data tbody tr")).to_have_count(DEVICES, timeout=30_000)
        await expect(page.get_by_role("link", name="Audit")).to_be_hidden()
        await page.goto(f"{console.base}/ui/#audit")
        await expect(page.get_by_role("alert")).to_have_text("The audit log needs the infra:admin scope.")
        await page.goto(f"{console.base}/ui/#device/alpha")
        await expect(page.get_by_role("heading", name="alpha")).to_be_visible()
        await expect(page.get_by_role("button", name=re.compile("^Restart"))).to_have_count(0)
        # the API itself refuses, with the CSRF token present: the session has only infra:read
        status = await page.evaluate(
            """async () => { const csrf = document.cookie.match(/infra_csrf=([^;]+)/)[1];
               const r = await fetch('/api/v1/devices/alpha/containers/web/restart', {method: 'POST',
                 headers: {'X-CSRF-Token': csrf, 'Content-Type': 'application/json'}, body: '{}'});
               return r.status; }"""
        )
        assert status == 403
        audit = await page.evaluate("async () => (await fetch('/api/v1/audit')).status")
        assert audit == 403
    denied = await audit_rows(console.state, tool="restart_container")
    assert [(r.subject, r.client_id, r.transport, r.outcome) for r in denied] == [
        ("operator", "console", "api", "denied")
    ]


async def test_a_write_without_the_csrf_token_or_from_elsewhere_is_refused(
    browser: Any, console: Console
) -> None:
    async with signed_in(browser, console, ADMIN, failing=("/api/v1/config/watched/remove",)) as page:
        missing = await page.evaluate(
            """async () => { const r = await fetch('/api/v1/config/watched/remove', {method: 'POST',
                 headers: {'Content-Type': 'application/json'}, body: JSON.stringify({device: 'alpha', path: '/x'})});
               return [r.status, (await r.json()).error_type]; }"""
        )
        assert missing == [403, "csrf"]
        cookie = next(c["value"] for c in await page.context.cookies() if c["name"] == SESSION_COOKIE)

    # the cookie sent by anything that is not one of the console's pages counts for nothing
    async def status(session: str, **headers: str) -> int:
        async with httpx2.AsyncClient(base_url=console.base, cookies={SESSION_COOKIE: session}) as http:
            return (await http.get("/api/v1/devices", headers=headers)).status_code

    assert await status(cookie, **{"Sec-Fetch-Site": "same-origin"}) == 200  # the browser's own fetch
    assert await status(cookie) == 403  # neither Sec-Fetch-Site nor Origin: not from a console page
    assert await status(cookie, **{"Sec-Fetch-Site": "cross-site"}) == 403
    assert await status(cookie, Origin="http://evil.example") == 403
    forged = cookie[:-4] + ("AAAA" if not cookie.endswith("AAAA") else "BBBB")
    assert await status(forged, **{"Sec-Fetch-Site": "same-origin"}) == 401
    async with httpx2.AsyncClient(base_url=console.base) as http:
        signin = await http.post(
            "/ui/session", data={"token": "not-a-token"}, headers={"Sec-Fetch-Site": "same-origin"}
        )
        assert signin.status_code == 401 and "refused" in signin.text and SESSION_COOKIE not in signin.cookies
        short = await http.post(  # a token that expires in two minutes: so does its session
            "/ui/session",
            data={"token": console.token(READ, ttl=120)},
            headers={"Sec-Fetch-Site": "same-origin"},
        )
        assert short.status_code == 303 and short.headers["location"] == "/ui/"
        cookie_header = next(h for h in short.headers.get_list("set-cookie") if h.startswith(SESSION_COOKIE))
        max_age = int(cookie_header.lower().split("max-age=")[1].split(";")[0])
        assert 0 < max_age <= 120
        elsewhere = await http.post(
            "/ui/session", data={"token": console.token(ADMIN)}, headers={"Sec-Fetch-Site": "cross-site"}
        )
        assert elsewhere.status_code == 403 and SESSION_COOKIE not in elsewhere.cookies
    refused = await audit_rows(console.state, kind="session", outcome="denied")
    assert {r.error_type for r in refused} >= {"csrf", "cross_origin", "invalid_token"}


async def test_the_device_page_charts_the_recorded_history_for_each_range(
    browser: Any, console: Console
) -> None:
    failing = ("/api/v1/devices/gone/",)  # it does not answer: disks, network, containers...
    async with signed_in(browser, console, READ, name="device", failing=failing) as page:
        await page.goto(f"{console.base}/ui/#device/gone")
        cpu = page.locator("section.metric").first
        await expect(cpu.locator("h2")).to_have_text("CPU %, last 24h")
        await expect(cpu.locator("svg.chart circle.pt")).to_have_count(SEEDED)  # one per 15 min bucket
        await expect(cpu.locator("svg.chart")).to_have_attribute("aria-label", re.compile(f"{SEEDED} points"))
        await page.get_by_role("button", name="1h").click()
        await expect(cpu).to_contain_text("No history recorded in this range.")
        await page.get_by_role("button", name="7d").click()
        await expect(page.get_by_role("button", name="7d")).to_have_attribute("aria-pressed", "true")
        await expect(cpu.locator("h2")).to_have_text("CPU %, last 7d")
        await expect(cpu.locator("svg.chart circle.pt")).to_have_count(SEEDED)  # one per hour
        await expect(page.get_by_role("alert").first).to_be_visible()  # disks: why the device did not answer


async def test_audit_filters_narrow_the_log_to_what_was_asked(browser: Any, console: Console) -> None:
    async with signed_in(browser, console, ADMIN, name="audit") as page:
        await page.get_by_role("link", name="Audit").click()
        rows = page.locator("table.data tbody tr")
        await expect(rows.first).to_be_visible()
        await page.get_by_label("Subject").fill("nobody")
        await page.get_by_label("Subject").press("Enter")  # the keyboard submits too
        await expect(rows).to_have_count(0)
        await page.get_by_label("Subject").fill("")
        await page.get_by_label("Tool").fill("console.sign_in")
        await page.get_by_label("Outcome").select_option("ok")
        await page.get_by_role("button", name="Filter").click()
        signed = await audit_rows(console.state, tool="console.sign_in", outcome="ok")
        await expect(rows).to_have_count(len(signed))
        assert set(await rows.locator("td:nth-of-type(3)").all_inner_texts()) == {"console.sign_in"}
        # a call's request id shows the call with the collections it caused
        await page.get_by_label("Tool").fill("get_fleet_overview")
        await page.get_by_label("Outcome").select_option("")
        await page.get_by_role("button", name="Filter").click()
        first = rows.first.get_by_role("button", name=re.compile("^Everything of request"))
        label = await first.get_attribute("aria-label")
        assert label is not None
        request_id = label.rsplit(" ", 1)[1]
        await first.click()
        await expect(page.get_by_label("Request id")).to_have_value(request_id)
        await page.get_by_label("Tool").fill("")
        await page.get_by_role("button", name="Filter").click()
        linked = await audit_rows(console.state, request_id=request_id)
        assert len(linked) > 1 and {r.kind for r in linked} >= {"tool", "collection"}
        await expect(rows).to_have_count(len(linked))
        kinds = await rows.locator("td:nth-of-type(1)").all_inner_texts()
        assert sorted(kinds) == sorted(r.kind for r in linked)


async def test_the_console_fits_a_phone_reads_in_dark_and_works_by_keyboard(
    browser: Any, console: Console
) -> None:
    async with signed_in(
        browser, console, READ, name="phone-dark", viewport={"width": 390, "height": 844}, color_scheme="dark"
    ) as page:
        await expect(page.locator("table.data tbody tr")).to_have_count(DEVICES, timeout=30_000)
        width = await page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 390  # wide tables scroll inside their box, the page does not
        background = await page.locator("body").evaluate("b => getComputedStyle(b).backgroundColor")
        assert background == "rgb(17, 24, 39)"
        await readable(page.locator("h1, th, td, .badge, nav a, header button"))
        link = page.get_by_role("link", name="Changes")
        await link.focus()
        await page.keyboard.press("Enter")
        await expect(page.get_by_role("heading", name="Changes")).to_be_visible()
        await expect(link).to_have_attribute("aria-current", "page")
        theme = page.locator("#theme")
        await theme.focus()
        await page.keyboard.press("Enter")  # auto -> light
        await expect(page.locator("html")).to_have_attribute("data-theme", "light")
        await readable(page.locator("h1, nav a, header button, ol.changes li"))
        await page.keyboard.press("Enter")  # light -> dark, whatever the browser prefers
        await expect(page.locator("html")).to_have_attribute("data-theme", "dark")
        await readable(page.locator("h1, nav a, header button, ol.changes li"))


def test_a_session_cookie_is_signed_expires_and_holds_across_servers_with_the_same_key(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, jwt_secret=SECRET)
    sessions = Sessions(KEY.verifier(settings), settings)
    session = Session("alice", (READ,), int(time.time()) + 60, "x" * 32)
    cookie = sessions.sign(session)
    assert sessions.read(cookie) == session
    assert sessions.read(cookie, now=session.expires_at) is None  # expired
    assert Sessions(KEY.verifier(settings), settings).read(cookie) == session  # a restart, another replica
    other = SigningKey("HS256", "d" * 48, None, None)
    assert Sessions(other.verifier(settings), settings).read(cookie) is None
    # more scopes written into the payload without the key: refused
    version, payload, mac = cookie.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["scp"] = [ADMIN]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert sessions.read(f"{version}.{forged}.{mac}") is None
    assert (
        sessions.read("v1.e30.") is None and sessions.read("garbage") is None and sessions.read(None) is None
    )


def test_the_console_ships_every_asset_and_runs_no_inline_or_remote_code() -> None:
    folder = Path(console_package.__file__).parent
    for name in ("index.html", "signin.html", "app.js", "app.css"):
        text = (folder / name).read_text()
        assert not re.search(r"https?://|@import|url\(", text), name  # nothing from elsewhere
        assert not re.search(r"\son[a-z]+=|\sstyle=|eval\(|new Function|innerHTML|<script>|<style", text), (
            name
        )
    for name in ("index.html", "signin.html"):
        sources = re.findall(r'(?:src|href)="(/ui/static/[^"]+)"', (folder / name).read_text())
        assert sources and all(s.rsplit("/", 1)[1] in ASSETS for s in sources), name


async def test_a_health_flip_is_announced_and_the_fleet_reloaded_without_a_page_reload(
    browser: Any, console: Console
) -> None:
    async with signed_in(browser, console, READ) as page:
        await expect(page.locator("table.data tbody tr")).to_have_count(DEVICES, timeout=30_000)
        fleet_calls: list[str] = []
        page.on("request", lambda r: fleet_calls.append(r.url) if r.url.endswith("/api/v1/fleet") else None)
        await page.evaluate("() => { window.notReloaded = true; }")
        await event_stream_open(page)
        await console.state.health.record_failure("beta", "host_unreachable", "no answer", datetime.now(UTC))
        await expect(page.get_by_role("status")).to_have_text(
            re.compile(r"^beta: now \w+\.$"), timeout=20_000
        )
        await until(lambda: len(fleet_calls) >= 1, 20)  # the page asked for the fleet again
        assert await page.evaluate("() => window.notReloaded") is True


async def test_the_device_page_lists_services_failed_first_and_the_fleet_counts_failed_services(
    browser: Any, console: Console
) -> None:
    """svc runs the systemctl fixture (captured real units, one failed): its device page lists the units,
    the failed one first, and the fleet counts it; alpha has no systemd: a dash whose title says why, and on its
    device page the tool's error instead of a table. ZFS and drives: the error text where the host has none."""
    failing = tuple(f"/api/v1/devices/{d}/{what}" for d in ("svc", "alpha") for what in LACKING)
    async with signed_in(browser, console, READ, name="device-services", failing=failing) as page:
        counting = re.compile(r"/api/v1/devices/[^/]+/(containers|services)\?")
        # the fleet's count requests seen, and in flight at once (events may arrive out of order under load,
        # which can only make the count in flight look smaller, never larger)
        flight = {"now": 0, "most": 0, "seen": 0}

        def track(request: Any, step: int) -> None:
            if counting.search(request.url):
                flight["seen"] += step > 0
                flight["now"] += step
                flight["most"] = max(flight["most"], flight["now"])

        page.on("request", lambda r: track(r, 1))
        page.on("requestfinished", lambda r: track(r, -1))
        page.on("requestfailed", lambda r: track(r, -1))
        await page.reload()  # the fleet again, watched from its first request
        rows = page.locator("table.data tbody tr")
        await expect(rows).to_have_count(DEVICES, timeout=30_000)
        column = await page.locator("table.data thead th").all_inner_texts()
        failed_at = column.index("Failed services")  # cells: th (device) then tds
        svc = rows.filter(has=page.locator("th", has_text="svc")).locator("td").nth(failed_at - 1)
        await expect(svc).to_have_text("1", timeout=20_000)
        alpha = rows.filter(has=page.locator("th", has_text="alpha")).locator("td").nth(failed_at - 1)
        await expect(alpha).to_have_text("\u2013", timeout=20_000)
        await expect(alpha.locator("span")).to_have_attribute("title", re.compile("needs .systemd."))
        await expect(rows.locator("td span[title=loading]")).to_have_count(0)  # every count answered
        assert flight["seen"] > 0 and flight["most"] <= 4  # bounded: four at a time
        await page.goto(f"{console.base}/ui/#device/svc")
        services = page.locator("#s-services")
        await expect(services.get_by_role("heading", name="Services")).to_be_visible()
        units = services.locator("tbody tr")
        await expect(units).to_have_count(5, timeout=20_000)
        await expect(units.first.locator("th")).to_have_text("zfs-import-cache.service")  # failed first
        await expect(units.first).to_have_class("problem")
        await expect(services).to_contain_text("1 failed unit of 5.")
        await expect(page.locator("#s-zfs").get_by_role("alert")).to_contain_text("zpool")
        await expect(page.locator("#s-drives").get_by_role("alert")).not_to_be_empty()
        lo = page.locator("#s-network tbody tr").filter(has=page.locator("th", has_text="lo"))
        rate = re.compile(r"^\d+(\.\d)?[kMG]? B/s$")  # the latest recorded rates
        await expect(lo.locator("td").nth(2)).to_have_text(rate)
        await expect(lo.locator("td").nth(3)).to_have_text(rate)
        await page.goto(f"{console.base}/ui/#device/alpha")
        await expect(page.locator("#s-services").get_by_role("alert")).to_contain_text("needs 'systemd'")
