"""The responder as a real uvicorn server on loopback, driven with real HTTP."""

from __future__ import annotations

import json
import subprocess
import threading
import time

import httpx
import pytest

from tests.helpers.responder import (  # noqa: F401  (the fixtures register by import)
    WG_FAILOVER,
    ResponderProc,
    alert_payload,
    make_fleet,
    responder_factory_fixture,
    responder_fixture,
)
from tests.helpers.wait import poll_until
from wg_failover.lab.gen import Generated

# Every test here on SQLite and on PostgreSQL (issue 15: the responder's tests on both stores).
pytestmark = pytest.mark.both_stores


def get(p: ResponderProc, path: str, who: str | None = None, headers: dict | None = None,
        **kw) -> httpx.Response:
    h = {**(p.headers(who) if who else {}), **(headers or {})}
    return httpx.get(p.url + path, headers=h, timeout=70, **kw)


def post(p: ResponderProc, path: str, who: str | None = None, headers: dict | None = None,
         **kw) -> httpx.Response:
    h = {**(p.headers(who) if who else {}), **(headers or {})}
    return httpx.post(p.url + path, headers=h, timeout=10, **kw)


def assignment(p: ResponderProc, client: str) -> dict:
    r = get(p, f"/v1/clients/{client}/assignment", client)
    assert r.status_code == 200, r.text
    return r.json()


def workers(p: ResponderProc) -> dict[str, dict]:
    return {w["name"]: w for w in get(p, "/v1/workers", "read").json()}


def metric(p: ResponderProc, name: str, **labels: str) -> float | None:
    text = get(p, "/metrics").text
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
                   if labels else "")
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if _norm(key) == want:
            return float(value)
    return None


def _norm(key: str) -> str:
    if "{" not in key:
        return key
    name, _, rest = key.partition("{")
    parts = sorted(p for p in rest.rstrip("}").split(",") if p)
    return name + "{" + ",".join(parts) + "}"


def events(p: ResponderProc, after: int = 0) -> list[dict]:
    r = get(p, "/v1/events", "admin", params={"after": after, "limit": 10000})
    assert r.status_code == 200, r.text
    return r.json()["events"]


# --------------------------------------------------------------------------- basics


def test_initial_state_targets_and_probes(responder):
    p = responder
    health = get(p, "/healthz").json()
    assert health["ok"] is True and len(health["epoch"]) == 16  # the store's epoch
    assert get(p, "/readyz").status_code == 200
    ws = workers(p)
    assert set(ws) == {"w1", "w2", "w3"} and all(w["state"] == "up" for w in ws.values())
    a = assignment(p, "c1")
    assert set(a) == {"client", "worker", "backups", "version", "reason", "since", "epoch"}
    assert a["client"] == "c1" and a["worker"] == "w1" and a["backups"] == ["w2", "w3"]
    assert a["version"] == 1 and a["reason"] == "initial" and a["since"].endswith("Z")
    assert assignment(p, "c2")["worker"] == "w2"
    targets = get(p, "/v1/targets", "read").json()
    assert targets[0] == {"targets": ["127.0.0.1:9600"], "labels": {"worker": "w1",
                                                                    "region": "lab"}}
    assert metric(p, "wgfo_worker_up", worker="w1") == 1
    assert metric(p, "wgfo_worker_state", worker="w1", state="up") == 1
    assert metric(p, "wgfo_client_assigned", client="c1", worker="w1") == 1
    assert metric(p, "wgfo_worker_assigned_clients", worker="w1") == 2
    # Labelled counters exist at 0 before their first event, so increase() sees that event.
    assert metric(p, "wgfo_failovers_total", worker="w3") == 0
    assert metric(p, "wgfo_client_moves_total", reason="failover") == 0
    assert metric(p, "wgfo_client_switches_total", client="c1") == 0
    api = get(p, "/openapi.json").json()
    assert "requestBody" in api["paths"]["/v1/alerts"]["post"]
    assert {"AMPayload", "ClientEvent", "SwitchEvent"} <= set(api["components"]["schemas"])


def test_failover_duplicates_and_recovery_without_preempt(responder_factory):
    p = responder_factory(hold_down_seconds=0.5)
    r = p.alert("w1")
    assert r.status_code == 200 and r.json()["status"] == "applied"
    assert workers(p)["w1"]["state"] == "down"
    a = assignment(p, "c1")
    assert a["worker"] in ("w2", "w3") and a["version"] == 2 and a["reason"] == "failover"
    assert "w1" not in a["backups"]
    # c2 (on w2) stays where it is: sticky. Its backups lost w1, hence a new version.
    assert assignment(p, "c2")["worker"] == "w2"
    # Alertmanager repeats the notification, and its HA twin sends it too: nothing changes.
    for _ in range(2):
        r = p.alert("w1")
        assert r.status_code == 200 and r.json()["status"] == "duplicate"
    assert assignment(p, "c1")["version"] == 2
    assert metric(p, "wgfo_webhook_deliveries_total", outcome="duplicate") == 2
    assert metric(p, "wgfo_failovers_total", worker="w1") == 1
    assert metric(p, "wgfo_worker_up", worker="w1") == 0
    assert metric(p, "wgfo_worker_state", worker="w1", state="down") == 1
    assert metric(p, "wgfo_client_moves_total", reason="failover") == 2

    assert p.alert("w1", status="resolved").status_code == 200
    assert workers(p)["w1"]["state"] == "recovering"
    assert poll_until(lambda: workers(p)["w1"]["state"] == "up", 10.0, 0.05)
    # preempt: false, so c1 stays on its backup, but w1 is a backup again.
    a2 = assignment(p, "c1")
    assert a2["worker"] == a["worker"] and "w1" in a2["backups"] and a2["version"] > 2
    kinds = [e["kind"] for e in events(p)]
    assert "alert" in kinds and "worker-state" in kinds and "move" in kinds


def test_recovery_with_preempt_returns_clients(responder_factory):
    p = responder_factory(hold_down_seconds=0.3, preempt=True, clients=6)
    p.alert("w1")
    assert assignment(p, "c1")["worker"] != "w1"
    p.alert("w1", status="resolved")
    assert poll_until(lambda: assignment(p, "c1")["worker"] == "w1", 10.0, 0.05)
    assert assignment(p, "c4")["worker"] == "w1"
    assert assignment(p, "c1")["reason"] == "preempt"


def test_unknown_worker_and_other_actions_are_recorded_and_ignored(responder):
    p = responder
    r = p.alert("nope")
    assert r.status_code == 200
    r = p.alert("w2", action="notify", alertname="HighLoad")
    assert r.status_code == 200
    r = post(p, "/v1/alerts", "alert", json={"alerts": [{
        "status": "firing", "labels": {"alertname": "X"}, "startsAt": "2026-01-01T00:00:00Z"}]})
    assert r.status_code == 200
    body = alert_payload("w3", "notify", alertname="Many")
    body["truncatedAlerts"] = 7
    assert post(p, "/v1/alerts", "alert", json=body).status_code == 200
    evs = events(p)
    assert any(e["kind"] == "alerts-truncated" and e["data"]["count"] == 7 for e in evs)
    ignored = [e for e in evs if e["kind"] == "alert-ignored"]
    assert {e["data"]["why"] for e in ignored} == {"unknown worker", "no worker/action label"}
    assert any(e["kind"] == "alert" and e["data"]["action"] == "notify" for e in evs)
    assert all(w["state"] == "up" and not w["draining"] for w in workers(p).values())


def test_bad_requests_never_500(responder):
    p = responder
    h = {"Content-Type": "application/json"}
    r = post(p, "/v1/alerts", "alert", content=b"{not json", headers=h)
    assert r.status_code == 400 and "malformed JSON" in r.json()["detail"]
    r = post(p, "/v1/alerts", "alert", json={"alerts": [{"status": "weird"}]})
    assert r.status_code == 422 and r.json()["detail"]
    r = post(p, "/v1/alerts", "alert", json={"version": "3", "alerts": []})
    assert r.status_code == 422
    r = post(p, "/v1/alerts", "alert", json=[1, 2])
    assert r.status_code == 422
    bad_time = alert_payload("w1", starts_at="yesterday")
    assert post(p, "/v1/alerts", "alert", json=bad_time).status_code == 422
    r = post(p, "/v1/alerts", "alert", content=b"x" * (1024 * 1024 + 1), headers=h)
    assert r.status_code == 413
    r = post(p, "/v1/clients/c1/events", "c1", content=b"x" * (1024 * 1024 + 1), headers=h)
    assert r.status_code == 413
    r = post(p, "/v1/clients/c1/events", "c1", json={"type": "dance"})
    assert r.status_code == 422
    r = post(p, "/v1/clients/c1/events", "c1", json={"type": "probe", "workers": {"w1": {}}})
    assert r.status_code == 422
    r = post(p, "/v1/clients/c1/events", "c1", content=b"\xff\xfe", headers=h)
    assert r.status_code == 400
    for body in (b"[" * 100000 + b"]" * 100000, b'{"alerts": [], "x": NaN}', b"1e999"):
        r = post(p, "/v1/alerts", "alert", content=body, headers=h)
        assert r.status_code == 400, r.text
    r = post(p, "/v1/clients/c1/events", "c1", headers=h,
             content=b'{"type": "switch", "to_worker": "w2", "elapsed_ms": Infinity}')
    assert r.status_code == 400
    r = post(p, "/v1/clients/c1/events", "c1", json={"type": "switch", "to_worker": "w" * 64})
    assert r.status_code == 422
    r = get(p, "/v1/clients/c1/assignment", "c1", params={"after": "x"})
    assert r.status_code == 422
    r = get(p, "/v1/clients/c1/assignment/stream", "c1", headers={"Last-Event-ID": "zz"})
    assert r.status_code == 400
    assert post(p, "/v1/workers/nope/drain", "admin").status_code == 404
    assert get(p, "/v1/clients/nope", "admin").status_code == 404
    assert metric(p, "wgfo_webhook_deliveries_total", outcome="invalid") == 9
    assert get(p, "/v1/events", "admin").status_code == 200
    assert all(w["state"] == "up" for w in workers(p).values())


def test_tokens(responder_factory):
    gen = make_fleet(2, 3)
    # c3 has no token: it cannot use its endpoints at all.
    clients = list(gen.fleet.clients)
    clients[2] = clients[2].model_copy(update={"token_sha256": None})
    gen = Generated(gen.fleet.model_copy(update={"clients": clients}), {}, gen.tokens)
    p = responder_factory(gen)
    assert "c3 has no token_sha256" in p.log()

    def check_401(r: httpx.Response) -> None:
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"] == "Bearer"

    check_401(post(p, "/v1/alerts", json=alert_payload("w1")))
    check_401(post(p, "/v1/alerts", "admin", json=alert_payload("w1")))
    check_401(post(p, "/v1/alerts", "c1", json=alert_payload("w1")))
    check_401(httpx.post(p.url + "/v1/alerts", json=alert_payload("w1"),
                         headers={"Authorization": "Basic " + p.tokens["alert"]}))
    check_401(post(p, "/v1/workers/w1/drain", "alert"))
    check_401(post(p, "/v1/workers/w1/drain", "c1"))
    check_401(get(p, "/v1/clients/c1/assignment", "c2"))  # one client cannot read another's
    check_401(get(p, "/v1/clients/c1/assignment/stream", "c2"))
    check_401(get(p, "/v1/clients/c1", "c2"))
    check_401(post(p, "/v1/clients/c1/events", "c2", json={"type": "applied", "version": 1}))
    check_401(get(p, "/v1/clients/c3/assignment", "c1"))
    check_401(get(p, "/v1/clients/c3/assignment"))
    check_401(get(p, "/v1/events", "c1"))
    check_401(get(p, "/v1/clients/nope/assignment", "c1"))
    assert metric(p, "wgfo_webhook_deliveries_total", outcome="unauthorized") == 4
    # The admin token reads any client's endpoints.
    assert get(p, "/v1/clients/c3/assignment", "admin").json()["client"] == "c3"
    assert get(p, "/v1/clients/c1", "admin").status_code == 200
    assert assignment(p, "c1")["version"] == 1  # nothing above changed anything
    assert all(p.tokens[k] not in p.log() for k in p.tokens)


def test_admin_drain_and_undrain(responder):
    p = responder
    before = assignment(p, "c1")
    r = post(p, "/v1/workers/w1/drain", "admin")
    assert r.status_code == 200 and r.json()["draining"] is True
    after = assignment(p, "c1")
    assert after["worker"] != "w1" and after["reason"] == "drain"
    assert after["version"] == before["version"] + 1
    assert metric(p, "wgfo_worker_state", worker="w1", state="draining") == 1
    assert metric(p, "wgfo_worker_up", worker="w1") == 1  # drained, not down
    assert metric(p, "wgfo_worker_assigned_clients", worker="w1") == 0
    r = post(p, "/v1/workers/w1/undrain", "admin")
    assert r.status_code == 200 and r.json()["draining"] is False
    assert assignment(p, "c1")["worker"] == after["worker"]  # no preempt: stays
    assert [e["kind"] for e in events(p) if e["kind"] in ("drain", "undrain")] == \
        ["drain", "undrain"]


def test_drain_by_alert(responder):
    p = responder
    assert p.alert("w2", action="drain", alertname="PlannedMaintenance").status_code == 200
    assert workers(p)["w2"]["draining"] is True
    assert assignment(p, "c2")["worker"] != "w2"
    assert p.alert("w2", action="drain", status="resolved",
                   alertname="PlannedMaintenance").status_code == 200
    assert workers(p)["w2"]["draining"] is False


def test_capacity_and_unplaceable(responder_factory):
    p = responder_factory(workers=2, clients=4, capacity=2)
    assert metric(p, "wgfo_unplaceable_clients") == 0
    p.alert("w1")
    # w2 is full with its own two: w1's clients stay where they are, and it shows.
    assert metric(p, "wgfo_unplaceable_clients") == 2
    assert assignment(p, "c1")["worker"] == "w1"
    assert metric(p, "wgfo_worker_assigned_clients", worker="w2") == 2


# --------------------------------------------------------------------------- notifications


def test_longpoll_and_sse_get_the_new_assignment(responder):
    p = responder
    got: dict[str, tuple[float, dict]] = {}
    ready = threading.Event()

    def sse() -> None:
        with httpx.stream("GET", p.url + "/v1/clients/c1/assignment/stream",
                          headers=p.headers("c1"), timeout=30) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            ids = []
            for line in r.iter_lines():
                if line.startswith("id: "):
                    ids.append(int(line[4:]))
                if line.startswith("data: "):
                    if len(ids) == 1:
                        ready.set()
                    else:
                        got["sse"] = (time.monotonic(), json.loads(line[6:]))
                        return

    def longpoll() -> None:
        r = get(p, "/v1/clients/c1/assignment", "c1", params={"after": 1, "wait": 30})
        got["longpoll"] = (time.monotonic(), r.json())

    threads = [threading.Thread(target=sse), threading.Thread(target=longpoll)]
    for t in threads:
        t.start()
    assert ready.wait(10)
    time.sleep(0.3)  # let the long-poll reach the server
    t0 = time.monotonic()
    p.alert("w1")
    for t in threads:
        t.join(20)
    for ch in ("sse", "longpoll"):
        t, a = got[ch]
        assert a["version"] == 2 and a["worker"] != "w1"
        print(f"{ch}: notified {1000 * (t - t0):.1f} ms after the webhook was sent")
    text = get(p, "/metrics").text
    assert 'wgfo_notification_latency_seconds_count{channel="sse"} 1.0' in text
    assert 'wgfo_notification_latency_seconds_count{channel="longpoll"} 1.0' in text


def test_longpoll_timeout_answers_current(responder):
    p = responder
    t0 = time.monotonic()
    r = get(p, "/v1/clients/c1/assignment", "c1", params={"after": 1, "wait": 0.5})
    assert r.status_code == 200 and r.json()["version"] == 1
    assert time.monotonic() - t0 >= 0.45
    # after below the current version: at once.
    assert get(p, "/v1/clients/c1/assignment", "c1", params={"after": 0, "wait": 30}).json()[
        "version"] == 1


def _first_sse_event(p: ResponderProc, headers: dict, params: dict | None = None,
                     until_alert: str | None = None) -> tuple[list[str], dict]:
    """Lines up to the first assignment event; fires `until_alert` once the stream is open."""
    lines: list[str] = []
    with httpx.stream("GET", p.url + "/v1/clients/c1/assignment/stream", timeout=20,
                      headers={**p.headers("c1"), **headers}, params=params or {}) as r:
        fired = False
        for line in r.iter_lines():
            lines.append(line)
            if line.startswith(":") and until_alert and not fired:
                fired = True
                threading.Thread(target=p.alert, args=(until_alert,)).start()
            if line.startswith("data: "):
                return lines, json.loads(line[6:])
    raise AssertionError(lines)


def test_sse_resumes_from_last_event_id(responder):
    p = responder
    lines, a = _first_sse_event(p, {})
    assert lines[:2] == ["id: 1", "event: assignment"] and a["version"] == 1
    # Already has version 1: nothing at connect, then the new one.
    lines, a = _first_sse_event(p, {"Last-Event-ID": "1"}, until_alert="w1")
    assert lines[0] == ": connected" and a["version"] == 2
    assert "id: 2" in lines
    # Behind: the current one at once (query parameter form).
    lines, a = _first_sse_event(p, {}, params={"last_event_id": 1})
    assert lines[0] == "id: 2" and a["version"] == 2
    assert metric(p, "wgfo_client_streams_open") == 0


# --------------------------------------------------------------------------- client reports


def test_client_reports(responder):
    p = responder

    def report(client: str, body: dict) -> None:
        r = post(p, f"/v1/clients/{client}/events", client, json=body)
        assert r.status_code == 202, r.text
        assert r.json()["accepted"] is True and r.json()["heartbeat_s"] > 0, r.text

    probe = {"type": "probe", "workers": {"w1": {"up": True, "rtt_ms": 0.42, "loss": 0.0},
                                          "w2": {"up": False, "loss": 1.0},
                                          "zz": {"up": True}}}
    report("c1", probe)
    report("c2", {"type": "probe", "workers": {"w1": {"up": False}}})
    assert metric(p, "wgfo_client_observed_up", worker="w1") == 0.5
    assert metric(p, "wgfo_client_observed_reporters", worker="w1") == 2
    assert metric(p, "wgfo_client_observed_up", worker="w2") == 0
    assert metric(p, "wgfo_client_probe_rtt_seconds", client="c1", worker="w1") == \
        pytest.approx(0.00042)
    assert metric(p, "wgfo_client_probe_loss_ratio", client="c1", worker="w2") == 1

    # A fast-path switch to a healthy worker with room stands.
    report("c1", {"type": "switch", "from_worker": "w1", "to_worker": "w3",
                  "reason": "3 probes lost", "elapsed_ms": 312})
    a = assignment(p, "c1")
    assert a["worker"] == "w3" and a["reason"] == "client-switch" and a["version"] == 2
    assert "w1" not in a["backups"]  # its probes just said w1 is bad
    assert metric(p, "wgfo_client_switches_total", client="c1") == 1
    report("c1", {"type": "applied", "version": 2, "worker": "w3"})

    # A switch to a draining worker is overruled: a new version says where to be.
    post(p, "/v1/workers/w2/drain", "admin")
    report("c3", {"type": "switch", "from_worker": "w3", "to_worker": "w2", "reason": "x"})
    a3 = assignment(p, "c3")
    # Not w2 (draining), not w3 (its probes just failed): the planner picks w1.
    assert a3["worker"] == "w1" and a3["reason"] == "client-rejected"
    # Refused while already where the responder wants it: a new version all the same.
    report("c3", {"type": "switch", "from_worker": "w1", "to_worker": "w2", "reason": "x"})
    a3b = assignment(p, "c3")
    assert a3b["worker"] == "w1" and a3b["reason"] == "switch-refused"
    assert a3b["version"] == a3["version"] + 1

    # Rejected: that worker is unusable for this client until its probes see it up again.
    report("c4", {"type": "rejected", "version": 1, "worker": "w1", "reason": "probes: dead"})
    a4 = assignment(p, "c4")
    assert a4["worker"] == "w3" and "w1" not in a4["backups"]
    assert get(p, "/v1/clients/c4", "c4").json()["unusable"] == ["w1"]
    report("c4", {"type": "probe", "workers": {"w1": {"up": True}}})
    detail = get(p, "/v1/clients/c4", "c4").json()
    assert detail["unusable"] == [] and "w1" in detail["assignment"]["backups"]
    assert detail["probes"]["workers"]["w1"]["up"] is True

    kinds = [(e["kind"], e["client"]) for e in events(p)]
    for k in ("client-probe", "client-switch", "client-applied", "client-rejected"):
        assert any(kind == k for kind, _ in kinds), k
    c1_events = [e["kind"] for e in get(p, "/v1/clients/c1", "c1").json()["events"]]
    assert "client-applied" in c1_events and "client-switch" in c1_events


# --------------------------------------------------------------------------- durability


def _snapshot(p: ResponderProc) -> dict:
    ws = {n: {k: w[k] for k in ("state", "draining", "since", "assigned")}
          for n, w in workers(p).items()}
    return {"workers": ws,
            "assign": {c.name: assignment(p, c.name) for c in p.fleet.clients},
            "events": [e for e in events(p) if e["kind"] != "start"]}


def test_kill_9_and_restart_answers_the_same(responder_factory):
    p = responder_factory(hold_down_seconds=3600)
    p.alert("w1")
    post(p, "/v1/workers/w3/drain", "admin")
    post(p, "/v1/clients/c2/events", "c2",
         json={"type": "rejected", "version": 1, "worker": "w2", "reason": "dead"})
    p.alert("w1", status="resolved")
    before = _snapshot(p)
    p.kill()
    p.restart()
    after = _snapshot(p)
    assert after["events"][len(before["events"]):] == []
    assert after == before
    # The de-duplication keys survived too.
    assert p.alert("w1").json()["status"] == "duplicate"
    assert workers(p)["w1"]["state"] == "recovering"


def test_recovering_worker_past_hold_down_is_up_after_restart(responder_factory):
    p = responder_factory(hold_down_seconds=1)
    p.alert("w1")
    p.alert("w1", status="resolved")
    p.kill()
    time.sleep(1.2)
    p.restart()
    assert workers(p)["w1"]["state"] == "up"


def test_kill_9_during_deliveries_loses_nothing_acknowledged(responder_factory):
    p = responder_factory()
    acked: list[str] = []
    stop = threading.Event()

    def send() -> None:
        with httpx.Client(timeout=5) as c:
            for i in range(2000):
                if stop.is_set():
                    return
                fp = f"n{i}"
                body = alert_payload("w2", "notify", fingerprint=fp, alertname="Load")
                try:
                    r = c.post(p.url + "/v1/alerts", json=body, headers=p.headers("alert"))
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    acked.append(fp)

    t = threading.Thread(target=send)
    t.start()
    poll_until(lambda: len(acked) >= 20, 20, 0.05)
    p.kill()
    stop.set()
    t.join(10)
    p.restart()
    seen = {e["data"].get("fingerprint") for e in events(p) if e["kind"] == "alert"}
    assert acked and set(acked) <= seen
    body = alert_payload("w2", "notify", fingerprint=acked[-1], alertname="Load")
    assert post(p, "/v1/alerts", "alert", json=body).json()["status"] == "duplicate"


# --------------------------------------------------------------------------- CLI


def test_cli_errors(tmp_path):
    bad = tmp_path / "fleet.yaml"
    bad.write_text("workers: []\n")
    r = subprocess.run([WG_FAILOVER, "responder", "--fleet", str(bad), "--db",
                        str(tmp_path / "db")], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "workers" in r.stderr and "Traceback" not in r.stderr
    good = tmp_path / "good.yaml"
    from wg_failover.fleet import dump_fleet
    good.write_text(dump_fleet(make_fleet(1, 1).fleet))
    r = subprocess.run([WG_FAILOVER, "responder", "--fleet", str(good), "--listen", "nope"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--listen" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "file").write_text("")
    r = subprocess.run([WG_FAILOVER, "responder", "--fleet", str(good), "--listen",
                        "127.0.0.1:1", "--db", str(tmp_path / "file" / "db")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "cannot open --db" in r.stderr and "Traceback" not in r.stderr
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    r = subprocess.run([WG_FAILOVER, "responder", "--fleet", str(good), "--listen",
                        "127.0.0.1:1", "--db", str(junk)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2 and "cannot open --db" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("path", ["/v1/alerts"])
def test_wrong_method_is_4xx(responder, path):
    assert get(responder, path).status_code == 405


def test_restart_with_a_changed_fleet(responder):
    p = responder
    assert assignment(p, "c1")["worker"] == "w1"
    clients = list(p.fleet.clients)
    clients[0] = clients[0].model_copy(update={"workers": ["w3"]})
    from wg_failover.fleet import dump_fleet
    p.fleet_path.write_text(dump_fleet(p.fleet.model_copy(update={"clients": clients})))
    p.restart()
    a = assignment(p, "c1")
    assert (a["worker"], a["version"], a["reason"]) == ("w3", 2, "fleet-change")
    assert assignment(p, "c2")["version"] == 1  # nobody else touched
    # c2 leaves the fleet: no longer served or counted; when it comes back, it continues.
    full = p.fleet.model_copy(update={"clients": clients})
    p.fleet_path.write_text(dump_fleet(full.model_copy(update={
        "clients": [c for c in clients if c.name != "c2"]})))
    p.restart()
    assert get(p, "/v1/clients/c2/assignment", "admin").status_code == 404
    assert metric(p, "wgfo_worker_assigned_clients", worker="w2") == 0
    p.fleet_path.write_text(dump_fleet(full))
    p.restart()
    a2 = assignment(p, "c2")
    assert a2["worker"] == "w2" and a2["version"] == 1  # its old assignment still stands


def test_sse_keepalive_comments(responder_factory):
    p = responder_factory(env={"WGFO_SSE_KEEPALIVE_SECONDS": "0.2"})
    lines: list[str] = []
    with httpx.stream("GET", p.url + "/v1/clients/c1/assignment/stream", timeout=10,
                      headers={**p.headers("c1"), "Last-Event-ID": "1"}) as r:
        for line in r.iter_lines():
            lines.append(line)
            if lines.count(": keepalive") >= 2:
                break
    assert lines[0] == ": connected" and not any(x.startswith("data:") for x in lines)


def test_metrics_pass_promtool(responder):
    import shutil

    if not shutil.which("promtool"):
        pytest.skip("promtool not installed")
    p = responder
    post(p, "/v1/clients/c1/events", "c1",
         json={"type": "probe", "workers": {"w1": {"up": True, "rtt_ms": 1.0, "loss": 0.0}}})
    p.alert("w1")
    r = subprocess.run(["promtool", "check", "metrics"], input=get(p, "/metrics").text,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


def test_concurrent_traffic_keeps_versions_growing(responder_factory):
    """Webhooks, drains and client reports at once: no 5xx, every stream sees strictly growing
    versions, and a restart answers what the last stream event said."""
    import asyncio

    p = responder_factory(workers=3, clients=6, hold_down_seconds=0.05)
    seen: dict[str, list[int]] = {}
    statuses: list[int] = []

    async def stream(c: httpx.AsyncClient, name: str, stop: asyncio.Event) -> None:
        async with c.stream("GET", f"/v1/clients/{name}/assignment/stream",
                            headers=p.headers(name)) as r:
            async for line in r.aiter_lines():
                if line.startswith("id: "):
                    seen.setdefault(name, []).append(int(line[4:]))
                if stop.is_set():
                    return

    async def chaos(c: httpx.AsyncClient) -> None:
        for i in range(40):
            w = f"w{i % 3 + 1}"
            body = alert_payload(w, "failover", "firing" if i % 2 == 0 else "resolved",
                                 starts_at=f"2026-01-01T00:00:{i // 2:02d}Z")
            reqs = [c.post("/v1/alerts", json=body, headers=p.headers("alert")),
                    c.post(f"/v1/workers/w{(i + 1) % 3 + 1}/"
                           + ("drain" if i % 4 == 0 else "undrain"), headers=p.headers("admin"))]
            for k in range(1, 7):
                ev = [{"type": "probe", "workers": {w: {"up": i % 3 != 0}}},
                      {"type": "switch", "from_worker": w, "to_worker": f"w{k % 3 + 1}"},
                      {"type": "rejected", "version": i, "worker": w},
                      {"type": "applied", "version": i}][(i + k) % 4]
                reqs.append(c.post(f"/v1/clients/c{k}/events", json=ev, headers=p.headers(f"c{k}")))
            for r in await asyncio.gather(*reqs):
                statuses.append(r.status_code)

    async def main() -> None:
        stop = asyncio.Event()
        async with httpx.AsyncClient(base_url=p.url, timeout=30) as c:
            streams = [asyncio.create_task(stream(c, f"c{k}", stop)) for k in range(1, 7)]
            await asyncio.sleep(0.3)
            await chaos(c)
            await asyncio.sleep(0.5)
            stop.set()
            await wake_all(c)  # one more version each, so every stream wakes and sees stop
            await asyncio.wait(streams, timeout=10)
            for t in streams:
                t.cancel()

    async def wake_all(c: httpx.AsyncClient) -> None:
        for k in range(1, 7):
            await c.post(f"/v1/clients/c{k}/events", headers=p.headers(f"c{k}"),
                         json={"type": "switch", "from_worker": "w9", "to_worker": "w9"})

    asyncio.run(main())
    assert statuses and all(s < 500 for s in statuses), sorted(set(statuses))
    for name, versions in seen.items():
        assert versions == sorted(set(versions)), (name, versions)
    final = {c.name: assignment(p, c.name) for c in p.fleet.clients}
    p.kill()
    p.restart()
    for name, a in final.items():
        assert assignment(p, name) == a
        assert seen[name][-1] <= a["version"]
