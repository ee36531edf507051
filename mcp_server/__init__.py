"""Infrastructor: safe, fast, audited access to a fleet of Linux hosts for AI agents."""

__version__ = "0.1.0"
