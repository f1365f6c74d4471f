"""Prometheus exposition (off by default): node_exporter's names for the built-in collectors'
values, daemon_* series for the daemon's own health. Imported only when `prometheus.enabled`."""
