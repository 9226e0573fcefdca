"""The exporter's web server limits, apart from the server so `--help` does not import it."""

# Prometheus sends a scrape request in one go; anything slower is a stalled or hostile client.
REQUEST_TIMEOUT = 15.0
# Far above what a few Prometheus servers need; each connection holds a thread while it lasts.
MAX_CONNECTIONS = 64
