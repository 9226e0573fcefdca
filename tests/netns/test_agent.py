"""`wg-failover join` and `wg-failover agent` against the real responder (HTTPS, SQLite) and real
wireguard-go in namespaces: a worker and a client enroll at run time, the client's handshake
with the worker comes within 2 s of its join, a revoked client's peer is gone within 2 s, an
agent restarted while the responder is down puts back the cached peers, and the agent follows
the responder across its restarts. Then join's refusals: exit 2 with the responder's reason.
"""

from __future__ import annotations

import base64
import os
import signal
import sqlite3
import stat
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers.responder import ResponderProc, make_fleet
from tests.helpers.tools import WG_FAILOVER
from wg_failover import wg
from wg_failover.lab.gen import Generated
from wg_failover.lab.procs import poll_until
from wg_failover.wgquick import strip

pytestmark = [pytest.mark.timeout(120)]

POOL = "10.81.0.0/24"


def _pool_fleet() -> Generated:
    # One worker from the file (never started: its endpoint answers nothing); the rest joins.
    gen = make_fleet(workers=1, clients=0)
    rs = gen.fleet.responder.model_copy(update={"client_pool": POOL})
    return Generated(gen.fleet.model_copy(update={"responder": rs}), {}, gen.tokens)


def _key(p: ResponderProc, kind: str, path: Path, **kw) -> str:
    with p.http("admin") as http:
        r = http.post("/v1/enroll-keys", json={"kind": kind, **kw})
    assert r.status_code == 201, r.text
    path.write_text(r.json()["key"] + "\n")
    return r.json()["id"]


def _join(p: ResponderProc, *args: str) -> subprocess.CompletedProcess:
    ca = ["--ca-file", str(p.ca_file)] if p.ca_file else []
    return subprocess.run([WG_FAILOVER, "join", p.url, *ca, *args], capture_output=True,
                          text=True, timeout=60)


def _address(config: str) -> str:
    return next(line.split("=", 1)[1].strip() for line in config.splitlines()
                if line.startswith("Address ="))


def _peers(iface: str) -> dict[str, wg.Peer]:
    return {q.public_key: q for q in wg.show_dump(iface).peers}


def _rand_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def _agent_routes(host, iface: str) -> set[str]:
    out = host.run(["ip", "-o", "route", "show", "dev", iface, "proto", "119"]).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


class AgentProc:
    """The agent runs in the root namespace (the responder is on its loopback): wg reaches the
    worker's wireguard-go through the shared control socket, and `ip` is pointed into the
    worker's namespace by WG_FAILOVER_IP, so its routes land where they would on a worker."""

    def __init__(self, argv: list[str], log: Path, netns: str) -> None:
        self.log = log
        ip = log.parent / f"ip-{netns}"
        ip.write_text(f'#!/bin/sh\nexec ip -n {netns} "$@"\n')
        ip.chmod(0o700)
        with log.open("ab") as f:
            self.proc = subprocess.Popen([WG_FAILOVER, "agent", *argv], stdout=f,
                                         stderr=subprocess.STDOUT,
                                         env={**os.environ, "WG_FAILOVER_IP": str(ip)})

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.mark.netns
def test_join_and_agent_follow_the_live_fleet(netlab, tmp_path, responder_factory):
    p = responder_factory(_pool_fleet(), tls=True)
    whost, chost = netlab.add_host("wk"), netlab.add_host("cl")
    wif, cif = netlab.ifname("w0"), netlab.ifname("c0")
    wdir, cdir, adir = tmp_path / "wj", tmp_path / "cj", tmp_path / "agent"

    # -- a worker joins: key made here, token and config written 0600, then its interface up
    _key(p, "worker", tmp_path / "wk.key")
    j = _join(p, "--enroll-key-file", str(tmp_path / "wk.key"), "--name", "wj", "--interface",
              wif, "--state-dir", str(wdir), "--endpoint", f"{whost.address}:51820",
              "--tunnel-address", "10.66.7.1", "--exporter", f"{whost.address}:9586")
    assert j.returncode == 0, j.stderr
    assert "joined as worker wj" in j.stdout
    for name in ("private.key", "token", f"{wif}.conf", "node.json"):
        assert stat.S_IMODE((wdir / name).stat().st_mode) == 0o600, name
    token = (wdir / "token").read_text().strip()
    assert token not in j.stdout + j.stderr
    wconf = (wdir / f"{wif}.conf").read_text()
    assert (wdir / "private.key").read_text().strip() in wconf
    netlab.wireguard(whost, wif, strip(wconf), ["10.66.7.1/32"])
    wpub = wg.show_dump(wif).devices[wif].public_key

    agent = AgentProc(["--node", str(wdir / "node.json"), "--state-dir", str(adir),
                       "--reconcile-every", "2"], tmp_path / "agent.log", whost.netns)
    try:
        # The agent follows before the client joins: a client whose first handshake comes
        # before its peer exists is answered only on WireGuard's retry, 5 s later.
        assert poll_until(lambda: "responder: connected" in agent.text(), 15), agent.text()
        # -- a client joins (address from the pool, only this worker): handshake within 2 s
        _key(p, "client", tmp_path / "cl.key")
        j = _join(p, "--enroll-key-file", str(tmp_path / "cl.key"), "--name", "cj",
                  "--interface", cif, "--state-dir", str(cdir), "--workers", "wj", "--json")
        joined = time.monotonic()
        assert j.returncode == 0, j.stderr
        assert (cdir / "token").read_text().strip() not in j.stdout + j.stderr
        cconf = (cdir / f"{cif}.conf").read_text()
        address = _address(cconf)
        assert address.startswith("10.81.0.") and f"PublicKey = {wpub}" in cconf
        netlab.wireguard(chost, cif, strip(cconf), [address])
        cpub = wg.show_dump(cif).devices[cif].public_key

        def handshake() -> bool:
            q = _peers(wif).get(cpub)
            return q is not None and q.latest_handshake > 0

        assert poll_until(handshake, 2.0 - (time.monotonic() - joined), 0.02), (
            f"no handshake within 2 s of join: worker peers {_peers(wif)}\n{agent.text()}")
        assert chost.ping("10.66.7.1", count=3)
        host_ip = address.split("/")[0]
        assert _peers(wif)[cpub].allowed_ips == (host_ip + "/32",)
        assert _agent_routes(whost, wif) == {host_ip}  # why the worker's answers came back

        # -- a second client through the API; then revoke the first: its peer goes within 2 s,
        #    and the other peer is left alone (same handshake, never re-set)
        other = _rand_key()
        ek = tmp_path / "api.key"
        _key(p, "client", ek, reusable=True)
        with httpx.Client(base_url=p.url, verify=p.verify, timeout=10) as http:
            r = http.post("/v1/enroll", json={"name": "c2", "public_key": other},
                          headers={"Authorization": f"Bearer {ek.read_text().strip()}"})
            assert r.status_code == 201, r.text
        assert poll_until(lambda: other in _peers(wif), 2.0, 0.02), agent.text()
        hs = _peers(wif)[cpub].latest_handshake
        with p.http("admin") as http:
            r = http.delete("/v1/clients/cj")
            revoked = time.monotonic()
            assert r.status_code == 200, r.text
        assert poll_until(lambda: cpub not in _peers(wif), 2.0 - (time.monotonic() - revoked),
                          0.02), agent.text()
        assert other in _peers(wif)
        assert poll_until(lambda: host_ip not in _agent_routes(whost, wif), 2, 0.02)
        # The revoked client's token is refused now.
        with httpx.Client(base_url=p.url, verify=p.verify, timeout=10) as http:
            ctoken = (cdir / "token").read_text().strip()
            r = http.get("/v1/clients/cj/view", headers={"Authorization": f"Bearer {ctoken}"})
            assert r.status_code in (401, 404), r.text
        assert hs > 0

        # -- the responder goes away, the agent restarts, a peer vanishes by hand: the cache
        #    puts it back, and nothing else changes
        p.stop()
        agent.stop()
        before = {k: q.allowed_ips for k, q in _peers(wif).items()}
        assert before and other in before
        wg.set_peer(wif, other, remove=True)
        agent = AgentProc(["--node", str(wdir / "node.json"), "--state-dir", str(adir),
                           "--reconcile-every", "2"], tmp_path / "agent2.log", whost.netns)
        assert poll_until(lambda: {k: q.allowed_ips for k, q in _peers(wif).items()} == before,
                          5, 0.05), agent.text()
        assert "cache: " in agent.text()

        # -- the responder comes back: the agent (started while it was down) follows it; then
        #    it is killed mid-stream and restarted, and a change made after that still arrives
        p.restart()
        third = _rand_key()
        with httpx.Client(base_url=p.url, verify=p.verify, timeout=10) as http:
            r = http.post("/v1/enroll", json={"name": "c3", "public_key": third},
                          headers={"Authorization": f"Bearer {ek.read_text().strip()}"})
            assert r.status_code == 201, r.text
        assert poll_until(lambda: third in _peers(wif), 15, 0.05), agent.text()
        p.kill()
        p.restart()
        with p.http("admin") as http:
            assert http.delete("/v1/clients/c2").status_code == 200
        assert poll_until(lambda: other not in _peers(wif), 15, 0.05), agent.text()
        assert third in _peers(wif)
        assert "Traceback" not in agent.text()
    finally:
        agent.stop()


def test_join_refusals_exit_2_with_the_reason_and_change_nothing(tmp_path, responder_factory):
    p = responder_factory(_pool_fleet())
    with p.http("admin") as http:
        fleet = http.get("/v1/fleet").json()
    assert fleet["fleet"]["clients"] == []
    version = fleet["version"]

    key = tmp_path / "once.key"
    key_id = _key(p, "client", key)
    ok = _join(p, "--enroll-key-file", str(key), "--name", "n1", "--state-dir",
               str(tmp_path / "n1"), "--address", "10.81.0.1/32")
    assert ok.returncode == 0, ok.stderr

    def refused(args: list[str], says: str | tuple[str, ...], state: str) -> None:
        proc = _join(p, *args, "--state-dir", str(tmp_path / state))
        assert proc.returncode == 2, proc.stdout + proc.stderr
        for part in (says,) if isinstance(says, str) else says:
            assert part in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr
        assert "enrollment refused (4" in proc.stderr, proc.stderr  # the responder's 4xx
        assert len(proc.stderr.strip().splitlines()) == 1
        assert not (tmp_path / state / "token").exists()
        assert not (tmp_path / state / "node.json").exists()

    # A one-time key used twice.
    refused(["--enroll-key-file", str(key), "--name", "n2", "--address", "10.81.0.2/32"],
            "(403): this one-time enrollment key was already used", "n2")
    # A revoked key, then a key that expired (the store's row aged while the responder was down).
    key2 = tmp_path / "k2.key"
    id2 = _key(p, "client", key2, reusable=True)
    with p.http("admin") as http:
        assert http.delete(f"/v1/enroll-keys/{id2}").status_code == 200
    refused(["--enroll-key-file", str(key2), "--name", "n3", "--address", "10.81.0.3/32"],
            "(403): this enrollment key was revoked", "n3")
    key3 = tmp_path / "k3.key"
    id3 = _key(p, "client", key3, reusable=True)
    p.stop()
    with sqlite3.connect(p.db_path) as db:
        db.execute("UPDATE enroll_keys SET expires = created - 1 WHERE id = ?", (id3,))
    p.restart()
    refused(["--enroll-key-file", str(key3), "--name", "n4", "--address", "10.81.0.4/32"],
            "(403): this enrollment key expired", "n4")
    # An unknown key; a name taken; a public key in use; an address outside nothing-but-valid.
    (tmp_path / "bogus.key").write_text("wgfo-not-a-key\n")
    refused(["--enroll-key-file", str(tmp_path / "bogus.key"), "--name", "n5"],
            "(401): unknown enrollment key", "n5")
    key4 = tmp_path / "k4.key"
    _key(p, "client", key4, reusable=True)
    refused(["--enroll-key-file", str(key4), "--name", "n1", "--address", "10.81.0.5/32"],
            "(409): the name 'n1' is taken", "n6")
    n1 = tmp_path / "n1"
    (tmp_path / "n7").mkdir()
    (tmp_path / "n7" / "private.key").write_text((n1 / "private.key").read_text())
    os.chmod(tmp_path / "n7" / "private.key", 0o600)
    refused(["--enroll-key-file", str(key4), "--name", "n7", "--address", "10.81.0.7/32"],
            "(409): this public key is already in use", "n7")
    refused(["--enroll-key-file", str(key4), "--name", "n8", "--address", "10.81.0.1/32"],
            "10.81.0.1", "n8")  # the address n1 holds
    refused(["--enroll-key-file", str(key4), "--name", "n9", "--address", "10.82.0.9/32"],
            ("(422)", f"10.82.0.9/32 is outside the client pool {POOL}"), "n9")
    # Nothing but n1 joined.
    with p.http("admin") as http:
        after = http.get("/v1/fleet").json()
        keys = {k["id"]: k for k in http.get("/v1/enroll-keys").json()}
    assert [c["name"] for c in after["fleet"]["clients"]] == ["n1"]
    assert after["version"] == version + 1
    assert keys[key_id]["uses"] == 1
