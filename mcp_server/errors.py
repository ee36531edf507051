"""Every error Infrastructor raises on purpose.

    InfrastructorError                 base; str(error) is a message an agent can act on
    ├── ConfigurationError             a bad INFRA_* setting (names the variable)
    ├── DeviceNotFound                 unknown device name (carries the known names)
    ├── DeviceExists                   add_device with a name already taken
    ├── DeviceLimit                    add_device beyond INFRA_MAX_DEVICES
    ├── UnknownCommand                 name not in the CommandRegistry (carries the known names)
    ├── InvalidParameter               a parameter failed validation; nothing was executed
    │   └── ArgumentsTooLarge          a call's arguments exceed INFRA_MAX_ARGUMENT_CHARS
    ├── ConnectionError_               could not get a working SSH connection
    │   ├── HostUnreachable            DNS failure; no SSH server answered (one message: refused,
    │   │                              reset, timed out or not SSH are not told apart)
    │   ├── AuthenticationFailed       the server rejected our key or password
    │   ├── HostKeyMismatch            the host key differs from the known or pinned one
    │   └── HostKeyUnknown             strict host-key policy and the host is not in known_hosts
    ├── ExecutionError                 the connection worked but the command did not
    │   ├── CommandFailed              non-zero exit (carries exit status and stderr tail)
    │   ├── CommandTimeout             no exit within the command's timeout
    │   ├── CommandNotAvailable        the binary is missing on the device
    │   ├── SudoPasswordRequired       use_sudo is set but sudo wants a password
    │   ├── OutputTooLarge             the command wrote more than INFRA_MAX_OUTPUT_BYTES; it was stopped
    │   └── SessionLimit               a long-lived stream would leave no SSH session for commands
    ├── ParseError                     output we could not understand (carries an excerpt)
    ├── MissingScope                   the caller's token lacks the scope a tool or resource needs
    ├── SubscriptionLimit              a session or subject already holds as many subscriptions as allowed
    └── StorageError                   the database refused or is unreachable

Foreign exceptions (asyncssh, OSError, SQLAlchemy) are translated into these at the I/O edge
(`ssh.py`, `executors.py`, `db/`); nothing above that edge catches anything else.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING

from mcp_server.redact import secret_name

if TYPE_CHECKING:
    from pydantic import ValidationError
    from pydantic_core import ErrorDetails


class InfrastructorError(Exception):
    """Base of every expected failure; the message is safe to show to a client."""

    error_type: str = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[object, ...]:
        # rebuilt as it was, whatever the subclass's __init__ takes (errors cross from parse workers)
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))


def _rebuild(cls: type[InfrastructorError], message: str, state: dict[str, object]) -> InfrastructorError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class ConfigurationError(InfrastructorError):
    error_type = "configuration_error"


class DeviceNotFound(InfrastructorError):
    error_type = "device_not_found"

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = sorted(known)
        listed = ", ".join(self.known) if self.known else "none registered (use add_device)"
        super().__init__(f"Unknown device {name!r}. Known devices: {listed}.")


class DeviceExists(InfrastructorError):
    error_type = "device_exists"

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"A device named {name!r} already exists; use update_device to change it.")


class DeviceLimit(InfrastructorError):
    error_type = "device_limit"

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        super().__init__(
            f"Cannot add device {name!r}: the limit of {limit:,} registered devices (INFRA_MAX_DEVICES) is "
            "reached. Remove devices that are no longer needed, or raise INFRA_MAX_DEVICES."
        )


class UnknownCommand(InfrastructorError):
    error_type = "unknown_command"

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = sorted(known)
        super().__init__(f"Unknown command {name!r}. Registered commands: {', '.join(self.known)}.")


class InvalidParameter(InfrastructorError):
    error_type = "invalid_parameter"


class ArgumentsTooLarge(InvalidParameter):
    error_type = "arguments_too_large"


class Overloaded(InfrastructorError):
    """The audit cannot keep up (rows wait for the journal or the database): new calls are refused."""

    error_type = "overloaded"


class ConnectionError_(InfrastructorError):
    """Base for failures to obtain a working connection to a device."""

    error_type = "connection_error"

    def __init__(self, device: str, detail: str) -> None:
        self.device = device
        self.detail = detail
        super().__init__(f"{self.prefix} {device!r}: {detail}")

    prefix = "Cannot connect to device"


class HostUnreachable(ConnectionError_):
    error_type = "host_unreachable"
    prefix = "Cannot reach device"


class AuthenticationFailed(ConnectionError_):
    error_type = "authentication_failed"
    prefix = "Authentication failed for device"


class HostKeyMismatch(ConnectionError_):
    error_type = "host_key_mismatch"
    prefix = "Host key verification FAILED for device"


class HostKeyUnknown(ConnectionError_):
    error_type = "host_key_unknown"
    prefix = "Host key not trusted for device"


class ExecutionError(InfrastructorError):
    error_type = "execution_error"


class CommandFailed(ExecutionError):
    error_type = "command_failed"

    def __init__(self, device: str, command: str, exit_status: int, stderr: str) -> None:
        self.device = device
        self.command = command
        self.exit_status = exit_status
        self.stderr_tail = stderr.strip()[-500:]
        detail = f": {self.stderr_tail}" if self.stderr_tail else ""
        super().__init__(f"Command {command!r} on device {device!r} exited with status {exit_status}{detail}")


class CommandTimeout(ExecutionError):
    error_type = "command_timeout"

    def __init__(self, device: str, command: str, timeout: float) -> None:
        self.device = device
        self.command = command
        self.timeout = timeout
        super().__init__(
            f"Command {command!r} on device {device!r} did not finish within {timeout:g}s and was stopped."
        )


class CommandNotAvailable(ExecutionError):
    error_type = "command_not_available"

    def __init__(self, device: str, command: str, binary: str) -> None:
        self.device = device
        self.command = command
        self.binary = binary
        super().__init__(
            f"Command {command!r} needs {binary!r}, which is not installed (or not on PATH) "
            f"on device {device!r}."
        )


class SudoPasswordRequired(ExecutionError):
    error_type = "sudo_password_required"

    def __init__(self, device: str, command: str) -> None:
        self.device = device
        self.command = command
        super().__init__(
            f"Command {command!r} on device {device!r} needs root and sudo asked for a password, which the "
            "server never answers. Allow it without one for the SSH user, e.g. a sudoers line "
            "'USER ALL=(root) NOPASSWD: /usr/sbin/smartctl, /usr/sbin/zpool', or turn use_sudo off."
        )


class OutputTooLarge(ExecutionError):
    error_type = "output_too_large"

    def __init__(self, device: str, command: str, limit: int) -> None:
        self.device = device
        self.command = command
        self.limit = limit
        super().__init__(
            f"Command {command!r} on device {device!r} wrote more than {limit:,} bytes of output and was "
            "stopped. Ask for less (limit, tail, lines or grep where the tool takes them), or raise "
            "INFRA_MAX_OUTPUT_BYTES."
        )


class SessionLimit(ExecutionError):
    error_type = "session_limit"

    def __init__(self, device: str, command: str, max_sessions: int) -> None:
        self.device = device
        self.command = command
        super().__init__(
            f"Command {command!r} would hold one of the {max_sessions} SSH sessions allowed per device "
            f"(INFRA_SSH_MAX_SESSIONS) on {device!r} for as long as it runs, leaving none for other commands; "
            "raise INFRA_SSH_MAX_SESSIONS to at least 2."
        )


class ParseError(InfrastructorError):
    error_type = "parse_error"

    def __init__(self, what: str, excerpt: str = "") -> None:
        self.excerpt = excerpt[:300]
        tail = f" Output began: {self.excerpt!r}" if self.excerpt else ""
        super().__init__(f"Could not parse {what}.{tail}")


class MissingScope(InfrastructorError):
    error_type = "missing_scope"


class SubscriptionLimit(InfrastructorError):
    error_type = "subscription_limit"


class StorageError(InfrastructorError):
    error_type = "storage_error"


class DatabaseTimeout(StorageError):
    """The database did not answer a call's read within INFRA_DB_READ_TIMEOUT (it hangs or is overloaded)."""

    error_type = "database_timeout"


def invalid(exc: ValidationError, prefix: str = "") -> InvalidParameter:
    """An InvalidParameter naming every field pydantic rejected and why ('port: ...; hostname: ...')."""
    problems = "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'params'}: "
        + error["msg"].removeprefix("Value error, ")
        for error in exc.errors()
    )
    return InvalidParameter(prefix + problems)


# pydantic error type -> what the value must be (pydantic's own message is the fallback)
_MUST = {
    "less_than_equal": "must be ≤ {le}",
    "less_than": "must be < {lt}",
    "greater_than_equal": "must be ≥ {ge}",
    "greater_than": "must be > {gt}",
    "multiple_of": "must be a multiple of {multiple_of}",
    "string_too_short": "must be at least {min_length} characters",
    "string_too_long": "must be at most {max_length} characters",
    "too_short": "must have at least {min_length} items",
    "too_long": "must have at most {max_length} items",
    "literal_error": "must be {expected}",
    "enum": "must be {expected}",
    "string_pattern_mismatch": "must match {pattern}",
    "int_parsing": "must be an integer",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "list_type": "must be a list",
    "missing": "required",
    "missing_argument": "required",
    "unexpected_keyword_argument": "unknown argument",
    "extra_forbidden": "unknown argument",
    "none_required": "may be omitted",
}
# union members pydantic names in an error's location ('limit', 'int'); they are not part of the field's name
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "none", "list", "dict"})


def _field(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, str) and (part in _TYPE_TAGS or "[" in part):
            break
        parts.append(str(part))
    return ".".join(parts) or "arguments"


def _got(error: ErrorDetails, field: str) -> str:
    value = error.get("input")
    if error["type"].startswith(("missing", "unexpected", "extra")) or secret_name(field.rsplit(".", 1)[-1]):
        return ""
    if isinstance(value, bool | int | float) or value is None:
        return f" (got {json.dumps(value)})"
    if isinstance(value, str):
        return f" (got {value!r})" if len(value) <= 60 else f" (got {len(value):,} characters)"
    return ""


def field_problems(exc: ValidationError | Iterable[ErrorDetails]) -> list[str]:
    """One line per field pydantic rejected: 'lines: must be ≤ 2000 (got 20000)', 'device: required'.

    Takes a ValidationError or its errors (the REST API's, located by field name). Values are echoed only
    when short and not named like a secret; no pydantic links or internal names.
    """
    found: dict[str, list[str]] = {}
    errors = exc.errors(include_url=False) if hasattr(exc, "errors") else exc
    for error in errors:
        field = _field(error["loc"])
        template = _MUST.get(error["type"])
        context = error.get("ctx") or {}
        try:
            text = template.format(**context) if template else error["msg"].removeprefix("Value error, ")
        except (KeyError, IndexError):
            text = error["msg"]
        text = text[:1].lower() + text[1:] + _got(error, field)
        if text not in found.setdefault(field, []):
            found[field].append(text)
    lines = []
    for field, texts in found.items():
        meaningful = [t for t in texts if not t.startswith("may be omitted")] or texts
        lines.append(f"{field}: {' or '.join(meaningful)}")
    return lines
