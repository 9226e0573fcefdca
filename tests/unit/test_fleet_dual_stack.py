"""A client's `extra_addresses` (dual stack, issue 18): wg-quick's `Address = a, b` on the
client, every address allowed in each worker's peer entry for it, overlap checks with paths."""

from __future__ import annotations

import base64
import os

import pytest
import yaml

from wg_failover.fleet import FleetError, dump_fleet, validate_fleet_data
from wg_failover.lab.gen import generate_fleet
from wg_failover.responder.fleetdoc import PeerFragments, client_ips, peers_of
from wg_failover.wgquick import render_client, render_worker
from wg_failover.wire import WorkerPeers


def data(**extra: object) -> dict:
    d = yaml.safe_load(dump_fleet(generate_fleet(2, 2).fleet))
    for i, v in extra.items():
        d["clients"][int(i[1:])]["extra_addresses"] = v
    return d


def test_rendered_for_wg_quick_on_the_client_and_allowed_on_every_worker():
    f = validate_fleet_data(data(c0=["fd66:1::2/128"]), "t")
    c1 = f.client("c1")
    assert c1.addresses == ["10.66.1.2/32", "fd66:1::2/128"]
    assert "Address = 10.66.1.2/32, fd66:1::2/128" in render_client(f, "c1").splitlines()
    assert "Address = 10.66.1.3/32" in render_client(f, "c2").splitlines()
    for w in ("w1", "w2"):
        allowed = [ln for ln in render_worker(f, w).splitlines() if ln.startswith("AllowedIPs")]
        assert allowed == ["AllowedIPs = 10.66.1.2/32, fd66:1::2/128",
                           "AllowedIPs = 10.66.1.3/32"]
        view = peers_of(f, f.worker(w), 1, "0123abcd")
        assert [p.allowed_ips for p in view.peers] == [["10.66.1.2/32", "fd66:1::2/128"],
                                                       ["10.66.1.3/32"]]
    ips = client_ips(f)
    assert {str(ip) for ip in ips} == {"10.66.1.2", "fd66:1::2", "10.66.1.3"}


def test_a_workers_peers_from_remembered_entries_are_the_documents_own_text():
    """The responder serves a worker's peers from per-client fragments (PeerFragments): the
    text is exactly the wire document's, and a client whose key or addresses changed gets its
    new entry, never the remembered one."""
    f = validate_fleet_data(data(c0=["fd66:1::2/128"]), "t")
    frags = PeerFragments()
    for _ in range(2):  # the second round comes from the memo
        for w in f.workers:
            text = frags.document(f, w, 7, "0123abcd")
            assert text == peers_of(f, w, 7, "0123abcd").model_dump_json()
            assert WorkerPeers.model_validate_json(text).version == 7
    d = data(c0=["fd66:1::3/128"])
    d["clients"][1]["public_key"] = base64.b64encode(os.urandom(32)).decode()
    changed = validate_fleet_data(d, "t")
    w = changed.workers[0]
    text = frags.document(changed, w, 8, "0123abcd")
    assert text == peers_of(changed, w, 8, "0123abcd").model_dump_json()
    peers = WorkerPeers.model_validate_json(text).peers
    assert peers[0].allowed_ips == ["10.66.1.2/32", "fd66:1::3/128"]
    assert peers[1].public_key == d["clients"][1]["public_key"]


def test_left_out_when_unset():
    f = generate_fleet(1, 1).fleet
    assert "extra_addresses" not in dump_fleet(f)
    assert f.clients[0].host_cidrs == [f.clients[0].host_cidr]


@pytest.mark.parametrize(("extra", "path", "words"), [
    (["nonsense"], "clients[1].extra_addresses[0]", "not an address in CIDR form"),
    ([5], "clients[1].extra_addresses[0]", "valid string"),
    (["fd66:1::2/128"], "clients[1].extra_addresses[0]", "overlaps fd66:1::2/128"),
    (["10.66.0.1/32"], "clients[1].extra_addresses[0]", "at workers[0].tunnel_address"),
    (["10.66.1.2/32"], "clients[1].extra_addresses[0]", "at clients[0].address"),
    ([f"fd66::{i}/128" for i in range(1, 10)], "clients[1].extra_addresses", "at most 8"),
])
def test_bad_or_overlapping_extra_addresses_are_problems_with_their_path(extra, path, words):
    with pytest.raises(FleetError) as e:
        validate_fleet_data(data(c0=["fd66:1::2/128"], c1=extra), "t")
    found = [(p.path, p.message) for p in e.value.problems]
    assert any(p == path and words in m for p, m in found), found
