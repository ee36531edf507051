"""Storage: engine and sessions, tables, migrations and queries (plain async functions)."""

from mcp_server.db.engine import Database, migrate

__all__ = ["Database", "migrate"]
