"""Configuration monitoring: watch files on devices, keep their versions, diff, classify and notify
(the service is `config_monitoring.service.ConfigurationMonitoringService`)."""
