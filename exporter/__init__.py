"""`wg-failover exporter`: WireGuard peer metrics and worker signals for Prometheus."""
