from mcp_server.cli import run

run()
