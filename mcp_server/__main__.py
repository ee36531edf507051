from mcp_server.cli_entry import run

run()
