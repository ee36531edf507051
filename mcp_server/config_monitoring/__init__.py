"""Configuration monitoring: watch files on devices, keep their versions, diff, classify and notify."""

from mcp_server.config_monitoring.service import ConfigurationMonitoringService

__all__ = ["ConfigurationMonitoringService"]
