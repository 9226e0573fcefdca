"""The exporter's pure parts: dump -> families, text output, host readers, web config, HTTP app."""

from __future__ import annotations

import base64
import gzip
import io
import re
import subprocess
import zlib
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.exporter import ALICE, DUMP, FRA, NOW, PRIV, STRANGER, reading
from tests.helpers.fleets import VALID
from wg_failover import wg
from wg_failover.exporter import server, system
from wg_failover.exporter.collector import (
    Names,
    WireGuardCollector,
    build_families,
    fleet_names,
    render_text,
    to_metrics,
)
from wg_failover.exporter.dump import parse_rows
from wg_failover.exporter.metrics import METRICS
from wg_failover.fleet import parse_fleet

ROOT = Path(__file__).resolve().parents[2]


def samples(families, name):
    return {lv: v for f in families if f.name == name for lv, v in f.samples}


def test_peer_and_worker_metrics_from_a_dump():
    fleet = parse_fleet(VALID)
    d = parse_rows(DUMP)
    names = fleet_names(fleet, [dev.public_key for dev in d.devices.values()])
    assert names.worker is not None and names.worker.name == "fra-1"  # inferred from the key
    fams = build_families(reading(), names)
    assert samples(fams, "wireguard_device_info") == {("wg0", FRA): 1}
    assert samples(fams, "wireguard_peer_info") == {
        ("wg0", ALICE, "198.51.100.7:40000", "alice-laptop"): 1,
        ("wg0", STRANGER, "", ""): 1,
    }
    assert samples(fams, "wireguard_peer_allowed_ips_info") == {
        ("wg0", ALICE, "10.66.1.2/32"): 1,
        ("wg0", STRANGER, "10.66.1.9/32"): 1,
        ("wg0", STRANGER, "fd00::9/128"): 1,
    }
    # wg(8) prints rx before tx.
    assert samples(fams, "wireguard_peer_receive_bytes_total")[("wg0", ALICE)] == 1000
    assert samples(fams, "wireguard_peer_transmit_bytes_total")[("wg0", ALICE)] == 2000
    assert samples(fams, "wireguard_peer_last_handshake_seconds") == {
        ("wg0", ALICE): NOW - 30, ("wg0", STRANGER): 0}
    assert samples(fams, "wgfo_active_peers") == {("wg0",): 1}
    assert samples(fams, "wgfo_configured_peers") == {("wg0",): 2}
    assert samples(fams, "wgfo_interface_up") == {("wg0",): 1}
    assert samples(fams, "wgfo_interface_receive_bytes_total") == {("wg0",): 111}
    assert samples(fams, "wgfo_worker_info") == {("fra-1", "eu"): 1}
    assert samples(fams, "wgfo_worker_capacity") == {("fra-1",): 200}
    assert samples(fams, "wgfo_load_average") == {("1m",): 0.5, ("5m",): 0.25, ("15m",): 0.125}
    assert samples(fams, "wgfo_scrape_success") == {(): 1}
    text = render_text(fams).decode()
    assert PRIV not in text


def test_lean_reader_matches_the_core_reader():
    two = DUMP + (
        f"wg1\t(none)\t(none)\t0\t0x10\n"
        f"wg1\t{ALICE}\t{PRIV}\t[fd00::1]:51820\t(none)\t5\t6\t7\t0\n"
        f"wg1\t{FRA}\t(none)\t(none)\t10.1.0.0/16,,10.2.0.0/16,\t0\t0\t0\toff\n"
    )
    for text, device in ((two, None), (DUMP.replace("wg0\t", ""), "wgX")):
        core, lean = wg.parse_dump(text, device), parse_rows(text, device)
        assert lean.devices == core.devices
        assert lean.peers == [
            (p.device, p.public_key, p.endpoint or "", p.allowed_ips, p.latest_handshake,
             p.rx_bytes, p.tx_bytes) for p in core.peers]
    for bad in ("wg0\tx\ty\n", DUMP.replace("\t1000\t", "\tlots\t"),
                DUMP.replace("\t25\n", "\tsometimes\n"), "wg0\n"):
        with pytest.raises(wg.WgError):
            wg.parse_dump(bad)
        with pytest.raises(wg.WgError):
            parse_rows(bad)


def test_endpoint_and_name_only_on_info_series():
    fams = build_families(reading(), fleet_names(parse_fleet(VALID), []))
    for f in fams:
        if f.name not in ("wireguard_peer_info", "wgfo_worker_info"):
            assert "endpoint" not in f.labelnames and "name" not in f.labelnames


def test_handshake_older_than_window_is_not_active():
    dump = DUMP.replace(str(NOW - 30), str(NOW - 181))
    assert samples(build_families(reading(dump), Names({}, None)), "wgfo_active_peers") == {
        ("wg0",): 0}


def test_explicit_worker_and_unlimited_capacity():
    names = fleet_names(parse_fleet(VALID), [FRA], worker_name="ams-1")
    fams = build_families(reading(), names)
    assert samples(fams, "wgfo_worker_info") == {("ams-1", ""): 1}
    assert samples(fams, "wgfo_worker_capacity") == {}


def test_no_fleet_no_names():
    fams = build_families(reading(), fleet_names(None, [FRA]))
    assert samples(fams, "wgfo_worker_info") == {}
    assert {lv[3] for lv in samples(fams, "wireguard_peer_info")} == {""}


def test_peer_metrics_off_keeps_counts():
    fams = build_families(reading(), Names({}, None), peer_metrics=False)
    assert all(not f.samples for f in fams if f.name.startswith("wireguard_peer_"))
    assert samples(fams, "wgfo_configured_peers") == {("wg0",): 2}
    assert samples(fams, "wireguard_device_info")


def test_failed_interface_is_down_and_scrape_unsuccessful():
    fams = build_families(reading(failed=["wg9"]), Names({}, None))
    assert samples(fams, "wgfo_interface_up") == {("wg0",): 1, ("wg9",): 0}
    assert samples(fams, "wgfo_scrape_success") == {(): 0}


def test_down_or_foreign_interface_is_not_up():
    assert samples(build_families(reading(up=False), Names({}, None)),
                   "wgfo_interface_up") == {("wg0",): 0}
    # Not in our namespace: /sys has no flags, so up is unknown -> not up.
    assert samples(build_families(reading(up=None), Names({}, None)),
                   "wgfo_interface_up") == {("wg0",): 0}
    no_port = DUMP.replace("\t51820\toff", "\t0\toff")
    assert samples(build_families(reading(no_port), Names({}, None)),
                   "wgfo_interface_up") == {("wg0",): 0}


def parsed(text: str) -> set[tuple[str, tuple, float]]:
    return {(s.name, tuple(sorted(s.labels.items())), s.value)
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_fast_text_equals_prometheus_client_output():
    dump = DUMP.replace("wg0", 'w"g\\0')  # a device name needing escapes
    fleet = parse_fleet(VALID.replace("region: eu", 'region: "e\\"u"'))
    fams = build_families(reading(dump), fleet_names(fleet, [FRA]))
    fams[-1].add((), 0.123)

    class Fixed:
        def collect(self):
            return to_metrics(fams)

    registry = CollectorRegistry()
    registry.register(Fixed())
    ours = render_text(fams).decode()
    assert parsed(ours) == parsed(generate_latest(registry).decode())
    assert 'device="w\\"g\\\\0"' in ours and 'region="e\\"u"' in ours


def test_every_family_is_in_the_catalogue_and_the_docs():
    fams = build_families(reading(), Names({}, None))
    assert [f.name for f in fams] == list(METRICS)
    docs = (ROOT / "docs" / "exporter.md").read_text()
    for m in METRICS.values():
        row = re.search(rf"^\| `{m.name}` \| (\w+) \|([^|]*)\|", docs, re.M)
        assert row, f"{m.name} missing from the docs metrics table"
        assert row.group(1) == m.type
        assert set(re.findall(r"`(\w+)`", row.group(2))) == set(m.labels), m.name


# ------------------------------------------------------------------------------ host readers
def test_proc_stat_usage():
    a = system.parse_proc_stat("cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 1 2 3 4\n")
    b = system.parse_proc_stat("cpu  150 0 150 900 0 0 0 0 0 0\n")
    assert system.usage_ratio(a, b) == pytest.approx(0.5)
    assert system.usage_ratio(b, b) is None
    with pytest.raises(ValueError):
        system.parse_proc_stat("intr 1 2 3\n")


def test_cpu_meter_between_samples(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  0 0 0 100 0 0 0 0\n")
    meter = system.CpuMeter(stat)
    stat.write_text("cpu  30 0 0 170 0 0 0 0\n")
    assert meter.sample() == pytest.approx(0.3)
    assert meter.sample() == pytest.approx(0.3)  # no time passed: the last value stands
    stat.write_text("cpu  130 0 0 170 0 0 0 0\n")
    assert meter.sample() == pytest.approx(1.0)


def test_read_iface_uses_the_up_flag(tmp_path):
    net = tmp_path / "class" / "net" / "wg0"
    (net / "statistics").mkdir(parents=True)
    (net / "flags").write_text("0x1091\n")  # IFF_UP|IFF_POINTOPOINT|IFF_NOARP|IFF_MULTICAST
    (net / "operstate").write_text("unknown\n")  # what wireguard-go's TUN shows when up
    (net / "statistics" / "rx_bytes").write_text("42\n")
    (net / "statistics" / "tx_bytes").write_text("43\n")
    assert system.read_iface("wg0", tmp_path) == system.IfaceStats(True, 42, 43)
    (net / "flags").write_text("0x1090\n")
    assert system.read_iface("wg0", tmp_path).up is False
    assert system.read_iface("nope", tmp_path) == system.IfaceStats(None, None, None)
    assert system.read_iface("../x", tmp_path) == system.IfaceStats(None, None, None)


# ------------------------------------------------------------------------------ web config
def test_web_config_subset():
    cfg = server.parse_web_config(
        "tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n  min_version: TLS13\n"
        "basic_auth_users:\n  prom: $2y$10$abcdefghijklmnopqrstuv\n"
    )
    assert cfg.cert_file == "c.pem" and cfg.min_version == "TLS13" and "prom" in cfg.users
    with pytest.raises(server.WebConfigError) as exc:
        server.parse_web_config(
            "http_server_config:\n  http2: true\ntls_server_config:\n  cert_file: c.pem\n"
            "  cipher_suites: []\nbasic_auth_users:\n  prom: plaintext\n"
        )
    msg = str(exc.value)
    for part in ("http_server_config", "cipher_suites", "key_file", "prom: expected a bcrypt"):
        assert part in msg


def test_bcrypt_basic_auth():
    hashed = server.bcrypt_hash("s3cret", cost=4)
    assert server.bcrypt_check("s3cret", hashed) and not server.bcrypt_check("nope", hashed)
    # htpasswd writes $2y$: the same algorithm.
    assert server.bcrypt_check("s3cret", "$2y$" + hashed[4:])
    auth = server.BasicAuth({"prom": hashed})

    def header(user, pw):
        return "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()

    assert auth.check(header("prom", "s3cret"))
    assert auth.check(header("prom", "s3cret"))  # cached
    assert not auth.check(header("prom", "wrong"))
    assert not auth.check(header("other", "s3cret"))
    assert not auth.check("Basic !!!") and not auth.check(None)


def test_parse_listen():
    assert server.parse_listen(":9586") == ("", 9586)
    assert server.parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert server.parse_listen("[::1]:9586") == ("::1", 9586)
    for bad in ("9586", "host:x", ":70000"):
        with pytest.raises(ValueError):
            server.parse_listen(bad)


# ------------------------------------------------------------------------------ HTTP app
class FakeWg(WireGuardCollector):
    """The real collector with `wg` replaced: the rest (sys, cpu, fleet, output) is real."""

    def __init__(self, dump_text: str | None, **kw):
        super().__init__(**kw)
        self.dump_text = dump_text

    def _dump(self, errors, failed):
        if self.dump_text is None:
            raise RuntimeError("surprise")
        return parse_rows(self.dump_text)


def call(app, path="/metrics", **env):
    environ: dict = {"PATH_INFO": path, **env}
    setup_testing_defaults(environ)
    environ["wsgi.input"] = io.BytesIO()
    status = []
    body = b"".join(app(environ, lambda s, h, exc=None: status.append((s, dict(h)))))
    return status[0][0], status[0][1], body


def test_app_serves_text_and_openmetrics():
    app = server.make_app(FakeWg(DUMP))
    status, headers, body = call(app)
    assert status == "200 OK" and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b"wgfo_scrape_success 1" in body and PRIV.encode() not in body
    # Prometheus's own Accept header: text/plain is acceptable, so the fast writer answers.
    prom_accept = ("application/openmetrics-text;version=1.0.0;q=0.5,"
                   "text/plain;version=0.0.4;q=0.4,*/*;q=0.1")
    assert call(app, HTTP_ACCEPT=prom_accept)[1]["Content-Type"].startswith("text/plain")
    status, headers, body = call(app, HTTP_ACCEPT="application/openmetrics-text; version=1.0.0")
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    status, headers, body = call(app, HTTP_ACCEPT_ENCODING="gzip")
    assert headers["Content-Encoding"] == "gzip"
    assert int(headers["Content-Length"]) == len(body)
    assert b"wgfo_scrape_success 1" in gzip.decompress(body)
    assert call(app, "/nope")[0].startswith("404")


def test_a_surprise_while_reading_still_serves_200():
    status, _, body = call(server.make_app(FakeWg(None)))
    assert status == "200 OK" and b"wgfo_scrape_success 0" in body


def test_app_basic_auth():
    auth = server.BasicAuth({"prom": server.bcrypt_hash("pw", cost=4)})
    app = server.make_app(FakeWg(DUMP), auth)
    assert call(app)[0].startswith("401")
    good = "Basic " + base64.b64encode(b"prom:pw").decode()
    assert call(app, HTTP_AUTHORIZATION=good)[0] == "200 OK"


def big_dump(peers: int, rx: int = 5) -> str:
    lines = [f"wg0\t{PRIV}\t{FRA}\t51820\toff"]
    for i in range(peers):
        key = base64.b64encode(i.to_bytes(32, "big")).decode()
        lines.append(f"wg0\t{key}\t(none)\t198.51.100.{i % 250}:{1000 + i}\t"
                     f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}/32\t{NOW}\t{rx + i}\t{i}\toff")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("parallel_min_bytes", [1, 1 << 40])  # in the pool / all inline
def test_page_renderer_reuses_unchanged_families_and_stays_exact(tmp_path, monkeypatch,
                                                                 parallel_min_bytes):
    from wg_failover.exporter import render
    from wg_failover.exporter.render import PageRenderer

    monkeypatch.setattr(render, "PARALLEL_MIN_BYTES", parallel_min_bytes)
    renderer = PageRenderer()
    for rx in (5, 5, 7):  # the same page twice, then new counters with the same info series
        fams = build_families(reading(big_dump(1500, rx)), Names({}, None))
        expected = render_text(fams)
        assert b"".join(renderer.text(fams)) == expected
        body = b"".join(renderer.gzip(fams))
        assert gzip.decompress(body) == expected
        # One ordinary gzip member, checked by the real gzip tool as well (CRC and size).
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        assert d.decompress(body) == expected and d.eof and not d.unused_data
        (tmp_path / "page.gz").write_bytes(body)
        assert subprocess.run(["gzip", "-t", str(tmp_path / "page.gz")]).returncode == 0
    cached = renderer._cache["wireguard_peer_info"].deflated
    renderer.gzip(build_families(reading(big_dump(1500, 9)), Names({}, None)))
    assert renderer._cache["wireguard_peer_info"].deflated is cached  # re-used, not redone
    changed = build_families(reading(big_dump(1501, 9)), Names({}, None))
    assert gzip.decompress(b"".join(renderer.gzip(changed))) == render_text(changed)


def test_coalesce_keeps_bytes_and_order():
    chunks = [b"a" * 10, b"b" * 70000, b"c", b"d" * 5, b"e" * 65536, b"f"]
    out = server.coalesce(chunks)
    assert b"".join(out) == b"".join(chunks)
    assert out == [b"a" * 10, b"b" * 70000, b"c" + b"d" * 5, b"e" * 65536, b"f"]
    assert server.coalesce([]) == []


def test_fleet_file_is_reloaded_on_change_and_a_bad_edit_keeps_the_last_good(tmp_path):
    import os

    from wg_failover.exporter.collector import FleetSource
    from wg_failover.fleet import load_fleet

    path = tmp_path / "fleet.yaml"
    path.write_text(VALID)
    source = FleetSource(path, load_fleet(path))
    assert source.get().client("alice-laptop")
    path.write_text(VALID.replace("alice-laptop", "alice-desktop"))
    os.utime(path, (1, 1))  # a different mtime, however fast the test runs
    assert [c.name for c in source.get().clients][0] == "alice-desktop"
    path.write_text(VALID.replace("capacity: 200", "capacity: lots"))
    os.utime(path, (2, 2))
    assert [c.name for c in source.get().clients][0] == "alice-desktop"
    fams = build_families(reading(), fleet_names(source.get(), [FRA]))
    assert samples(fams, "wgfo_worker_capacity") == {("fra-1",): 200}


def test_a_bug_after_reading_still_serves_200():
    class Broken(FakeWg):
        def __init__(self):
            super().__init__(DUMP, sys_root="/nonexistent")
            self.fleet = self  # a fleet source whose get() blows up

        def get(self):
            raise KeyError("boom")

    status, _, body = call(server.make_app(Broken()))
    assert status == "200 OK" and b"wgfo_scrape_success 0" in body
