"""The switcher following its view, as plain logic: the view as a fleet, what a new view changes,
which views are news, the cache, the decider taking a new worker list, the CLI's name lookup."""

from __future__ import annotations

import argparse
import json

import pytest

from wg_failover import wg
from wg_failover.cli import CliError
from wg_failover.client import cache
from wg_failover.client.cli import follows_view, node_defaults
from wg_failover.client.decisions import DOWN, UP, Decider
from wg_failover.client.view import HttpViewSource, is_news, plan_view, view_fleet
from wg_failover.client.wgctl import plan_reconcile
from wg_failover.wire import Assignment, ClientView

KEYS = {n: wg.keypair()[1] for n in ("w1", "w2", "w3", "w2b")}


def worker(name: str, i: int, key: str | None = None) -> dict:
    return {"name": name, "public_key": key or KEYS[name], "endpoint": f"198.18.0.{10 + i}:51820",
            "tunnel_address": f"10.66.0.{i}"}


def view(version: int, workers: list[dict], routes=("10.99.0.0/24",), epoch="0a0a0a0a",
         client="c1") -> ClientView:
    return ClientView.model_validate({
        "client": client, "version": version, "epoch": epoch, "address": "10.66.1.2/32",
        "routes": list(routes), "workers": workers})


def test_a_view_is_a_one_client_fleet_in_its_preference_order():
    fleet, client = view_fleet(view(3, [worker("w2", 2), worker("w1", 1)]))
    assert [w.name for w in fleet.preferences(client)] == ["w2", "w1"]
    assert client.routes == ["10.99.0.0/24"] and client.address == "10.66.1.2/32"
    assert fleet.clients == [client]
    assert fleet.worker("w1").tunnel_host_cidr == "10.66.0.1/32"


def test_a_view_without_workers_or_with_a_bad_endpoint_is_refused():
    with pytest.raises(ValueError, match="names no worker"):
        view_fleet(view(1, []))
    bad = worker("w1", 1)
    bad["endpoint"] = "no-port"
    with pytest.raises(ValueError, match="usable interface"):
        view_fleet(view(1, [bad]))


def test_views_are_news_once_per_version_within_an_epoch():
    v5 = view(5, [worker("w1", 1)])
    assert is_news(None, v5)
    assert not is_news(v5, view(5, [worker("w1", 1), worker("w2", 2)]))
    assert not is_news(v5, view(4, [worker("w1", 1)]))
    assert is_news(v5, view(6, [worker("w1", 1)]))
    assert is_news(v5, view(1, [worker("w1", 1)], epoch="0b0b0b0b"))  # a new store


def test_plan_view_names_joined_departed_and_changed_workers():
    old = view_fleet(view(1, [worker("w1", 1), worker("w2", 2)]))
    new = view_fleet(view(2, [worker("w1", 1), worker("w3", 3)]))
    plan = plan_view(*old, *new)
    assert plan.added == ["w3"] and plan.removed == ["w2"] and plan.changed == []
    assert plan.stale_keys == [KEYS["w2"]] and not plan.routes_changed
    assert "added w3" in plan.describe() and "removed w2" in plan.describe()

    rekeyed = view_fleet(view(3, [worker("w1", 1), worker("w2", 2, KEYS["w2b"])],
                              routes=("10.99.0.0/24", "10.98.0.0/24")))
    plan = plan_view(*old, *rekeyed)
    assert plan.changed == ["w2"] and plan.stale_keys == [KEYS["w2"]] and plan.routes_changed
    assert plan_view(*old, *old).empty()


def test_a_joined_worker_is_planned_as_a_warm_peer_with_its_tunnel_address_only():
    fleet, client = view_fleet(view(2, [worker("w1", 1), worker("w3", 3)]))
    peers = [wg.Peer("c0", KEYS["w1"], "198.18.0.11:51820", ("10.99.0.0/24", "10.66.0.1/32"),
                     0, 0, 0, 25)]
    (change,) = plan_reconcile(fleet, client, peers, "w1", 25)
    assert (change.worker, change.why) == ("w3", "missing peer")
    assert change.allowed_ips == ("10.66.0.3/32",)
    assert (change.endpoint, change.persistent_keepalive) == ("198.18.0.13:51820", 25)


def test_the_decider_takes_a_new_worker_list():
    d = Decider(["w1", "w2"], active="w1")
    for w in ("w1", "w2"):
        d.on_reply(w, 0.001, 0.0)
    d.pending = Assignment(client="c1", worker="w2", version=3)
    d.set_workers(["w1", "w3"])
    assert list(d.health) == ["w1", "w3"] and d.health["w1"].state == UP
    assert d.health["w3"].state not in (UP, DOWN)  # unknown until its probes answer
    assert d.order == ["w1", "w3"] and d.pending is None  # its worker left
    assert d.active == "w1"
    assert [r.event["workers"] for r in [d.probe_report()]] == [
        {"w1": d.health["w1"].summary().model_dump(mode="json"),
         "w3": d.health["w3"].summary().model_dump(mode="json")}]
    d.on_reply("w3", 0.001, 1.0)
    assert d.best_backup(1.0) == "w3"
    with pytest.raises(ValueError):
        d.set_workers([])


def test_the_view_cache_round_trips_and_refuses_another_clients(tmp_path):
    path = cache.view_path(tmp_path, "c1")
    assert path.name == "switcher-c1.view.json"
    v = view(7, [worker("w1", 1)])
    cache.save_view(path, v)
    assert cache.load_view(path, "c1") == v
    assert cache.load_view(path, "c2") is None
    path.write_text("{not json")
    assert cache.load_view(path, "c1") is None


def test_the_view_source_parses_only_this_clients_views():
    src = HttpViewSource("http://127.0.0.1:9", "c1", "t")
    assert src.stream_url.endswith("/v1/clients/c1/view/stream")
    good = view(2, [worker("w1", 1)])
    assert src._parse(good.model_dump_json()) == good
    assert src._parse(view(2, [worker("w1", 1)], client="c2").model_dump_json()) is None
    assert src._parse(b'{"client": "c1"}') is None
    # Nothing to resume: the stream's first event is the current view.
    assert src._stream_request(5, "0a0a0a0a") == ({}, {})
    assert src._poll_params(5, None) == {"version": "5", "wait": "25"}


def _args(tmp_path, **kw) -> argparse.Namespace:
    base = {"state_dir": str(tmp_path), "client": None, "interface": None, "responder": None,
            "token_file": None, "ca_file": None, "fleet": None}
    return argparse.Namespace(**{**base, **kw})


def test_node_json_gives_the_name_and_what_join_wrote(tmp_path, monkeypatch):
    with pytest.raises(CliError, match="--client and --interface are required"):
        node_defaults(_args(tmp_path))
    given = _args(tmp_path, client="c1", interface="wg0")
    node_defaults(given)  # no node.json needed when the flags say it all
    assert given.responder is None
    (tmp_path / "node.json").write_text(json.dumps({
        "kind": "client", "name": "c9", "interface": "wg7", "responder": "https://r:8443",
        "token_file": "/d/token", "ca_file": None}))
    args = _args(tmp_path, interface="wg0")
    node_defaults(args)
    assert (args.client, args.interface, args.responder, args.token_file, args.ca_file) == (
        "c9", "wg0", "https://r:8443", "/d/token", None)
    (tmp_path / "node.json").write_text(json.dumps({"kind": "worker", "name": "w9"}))
    with pytest.raises(CliError, match="not a client"):
        node_defaults(_args(tmp_path))
    (tmp_path / "node.json").write_text("[]")
    with pytest.raises(CliError, match="not a node.json"):
        node_defaults(_args(tmp_path))
    monkeypatch.delenv("WG_FAILOVER_FLEET", raising=False)
    assert follows_view(_args(tmp_path, responder="https://r:8443"))
    assert not follows_view(_args(tmp_path, fleet="f.yaml", responder="https://r:8443"))
    assert not follows_view(_args(tmp_path))
    monkeypatch.setenv("WG_FAILOVER_FLEET", "/etc/f.yaml")
    assert not follows_view(_args(tmp_path, responder="https://r:8443"))


def test_an_assignment_ahead_of_the_view_waits_for_it(tmp_path):
    import asyncio
    from types import SimpleNamespace

    from wg_failover.client.switcher import Options, Switcher

    fleet, client = view_fleet(view(1, [worker("w1", 1), worker("w2", 2)]))
    sw = Switcher(fleet, client, Options(interface="wgfo-none0"), tmp_path / "c.json")
    sw.decider = Decider(["w1", "w2"], active="w1")
    sw.follower = SimpleNamespace(view=view(1, [worker("w1", 1), worker("w2", 2)]))
    a = Assignment(client="c1", worker="w3", version=4, epoch="0a0a0a0a")

    async def scenario() -> None:
        sw.deliver(a)  # w3 joined: the assignment stream was first
        assert sw.held == a and sw.decider.version == 0  # not rejected, not consumed
        sw.decider.set_workers(["w1", "w2", "w3"])
        sw.view_changed()
        assert sw.held is None and sw.decider.version == 4
        assert sw.decider.pending == a  # waits for w3's first probe answers, as any other

    asyncio.run(scenario())
