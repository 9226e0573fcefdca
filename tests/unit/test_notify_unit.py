"""Pure parts of the MQTT and webhook notifiers: signatures, backoff, newest-wins queues, URLs,
fleet fields. No sockets."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers.fleets import VALID
from wg_failover.backoff import backoff_delay
from wg_failover.fleet import FleetError, MqttSettings, parse_fleet
from wg_failover.mqtt import MqttUrlError, parse_mqtt_url
from wg_failover.responder.notify.mqtt import MqttConfigError, MqttNotifier, parse_broker_url
from wg_failover.responder.notify.webhooks import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    Target,
    TargetState,
    WebhookNotifier,
    build_targets,
    sign,
    verify_signature,
)

KEY = b"k" * 32
BODY = b'{"client":"c1","version":7,"worker":"w2"}'


def test_signature_round_trip_and_what_it_rejects():
    h = sign(KEY, BODY, 1_700_000_000)
    assert h.startswith("t=1700000000,v1=") and len(h.split("v1=")[1]) == 64
    assert verify_signature(KEY, h, BODY, now=1_700_000_010)
    assert not verify_signature(KEY, h, BODY + b" ", now=1_700_000_010)  # body changed
    assert not verify_signature(b"other", h, BODY, now=1_700_000_010)  # wrong key
    assert not verify_signature(KEY, h, BODY, now=1_700_000_000 + 301)  # replayed later
    forged_t = h.replace("t=1700000000", "t=1700000200")  # fresh timestamp, old MAC
    assert not verify_signature(KEY, forged_t, BODY, now=1_700_000_200)
    for bad in (None, "", "garbage", "t=x,v1=00", "v1=" + "0" * 64, "t=1700000000"):
        assert not verify_signature(KEY, bad, BODY, now=1_700_000_000)


def test_backoff_doubles_with_jitter_and_is_capped():
    # The webhooks wait with the core's backoff and their own figures (docs/notify.md).
    assert (BACKOFF_BASE, BACKOFF_CAP) == (0.5, 60.0)
    rng = random.Random(1)
    for n in range(1, 12):
        d = backoff_delay(n, BACKOFF_BASE, BACKOFF_CAP, rng)
        ceiling = min(BACKOFF_CAP, 0.5 * 2 ** (n - 1))
        assert ceiling / 2 <= d <= ceiling
    assert backoff_delay(100, BACKOFF_BASE, BACKOFF_CAP, rng) <= BACKOFF_CAP


def a(client: str, version: int) -> dict:
    return {"client": client, "worker": "w1", "backups": [], "version": version,
            "reason": "x", "since": "2026-01-01T00:00:00Z"}


@given(st.lists(st.tuples(st.sampled_from(["offer", "deliver"]), st.integers(1, 20)),
                max_size=60))
def test_target_never_sends_an_older_version_after_a_newer(ops):
    s = TargetState(Target("client:c1", "http://x/", KEY))
    sent: list[int] = []
    for op, v in ops:
        if op == "offer":
            s.offer(a("c1", v), None)
        elif s.pending:
            item, _ = s.pending["c1"]
            sent.append(item["version"])
            s.done(item)
    assert sent == sorted(sent) and len(sent) == len(set(sent))
    newest_offered = max([v for op, v in ops if op == "offer"], default=0)
    pending = s.pending.get("c1")
    # Whatever was offered last-and-newest is either delivered or still pending.
    assert max(sent + [pending[0]["version"] if pending else 0], default=0) == newest_offered


def test_newest_pending_replaces_older_and_client_status_has_no_secret():
    n = WebhookNotifier([Target("client:c1", "http://127.0.0.1:9/h", KEY),
                         Target("hook:ops", "http://127.0.0.1:9/o", KEY, frozenset({"c2"}))])
    n.running = False  # no event loop here: queue only
    n.assignment_changed(a("c1", 3))
    n.assignment_changed(a("c1", 5))
    n.assignment_changed(a("c1", 4))  # late and older: dropped
    n.assignment_changed(a("c2", 2))
    c1 = n.targets["client:c1"]
    assert [p[0]["version"] for p in c1.pending.values()] == [5]
    assert list(n.targets["hook:ops"].pending) == ["c2"]
    st1 = n.client_status("c1")
    assert st1 == {"targets": [{
        "target": "client:c1", "delivered_version": None, "pending_version": 5,
        "failures_in_a_row": 0, "failures_total": 0, "last_error": None,
        "last_attempt": None, "last_success": None, "next_attempt": None}]}
    assert "k" * 32 not in repr(st1)
    assert n.client_status("c3") is None


def test_build_targets_reads_secret_files_and_skips_unreadable(tmp_path, caplog):
    good = tmp_path / "good"
    good.write_text("abc\n")
    text = VALID.replace(
        "    routes: [0.0.0.0/0]\n",
        f"    routes: [0.0.0.0/0]\n    notify_url: http://127.0.0.1:9/a\n"
        f"    notify_secret_file: {good}\n", 1)
    text += (f"  webhooks:\n    - {{name: ops, url: 'http://127.0.0.1:9/o', "
             f"secret_file: {tmp_path / 'missing'}}}\n")
    fleet = parse_fleet(text)
    targets = build_targets(fleet, fleet.responder)
    assert [(t.id, t.secret) for t in targets] == [("client:alice-laptop", b"abc")]
    assert "hook:ops disabled" in caplog.text


def test_fleet_requires_a_secret_file_with_notify_url():
    text = VALID.replace("    routes: [0.0.0.0/0]\n",
                         "    routes: [0.0.0.0/0]\n    notify_url: http://h/x\n", 1)
    with pytest.raises(FleetError) as e:
        parse_fleet(text)
    assert "notify_url needs notify_secret_file" in e.value.render()


def test_broker_urls():
    assert parse_broker_url("mqtt://127.0.0.1").port == 1883
    b = parse_broker_url("mqtts://broker.example.net")
    assert (b.host, b.port, b.tls) == ("broker.example.net", 8883, True)
    assert parse_broker_url("mqtt://h:1884").port == 1884
    for bad in ("http://h", "mqtt://", "mqtt://u:p@h", "mqtt://h:99999"):
        with pytest.raises(MqttConfigError):
            parse_broker_url(bad)
    assert parse_mqtt_url("mqtts://h:8884").tls
    for bad in ("http://h", "mqtt://u:p@h", "mqtt://", "mqtts://h:0x1"):
        with pytest.raises(MqttUrlError):
            parse_mqtt_url(bad)


def test_mqtt_backlog_keeps_one_newest_payload_per_topic():
    n = MqttNotifier(MqttSettings(url="mqtt://127.0.0.1:1"))
    n.assignment_changed(a("c1", 1))
    n.assignment_changed(a("c1", 2))
    n.worker_changed({"name": "w1", "state": "down"})
    assert list(n.dirty) == ["wg-failover/clients/c1/assignment", "wg-failover/workers/w1"]
    assert n.state["wg-failover/clients/c1/assignment"][0]["version"] == 2
    assert n.client_status("c1")["pending_version"] == 2


def test_switcher_mqtt_options(tmp_path):
    from wg_failover.client.mqtt_source import source_from_options

    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    src = source_from_options("mqtt://127.0.0.1:1884", "c1", username=None,
                              password_file=str(pw), ca_file=None)
    assert (src.username, src.password, src.topic) == \
        ("c1", "secret", "wg-failover/clients/c1/assignment")
    with pytest.raises(ValueError, match="--mqtt-password-file"):
        source_from_options("mqtt://h", "c1", username=None,
                            password_file=str(tmp_path / "nope"), ca_file=None)
    with pytest.raises(ValueError, match="--mqtt: "):
        source_from_options("http://h", "c1", username=None, password_file=None, ca_file=None)


def test_switcher_help_mentions_mqtt():
    import subprocess
    import sys
    from pathlib import Path

    exe = str(Path(sys.executable).with_name("wg-failover"))
    out = subprocess.run([exe, "switcher", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "--mqtt URL" in out and "--mqtt-password-file" in out


def test_delivery_key_names_the_store_epoch():
    """A replaced database starts at version 1 again: its deliveries must not share keys with
    the old store's, or a de-duplicating receiver drops them (hardening finding 3)."""
    from wg_failover.responder.notify.webhooks import delivery_key

    old = {"client": "c1", "version": 1, "epoch": "0123456789abcdef"}
    new = {"client": "c1", "version": 1, "epoch": "fedcba9876543210"}
    assert delivery_key(old) == "c1:1:0123456789abcdef"
    assert delivery_key(old) != delivery_key(new)
    assert delivery_key({"client": "c1", "version": 7}) == "c1:7"
