"""wg-quick rendering: one peer per worker, routes on the active peer only, strip-compatible."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.helpers.fleets import VALID
from wg_failover.fleet import parse_fleet
from wg_failover.wg import parse_dump
from wg_failover.wgquick import (
    PRIVATE_KEY_PLACEHOLDER,
    read_private_key,
    render_client,
    render_worker,
    strip,
)


def peers(config: str) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for line in strip(config).splitlines():
        if line == "[Peer]":
            out.append({})
        elif out and "=" in line:
            k, v = (x.strip() for x in line.split("=", 1))
            out[-1][k] = v
    return out


def test_client_config_has_every_worker_and_routes_on_first_only():
    fleet = parse_fleet(VALID)
    conf = render_client(fleet, "alice-laptop")
    ps = peers(conf)
    assert [p["PublicKey"] for p in ps] == [w.public_key for w in fleet.workers]
    assert ps[0]["AllowedIPs"] == "0.0.0.0/0, 10.66.0.1/32"
    assert ps[1]["AllowedIPs"] == "10.66.0.2/32"
    assert all(p["PersistentKeepalive"] == "25" for p in ps)
    assert ps[1]["Endpoint"] == "[2001:db8::1]:51820"
    assert sum("0.0.0.0/0" in p["AllowedIPs"] for p in ps) == 1
    assert f"PrivateKey = {PRIVATE_KEY_PLACEHOLDER}" in conf
    assert "Address = 10.66.1.2/32" in conf


def test_client_config_active_override():
    fleet = parse_fleet(VALID)
    ps = peers(render_client(fleet, "bob-phone", active="ams-1"))
    assert ps[0]["AllowedIPs"] == "10.66.0.1/32"
    assert ps[1]["AllowedIPs"] == "10.99.0.0/24, fd00:99::/64, 10.66.0.2/32"
    with pytest.raises(KeyError):
        render_client(fleet, "bob-phone", active="nope")


def test_worker_config_lists_its_clients():
    fleet = parse_fleet(VALID)
    conf = render_worker(fleet, "ams-1", private_key="x" * 43 + "=")
    assert "ListenPort = 51820" in conf
    assert "Address = 10.66.0.2/32" in conf
    assert [p["AllowedIPs"] for p in peers(conf)] == ["10.66.1.2/32", "10.66.1.3/32"]


@pytest.mark.skipif(shutil.which("wg-quick") is None, reason="wg-quick not installed")
@pytest.mark.parametrize("kind,name", [("worker", "fra-1"), ("client", "alice-laptop"),
                                       ("client", "bob-phone")])
def test_real_wg_quick_strip_accepts_and_agrees(tmp_path, kind, name):
    fleet = parse_fleet(VALID)
    key = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
    conf = (render_worker if kind == "worker" else render_client)(fleet, name, key)
    path = tmp_path / "wgfo0.conf"  # wg-quick takes the interface name from the file name
    path.write_text(conf)
    res = subprocess.run(["wg-quick", "strip", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    def norm(text: str) -> list[str]:
        lines = (line.split("#", 1)[0].replace(" ", "") for line in text.splitlines())
        return [line for line in lines if line]

    assert norm(res.stdout) == norm(strip(conf))
    assert "Address" not in res.stdout


def test_private_key_file(tmp_path):
    good = tmp_path / "k"
    good.write_text("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n")
    assert read_private_key(good).endswith("=")
    bad = tmp_path / "bad"
    bad.write_text("supersecretbutwrong")
    with pytest.raises(ValueError) as info:
        read_private_key(bad)
    assert "supersecretbutwrong" not in str(info.value)


def test_cli_config_with_key_file(tmp_path):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(VALID)
    key = tmp_path / "k"
    key.write_text("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n")
    res = subprocess.run([sys.executable, "-m", "wg_failover.cli", "config", "client",
                          "alice-laptop", "--fleet", str(fleet), "--private-key-file", str(key)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "PrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=" in res.stdout
    res = subprocess.run([sys.executable, "-m", "wg_failover.cli", "config", "client", "eve",
                          "--fleet", str(fleet)], capture_output=True, text=True)
    assert res.returncode == 2
    assert "no client named 'eve'" in res.stderr and "Traceback" not in res.stderr


# Recorded from the real `wg show all dump` (wireguard-go v0.0.20220316, wireguard-tools);
# private keys replaced by fresh ones that were never used.
RECORDED_ALL_DUMP = (
    "tst0\t6BM8KNrjque4P0QSgOt+3qQMa3uC57Y5o6CIRhCWQWc=\tR5WaLlcp/mY2zfE3HH3cX5YplXUqblH6TVN7wskEO00="
    "\t51999\toff\n"
    "tst0\tqfEhQFIBswPYhZT8oZwuufrAAZAwO+kY/673fitIfgk=\t(none)\t198.18.0.5:51820\t10.1.0.0/24"
    "\t0\t0\t0\toff\n"
    "tst0\tDLc1tACgDb/MvA/rVSiiYn85E3jLXHBZ8X1e3wyKyS8=\t(none)\t(none)\t(none)\t1764150000"
    "\t1234\t5678\t25\n"
    "tst1\t6BM8KNrjque4P0QSgOt+3qQMa3uC57Y5o6CIRhCWQWc=\t(none)\t45921\t0xca6c\n"
)


def test_parse_all_dump():
    d = parse_dump(RECORDED_ALL_DUMP)
    assert set(d.devices) == {"tst0", "tst1"}
    assert d.devices["tst0"].listen_port == 51999
    assert d.devices["tst1"].fwmark == 0xCA6C
    p0, p1 = d.peers_of("tst0")
    assert p0.endpoint == "198.18.0.5:51820" and p0.allowed_ips == ("10.1.0.0/24",)
    assert p0.latest_handshake == 0 and p0.persistent_keepalive is None
    assert p1.endpoint is None and p1.allowed_ips == ()
    # wg(8) prints transfer-rx before transfer-tx.
    assert (p1.rx_bytes, p1.tx_bytes, p1.persistent_keepalive) == (1234, 5678, 25)
    assert "6BM8KNrjque4P0QSgOt+3qQMa3uC57Y5o6CIRhCWQWc=" not in repr(d)  # private key dropped
