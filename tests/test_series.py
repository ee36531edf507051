"""Migrations that create what they created on the day they were written."""

from __future__ import annotations

import ast
from pathlib import Path

REVISIONS = Path(__file__).resolve().parent.parent / "migrations" / "versions"


def test_migrations_import_nothing_of_the_live_schema() -> None:
    """A revision creates what it created on the day: names, columns and storage SQL are copied into it.
    The one live call allowed is 0005's look at what the database offers (choose_mode)."""
    allowed = {"__future__", "datetime", "sqlalchemy", "alembic"}
    for path in sorted(REVISIONS.glob("0*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = {a.name for a in node.names}
                if (node.module, names) == ("mcp_server.db.series", {"choose_mode"}):
                    continue
                assert node.module.split(".")[0] in allowed, f"{path.name} imports {node.module}"
            elif isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] in allowed for a in node.names), path.name
