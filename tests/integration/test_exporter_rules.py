"""prometheus/rules/awesome-wireguard.yml loads in the real promtool and fires as intended."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.helpers.exporter import FRA, reading
from tests.helpers.fleets import VALID
from tests.helpers.tools import require_tool, run_tool
from wg_failover.exporter.collector import build_families, fleet_names, render_text
from wg_failover.fleet import parse_fleet

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "prometheus" / "rules" / "awesome-wireguard.yml"
K_OLD, K_NEVER, K_FRESH = "a" * 43 + "=", "b" * 43 + "=", "c" * 43 + "="
K_BUSY = "d" * 43 + "="


def test_promtool_check_rules():
    run_tool("promtool", "check", "rules", str(RULES))


def test_promtool_rule_tests(tmp_path):
    target = 'instance="w1:9586",job="wg-failover-exporter",worker="w1"'

    labels = {"severity": "warning", "action": "notify", "instance": "w1:9586",
              "job": "wg-failover-exporter", "worker": "w1", "device": "wg0"}

    def peer(metric: str, key: str, extra: str = "") -> str:
        return f'{metric}{{{target},device="wg0",public_key="{key}"{extra}}}'

    tests = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                # Last handshake at t=60 s and never again: stale from t=6 m, firing 5 m later.
                {"series": peer("wireguard_peer_last_handshake_seconds", K_OLD),
                 "values": "60x30"},
                {"series": peer("wireguard_peer_last_handshake_seconds", K_NEVER),
                 "values": "0x30"},
                {"series": peer("wireguard_peer_last_handshake_seconds", K_FRESH),
                 "values": "0+60x30"},
                {"series": peer("wireguard_peer_last_handshake_seconds", K_BUSY),
                 "values": "0+60x30"},
                *({"series": peer(m, K_FRESH), "values": "100x30"}
                  for m in ("wireguard_peer_receive_bytes_total",
                            "wireguard_peer_transmit_bytes_total")),
                *({"series": peer(m, K_BUSY), "values": "0+32x30"}
                  for m in ("wireguard_peer_receive_bytes_total",
                            "wireguard_peer_transmit_bytes_total")),
                *({"series": peer("wireguard_peer_info", k, f',endpoint="",name="{n}"'),
                   "values": "1x30"}
                  for k, n in ((K_OLD, "alice"), (K_NEVER, "bob"), (K_FRESH, "carol"),
                               (K_BUSY, "dave"))),
                {"series": f'wgfo_interface_up{{{target},device="wg0"}}', "values": "1 1 0x10"},
                {"series": f"wgfo_scrape_success{{{target}}}", "values": "1 1 1 0x10"},
            ],
            "alert_rule_test": [
                {"eval_time": "6m", "alertname": "WireguardPeerHandshakeTooOld", "exp_alerts": []},
                {"eval_time": "10m", "alertname": "WireguardPeerHandshakeTooOld", "exp_alerts": [{
                    "exp_labels": {**labels, "public_key": K_OLD, "name": "alice"},
                    "exp_annotations": {
                        "summary": "WireGuard peer alice has had no handshake for over 5 minutes",
                        "description": f"Peer {K_OLD} (alice) on device wg0 of w1:9586: the "
                        "latest handshake was 9m 0s ago. A client that keeps its workers warm "
                        "handshakes at least every 2 minutes; it is offline or its UDP path is "
                        "blocked.",
                    },
                }]},
                {"eval_time": "4m", "alertname": "WireguardPeerHandshakeNeverEstablished",
                 "exp_alerts": []},
                {"eval_time": "6m", "alertname": "WireguardPeerHandshakeNeverEstablished",
                 "exp_alerts": [{
                     "exp_labels": {**labels, "public_key": K_NEVER, "name": "bob"},
                     "exp_annotations": {
                         "summary": "WireGuard peer bob never made a handshake",
                         "description": f"Peer {K_NEVER} (bob) on device wg0 of w1:9586 has "
                         "never completed a handshake: the client is offline, or its key or "
                         "endpoint for this worker is wrong.",
                     },
                 }]},
                # carol's counters stand still from the start: the rate is 0 from t=1m, so the
                # alert fires once that has held for 15m; dave's grow (keepalives) and never do.
                {"eval_time": "15m", "alertname": "WireguardNoTrafficOnPeer", "exp_alerts": []},
                {"eval_time": "17m", "alertname": "WireguardNoTrafficOnPeer", "exp_alerts": [{
                    "exp_labels": {**labels, "public_key": K_FRESH, "name": "carol"},
                    "exp_annotations": {
                        "summary": "WireGuard peer carol has a handshake but no traffic",
                        "description": f"Peer {K_FRESH} (carol) on device wg0 of w1:9586 moved "
                        "no bytes for 15 minutes despite a recent handshake. Its keepalives "
                        "alone would count, so check its AllowedIPs.",
                    },
                }]},
                {"eval_time": "2m", "alertname": "WireguardInterfaceDown", "exp_alerts": []},
                {"eval_time": "4m", "alertname": "WireguardInterfaceDown", "exp_alerts": [{
                    "exp_labels": {"severity": "critical", "action": "notify",
                                   "instance": "w1:9586", "job": "wg-failover-exporter",
                                   "worker": "w1", "device": "wg0"},
                    "exp_annotations": {
                        "summary": "WireGuard interface wg0 on w1:9586 is down",
                        "description": "The exporter reports wg0 as not up or not listening "
                        "(or it cannot be read) for 1 minute.",
                    },
                }]},
                {"eval_time": "5m", "alertname": "WireguardExporterReadFailing", "exp_alerts": [{
                    "exp_labels": {"severity": "warning", "action": "notify",
                                   "instance": "w1:9586", "job": "wg-failover-exporter",
                                   "worker": "w1"},
                    "exp_annotations": {
                        "summary": "wg-failover exporter on w1:9586 cannot read WireGuard",
                        "description": "wgfo_scrape_success has been 0 for 2 minutes: a missing "
                        "interface, `wg` failing (capabilities? see "
                        "deploy/wg-failover-exporter.service) or timing out. The exporter's log "
                        "says which.",
                    },
                }]},
            ],
        }],
    }
    test_file = tmp_path / "awesome-wireguard_test.yml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    run_tool("promtool", "test", "rules", str(test_file))


def test_promtool_lints_our_page_clean():
    """`promtool check metrics` (naming, units, HELP/TYPE) finds nothing to complain about."""
    fams = build_families(reading(), fleet_names(parse_fleet(VALID), [FRA]), duration=0.01)
    page = render_text(fams)
    assert b"wireguard_peer_info{" in page and b"wgfo_worker_capacity{" in page
    proc = subprocess.run([require_tool("promtool", "prometheus", strict=True), "check",
                           "metrics"], input=page, capture_output=True, timeout=60)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr
