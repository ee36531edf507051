"""Log records are redacted like everything else the server writes (see redact): message, traceback and stack."""

from __future__ import annotations

import logging

from mcp_server.redact import redact_text

_TRACEBACKS = logging.Formatter()


class RedactingFilter(logging.Filter):
    """Masks secrets in every text a record carries to its handler: the message (an invalid argument FastMCP
    logs, an error's text), the traceback and the stack. The traceback is formatted here once and kept, redacted,
    as the record's exc_text, which formatters print instead of formatting the exception again."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact_text(message)
        if masked != message:
            _mask_message(record, masked)
        if record.exc_info and not record.exc_text:
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


def _mask_message(record: logging.LogRecord, masked: str) -> None:
    """Redact the arguments one by one where that suffices, so a formatter that reads them (uvicorn's access
    log unpacks client, method, path, version and status) still can; else replace the message whole."""
    if isinstance(record.args, tuple) and record.args:
        args = tuple(redact_text(arg) if isinstance(arg, str) else arg for arg in record.args)
        try:
            message = str(record.msg) % args
        except (TypeError, ValueError):
            message = None
        if message is not None and redact_text(message) == message:
            record.args = args
            return
    record.msg, record.args = masked, None


def redact_log_handlers() -> None:
    """Install RedactingFilter on every handler configured so far: the root logger's (asyncssh and our own
    modules propagate to it) and those of loggers that do not propagate (FastMCP's, uvicorn's). A handler that
    draws tracebacks from the live exception (rich's, which FastMCP uses) prints the redacted text instead.
    Called again once FastMCP and uvicorn have set up theirs (the server's lifespan), as they replace them."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
            if getattr(handler, "rich_tracebacks", False):
                handler.rich_tracebacks = False
