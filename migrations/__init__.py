"""Alembic migrations (installed as mcp_server.migrations)."""
