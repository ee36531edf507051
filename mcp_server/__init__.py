"""Infrastructor: safe, fast, audited access to a fleet of Linux hosts for AI agents."""

__version__ = "0.1.0"

# Every tool belongs to one toolset (tools/<module>.TOOLSET); INFRA_TOOLSETS / --toolsets choose which are offered.
# Here rather than in settings so that `infrastructor --help` can name them without loading pydantic.
TOOLSETS = ("devices", "system", "containers", "services", "storage", "config", "history", "admin")

# A device name (devices.py); here so that the audit middleware a server answers `initialize` with can check
# names without loading the device registry and its database.
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
