"""The result budget: big results are cut by whole list items, stay valid JSON and say what was cut."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from fastmcp import Client

from mcp_server.budget import MARKER, fit
from mcp_server.db.history import DeviceTrend
from mcp_server.middleware import without_nulls
from mcp_server.reports import FleetDevice, FleetOverview, _no_trend
from mcp_server.server import build_server
from mcp_server.settings import Settings
from tests.app_fixtures import make_settings


def size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")))


def test_a_result_within_budget_is_returned_unchanged() -> None:
    payload = {"device": "x", "data": {"items": [1, 2, 3]}}
    assert fit(payload, 1000) is payload


def test_the_largest_list_is_shortened_to_fit_with_a_note() -> None:
    payload: dict[str, Any] = {
        "device": "x",
        "data": {"small": [1] * 5, "big": [{"name": f"item{i}", "v": i} for i in range(500)]},
    }
    out = fit(payload, 2000)
    assert size(out) <= 2000
    assert out["data"]["small"] == [1] * 5
    kept = len(out["data"]["big"])
    assert 0 < kept < 500 and out["data"]["big"] == payload["data"]["big"][:kept]
    assert out[MARKER].startswith(f"data.big: kept {kept} of 500 items")
    assert len(payload["data"]["big"]) == 500  # the input is not modified


@pytest.mark.parametrize("limit", [1000, 1500, 4000, 10_000])
def test_nested_lists_and_long_strings_are_cut_until_the_result_fits(limit: int) -> None:
    payload = {
        "data": {
            "groups": [{"members": [f"m{i}-{j}" for j in range(50)]} for i in range(40)],
            "log": "x" * 20_000,
        }
    }
    out = fit(payload, limit)
    assert size(out) <= limit
    assert MARKER in out and json.loads(json.dumps(out)) == out


async def test_tool_results_respect_infra_max_result_chars(tmp_path: Any) -> None:
    settings: Settings = make_settings(tmp_path, max_result_chars=2000)
    async with Client(build_server(settings)) as client:
        result = await client.call_tool(
            "list_processes", {"device": "local", "limit": 200, "sort_by": "memory"}
        )
    content = result.structured_content
    assert size(content) <= 2000
    assert "data.processes: kept" in content[MARKER]
    assert json.loads(result.content[0].text) == content


def test_keep_newest_keeps_the_end_of_the_list_and_marks_it_truncated() -> None:
    payload: dict[str, Any] = {"data": {"lines": [f"line {i:04d}" for i in range(1000)], "truncated": False}}
    out = fit(payload, 1500, keep="newest")
    lines = out["data"]["lines"]
    assert size(out) <= 1500 and lines[-1] == "line 0999" and lines == payload["data"]["lines"][-len(lines) :]
    assert out["data"]["truncated"] is True and "kept newest" in out[MARKER]


async def test_log_tools_keep_their_newest_entries_within_the_budget(tmp_path: Any) -> None:
    settings: Settings = make_settings(tmp_path, max_result_chars=1500)
    async with Client(build_server(settings)) as client:
        tools = {t.name: t for t in await client.list_tools()}
    tagged = {
        name
        for name, t in tools.items()
        if "budget:keep-newest" in (t.meta or {}).get("fastmcp", {}).get("tags", [])
    }
    assert tagged == {"get_container_logs", "get_journal_logs", "get_service_status"}


@pytest.mark.parametrize("with_trends", [True, False])
def test_a_fleet_overview_of_a_hundred_devices_fits_the_default_budget_whole(
    tmp_path: Any, with_trends: bool
) -> None:
    # what a tool result costs as the budget middleware measures it: nulls left out, compact JSON; device
    # names as long as a homelab's, numbers as a busy fleet's
    trend = DeviceTrend(
        window_hours=24, cpu_percent="rising", cpu_change=12.4, memory_percent="falling", memory_change=-8.7
    )
    devices = [
        FleetDevice(
            device=f"nas-backup-{i:02d}.lan",
            ok=True,
            cpu_percent=37.5,
            cpu_count=16,
            load_1m=3.25,
            memory_used_percent=81.4,
            swap_used_percent=2.1,
            uptime_seconds=3_456_789.12,
            fullest_mount="/var/lib/docker",
            fullest_use_percent=88.2,
            collected_at=datetime.now(UTC),
            from_cache=False,
            trend=trend if with_trends else None,
        )
        for i in range(100)
    ]
    note = None if with_trends else _no_trend(make_settings(tmp_path))
    overview = FleetOverview(
        devices=devices, total=100, ok=100, failed=0, duration_ms=1234.5, trend_note=note
    )
    lean = without_nulls(overview.model_dump(mode="json"))
    assert fit(lean, Settings.model_fields["max_result_chars"].default) is lean
