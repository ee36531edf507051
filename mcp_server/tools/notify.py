"""What a tool call tells its client while it runs: progress per finished step, warnings as log messages.

Log notifications (`notifications/message`) are sent, not dropped, because the protocol still carries them
for the clients that ask, and FastMCP 4.1 and the SDK gate them as each protocol version requires:
- 2025-11-25 sessions: FastMCP drops a message below the level the client set with `logging/setLevel`, and
  below warning when it set none (the spec leaves that default to the server; see build_server).
- 2026-07-28 requests: logging is deprecated (SEP-2577) and opt-in per request; the SDK sends nothing unless
  the request's `_meta` carries `io.modelcontextprotocol/logLevel`, and nothing below that level.
Only warnings are sent (a device or drive that failed while the call went on, a result cut to the size
budget), redacted like all output. Progress is sent only when the request carried a progressToken (FastMCP checks).
"""

from __future__ import annotations

from fastmcp import Context
from fastmcp.dependencies import CurrentContext

from mcp_server.progress import OnStep, StepDone
from mcp_server.redact import redact_text

LOGGER = "infrastructor"


async def warn(ctx: Context, message: str) -> None:
    """A warning for the client of this call, as a log notification (where it asked for them)."""
    await ctx.log(redact_text(message), level="warning", logger_name=LOGGER)


def step_reporter(ctx: Context = CurrentContext()) -> OnStep:
    """Dependency for tools that work in steps: progress per finished step, a warning per failed one."""

    async def report(step: StepDone) -> None:
        await ctx.report_progress(step.done, step.total, redact_text(step.message))
        if step.problem is not None:
            await warn(ctx, step.problem)

    return report
