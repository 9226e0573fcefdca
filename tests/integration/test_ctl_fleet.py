"""`wg-failover ctl apply | keys | clients remove | workers remove` against the real responder over
HTTPS: the diff, a dry run, a bad file refused here with the field path, keys shown once, and a
revoked client's token refused."""

from __future__ import annotations

import base64
import json
import os

import httpx
import yaml

from tests.helpers.ctl import ctl, refused
from tests.helpers.responder import ResponderProc


def started(responder_factory) -> ResponderProc:
    return responder_factory(tls=True, workers=3, clients=4)


def test_apply_prints_the_diff_and_dry_run_changes_nothing(responder_factory, tmp_path):
    p = started(responder_factory)
    data = yaml.safe_load(p.fleet_path.read_text())
    data["clients"] = data["clients"][:3]
    data["responder"]["client_pool"] = "10.99.0.0/24"
    f = tmp_path / "fleet.yaml"
    f.write_text(yaml.safe_dump(data))
    r = ctl(p, "apply", str(f), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "- client c4" in r.stdout and "dry run" in r.stdout
    assert "c4" in {c["name"] for c in p.http("admin").get("/v1/clients").json()}
    r = ctl(p, "apply", str(f))
    assert r.returncode == 0 and "applied: fleet version" in r.stdout, r.stderr
    assert "c4" not in {c["name"] for c in p.http("admin").get("/v1/clients").json()}
    r = ctl(p, "apply", str(f), "--json")
    assert json.loads(r.stdout)["applied"] is False  # nothing left to change


def test_a_bad_file_is_refused_here_with_the_field_path(responder_factory, tmp_path):
    p = started(responder_factory)
    data = yaml.safe_load(p.fleet_path.read_text())
    data["clients"][1]["address"] = "10.0.0.300/32"
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(data))
    refused(ctl(p, "apply", str(f)), "clients[1].address")
    refused(ctl(p, "apply", str(tmp_path / "missing.yaml")), "no such file")


def test_keys_create_list_revoke_and_join_with_one(responder_factory):
    p = started(responder_factory)
    r = ctl(p, "keys", "create", "--kind", "client", "--expires", "1h", "--address",
            "10.77.0.9/32")
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    assert key.startswith("wgfo-ek-") and "shown only now" in r.stderr
    listed = ctl(p, "keys", "list")
    assert key not in listed.stdout and "client" in listed.stdout
    keys = json.loads(ctl(p, "keys", "list", "--json").stdout)
    assert len(keys) == 1 and keys[0]["address"] == "10.77.0.9/32"
    body = {"name": "n1", "public_key": base64.b64encode(os.urandom(32)).decode()}
    e = httpx.post(p.url + "/v1/enroll", json=body, verify=p.verify,
                   headers={"Authorization": f"Bearer {key}"})
    assert e.status_code == 201 and e.json()["client"]["address"] == "10.77.0.9/32", e.text
    assert ctl(p, "keys", "revoke", keys[0]["id"]).returncode == 0
    refused(ctl(p, "keys", "revoke", "nope"), "no enrollment key")
    refused(ctl(p, "keys", "create"), "--kind")
    refused(ctl(p, "keys", "create", "--kind", "client", "--expires", "soon"), "--expires")


def test_clients_remove_revokes_and_workers_remove_drains_then_removes(responder_factory):
    p = started(responder_factory)
    r = ctl(p, "clients", "remove", "c2")
    assert r.returncode == 0 and "revoked" in r.stdout, r.stderr
    assert p.http("c2").get("/v1/clients/c2/assignment").status_code == 401
    refused(ctl(p, "clients", "remove", "c2"), "no client named")
    refused(ctl(p, "clients", "remove"), "needs the client's name")
    r = ctl(p, "workers", "remove", "w3", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["workers_removed"] == ["w3"]
    assert "w3" not in ctl(p, "workers").stdout
