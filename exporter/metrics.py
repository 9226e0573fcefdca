"""The exporter's metric catalogue: one place for names, types, labels and meaning.

The collector, `--help`, and docs/exporter.md all follow this list (a test checks the docs table
against it), so a metric cannot be added in one place and forgotten in another.

`COMPAT` holds families served only on request (`--compat NAME`): other exporters' names, so
dashboards and alert rules written for those exporters work unchanged. They are kept apart so
the default page, and the default docs table, stay exactly as they are.
"""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class MetricDef:
    name: str  # full name as exposed (counters include `_total`)
    type: str  # gauge | counter
    labels: tuple[str, ...]
    help: str


ACTIVE_WINDOW_SECONDS = 180  # WireGuard re-keys every 120 s while traffic flows; 180 s = margin

_DEFS = [
    # --- peer metrics, same names and labels as the established Go exporter ---------------------
    MetricDef("wireguard_device_info", "gauge", ("device", "public_key"),
              "Metadata about a WireGuard device (always 1)."),
    MetricDef("wireguard_peer_info", "gauge", ("device", "public_key", "endpoint", "name"),
              "Metadata about a peer (always 1): its current endpoint and its name from the fleet "
              "file (empty when unknown). Join on {instance,device,public_key} with group_left."),
    MetricDef("wireguard_peer_allowed_ips_info", "gauge", ("device", "public_key", "allowed_ips"),
              "One series per allowed IP prefix of a peer (always 1)."),
    MetricDef("wireguard_peer_receive_bytes_total", "counter", ("device", "public_key"),
              "Bytes received from the peer."),
    MetricDef("wireguard_peer_transmit_bytes_total", "counter", ("device", "public_key"),
              "Bytes sent to the peer."),
    MetricDef("wireguard_peer_last_handshake_seconds", "gauge", ("device", "public_key"),
              "Unix time of the peer's latest handshake; 0 = never."),
    # --- worker signals for failover and balancing ---------------------------------------------
    MetricDef("wgfo_interface_up", "gauge", ("device",),
              "1 when the device is administratively up (IFF_UP) and listening (has a listen "
              "port); 0 otherwise, including a named --interface that cannot be read."),
    MetricDef("wgfo_active_peers", "gauge", ("device",),
              f"Peers with a handshake in the last {ACTIVE_WINDOW_SECONDS} s."),
    MetricDef("wgfo_configured_peers", "gauge", ("device",), "Peers configured on the device."),
    MetricDef("wgfo_worker_info", "gauge", ("worker", "region"),
              "This worker's name and region from the fleet file (always 1; absent when the "
              "worker is unknown)."),
    MetricDef("wgfo_worker_capacity", "gauge", ("worker",),
              "This worker's capacity in clients from the fleet file (absent when unlimited)."),
    MetricDef("wgfo_cpu_usage_ratio", "gauge", (),
              "Share of CPU time not idle (0..1, all CPUs) since the previous scrape, from "
              "/proc/stat."),
    MetricDef("wgfo_load_average", "gauge", ("period",),
              "System load average over period = 1m, 5m, 15m."),
    MetricDef("wgfo_interface_receive_bytes_total", "counter", ("device",),
              "Bytes received by the interface (its /sys statistics)."),
    MetricDef("wgfo_interface_transmit_bytes_total", "counter", ("device",),
              "Bytes sent by the interface (its /sys statistics)."),
    MetricDef("wgfo_scrape_success", "gauge", (),
              "1 when every WireGuard read of this scrape worked, 0 when any failed."),
    MetricDef("wgfo_scrape_duration_seconds", "gauge", (),
              "Time this scrape spent reading WireGuard and the system."),
]

METRICS: dict[str, MetricDef] = {m.name: m for m in _DEFS}
PEER_METRICS = {n for n in METRICS if n.startswith("wireguard_peer_")}

# --- --compat mindflavor: MindFlavor/prometheus_wireguard_exporter's names and labels -----------
# The community's most used WireGuard dashboards and the awesome-prometheus-alerts WireGuard rules
# are written for these. Its counters carry every label (allowed IPs, name, endpoint), which is
# why they are not our default: a roaming endpoint starts new counter series.
MINDFLAVOR_LABELS = ("interface", "public_key", "allowed_ips", "friendly_name")
# Its `-r` switch; empty (so, to Prometheus, absent) for a peer without an endpoint.
MINDFLAVOR_REMOTE_LABELS = ("remote_ip", "remote_port")
_MINDFLAVOR = [
    MetricDef("wireguard_sent_bytes_total", "counter", MINDFLAVOR_LABELS,
              "Bytes sent to the peer (--compat mindflavor)."),
    MetricDef("wireguard_received_bytes_total", "counter", MINDFLAVOR_LABELS,
              "Bytes received from the peer (--compat mindflavor)."),
    MetricDef("wireguard_latest_handshake_seconds", "gauge", MINDFLAVOR_LABELS,
              "Unix time of the peer's latest handshake, a timestamp despite the name; 0 = never "
              "(--compat mindflavor)."),
]
COMPAT: dict[str, dict[str, MetricDef]] = {"mindflavor": {m.name: m for m in _MINDFLAVOR}}


def compat_metrics(mode: str | None, remote: bool = False) -> list[MetricDef]:
    """The extra families of a `--compat` mode (none for None), with the endpoint labels when
    `remote` (`--compat-remote`)."""
    if mode is None:
        return []
    defs = list(COMPAT[mode].values())
    if remote:
        defs = [dataclasses.replace(m, labels=m.labels + MINDFLAVOR_REMOTE_LABELS) for m in defs]
    return defs


def help_table(defs: Iterable[MetricDef] = _DEFS) -> str:
    """The catalogue (or `defs`) as plain text for `--help`."""
    lines = []
    for m in defs:
        labels = "{" + ",".join(m.labels) + "}" if m.labels else ""
        lines.append(f"  {m.name}{labels} ({m.type})")
        lines.append(textwrap.fill(m.help, 96, initial_indent=" " * 6,
                                   subsequent_indent=" " * 6))
    return "\n".join(lines)
