"""The custom collector: reads WireGuard and the host at scrape time, never in the background.

Pure part: `build_families(Reading, ...)` turns one scrape's readings into metric families.
I/O part: `WireGuardCollector.read()` runs `wg show ... dump` and reads /sys and /proc.
Two ways out: `collect()` (the prometheus_client Collector interface: OpenMetrics, any registry)
and `render_text()`, a direct text-format writer the HTTP server uses because prometheus_client's
generic writer costs several microseconds per sample, too slow for a worker with 10,000 peers.
A test keeps the two outputs equal, with and without `--compat`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from wg_failover import wg
from wg_failover.fleet import Fleet, FleetError, Worker, load_fleet

from . import system
from .dump import ALLOWED, DEV, ENDPOINT, HANDSHAKE, KEY, RX, TX, Snapshot, parse_rows
from .metrics import ACTIVE_WINDOW_SECONDS, METRICS, MetricDef, compat_metrics

log = logging.getLogger("wg-failover.exporter")

Value = int | float


@dataclass
class Family:
    name: str  # as exposed; counters end in _total
    samples: list[tuple[tuple[str, ...], Value]] = field(default_factory=list)
    # True when no label value can hold a character that needs escaping in the text format
    # (\ " newline): lets render_text skip a per-value check on the big peer families.
    clean: bool = False
    # The definition, when it is not the default catalogue's (the --compat families).
    defn: MetricDef | None = None

    @property
    def metric(self) -> MetricDef:
        return self.defn or METRICS[self.name]

    @property
    def labelnames(self) -> tuple[str, ...]:
        return self.metric.labels

    def add(self, labelvalues: tuple[str, ...], value: Value) -> None:
        self.samples.append((labelvalues, value))


@dataclass
class Reading:
    """Everything one scrape read, before it becomes metrics."""

    dump: Snapshot
    failed: list[str]  # named interfaces that could not be read (or ["all"])
    ifaces: dict[str, system.IfaceStats]
    cpu_ratio: float | None
    load: tuple[float, float, float] | None
    now: float
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Names:
    """What the fleet file tells the exporter: peer names and this worker."""

    peers: dict[str, str]  # public key -> client (or worker) name
    worker: Worker | None


def fleet_names(fleet: Fleet | None, device_keys: Iterable[str | None],
                worker_name: str | None = None) -> Names:
    """Peer names from the fleet; the worker named, else the one whose key a device carries."""
    if fleet is None:
        return Names({}, None)
    peers = {w.public_key: w.name for w in fleet.workers}
    peers.update({c.public_key: c.name for c in fleet.clients})
    worker = None
    if worker_name is not None:
        worker = next((w for w in fleet.workers if w.name == worker_name), None)
    else:
        by_key = {w.public_key: w for w in fleet.workers}
        worker = next((by_key[k] for k in device_keys if k in by_key), None)
    return Names(peers, worker)


def _is_clean(value: str) -> bool:
    return "\\" not in value and '"' not in value and "\n" not in value


def split_endpoint(endpoint: str) -> tuple[str, str]:
    """`198.51.100.7:51820` or `[2001:db8::1]:51820` (as wg prints them) -> (ip, port); ("", "")
    for none. The brackets go, as in the Rust exporter's `remote_ip`."""
    host, sep, port = endpoint.rpartition(":")
    if not sep:
        return "", ""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


def build_families(r: Reading, names: Names, *, peer_metrics: bool = True,
                   duration: float | None = None, compat: str | None = None,
                   compat_remote: bool = False) -> list[Family]:
    """Metric families for one scrape. Names and endpoints sit on info series only, except in
    the `compat` families (another exporter's names, for its dashboards), which come last."""
    fam = {name: Family(name) for name in METRICS}
    extra = [Family(m.name, defn=m) for m in compat_metrics(compat, compat_remote)]
    devices = sorted(set(r.dump.devices) | set(r.failed) - {"all"})
    clean = all(_is_clean(d) for d in devices)
    by_device: dict[str, list] = {d: [] for d in r.dump.devices}
    for p in r.dump.peers:
        by_device.setdefault(p[DEV], []).append(p)
    active_since = r.now - ACTIVE_WINDOW_SECONDS
    peer_names = names.peers

    for dev in devices:
        d = r.dump.devices.get(dev)
        stats = r.ifaces.get(dev)
        up = d is not None and d.listen_port > 0 and stats is not None and bool(stats.up)
        fam["wgfo_interface_up"].add((dev,), 1 if up else 0)
        if stats is not None and stats.rx_bytes is not None:
            fam["wgfo_interface_receive_bytes_total"].add((dev,), stats.rx_bytes)
        if stats is not None and stats.tx_bytes is not None:
            fam["wgfo_interface_transmit_bytes_total"].add((dev,), stats.tx_bytes)
        if d is None:
            continue
        fam["wireguard_device_info"].add((dev, d.public_key or ""), 1)
        peers = by_device.get(dev, [])
        fam["wgfo_configured_peers"].add((dev,), len(peers))
        active = sum(1 for p in peers if p[HANDSHAKE] and p[HANDSHAKE] >= active_since)
        fam["wgfo_active_peers"].add((dev,), active)
        if not peer_metrics:
            continue
        # The hot path at 10,000 peers: comprehensions over plain tuples; the (device, key)
        # tuple is shared by the three per-peer value families.
        keys = [(dev, p[KEY]) for p in peers]
        fam["wireguard_peer_info"].samples += [
            ((dev, p[KEY], p[ENDPOINT], peer_names.get(p[KEY], "")), 1) for p in peers]
        fam["wireguard_peer_allowed_ips_info"].samples += [
            ((dev, p[KEY], ip), 1) for p in peers for ip in p[ALLOWED]]
        fam["wireguard_peer_receive_bytes_total"].samples += [
            (k, p[RX]) for k, p in zip(keys, peers, strict=True)]
        fam["wireguard_peer_transmit_bytes_total"].samples += [
            (k, p[TX]) for k, p in zip(keys, peers, strict=True)]
        fam["wireguard_peer_last_handshake_seconds"].samples += [
            (k, p[HANDSHAKE]) for k, p in zip(keys, peers, strict=True)]
        if extra:
            _add_mindflavor({f.name: f for f in extra}, dev, peers, peer_names, compat_remote)

    w = names.worker
    if w is not None:
        fam["wgfo_worker_info"].add((w.name, w.region or ""), 1)
        if w.capacity is not None:
            fam["wgfo_worker_capacity"].add((w.name,), w.capacity)
    if r.cpu_ratio is not None:
        fam["wgfo_cpu_usage_ratio"].add((), r.cpu_ratio)
    if r.load is not None:
        for period, value in zip(("1m", "5m", "15m"), r.load, strict=True):
            fam["wgfo_load_average"].add((period,), value)
    fam["wgfo_scrape_success"].add((), 0 if r.failed else 1)
    if duration is not None:
        fam["wgfo_scrape_duration_seconds"].add((), duration)

    for f in fam.values():
        # Device families hold, besides the device, only values wg itself formats (base64 keys,
        # host:port, CIDR) or fleet names checked against [a-z0-9-].
        f.clean = clean and f.labelnames[:1] == ("device",)
    for f in extra:
        f.clean = clean  # the same kinds of values, the device under the name `interface`
    return [*fam.values(), *extra]


def _add_mindflavor(fam: dict[str, Family], dev: str, peers: list, peer_names: dict[str, str],
                    remote: bool) -> None:
    """One device's peers in the --compat mindflavor families."""
    # One label tuple per peer, shared by the three families (allowed IPs joined as wg prints them).
    if remote:
        labels = [(dev, p[KEY], ",".join(p[ALLOWED]), peer_names.get(p[KEY], ""),
                   *split_endpoint(p[ENDPOINT])) for p in peers]
    else:
        labels = [(dev, p[KEY], ",".join(p[ALLOWED]), peer_names.get(p[KEY], ""))
                  for p in peers]
    fam["wireguard_sent_bytes_total"].samples += [
        (k, p[TX]) for k, p in zip(labels, peers, strict=True)]
    fam["wireguard_received_bytes_total"].samples += [
        (k, p[RX]) for k, p in zip(labels, peers, strict=True)]
    fam["wireguard_latest_handshake_seconds"].samples += [
        (k, p[HANDSHAKE]) for k, p in zip(labels, peers, strict=True)]


# ------------------------------------------------------------------------------ text output
def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(value: Value) -> str:
    if type(value) is int:
        return str(value)
    return floatToGoString(value)


def _lines(name: str, labels: tuple[str, ...], samples: list, fmt_values: bool) -> list[str]:
    """Sample lines of a clean family; f-strings per label count (str.format costs 3x more)."""
    if fmt_values:
        samples = [(lv, _fmt(v)) for lv, v in samples]
    if len(labels) == 1:
        p = f'{name}{{{labels[0]}="'
        return [f'{p}{a}"}} {v}\n' for (a,), v in samples]
    if len(labels) == 2:
        p, k1 = f'{name}{{{labels[0]}="', f'",{labels[1]}="'
        return [f'{p}{a}{k1}{b}"}} {v}\n' for (a, b), v in samples]
    if len(labels) == 3:
        p, k1, k2 = f'{name}{{{labels[0]}="', f'",{labels[1]}="', f'",{labels[2]}="'
        return [f'{p}{a}{k1}{b}{k2}{c}"}} {v}\n' for (a, b, c), v in samples]
    if len(labels) in (4, 6):  # the --compat mindflavor families, with --compat-remote: 6
        p, k1, k2, k3 = (f'{name}{{{labels[0]}="', f'",{labels[1]}="', f'",{labels[2]}="',
                         f'",{labels[3]}="')
        if len(labels) == 4:
            return [f'{p}{a}{k1}{b}{k2}{c}{k3}{d}"}} {v}\n' for (a, b, c, d), v in samples]
        k4, k5 = f'",{labels[4]}="', f'",{labels[5]}="'
        return [f'{p}{a}{k1}{b}{k2}{c}{k3}{d}{k4}{e}{k5}{g}"}} {v}\n'
                for (a, b, c, d, e, g), v in samples]
    # %-formatting: about 40 % faster than str.format at this size (label and metric names hold
    # no `%`; the values are arguments).
    template = name + "{" + ",".join(f'{k}="%s"' for k in labels) + "} %s\n"
    return [template % (*lv, v) for lv, v in samples]


def render_family(f: Family) -> bytes:
    """One family in the Prometheus text format 0.0.4 (b"" when it has no samples)."""
    if not f.samples:
        return b""
    m = f.metric
    out = [f"# HELP {f.name} {_escape(m.help)}\n# TYPE {f.name} {m.type}\n"]
    if not m.labels:
        out.extend(f"{f.name} {_fmt(v)}\n" for _, v in f.samples)
    elif f.clean:
        ints = all(type(v) is int for _, v in f.samples)
        out += _lines(f.name, m.labels, f.samples, not ints)
    else:
        template = f.name + "{{" + ",".join(f'{k}="{{}}"' for k in m.labels) + "}} {}\n"
        out.extend(template.format(*map(_escape, lv), _fmt(v)) for lv, v in f.samples)
    return "".join(out).encode()


def render_chunks(families: Sequence[Family]) -> list[bytes]:
    """The text format written directly (see the module doc for why), one chunk per family,
    so the lines of only one family are alive at a time and the page never exists twice (as
    str and as bytes): that is most of the peak memory."""
    return [c for c in map(render_family, families) if c]


def render_text(families: Sequence[Family]) -> bytes:
    return b"".join(render_chunks(families))


def to_metrics(families: Sequence[Family]) -> list[Metric]:
    """The same families as prometheus_client objects (for OpenMetrics and other registries)."""
    result: list[Metric] = []
    for f in families:
        m = f.metric
        if m.type == "counter":
            metric: Metric = CounterMetricFamily(f.name.removesuffix("_total"), m.help,
                                                 labels=m.labels)
        else:
            metric = GaugeMetricFamily(f.name, m.help, labels=m.labels)
        for lv, v in f.samples:
            metric.add_metric(list(lv), v)
        result.append(metric)
    return result


# ------------------------------------------------------------------------------ I/O
class FleetSource:
    """The fleet file, re-read when its mtime changes; a broken edit keeps the last good one."""

    def __init__(self, path: str | os.PathLike[str], fleet: Fleet):
        self.path = os.fspath(path)
        self._fleet = fleet
        self._mtime = self._stat()
        self._lock = threading.Lock()

    def _stat(self) -> float | None:
        try:
            return os.stat(self.path).st_mtime
        except OSError:
            return None

    def get(self) -> Fleet:
        mtime = self._stat()
        if mtime is None or mtime == self._mtime:
            return self._fleet
        with self._lock:
            if mtime != self._mtime:
                self._mtime = mtime
                try:
                    self._fleet = load_fleet(self.path)
                    log.info("reloaded fleet file %s", self.path)
                except FleetError as exc:
                    log.error("fleet file changed but is invalid, keeping the previous one:\n%s",
                              exc.render())
        return self._fleet


class WireGuardCollector:
    """A prometheus_client collector; every collect() reads WireGuard afresh."""

    def __init__(
        self,
        interfaces: Sequence[str] = (),
        *,
        fleet: FleetSource | None = None,
        worker: str | None = None,
        peer_metrics: bool = True,
        wg_timeout: float = 5.0,
        sys_root: str = "/sys",
        cpu: system.CpuMeter | None = None,
        compat: str | None = None,
        compat_remote: bool = False,
    ):
        self.interfaces = list(dict.fromkeys(interfaces))
        self.fleet = fleet
        self.worker = worker
        self.peer_metrics = peer_metrics
        self.compat = compat
        self.compat_remote = compat_remote
        self.wg_timeout = wg_timeout
        self.sys_root = sys_root
        self.cpu = cpu or system.CpuMeter()
        self._last_errors: list[str] = []

    def _dump(self, errors: list[str], failed: list[str]) -> Snapshot:
        if not self.interfaces:
            try:
                return parse_rows(wg.run_wg(["show", "all", "dump"], timeout=self.wg_timeout))
            except wg.WgError as exc:
                errors.append(str(exc))
                failed.append("all")
                return Snapshot()
        dump = Snapshot()
        for iface in self.interfaces:
            try:
                dump.extend(parse_rows(
                    wg.run_wg(["show", iface, "dump"], timeout=self.wg_timeout), device=iface))
            except wg.WgError as exc:
                errors.append(f"{iface}: {exc}")
                failed.append(iface)
        return dump

    def read(self) -> list[Family]:
        """One scrape's families. Whatever goes wrong, a page with wgfo_scrape_success 0."""
        try:
            return self._read()
        except Exception as exc:  # a bug must cost one scrape, not the exporter or a 500 page
            log.error("scrape failed unexpectedly: %r", exc)
            reading = Reading(Snapshot(), ["all"], {}, None, system.load_average(), time.time())
            return build_families(reading, Names({}, None))

    def _read(self) -> list[Family]:
        start = time.perf_counter()
        errors: list[str] = []
        failed: list[str] = []
        try:
            dump = self._dump(errors, failed)
        except Exception as exc:  # never let a surprise turn a scrape into an error page
            errors.append(f"unexpected: {exc!r}")
            failed.append("all")
            dump = Snapshot()
        devices = set(dump.devices) | set(failed) - {"all"}
        ifaces = {d: system.read_iface(d, self.sys_root) for d in devices}
        fleet = self.fleet.get() if self.fleet else None
        names = fleet_names(fleet, (d.public_key for d in dump.devices.values()), self.worker)
        reading = Reading(dump, failed, ifaces, self.cpu.sample(), system.load_average(),
                          time.time(), errors)
        if errors != self._last_errors:  # log changes, not every failing scrape
            for e in errors:
                log.warning("scrape: %s", e)
            if not errors:
                log.info("scrape: WireGuard readable again")
            self._last_errors = errors
        families = build_families(reading, names, peer_metrics=self.peer_metrics,
                                  compat=self.compat, compat_remote=self.compat_remote)
        duration = time.perf_counter() - start
        for f in families:
            if f.name == "wgfo_scrape_duration_seconds":
                f.add((), duration)
        return families

    def collect(self) -> Iterator[Metric]:
        yield from to_metrics(self.read())

    def describe(self) -> Iterator[Metric]:
        # Names only, so registering the collector does not run `wg`.
        yield from to_metrics([*(Family(name) for name in METRICS),
                               *(Family(m.name, defn=m)
                                 for m in compat_metrics(self.compat, self.compat_remote))])
