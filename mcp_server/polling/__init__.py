"""Background polling: the scheduler, poll leases shared by replicas, the circuit breaker per device, and
the service's own health rows."""
