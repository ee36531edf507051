"""The in-chat views (MCP Apps): get_fleet_overview, get_metrics_history and get_config_diff link a `ui://`
resource that a host implementing the extension renders next to the result (a sortable table with
sparklines, a chart, a side-by-side diff). Hosts without it read the same structured result as before.

Each view is one self-contained HTML document: its page (fleet.html, history.html, diff.html) with the shared
stylesheet and script (views.css, views.js: theme, table, sparkline, chart, diff, the postMessage bridge)
inlined, so it needs no network and runs under a CSP that allows nothing but its own inline code.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from importlib import resources
from typing import Any

from fastmcp import FastMCP
from fastmcp.apps import UI_MIME_TYPE
from fastmcp.resources import FunctionResource

VIEWS = {
    "fleet": "Fleet overview: every device's health, CPU and memory with 24 h sparklines; sortable.",
    "history": "A metric over time: the bucket averages as a line, min..max as a band, and min/avg/max.",
    "diff": "A configuration change side by side, with its risk, the reasons and the affected services.",
}


def uri(view: str) -> str:
    """The resource a tool's result is rendered with."""
    if view not in VIEWS:
        raise ValueError(f"no view named {view!r}; known: {', '.join(VIEWS)}")
    return f"ui://infrastructor/{view}.html"


def linked(view: str) -> dict[str, Any]:
    """A tool's `_meta` linking its result to a view (the MCP Apps `ui.resourceUri`)."""
    return {"ui": {"resourceUri": uri(view)}}


def _asset(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


@functools.cache
def page(view: str) -> str:
    """The view's HTML with the shared stylesheet and script inlined."""
    uri(view)  # a known view
    html = _asset(f"{view}.html")
    # "</" would end the inline element early: the shared assets contain none (tests/test_apps.py checks)
    return html.replace("/*INFRA_CSS*/", _asset("views.css"), 1).replace(
        "/*INFRA_JS*/", _asset("views.js"), 1
    )


def register(mcp: FastMCP[Any]) -> None:
    """Add each view as a `ui://` resource (MIME type text/html;profile=mcp-app)."""
    for view, description in VIEWS.items():
        mcp.add_resource(
            FunctionResource.from_function(
                _reader(view),
                uri=uri(view),
                name=f"{view}_view",
                description=description,
                mime_type=UI_MIME_TYPE,
                meta={"ui": {"prefersBorder": True}},
            )
        )


def _reader(view: str) -> Callable[[], str]:
    def read() -> str:
        return page(view)

    return read
