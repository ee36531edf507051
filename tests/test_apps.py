"""The in-chat views (MCP Apps) in a real browser: a server with the sshd fleet answers get_fleet_overview,
get_metrics_history and get_config_diff; a minimal host page loads each view's ui:// resource in a sandboxed
iframe under a CSP that allows only its inline code, and speaks the MCP Apps protocol to it with the real
result (and proxies the view's own tools/call back to the server). Debian's chromium, driven by Playwright."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import mcp_types as mt
import pytest
from fastmcp import Client
from playwright.async_api import expect

from mcp_server import ui
from mcp_server.metrics_history import metrics_history
from mcp_server.middleware import without_nulls
from mcp_server.series.system import SystemMetricRow
from mcp_server.server import build_server
from mcp_server.settings import Settings
from mcp_server.state import AppState, open_state
from tests.app_fixtures import add_fleet_host, make_settings
from tests.helpers import read_text, structured, unavailable, until
from tests.sshd import SshdFleet
from tests.test_history import system_rows

VIEWS = {
    "get_fleet_overview": "ui://infrastructor/fleet.html",
    "get_metrics_history": "ui://infrastructor/history.html",
    "get_config_diff": "ui://infrastructor/diff.html",
}
COMPOSE = "services:\n  web:\n    image: nginx:1.25\n    ports:\n      - '8080:80'\n"
# the last line is for the browser to show, never to run
HOSTILE = '# <img src=x onerror="parent.postMessage(1, `*`)"><script>alert(1)</script>'
CHANGED = f"services:\n  web:\n    image: nginx:1.27\n    privileged: true\n    ports:\n      - '8080:80'\n{HOSTILE}\n"
HOURS = 24

# What a host's sandbox allows a view: its own inline script and style, nothing from anywhere.
VIEW_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
    "base-uri 'none'; form-action 'none'"
)

# A minimal MCP Apps host: the view in a sandboxed iframe (an opaque origin), JSON-RPC over postMessage.
HOST_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>host</title></head><body>
<iframe id="view" sandbox="allow-scripts" title="view" width="900" height="400"></iframe>
<script>
window.hostLog = [];
window.startView = ([html, input, result, theme]) => {
  const frame = document.getElementById("view");
  const post = (message) => frame.contentWindow.postMessage({ jsonrpc: "2.0", ...message }, "*");
  window.addEventListener("message", async (event) => {
    if (event.source !== frame.contentWindow) return;
    const msg = event.data;
    window.hostLog.push(msg.method || "response");
    if (msg.method === "ui/initialize") {
      post({ id: msg.id, result: { protocolVersion: "2026-01-26", hostInfo: { name: "test-host", version: "1" },
        hostCapabilities: { serverTools: {} }, hostContext: { theme, displayMode: "inline" } } });
    } else if (msg.method === "ui/notifications/initialized") {
      post({ method: "ui/notifications/tool-input", params: { arguments: input } });
      post({ method: "ui/notifications/tool-result", params: result });
    } else if (msg.method === "tools/call") {
      try { post({ id: msg.id, result: JSON.parse(await window.hostCallTool(JSON.stringify(msg.params))) }); }
      catch (error) { post({ id: msg.id, error: { code: -32000, message: String(error) } }); }
    } else if (msg.method === "ui/notifications/size-changed") {
      frame.height = String(Math.min(msg.params.height + 4, 2000));
    }
  });
  frame.srcdoc = html;
};
</script></body></html>"""


# WCAG contrast ratio of an element's text over the background it sits on (computed colours, rgb/rgba).
CONTRAST = """(node) => {
  const rgb = (c) => c.match(/[\\d.]+/g).slice(0, 3).map(Number);
  const lum = (c) => { const [r, g, b] = rgb(c).map((v) => { v /= 255;
    return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; }); return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
  let back = node;
  while (back && /rgba\\(.*, 0\\)|transparent/.test(getComputedStyle(back).backgroundColor)) back = back.parentElement;
  const [a, b] = [lum(getComputedStyle(node).color), lum(getComputedStyle(back || document.body).backgroundColor)];
  return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
}"""


async def readable(locator: Any) -> None:
    """Every element the locator finds has text at WCAG AA contrast (4.5:1) or better."""
    for each in await locator.all():
        ratio = await each.evaluate(CONTRAST)
        assert ratio >= 4.5, f"{await each.inner_text()!r}: contrast {ratio:.2f}"


def with_csp(html: str) -> str:
    """The view as a host's sandbox serves it: under a CSP allowing only its own inline code."""
    meta = f'<meta http-equiv="Content-Security-Policy" content="{VIEW_CSP}">'
    return html.replace("<head>", "<head>" + meta, 1)


def wire(result: mt.CallToolResult) -> dict[str, Any]:
    """A tool result as JSON-RPC carries it (camelCase)."""
    dumped: dict[str, Any] = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    return dumped


def shown_as(value: float) -> str:
    """A number as the views print it (JavaScript's toFixed(1): the exact value, halves rounded up)."""
    return str(Decimal(value).quantize(Decimal("0.1"), ROUND_HALF_UP))


def content(result: mt.CallToolResult) -> dict[str, Any]:
    data = result.structured_content
    assert isinstance(data, dict) and not result.is_error, result
    return data


def hour_start(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


# ---- the served views, without a browser ---------------------------------------------------------------


async def test_the_three_tools_link_a_view_served_as_an_mcp_app(sqlite_settings: Settings) -> None:
    async with Client(build_server(sqlite_settings)) as client:
        tools = {t.name: t for t in await client.list_tools()}
        for tool, uri in VIEWS.items():
            assert (tools[tool].meta or {}).get("ui") == {"resourceUri": uri}, tool
        assert "ui" not in (tools["get_system_metrics"].meta or {})
        listed = {str(r.uri): r for r in await client.list_resources()}
        for uri in VIEWS.values():
            assert listed[uri].mime_type == "text/html;profile=mcp-app"
            content = (await client.read_resource(uri))[0]
            assert (
                isinstance(content, mt.TextResourceContents)
                and content.mime_type == "text/html;profile=mcp-app"
            )
            html = content.text
            assert html.startswith("<!doctype html>") and "InfraUI" in html and len(html) < 40_000
            # self-contained and strict-CSP friendly: nothing fetched, no inline handlers or style attributes
            assert not re.search(r"\b(src|href)=|https?://(?!www\.w3\.org/2000/svg)|@import|url\(", html), uri
            assert not re.search(r"\son[a-z]+=|\sstyle=|eval\(|new Function|innerHTML", html), uri
        for asset in ("views.js", "views.css"):
            assert "</" not in (Path(ui.__file__).parent / asset).read_text(), f"{asset} would close its tag"


async def test_a_view_is_served_whole_whatever_the_result_budget(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_result_chars=1_000)
    async with Client(build_server(settings)) as client:
        for uri in VIEWS.values():
            html = await read_text(client, uri)
            assert len(html) > 10_000 and html.rstrip().endswith("</html>"), uri
        assert "result_truncated" in await read_text(client, "infra://commands")  # others are cut


async def test_a_host_without_the_extension_gets_the_same_structured_result(state: AppState) -> None:
    start = hour_start(datetime.now(UTC)) - timedelta(hours=3)
    for minutes in range(0, 180, 15):
        row = system_rows()[0] | {"device": "local", "collected_at": start + timedelta(minutes=minutes)}
        state.writer.add(SystemMetricRow, row)
    await state.writer.flush()
    since, until = start.isoformat(), (start + timedelta(hours=3)).isoformat()
    asked = {"device": "local", "metric": "cpu_percent", "since": since, "until": until, "bucket": "1h"}
    async with Client(build_server(state.settings, state=state)) as client:
        result = await client.call_tool("get_metrics_history", asked)
    text = result.content[0]
    direct = await metrics_history(  # the core, without MCP
        state.db,
        state.devices,
        state.settings,
        device="local",
        metric="cpu_percent",
        since=since,
        until=until,
        bucket="1h",
    )
    assert structured(result) == without_nulls(direct.model_dump(mode="json"))  # MCP results drop null fields
    assert isinstance(text, mt.TextContent) and json.loads(text.text) == structured(result)
    assert len(direct.points) == 3


# ---- in a real browser ---------------------------------------------------------------------------------


@dataclass
class Rig:
    """The real server's answers and a client to it, for the host page to forward the views' calls."""

    client: Client[Any]
    html: dict[str, str]
    results: dict[str, mt.CallToolResult]
    inputs: dict[str, dict[str, Any]]
    calls: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture(scope="module")
async def rig(sshd_fleet: SshdFleet, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    """alpha and beta (real sshd hosts), local, and gone (nothing listens there); a day of hourly history for alpha; a watched compose file
    on alpha edited once; each linked tool's real result."""
    if shutil.which("inotifywait") is None:
        unavailable("sshd", "inotifywait is not installed (apt-get install inotify-tools)")
    settings = make_settings(tmp_path_factory.mktemp("apps"), config_debounce=0.2, config_poll_interval=0.3)
    async with open_state(settings) as state:
        await state.config.start()
        for name in ("alpha", "beta"):
            await add_fleet_host(state, sshd_fleet, sshd_fleet.hosts[name])
        await add_fleet_host(
            state, sshd_fleet, sshd_fleet.hosts["alpha"], name="gone", port=1
        )  # nothing there
        end = hour_start(datetime.now(UTC))
        start = end - timedelta(hours=HOURS)
        for minutes in range(5, HOURS * 60, 20):  # three samples in each hour
            row = system_rows()[0] | {"device": "alpha", "collected_at": start + timedelta(minutes=minutes)}
            row["cpu_percent"] = float(10 + minutes % 70)
            state.writer.add(SystemMetricRow, row)
        await state.writer.flush()
        compose = sshd_fleet.scratch_dir() / "compose.yaml"
        compose.write_text(COMPOSE)
        async with Client(build_server(settings, state=state)) as client:
            await client.call_tool("watch_config_file", {"device": "alpha", "path": str(compose)})
            await until(lambda: state.config.status("alpha").mode == "inotify", 20)
            compose.write_text(CHANGED)
            deadline = time.monotonic() + 20
            while (await state.config.history("alpha", str(compose), 10, 0)).total < 2:
                assert time.monotonic() < deadline, "the edit was not recorded within 20 s"
                await asyncio.sleep(0.05)
            inputs = {
                "get_fleet_overview": {},
                "get_metrics_history": {
                    "device": "alpha",
                    "metric": "cpu_percent",
                    "since": start.isoformat(),
                    "until": end.isoformat(),
                    "bucket": "1h",
                },
                "get_config_diff": {"device": "alpha", "path": str(compose)},
            }
            results = {tool: await client.call_tool_mcp(tool, args) for tool, args in inputs.items()}
            html = {tool: await read_text(client, uri) for tool, uri in VIEWS.items()}
            yield Rig(client, html, results, inputs)


@contextlib.asynccontextmanager
async def shown(
    browser: Any, rig: Rig, tool: str, theme: str | None = "light", *, prefers: str = "light"
) -> AsyncIterator[Any]:
    """A fresh host page showing `tool`'s view with its real result; yields the view's frame. On leaving:
    no console errors or warnings, no request for anything, and the view did the MCP Apps handshake.
    `theme` is the host's (None: it sends none); `prefers` the browser's prefers-color-scheme."""
    page = await browser.new_page(color_scheme=prefers)
    errors: list[str] = []
    requests: list[str] = []
    page.on(
        "console", lambda m: errors.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None
    )
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("request", lambda r: requests.append(r.url))

    async def host_call_tool(params: str) -> str:
        asked = json.loads(params)
        rig.calls.append(asked)
        return json.dumps(wire(await rig.client.call_tool_mcp(asked["name"], asked.get("arguments") or {})))

    try:
        await page.expose_function("hostCallTool", host_call_tool)
        await page.set_content(HOST_PAGE)
        args = [with_csp(rig.html[tool]), rig.inputs[tool], wire(rig.results[tool]), theme]
        await page.evaluate("(args) => window.startView(args)", args)
        yield page.frame_locator("#view")
        if os.environ.get("INFRA_TEST_SCREENSHOTS"):  # the pictures in docs/apps.md come from here
            name = f"apps-{Path(VIEWS[tool]).stem}-{theme or prefers}.png"
            await page.locator("#view").screenshot(path=Path(os.environ["INFRA_TEST_SCREENSHOTS"]) / name)
        log = await page.evaluate("window.hostLog")
        assert log[:2] == ["ui/initialize", "ui/notifications/initialized"], log
        assert errors == [], errors
        assert [r for r in requests if not r.startswith(("about:", "data:"))] == []
    finally:
        await page.close()


async def test_the_fleet_view_lists_the_real_devices_sortable_with_sparklines(browser: Any, rig: Rig) -> None:
    overview = content(rig.results["get_fleet_overview"])
    devices = {d["device"]: d for d in overview["devices"]}
    assert set(devices) == {"alpha", "beta", "gone", "local"} and overview["failed"] == 1
    async with shown(browser, rig, "get_fleet_overview") as view:
        rows = view.locator("table.data tbody tr")
        await expect(rows).to_have_count(4)
        names = await rows.locator("th").all_inner_texts()
        assert sorted(names) == ["alpha", "beta", "gone", "local"]
        # problems first, saying what is wrong
        await expect(rows.first).to_have_class("problem")
        await expect(rows.first.locator(".badge")).to_have_text(devices["gone"]["error_type"])
        # CPU % as the result has it, on the device's row
        for name in ("alpha", "beta", "local"):
            row = rows.filter(has=view.locator("th", has_text=re.compile(f"^{name}$")))
            await expect(row.locator("td").nth(1)).to_have_text(shown_as(devices[name]["cpu_percent"]))
        # alpha's day of history becomes a sparkline, fetched by the view through the host (tools/call)
        alpha = rows.filter(has=view.locator("th", has_text="alpha"))
        await expect(alpha.locator("svg.spark polyline")).to_have_count(2, timeout=20_000)
        points = await alpha.locator("svg.spark polyline").first.get_attribute("points")
        assert points is not None and len(points.split()) >= HOURS
        asked = [c["arguments"] for c in rig.calls if c["name"] == "get_metrics_history"]
        assert {"device": "alpha", "metric": "cpu_percent", "since": "24h", "bucket": "1h"} in asked
        # sortable by mouse and keyboard, the state announced through aria-sort
        device = view.locator("thead th").first
        await device.locator("button").click()
        await expect(device).to_have_attribute("aria-sort", "ascending")
        assert await rows.locator("th").all_inner_texts() == ["alpha", "beta", "gone", "local"]
        await device.locator("button").press("Enter")
        await expect(device).to_have_attribute("aria-sort", "descending")
        assert await rows.locator("th").all_inner_texts() == ["local", "gone", "beta", "alpha"]
        await readable(view.locator("th, td, .badge, .status"))


async def test_the_history_view_charts_every_point_with_min_avg_max(browser: Any, rig: Rig) -> None:
    history = content(rig.results["get_metrics_history"])
    points = history["points"]
    assert len(points) == HOURS
    samples = sum(p["samples"] for p in points)
    expected = {
        "min": min(p["min"] for p in points),
        "avg": sum(p["avg"] * p["samples"] for p in points) / samples,
        "max": max(p["max"] for p in points),
    }
    async with shown(browser, rig, "get_metrics_history", theme="dark") as view:
        await expect(view.locator("svg.chart circle.pt")).to_have_count(HOURS)
        for label, value in expected.items():
            stat = view.locator("dl.stats div", has=view.locator("dt", has_text=label))
            await expect(stat.locator("dd")).to_have_text(shown_as(value) + "%")
        await expect(view.locator("svg.chart")).to_have_attribute("aria-label", re.compile(f"{HOURS} points"))
        # the host's dark theme wins over the browser's light preference
        await expect(view.locator("html")).to_have_attribute("data-theme", "dark")
        background = await view.locator("body").evaluate("b => getComputedStyle(b).backgroundColor")
        assert background == "rgb(17, 24, 39)"
        await readable(view.locator("h1, .status, dt, dd"))


async def test_the_diff_view_shows_the_changed_lines_side_by_side_with_the_risk(
    browser: Any, rig: Rig
) -> None:
    diff = content(rig.results["get_config_diff"])
    assert diff["risk"] == "high" and diff["added_lines"] == 3 and diff["removed_lines"] == 1
    async with shown(browser, rig, "get_config_diff", theme=None, prefers="dark") as view:
        await expect(view.locator("table.diff td.del")).to_have_text(["    image: nginx:1.25"])
        await expect(view.locator("table.diff td.add")).to_have_text(
            ["    image: nginx:1.27", "    privileged: true", HOSTILE]
        )
        await expect(view.locator("img, table.diff script")).to_have_count(0)  # text, not markup
        # unchanged lines sit on both sides, at their line numbers
        ports = view.locator("table.diff tr.same", has_text="ports:")
        await expect(ports.locator("td.ln")).to_have_text(["4", "5"])
        await expect(view.locator(".badge.high")).to_have_text("high risk")
        await expect(view.locator("ul.reasons li")).to_have_count(len(diff["reasons"]))
        # no theme from the host: the browser's dark preference applies, readable too
        await expect(view.locator("html")).not_to_have_attribute("data-theme", re.compile(".*"))
        background = await view.locator("body").evaluate("b => getComputedStyle(b).backgroundColor")
        assert background == "rgb(17, 24, 39)"
        await readable(view.locator("table.diff td:not(:empty), .badge, ul.reasons li"))
