"""Fleet file validation: every broken file names its field path and what is wrong."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.helpers.fleets import VALID
from wg_failover.fleet import FleetError, dump_fleet, load_fleet, parse_fleet
from wg_failover.lab.gen import generate_fleet


def broken(edit) -> str:
    data = yaml.safe_load(VALID)
    edit(data)
    return yaml.safe_dump(data, sort_keys=False)


def test_valid_fleet_parses():
    fleet = parse_fleet(VALID, "fleet.yaml")
    assert [w.name for w in fleet.workers] == ["fra-1", "ams-1"]
    assert fleet.worker("fra-1").listen_port == 51820
    assert fleet.worker("ams-1").listen_port == 51820
    assert fleet.client("bob-phone").workers is None
    assert [w.name for w in fleet.preferences(fleet.client("bob-phone"))] == ["fra-1", "ams-1"]
    assert fleet.responder.hold_down_seconds == 60


def _set(path, value):
    def edit(data):
        target = data
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
    return edit


BROKEN = [
    # (edit, expected field path, words expected in the message)
    (_set(["workers", 1, "name"], "fra-1"), "workers[1].name", "duplicate worker name"),
    (_set(["workers", 0, "name"], "Fra_1"), "workers[0].name", "not a valid name"),
    (_set(["workers", 1, "public_key"], "not-base64!"), "workers[1].public_key", "base64"),
    (_set(["workers", 1, "public_key"], "AAAA"), "workers[1].public_key", "3 bytes"),
    (_set(["clients", 1, "public_key"], "DLc1tACgDb/MvA/rVSiiYn85E3jLXHBZ8X1e3wyKyS8="),
     "clients[1].public_key", "duplicate public key"),
    (_set(["workers", 1, "endpoint"], "2001:db8::1:51820"), "workers[1].endpoint", "brackets"),
    (_set(["workers", 0, "endpoint"], "fra-1.example.net"), "workers[0].endpoint", "port"),
    (_set(["workers", 0, "endpoint"], "fra-1.example.net:70000"), "workers[0].endpoint",
     "1 to 65535"),
    (_set(["workers", 1, "tunnel_address"], "10.66.0.1"), "workers[1].tunnel_address",
     "overlaps"),
    (_set(["clients", 0, "address"], "10.66.0.2/32"), "clients[0].address", "overlaps"),
    (_set(["workers", 0, "tunnel_address"], "10.66.0.300"), "workers[0].tunnel_address",
     "not an IP address"),
    (_set(["clients", 0, "routes"], ["0.0.0.0/33"]), "clients[0].routes[0]", "CIDR"),
    (_set(["clients", 0, "routes"], ["10.99.0.1/24"]), "clients[0].routes[0]", "host bits"),
    (_set(["clients", 0, "workers"], ["fra-1", "par-9"]), "clients[0].workers[1]",
     "unknown worker 'par-9'"),
    (_set(["workers", 0, "capcity"], 10), "workers[0].capcity", "unknown key"),
    (_set(["workers", 0, "capacity"], 0), "workers[0].capacity", "greater than or equal to 1"),
    (_set(["clients", 0, "token_sha256"], "xyz"), "clients[0].token_sha256", "64"),
    (_set(["responder", "url"], "master:8080"), "responder.url", "URL"),
    (_set(["clients", 0, "address"], "10.66.1.2"), "clients[0].address", "prefix length"),
    (lambda d: d["workers"][0].pop("exporter"), "workers[0].exporter", "required"),
]


@pytest.mark.parametrize("edit,path,words", BROKEN, ids=[b[1] + ":" + b[2] for b in BROKEN])
def test_broken_fleet_names_the_field(edit, path, words):
    with pytest.raises(FleetError) as info:
        parse_fleet(broken(edit), "bad.yaml")
    text = info.value.render()
    assert text.startswith("bad.yaml: invalid fleet file")
    matching = [p for p in info.value.problems if p.path == path]
    assert matching, f"no problem at {path}: {text}"
    assert any(words in p.message for p in matching), text


def test_several_errors_reported_at_once():
    def edit(d):
        d["workers"][0]["endpoint"] = "nope"
        d["clients"][1]["address"] = "banana"
        d["workers"][1]["colour"] = "red"
    with pytest.raises(FleetError) as info:
        parse_fleet(broken(edit), "bad.yaml")
    paths = {p.path for p in info.value.problems}
    assert {"workers[0].endpoint", "clients[1].address", "workers[1].colour"} <= paths


def test_yaml_syntax_error_names_line():
    with pytest.raises(FleetError) as info:
        parse_fleet("workers:\n  - name: [unclosed\n", "syntax.yaml")
    assert "line" in info.value.problems[0].path
    assert "not valid YAML" in info.value.problems[0].message


def test_duplicate_yaml_key_rejected():
    text = VALID.replace("    region: eu\n", "    region: eu\n    region: us\n")
    with pytest.raises(FleetError) as info:
        parse_fleet(text, "dup.yaml")
    assert "duplicate key 'region'" in info.value.render()


@pytest.mark.parametrize("text,words", [("", "empty"), ("- a\n- b\n", "mapping"),
                                        ("clients: []\n", "workers")])
def test_degenerate_files(text, words):
    with pytest.raises(FleetError) as info:
        parse_fleet(text, "x.yaml")
    assert words in info.value.render()


def test_missing_file(tmp_path):
    with pytest.raises(FleetError) as info:
        load_fleet(tmp_path / "nope.yaml")
    assert "no such file" in info.value.render()


def test_generated_fleet_round_trips():
    gen = generate_fleet(3, 2)
    text = dump_fleet(gen.fleet)
    assert parse_fleet(text) == gen.fleet
    for priv in gen.private_keys.values():
        assert priv not in text, "a private key leaked into the fleet file"


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "wg_failover.cli", *args],
                          capture_output=True, text=True, env=env)


def test_cli_check_valid_and_invalid(tmp_path):
    good = tmp_path / "fleet.yaml"
    good.write_text(VALID)
    res = _cli("check", str(good))
    assert res.returncode == 0, res.stderr
    assert "OK: 2 workers, 2 clients" in res.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text(broken(_set(["workers", 1, "endpoint"], "2001:db8::1:51820")))
    res = _cli("check", str(bad))
    assert res.returncode == 2
    assert f"{bad}: invalid fleet file" in res.stderr
    assert "workers[1].endpoint" in res.stderr
    assert "Traceback" not in res.stderr


def test_cli_fleet_from_environment(tmp_path):
    import os

    good = tmp_path / "fleet.yaml"
    good.write_text(VALID)
    res = _cli("check", env=dict(os.environ, WG_FAILOVER_FLEET=str(good)))
    assert res.returncode == 0, res.stderr


def test_bad_mqtt_url_fails_at_load():
    def edit(d):
        d["responder"]["mqtt"] = {"url": "mqtt://user:secret@broker:1883"}
    with pytest.raises(FleetError) as info:
        parse_fleet(broken(edit), "bad.yaml")
    [problem] = info.value.problems
    assert problem.path == "responder.mqtt.url"
    assert "password file" in problem.message and "secret" not in problem.message
