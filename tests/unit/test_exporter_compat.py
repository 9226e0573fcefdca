"""`--compat mindflavor`: the Rust exporter's families beside ours, and the gzip page.

Pure parts only (no root, no network): the families built from a dump, both output paths (the
direct text writer and prometheus_client's, OpenMetrics included), the docs and `--help`, the
gzip page against the text page, and the dashboards' joins.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import re
import subprocess
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.fleets import VALID
from wg_failover.exporter import cli, server, system
from wg_failover.exporter.collector import (
    Family,
    FleetSource,
    Names,
    Reading,
    WireGuardCollector,
    build_families,
    fleet_names,
    render_text,
    split_endpoint,
    to_metrics,
)
from wg_failover.exporter.dump import parse_rows
from wg_failover.exporter.metrics import (
    COMPAT,
    METRICS,
    MINDFLAVOR_LABELS,
    MINDFLAVOR_REMOTE_LABELS,
    MetricDef,
    compat_metrics,
)
from wg_failover.exporter.render import PageRenderer
from wg_failover.fleet import parse_fleet

ROOT = Path(__file__).resolve().parents[2]
FRA = "DLc1tACgDb/MvA/rVSiiYn85E3jLXHBZ8X1e3wyKyS8="  # fra-1 in VALID: this worker
AMS = "AAuDOFbV/XMAFZdoubTZ12XJqVqessO6qhzqp0QB3ms="  # ams-1 in VALID: a worker as a peer
ALICE = "9DyEKmVoQ1sUfgoBXzhONr0RB6MkVAfGUj9Ajr8WgVM="  # alice-laptop in VALID
STRANGER = "S" * 43 + "="  # in no fleet
BARE = "B" * 43 + "="  # in no fleet, no allowed IPs
PRIV = "P" * 43 + "="
NOW = 1_800_000_000
COMPAT_NAMES = list(COMPAT["mindflavor"])

DUMP = (
    f"wg0\t{PRIV}\t{FRA}\t51820\toff\n"
    f"wg0\t{ALICE}\t(none)\t198.51.100.7:40000\t10.66.1.2/32,10.99.0.0/24\t{NOW - 30}\t1000"
    "\t2000\t25\n"
    f"wg0\t{AMS}\t(none)\t[::1]:51820\t10.66.0.2/32\t{NOW - 5}\t7\t8\toff\n"
    f"wg0\t{STRANGER}\t(none)\t(none)\t10.66.1.9/32,fd00::9/128\t0\t0\t0\toff\n"
    f"wg0\t{BARE}\t(none)\t(none)\t(none)\t0\t0\t0\toff\n"
)


def reading(dump: str = DUMP) -> Reading:
    d = parse_rows(dump)
    return Reading(d, [], {dev: system.IfaceStats(True, 111, 222) for dev in d.devices}, 0.25,
                   (0.5, 0.25, 0.125), NOW)


def names() -> Names:
    return fleet_names(parse_fleet(VALID), [FRA])


def samples(families, name: str) -> dict[tuple, float]:
    return {lv: v for f in families if f.name == name for lv, v in f.samples}


def parsed(text: str, parser=text_string_to_metric_families) -> set[tuple]:
    return {(s.name, tuple(sorted(s.labels.items())), s.value)
            for fam in parser(text) for s in fam.samples}


# ------------------------------------------------------------------------------ the families
def test_default_page_is_unchanged_and_compat_only_appends():
    default = build_families(reading(), names())
    assert [f.name for f in default] == list(METRICS)
    assert [f.name for f in build_families(reading(), names(), compat=None)] == list(METRICS)
    for remote in (False, True):
        fams = build_families(reading(), names(), compat="mindflavor", compat_remote=remote)
        assert [f.name for f in fams] == [*METRICS, *COMPAT_NAMES]
        page, base = render_text(fams), render_text(default)
        # Byte for byte the default page, then the three compat families.
        assert page.startswith(base) and len(page) > len(base)
        assert not any(name.encode() in base for name in COMPAT_NAMES)


def test_mindflavor_labels_and_values():
    fams = build_families(reading(), names(), compat="mindflavor")
    alice = ("wg0", ALICE, "10.66.1.2/32,10.99.0.0/24", "alice-laptop")  # joined as wg prints
    ams = ("wg0", AMS, "10.66.0.2/32", "ams-1")  # a worker peer is named too
    stranger = ("wg0", STRANGER, "10.66.1.9/32,fd00::9/128", "")
    bare = ("wg0", BARE, "", "")
    # wg prints rx before tx: sent = transmitted to the peer.
    assert samples(fams, "wireguard_sent_bytes_total") == {
        alice: 2000, ams: 8, stranger: 0, bare: 0}
    assert samples(fams, "wireguard_received_bytes_total") == {
        alice: 1000, ams: 7, stranger: 0, bare: 0}
    assert samples(fams, "wireguard_latest_handshake_seconds") == {
        alice: NOW - 30, ams: NOW - 5, stranger: 0, bare: 0}
    for f in fams:
        if f.name in COMPAT_NAMES:
            assert f.labelnames == MINDFLAVOR_LABELS == (
                "interface", "public_key", "allowed_ips", "friendly_name")
    # Ours are untouched by the compat mode: no name or endpoint on our counters.
    assert samples(fams, "wireguard_peer_transmit_bytes_total")[("wg0", ALICE)] == 2000


def test_remote_labels_split_ipv4_and_ipv6_endpoints():
    fams = build_families(reading(), names(), compat="mindflavor", compat_remote=True)
    handshake = samples(fams, "wireguard_latest_handshake_seconds")
    by_key = {lv[1]: lv for lv in handshake}
    assert by_key[ALICE][4:] == ("198.51.100.7", "40000")
    assert by_key[AMS][4:] == ("::1", "51820")  # [::1]:51820 -> ::1 without brackets
    assert by_key[STRANGER][4:] == ("", "")  # no endpoint: empty, so absent to Prometheus
    assert [f.labelnames for f in fams if f.name in COMPAT_NAMES] == [
        MINDFLAVOR_LABELS + MINDFLAVOR_REMOTE_LABELS] * 3
    assert MINDFLAVOR_REMOTE_LABELS == ("remote_ip", "remote_port")
    text = render_text(fams).decode()
    assert (f'wireguard_sent_bytes_total{{interface="wg0",public_key="{AMS}",'
            'allowed_ips="10.66.0.2/32",friendly_name="ams-1",remote_ip="::1",'
            'remote_port="51820"} 8\n') in text


@pytest.mark.parametrize(("endpoint", "expected"), [
    ("198.51.100.7:40000", ("198.51.100.7", "40000")),
    ("[::1]:51820", ("::1", "51820")),
    ("[2001:db8::1]:51820", ("2001:db8::1", "51820")),
    ("[fe80::1%eth0]:51820", ("fe80::1%eth0", "51820")),
    ("", ("", "")),
])
def test_split_endpoint(endpoint, expected):
    assert split_endpoint(endpoint) == expected


def test_no_fleet_leaves_friendly_name_empty_and_peer_metrics_off_drops_compat():
    fams = build_families(reading(), fleet_names(None, [FRA]), compat="mindflavor")
    assert {lv[3] for lv in samples(fams, "wireguard_sent_bytes_total")} == {""}
    off = build_families(reading(), names(), peer_metrics=False, compat="mindflavor")
    assert all(not f.samples for f in off if f.name in COMPAT_NAMES)
    assert not any(name.encode() in render_text(off) for name in COMPAT_NAMES)


# ------------------------------------------------------------------------------ both writers
@pytest.mark.parametrize("remote", [False, True])
def test_fast_text_equals_prometheus_client_output_with_compat(remote):
    dump = DUMP.replace("wg0", 'w"g\\0')  # a device name needing escapes: the slow path
    for d in (DUMP, dump):
        fams = build_families(reading(d), names(), compat="mindflavor", compat_remote=remote)

        class Fixed:
            def collect(self, fams=fams):
                return to_metrics(fams)

        registry = CollectorRegistry()
        registry.register(Fixed())
        ours = render_text(fams).decode()
        assert parsed(ours) == parsed(generate_latest(registry).decode())
        assert {n for n, _, _ in parsed(ours)} >= set(COMPAT_NAMES)


@pytest.mark.parametrize("count", range(1, 8))
@pytest.mark.parametrize("values", [(3, 4), (0.5, 1e21)])
def test_every_label_count_writes_what_prometheus_client_writes(count, values):
    """The direct writer has a path per label count (the compat families have 4 and 6)."""
    defn = MetricDef(f"test_family_{count}", "gauge", tuple(f"l{i}" for i in range(count)), "h")
    fam = Family(defn.name, defn=defn, clean=True)
    for n, v in enumerate(values):
        fam.add(tuple(f"v{n}-{i}" for i in range(count)), v)

    class Fixed:
        def collect(self):
            return to_metrics([fam])

    registry = CollectorRegistry()
    registry.register(Fixed())
    ours = render_text([fam]).decode()
    # Parsed: prometheus_client writes the int 3 as 3.0.
    assert parsed(ours) == parsed(generate_latest(registry).decode())
    assert len(parsed(ours)) == len(values)


class FakeWg(WireGuardCollector):
    """The real collector with `wg` replaced by DUMP."""

    def _dump(self, errors, failed):
        return parse_rows(DUMP)


def call(app, **env) -> tuple[str, dict, bytes]:
    environ: dict = {"PATH_INFO": "/metrics", **env}
    setup_testing_defaults(environ)
    environ["wsgi.input"] = io.BytesIO()
    status = []
    body = b"".join(app(environ, lambda s, h, exc=None: status.append((s, dict(h)))))
    return status[0][0], status[0][1], body


def peer_samples(found: set[tuple]) -> set[tuple]:
    # The host's CPU, load and the scrape's own duration differ between two scrapes.
    return {s for s in found if s[0].startswith("wireguard_")}


def test_text_gzip_and_openmetrics_pages_carry_the_same_compat_series(tmp_path):
    (tmp_path / "fleet.yaml").write_text(VALID)
    fleet = FleetSource(tmp_path / "fleet.yaml", parse_fleet(VALID))
    app = server.make_app(FakeWg(fleet=fleet, compat="mindflavor", compat_remote=True))
    _, _, text = call(app)
    _, headers, zipped = call(app, HTTP_ACCEPT_ENCODING="gzip")
    assert headers["Content-Encoding"] == "gzip" and int(headers["Content-Length"]) == len(zipped)
    unzipped = gzip.decompress(zipped)
    _, headers, om = call(app, HTTP_ACCEPT="application/openmetrics-text; version=1.0.0")
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    found = peer_samples(parsed(text.decode()))
    assert found == peer_samples(parsed(unzipped.decode()))
    # OpenMetrics names counter samples `_total` too, and ends with # EOF.
    assert found == peer_samples(parsed(om.decode(), openmetrics_families))
    names_seen = {n for n, _, _ in found}
    assert names_seen >= {*COMPAT_NAMES, "wireguard_peer_receive_bytes_total"}
    assert b'remote_ip="::1"' in text and b'friendly_name="alice-laptop"' in text
    # The default collector serves no compat family in any format.
    plain = server.make_app(FakeWg())
    for env in ({}, {"HTTP_ACCEPT": "application/openmetrics-text; version=1.0.0"}):
        body = call(plain, **env)[2]
        assert not any(name.encode() in body for name in COMPAT_NAMES)


def test_describe_lists_the_compat_families_only_when_on():
    assert [m.name for m in FakeWg().describe()] == [
        n.removesuffix("_total") if METRICS[n].type == "counter" else n for n in METRICS]
    described = [m.name for m in FakeWg(compat="mindflavor").describe()][len(METRICS):]
    assert described == ["wireguard_sent_bytes", "wireguard_received_bytes",
                         "wireguard_latest_handshake_seconds"]


# ------------------------------------------------------------------------------ gzip
def big_dump(peers: int, rx: int) -> str:
    lines = [f"wg0\t{PRIV}\t{FRA}\t51820\toff"]
    for i in range(peers):
        key = f"{i:043d}="
        lines.append(f"wg0\t{key}\t(none)\t198.51.100.{i % 250}:{1000 + i}\t"
                     f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}/32\t{NOW - i}\t{rx + i}"
                     f"\t{rx * i}\toff")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("compat", [None, "mindflavor"])
def test_gzip_page_decompresses_to_the_text_page(tmp_path, compat):
    """What Prometheus reads: the gzip body is one valid member whose content is the text page,
    scrape after scrape, while counters change and cached families are re-used."""
    renderer = PageRenderer()
    for rx in (5, 5, 9, 11):
        fams = build_families(reading(big_dump(4000, rx)), names(), compat=compat,
                              compat_remote=True)
        text = b"".join(renderer.text(fams))
        assert text == render_text(fams)
        body = b"".join(renderer.gzip(fams))
        assert gzip.decompress(body) == text
        (tmp_path / "page.gz").write_bytes(body)
        assert subprocess.run(["gzip", "-t", str(tmp_path / "page.gz")]).returncode == 0
        assert len(body) < len(text) / 2


def shuffled(dump: str, seed: int) -> str:
    header, *peers = dump.splitlines()
    return "\n".join([header, *random.Random(seed).sample(peers, len(peers))]) + "\n"


def test_info_families_are_reused_when_wireguard_go_lists_peers_in_another_order():
    """wireguard-go lists its peers in a new order at every `wg show` (a Go map): the cached
    info families must still be re-used, and the page must still hold exactly this scrape's
    series."""
    renderer = PageRenderer()
    dump = big_dump(1500, 5)
    first = build_families(reading(dump), names())
    renderer.gzip(first)
    cached = {n: renderer._cache[n] for n in ("wireguard_peer_info",
                                              "wireguard_peer_allowed_ips_info")}
    for seed in (1, 2):
        fams = build_families(reading(shuffled(big_dump(1500, 5 + seed), seed)), names())
        assert samples(fams, "wireguard_peer_info") == samples(first, "wireguard_peer_info")
        assert fams[1].samples != first[1].samples  # really another order
        text = b"".join(renderer.text(fams))
        body = gzip.decompress(b"".join(renderer.gzip(fams)))
        for page in (text, body):
            assert parsed(page.decode()) == parsed(render_text(fams).decode())
            assert page.count(b"\n") == render_text(fams).count(b"\n")  # nothing twice
        for name, entry in cached.items():
            assert renderer._cache[name] is entry, name  # re-used, text and deflated
    # A roamed endpoint is a change: that family is written afresh, the other one kept.
    roamed = shuffled(big_dump(1500, 9).replace("198.51.100.7:1007", "203.0.113.9:4242"), 3)
    fams = build_families(reading(roamed), names())
    page = gzip.decompress(b"".join(renderer.gzip(fams)))
    assert renderer._cache["wireguard_peer_info"] is not cached["wireguard_peer_info"]
    assert renderer._cache["wireguard_peer_allowed_ips_info"] is cached[
        "wireguard_peer_allowed_ips_info"]
    assert b'endpoint="203.0.113.9:4242"' in page and b"198.51.100.7:1007" not in page
    assert parsed(page.decode()) == parsed(render_text(fams).decode())


# ------------------------------------------------------------------------------ docs, --help
def _section(doc: str, heading: str) -> str:
    start = doc.index(heading)
    end = doc.find("\n## ", start + len(heading))
    return doc[start:end if end != -1 else len(doc)]


def test_compat_catalogue_is_in_its_own_docs_section_and_in_help():
    doc = (ROOT / "docs" / "exporter.md").read_text()
    compat = _section(doc, "## Compatibility: `--compat mindflavor`")
    metrics = _section(doc, "## Metrics")
    for m in compat_metrics("mindflavor"):
        row = re.search(rf"^\| `{m.name}` \| (\w+) \|([^|]*)\|", compat, re.M)
        assert row, f"{m.name} missing from the docs' compat table"
        assert row.group(1) == m.type
        assert set(re.findall(r"`(\w+)`", row.group(2))) == set(m.labels), m.name
        assert f"`{m.name}`" not in metrics  # not in the default table
    for flag in ("--compat mindflavor", "--compat-remote"):
        assert f"| `{flag}" in doc, flag
    for label in MINDFLAVOR_REMOTE_LABELS:
        assert f"`{label}`" in compat
    for m in compat_metrics("mindflavor"):
        assert m.name in cli.DESCRIPTION


def test_compat_remote_alone_is_a_clean_usage_error():
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "wg-failover"), "exporter",
                           "--compat-remote"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "--compat-remote needs --compat mindflavor" in proc.stderr
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "wg-failover"), "exporter",
                           "--compat", "nosuch"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "mindflavor" in proc.stderr


# ------------------------------------------------------------------------------ joins
ON = re.compile(r"\bon\s*\(([^)]*)\)")
WHERE = {"instance", "worker"}  # what tells one worker's series from another's


def key_only_joins(expr: str) -> list[str]:
    """Joins matching on public_key without the worker and device: with wg-failover every
    client is a peer of every worker under the same key, so such a join finds duplicate series
    for the match group as soon as two workers are scraped."""
    bad = []
    for m in ON.finditer(expr):
        labels = {x.strip() for x in m.group(1).split(",") if x.strip()}
        if "public_key" in labels and (not labels & WHERE or not labels & {"device", "interface"}):
            bad.append(m.group(0))
    return bad


def _exprs(node) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k in ("expr", "query") and isinstance(v, str)] + [
            e for v in node.values() for e in _exprs(v)]
    if isinstance(node, list):
        return [e for v in node for e in _exprs(v)]
    return []


def test_key_only_join_check_finds_what_it_should():
    assert key_only_joins("rate(x[5m]) * on (public_key) group_left (name) wireguard_peer_info")
    assert key_only_joins("x * on(instance, public_key) group_left(name) y")  # no device
    assert key_only_joins("x * on (device,public_key) group_left y")  # no worker
    assert not key_only_joins("x * on (instance, device, public_key) group_left (name) y")
    assert not key_only_joins("x * on (worker, device, public_key) group_left (name) y")
    assert not key_only_joins("sum by (public_key) (x) and on (worker) y")


def test_our_dashboards_and_rules_never_join_on_the_key_alone():
    dashboards = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
    rules = sorted((ROOT / "prometheus" / "rules").glob("*.yml"))
    assert dashboards and rules
    exprs = [e for d in dashboards for e in _exprs(json.loads(d.read_text()))]
    exprs += [e for r in rules for e in _exprs(yaml.safe_load(r.read_text()))]
    assert sum("public_key" in e for e in exprs) >= 3  # the joins are really looked at
    assert [(e, key_only_joins(e)) for e in exprs if key_only_joins(e)] == []
