"""wg-failover's shared core: fleet file model, WireGuard access, wg-quick rendering, the CLI."""

__version__ = "0.1.0"
