"""Log lines are redacted like everything else the server writes (see redact.py)."""

from __future__ import annotations

import logging

from mcp_server.redact import redact_text


class RedactingFilter(logging.Filter):
    """Masks secrets in every record a handler emits: an invalid argument FastMCP logs, an error's text."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact_text(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def redact_log_handlers(*loggers: logging.Logger) -> None:
    """Install RedactingFilter on the handlers of `loggers` (root and FastMCP's, which does not propagate)."""
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
