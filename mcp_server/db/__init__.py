"""Storage: engine and sessions, tables, migrations and queries (plain async functions)."""

# The series tables are declared beside their series; importing the index here puts them on Base.metadata
# (and in the writer's table map) for anyone who uses the database.
import mcp_server.series  # noqa: F401
from mcp_server.db.engine import Database, migrate

__all__ = ["Database", "migrate"]
