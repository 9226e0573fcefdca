"""The live fleet on the real responder: apply with a diff (and dry run), enrollment keys and
`POST /v1/enroll` with every way a key or a request can be wrong, each node's own view, revoking a
client, draining then removing a worker, SIGHUP, and a restart that loses none of it."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import threading
import time
from typing import Any

import httpx
import pytest

from tests.helpers.responder import ResponderProc
from tests.helpers.wait import wait_until

POOL = "10.99.0.0/24"


def pub() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def served(p: ResponderProc) -> dict[str, Any]:
    r = p.http("admin").get("/v1/fleet")
    assert r.status_code == 200, r.text
    return r.json()


def with_pool(p: ResponderProc) -> dict[str, Any]:
    fleet = served(p)["fleet"]
    fleet["responder"]["client_pool"] = POOL
    r = p.http("admin").put("/v1/fleet", json=fleet)
    assert r.status_code == 200 and r.json()["settings_changed"], r.text
    return fleet


def new_key(p: ResponderProc, **kw: Any) -> str:
    r = p.http("admin").post("/v1/enroll-keys", json={"kind": "client", **kw})
    assert r.status_code == 201, r.text
    return r.json()["key"]


def enroll(p: ResponderProc, key: str, **body: Any) -> httpx.Response:
    body.setdefault("public_key", pub())
    return httpx.post(p.url + "/v1/enroll", json=body, headers={"Authorization": f"Bearer {key}"},
                      verify=p.verify, timeout=10)


def as_node(p: ResponderProc, token: str, path: str) -> httpx.Response:
    return httpx.get(p.url + path, headers={"Authorization": f"Bearer {token}"},
                     verify=p.verify, timeout=10)


def test_apply_shows_the_diff_dry_run_changes_nothing_and_a_bad_fleet_is_refused_whole(
        responder):
    p = responder
    admin = p.http("admin")
    before = served(p)
    fleet = json.loads(json.dumps(before["fleet"]))
    fleet["clients"] = fleet["clients"][:-1]  # remove c4
    fleet["workers"][0]["capacity"] = 7  # change w1
    r = admin.put("/v1/fleet", params={"dry_run": "true"}, json=fleet)
    assert r.status_code == 200, r.text
    d = r.json()
    assert not d["applied"] and d["clients_removed"] == ["c4"] and d["workers_changed"] == ["w1"]
    assert served(p)["version"] == before["version"]

    bad = json.loads(json.dumps(fleet))
    bad["clients"][0]["address"] = "not-an-address"
    bad["clients"][1]["workers"] = ["nope"]
    r = admin.put("/v1/fleet", json=bad)
    assert r.status_code == 422
    locs = {".".join(str(x) for x in e["loc"]) for e in r.json()["detail"]}
    assert "body.clients[0].address" in locs and "body.clients[1].workers[0]" in locs, locs
    assert served(p)["version"] == before["version"]

    r = admin.put("/v1/fleet", json=fleet)
    assert r.status_code == 200 and r.json()["applied"], r.text
    assert served(p)["version"] == before["version"] + 1
    # c4 left: its token no longer works, and the same fleet again changes nothing.
    assert as_node(p, p.tokens["c4"], "/v1/clients/c4/assignment").status_code == 401
    again = admin.put("/v1/fleet", json=fleet).json()
    assert not again["applied"] and again["version"] == before["version"] + 1


def test_enrollment_keys_one_time_reusable_expired_revoked(responder):
    p = responder
    with_pool(p)
    admin = p.http("admin")
    once = new_key(p)
    r = enroll(p, once, name="n1")
    assert r.status_code == 201, r.text
    e = r.json()
    assert e["kind"] == "client" and e["token"] and e["client"]["address"] == "10.99.0.1/24"
    r = enroll(p, once, name="n2")
    assert r.status_code == 403 and "already used" in r.json()["detail"]

    many = new_key(p, reusable=True)
    assert enroll(p, many, name="n2").status_code == 201
    assert enroll(p, many, name="n3").status_code == 201

    short = new_key(p, expires_seconds=1)
    time.sleep(1.2)
    r = enroll(p, short, name="n4")
    assert r.status_code == 403 and "expired" in r.json()["detail"]

    revoked = admin.post("/v1/enroll-keys", json={"kind": "client"}).json()
    assert admin.delete(f"/v1/enroll-keys/{revoked['id']}").status_code == 200
    r = enroll(p, revoked["key"], name="n5")
    assert r.status_code == 403 and "revoked" in r.json()["detail"]

    assert enroll(p, "wgfo-ek-nonsense", name="n6").status_code == 401
    listed = admin.get("/v1/enroll-keys").json()
    assert {k["id"] for k in listed} >= {revoked["id"]}
    assert all("key" not in k for k in listed)  # never shown again
    assert "wgfo-ek-" not in admin.get("/v1/fleet").text
    assert not any(n in {c["name"] for c in served(p)["fleet"]["clients"]} for n in ("n4", "n5"))


def test_enroll_conflicts_and_bad_fields_are_4xx_and_change_nothing(responder):
    p = responder
    with_pool(p)
    key = new_key(p, reusable=True)
    first = enroll(p, key, name="n1")
    assert first.status_code == 201
    version = served(p)["version"]
    taken_key = served(p)["fleet"]["clients"][0]["public_key"]
    cases = [
        ({"name": "c1"}, 409, "taken"),
        ({"name": "n9", "public_key": taken_key}, 409, "public key"),
        ({"name": "n9", "address": "10.200.0.5/32"}, 422, "outside the client pool"),
        ({"name": "n9", "address": "10.99.0.1/24"}, 422, "overlaps"),
        ({"name": "Bad Name"}, 422, ""),
        ({"name": "n9", "public_key": "short"}, 422, ""),
        ({"name": "n9", "endpoint": "x:1", "extra": 1}, 422, ""),
    ]
    for body, status, why in cases:
        r = enroll(p, key, **body)
        assert r.status_code == status, (body, r.text)
        assert why in json.dumps(r.json()), (body, r.text)
    worker_key = new_key(p, kind="worker")
    r = enroll(p, worker_key, name="w9")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "endpoint"]
    assert served(p)["version"] == version


def test_views_hold_only_the_nodes_own_data(responder):
    p = responder
    with_pool(p)
    c = enroll(p, new_key(p), name="n1").json()
    w = enroll(p, new_key(p, kind="worker"), name="w9", endpoint="198.18.0.99:51820",
               tunnel_address="10.66.0.99", exporter="127.0.0.1:9699").json()
    assert w["kind"] == "worker" and w["listen_port"] == 51820
    view = as_node(p, c["token"], "/v1/clients/n1/view").json()
    assert [x["name"] for x in view["workers"]] == ["w1", "w2", "w3", "w9"]
    # Nothing of other clients (names, keys) and no token hash: compared as whole values, since
    # a random base64 key may contain "c1".
    values = set(re.findall(r'"([^"]*)"', json.dumps(view)))
    others = served(p)["fleet"]["clients"]
    assert not values & {x for c in others if c["name"] != "n1"
                         for x in (c["name"], c["public_key"])}
    assert not any("token" in v for v in values)
    peers = as_node(p, w["token"], "/v1/workers/w9/peers").json()
    assert "n1" in {x["name"] for x in peers["peers"]}
    assert all(set(x) == {"name", "public_key", "allowed_ips"} for x in peers["peers"])
    # One node's token reads nothing of another's.
    assert as_node(p, c["token"], "/v1/clients/c1/view").status_code == 401
    assert as_node(p, c["token"], "/v1/workers/w9/peers").status_code == 401
    assert as_node(p, w["token"], "/v1/workers/w1/peers").status_code == 401
    assert as_node(p, w["token"], "/v1/clients/n1/view").status_code == 401
    # The joined worker is a Prometheus target at once.
    targets = p.http("read").get("/v1/targets").text
    assert "127.0.0.1:9699" in targets


def test_long_poll_answers_on_the_next_change(responder):
    p = responder
    with_pool(p)
    version = served(p)["version"]
    box: dict[str, Any] = {}

    def poll() -> None:
        box["r"] = p.http("admin", timeout=30).get(
            "/v1/workers/w1/peers", params={"version": version, "wait": 20})

    t = threading.Thread(target=poll)
    t0 = time.monotonic()
    t.start()
    time.sleep(0.3)
    enroll(p, new_key(p), name="n1")
    t.join(25)
    assert time.monotonic() - t0 < 5
    assert box["r"].json()["version"] > version
    assert "n1" in {x["name"] for x in box["r"].json()["peers"]}


def test_revoke_ends_the_clients_token_stream_and_peers(responder):
    p = responder
    with_pool(p)
    c = enroll(p, new_key(p), name="n1").json()
    events: list[str] = []
    done = threading.Event()

    def stream() -> None:
        # Ends when the responder ends the stream; an abrupt close fails the test (not `done`).
        with httpx.stream("GET", p.url + "/v1/clients/n1/view/stream", verify=p.verify,
                          headers={"Authorization": f"Bearer {c['token']}"},
                          timeout=30) as r:
            for line in r.iter_lines():
                events.append(line)
        done.set()

    threading.Thread(target=stream, daemon=True).start()
    wait_until("the first view event", lambda: any(x.startswith("event: view") for x in events), 5)
    r = p.http("admin").delete("/v1/clients/n1")
    assert r.status_code == 200 and r.json()["clients_removed"] == ["n1"]
    assert done.wait(5), "the revoked client's view stream did not end"
    assert as_node(p, c["token"], "/v1/clients/n1/view").status_code == 401
    assert as_node(p, c["token"], "/v1/clients/n1/assignment").status_code == 401
    peers = p.http("admin").get("/v1/workers/w1/peers").json()["peers"]
    assert "n1" not in {x["name"] for x in peers}
    assert p.http("admin").delete("/v1/clients/n1").status_code == 404


def test_remove_worker_drains_first_then_removes(responder):
    p = responder
    admin = p.http("admin", timeout=30)
    on_w1 = [a["name"] for a in admin.get("/v1/clients").json() if a["worker"] == "w1"]
    assert on_w1

    # The clients on w1 say they applied their new assignment as soon as it comes.
    stop = threading.Event()

    def ack() -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not stop.is_set():
            for c in on_w1:
                a = p.http(c).get(f"/v1/clients/{c}/assignment").json()
                if a["worker"] != "w1":
                    p.http(c).post(f"/v1/clients/{c}/events",
                                   json={"type": "applied", "version": a["version"],
                                         "worker": a["worker"]})
            time.sleep(0.05)

    acker = threading.Thread(target=ack, daemon=True)
    acker.start()
    t0 = time.monotonic()
    r = admin.delete("/v1/workers/w1")
    took = time.monotonic() - t0
    stop.set()
    acker.join(5)
    assert r.status_code == 200 and r.json()["workers_removed"] == ["w1"], r.text
    assert took < 8, f"waited {took:.1f} s although every client applied"
    assert all(a["worker"] != "w1" for a in admin.get("/v1/clients").json())
    assert "w1" not in {w["name"] for w in admin.get("/v1/workers").json()}
    kinds = [e["kind"] for e in admin.get("/v1/events", params={"limit": 1000}).json()["events"]]
    assert kinds.index("drain") < kinds.index("worker-removed")
    assert admin.delete("/v1/workers/w1").status_code == 404


def test_enrolled_nodes_survive_restart_and_a_reapplied_file(responder):
    p = responder
    with_pool(p)
    c = enroll(p, new_key(p), name="n1").json()
    p.restart()
    assert as_node(p, c["token"], "/v1/clients/n1/view").status_code == 200
    # SIGHUP applies the file again: its nodes, plus the ones that joined.
    fleet_text = p.fleet_path.read_text()
    p.fleet_path.write_text(fleet_text.replace("hold_down_seconds: 60", "hold_down_seconds: 30"))
    v = served(p)["version"]
    os.kill(p.pid, signal.SIGHUP)
    wait_until("SIGHUP applied", lambda: served(p)["version"] > v, 5)
    s = served(p)
    assert s["fleet"]["responder"]["hold_down_seconds"] == 30
    assert "n1" in {x["name"] for x in s["fleet"]["clients"]} and "client:n1" in s["enrolled"]
    # A broken file on SIGHUP changes nothing and says why in the log.
    p.fleet_path.write_text("workers: [")
    os.kill(p.pid, signal.SIGHUP)
    wait_until("SIGHUP refused", lambda: "SIGHUP" in p.log() and "not valid YAML" in p.log(), 5)
    assert served(p)["version"] == s["version"]


@pytest.mark.parametrize("path", ["/v1/fleet", "/v1/enroll-keys"])
def test_admin_routes_need_the_admin_token(responder, path):
    p = responder
    for who in (None, "read", "c1"):
        r = (p.http(who) if who else p.http()).get(path)
        assert r.status_code == 401, (who, r.text)
