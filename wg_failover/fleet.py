"""The fleet file: the single source of truth for workers, clients and the responder.

Parsing is two-staged: pydantic checks each field's shape, then `_cross_checks` looks at the
fleet as a whole (unique names, keys and addresses, known preferences). Both stages collect every
problem before failing, so an operator fixes a broken file in one pass instead of one error per run.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from .mqtt import parse_mqtt_url

DEFAULT_FLEET_PATH = "/etc/wg-failover/fleet.yaml"
# Far above any real worker, and small enough that sums over a fleet stay ordinary integers.
MAX_CAPACITY = 1_000_000
# A fleet file nests about six levels deep; PyYAML's composer recurses per level, so a file
# nested thousands deep would otherwise end in a RecursionError instead of a field-path error.
MAX_NESTING = 64
FLEET_ENV = "WG_FAILOVER_FLEET"

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
# RFC 1123 host names; labels of letters, digits and hyphens, not starting or ending with one.
HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


# --------------------------------------------------------------------------- field validators


def _check_name(value: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid name: use 1-63 of a-z, 0-9 and '-', "
            "not starting or ending with '-'"
        )
    return value


def _check_key(value: str) -> str:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        msg = "is not valid base64 (expected a WireGuard key as `wg pubkey` prints it)"
        raise ValueError(msg) from None
    if len(raw) != 32:
        raise ValueError(f"decodes to {len(raw)} bytes; a WireGuard key is 32 bytes")
    return value


def _check_hex64(value: str) -> str:
    if not HEX64_RE.match(value):
        raise ValueError("must be 64 lowercase hex characters (sha256 of the token)")
    return value


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int
    ipv6: bool = False

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.ipv6 else f"{self.host}:{self.port}"


def parse_host_port(value: str) -> HostPort:
    """Parse `host:port`, `a.b.c.d:port` or `[v6]:port`, as wg(8) endpoints are written."""
    if not isinstance(value, str) or not value:
        raise ValueError("must be host:port")
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or value[end + 1 : end + 2] != ":":
            raise ValueError(f"{value!r} is not [IPv6]:port")
        host, port_s = value[1:end], value[end + 2 :]
        try:
            ipaddress.IPv6Address(host.split("%")[0])
        except ValueError:
            raise ValueError(f"{host!r} in {value!r} is not an IPv6 address") from None
        ipv6 = True
    else:
        if value.count(":") > 1:
            raise ValueError(f"{value!r}: write an IPv6 endpoint in brackets, as [addr]:port")
        host, sep, port_s = value.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{value!r} is not host:port (the port is missing)")
        if not HOSTNAME_RE.match(host):
            raise ValueError(f"{host!r} in {value!r} is not a valid host name or IPv4 address")
        ipv6 = False
    if not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise ValueError(f"port {port_s!r} in {value!r} is not a number from 1 to 65535")
    return HostPort(host, int(port_s), ipv6)


def _check_endpoint(value: str) -> str:
    parse_host_port(value)
    return value


def _check_listen(value: str) -> str:
    # Listen addresses may leave the host out (":9586" means every address).
    parse_host_port(("0.0.0.0" + value) if value.startswith(":") else value)
    return value


def _check_ip(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None
    return value


def _check_host_cidr(value: str) -> str:
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an address in CIDR form, e.g. 10.66.1.2/32") from None
    if "/" not in value:
        raise ValueError(f"{value!r} needs a prefix length, e.g. {value}/{iface.max_prefixlen}")
    return value


def _check_network(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            net = ipaddress.ip_network(value, strict=False)
            raise ValueError(f"{value!r} has host bits set; did you mean {net}?") from None
        raise ValueError(f"{value!r} is not a network in CIDR form, e.g. 0.0.0.0/0") from None
    return value


def _check_url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number in range
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid URL: {exc}") from None
    if not parts.hostname:
        raise ValueError(f"{value!r} has no host")
    return value


def _check_mqtt_url(value: str) -> str:
    parse_mqtt_url(value)  # MqttUrlError is a ValueError: pydantic reports it at the field
    return value


Name = Annotated[str, AfterValidator(_check_name)]
Key = Annotated[str, AfterValidator(_check_key)]
Hex64 = Annotated[str, AfterValidator(_check_hex64)]
Endpoint = Annotated[str, AfterValidator(_check_endpoint)]
IPAddr = Annotated[str, AfterValidator(_check_ip)]
HostCIDR = Annotated[str, AfterValidator(_check_host_cidr)]
Network = Annotated[str, AfterValidator(_check_network)]
Url = Annotated[str, AfterValidator(_check_url)]
MqttBrokerUrl = Annotated[str, AfterValidator(_check_mqtt_url)]


# --------------------------------------------------------------------------- models


class _Strict(BaseModel):
    # Unknown keys are almost always typos ("capcity"); silently ignoring them hides mistakes.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Worker(_Strict):
    name: Name
    public_key: Key
    endpoint: Endpoint
    tunnel_address: IPAddr
    exporter: Endpoint
    capacity: int | None = Field(default=None, ge=1, le=MAX_CAPACITY)
    region: str | None = None
    # sha256 of the worker's agent token (`wg-failover agent`): it reads this worker's peers.
    token_sha256: Hex64 | None = None

    @property
    def listen_port(self) -> int:
        return parse_host_port(self.endpoint).port

    @property
    def tunnel_host_cidr(self) -> str:
        ip = ipaddress.ip_address(self.tunnel_address)
        return f"{ip}/{ip.max_prefixlen}"


class Client(_Strict):
    name: Name
    public_key: Key
    address: HostCIDR
    # More addresses of its own, e.g. the IPv6 one of a dual-stack client (`address` IPv4): the
    # interface carries them all (wg-quick `Address = a, b`), and every worker's peer entry for
    # it allows them all, so traffic from any of them reaches the service (issue 18).
    extra_addresses: list[HostCIDR] | None = Field(default=None, max_length=8)
    routes: list[Network] = Field(default_factory=list)
    workers: list[Name] | None = None
    token_sha256: Hex64 | None = None
    # Outbound webhook (responder/notify/webhooks.py): each new assignment is POSTed here,
    # signed with HMAC-SHA256; the key stays in its own file (never in the fleet file).
    notify_url: Url | None = None
    notify_secret_file: str | None = None

    @model_validator(mode="after")
    def _notify_secret(self) -> Client:
        if self.notify_url and not self.notify_secret_file:
            raise ValueError("notify_url needs notify_secret_file (file holding the HMAC key)")
        return self

    @property
    def host_cidr(self) -> str:
        """The client's own address as a single host, as a worker's AllowedIPs want it."""
        ip = ipaddress.ip_interface(self.address).ip
        return f"{ip}/{ip.max_prefixlen}"

    @property
    def host_cidrs(self) -> list[str]:
        """All its addresses as single hosts: a worker's AllowedIPs for it."""
        ips = [ipaddress.ip_interface(a).ip for a in self.extra_addresses or ()]
        return [self.host_cidr, *(f"{ip}/{ip.max_prefixlen}" for ip in ips)]

    @property
    def addresses(self) -> list[str]:
        """Its interface's addresses, as wg-quick's `Address` lists them."""
        return [self.address, *(self.extra_addresses or ())]


class MqttSettings(_Strict):
    url: MqttBrokerUrl = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password_file: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None  # client certificate (mutual TLS), with tls_key_file
    tls_key_file: str | None = None
    topic_prefix: str = "wg-failover"


class WebhookTarget(_Strict):
    """An integration that wants assignments pushed (responder/notify/webhooks.py)."""

    name: Name
    url: Url
    secret_file: str  # file holding the HMAC key
    clients: list[Name] | None = None  # default: every client


class ResponderSettings(_Strict):
    url: Url = "http://127.0.0.1:8080"
    # Every responder replica's base URL, in the order followers and `ctl` try them (moving on
    # after a failure: wg_failover/endpoints.py), and every one Alertmanager delivers to. Unset:
    # just `url`.
    urls: list[Url] | None = Field(default=None, min_length=1, max_length=16)
    alert_token_sha256: Hex64 | None = None
    admin_token_sha256: Hex64 | None = None
    # Reads the fleet's inventory (GET /v1/workers, GET /v1/targets): Prometheus's http_sd and
    # dashboards get this instead of the admin token, which can also drain workers.
    read_token_sha256: Hex64 | None = None
    # Where enrolled clients' addresses come from (`wg-failover join`), unless the enrollment key
    # or the request names one; a client the file names may sit anywhere.
    client_pool: Network | None = None
    # Finite and at most a day: `.inf` would parse as a float and silently disable recovery.
    hold_down_seconds: float = Field(default=60, ge=0, le=86400, allow_inf_nan=False)
    preempt: bool = False
    # A firing failover/drain alert that Alertmanager has not sent again for this long is taken
    # as resolved. Alertmanager repeats a firing alert every repeat_interval (5 min in the shipped
    # config), so only a lost resolve ends one this way: an Alertmanager that lost its
    # notification log never sends it, and the worker would stay down for good (issue 17).
    # Keep it above twice the repeat_interval (shorter: a still-firing alert flaps off and on).
    alert_expire_seconds: float = Field(default=900, ge=10, le=7 * 86400, allow_inf_nan=False)
    preempt_batch_size: int = Field(default=10, ge=1, le=MAX_CAPACITY)
    # Placement (docs/responder.md "Placement"): `latency` puts a client on the healthy worker
    # with room its own probes measure fastest, and moves it for latency alone only when the
    # gain is large (both bounds) and lasting, at most once per interval, in batches.
    placement: Literal["preference", "latency"] = "preference"
    latency_min_gain_ms: float = Field(default=20, ge=1, le=10_000, allow_inf_nan=False)
    latency_min_gain_ratio: float = Field(default=0.25, ge=0.05, le=0.95, allow_inf_nan=False)
    latency_sustain_seconds: float = Field(default=60, ge=10, le=86400, allow_inf_nan=False)
    latency_move_interval_seconds: float = Field(default=600, ge=60, le=7 * 86400,
                                                 allow_inf_nan=False)
    latency_batch_size: int = Field(default=10, ge=1, le=MAX_CAPACITY)
    # Suspect: this many distinct clients of one worker (at least 2, so one client's reports
    # never move others, and at least the ratio of its recently reporting clients) report
    # fast-path switches away from it within the window: its other clients are re-planned at
    # once. The mark expires unless an alert confirms the worker down.
    suspect_quorum_min: int = Field(default=2, ge=2, le=MAX_CAPACITY)
    suspect_quorum_ratio: float = Field(default=0.3, ge=0, le=1, allow_inf_nan=False)
    suspect_window_seconds: float = Field(default=5, ge=1, le=300, allow_inf_nan=False)
    suspect_expire_seconds: float = Field(default=30, ge=5, le=3600, allow_inf_nan=False)
    # Event log retention: the responder prunes older rows, and rows past the newest
    # events_max_rows, in small batches (assignments are state and are never pruned). At least
    # an hour and 1,000 rows, so a typo cannot empty the log an operator is reading.
    events_max_age_seconds: int = Field(default=7 * 86400, ge=3600, le=3650 * 86400)
    events_max_rows: int = Field(default=1_000_000, ge=1000, le=1_000_000_000)
    mqtt: MqttSettings | None = None
    webhooks: list[WebhookTarget] = Field(default_factory=list)

    # YAML writes `hold_down_seconds: 60` as an int; strict mode would reject it for a float.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    def replica_urls(self) -> list[str]:
        """`urls` when given (duplicates dropped), else `[url]`."""
        return list(dict.fromkeys(u.rstrip("/") for u in (self.urls or [self.url])))


class Fleet(_Strict):
    workers: list[Worker] = Field(min_length=1)
    clients: list[Client] = Field(default_factory=list)
    responder: ResponderSettings = Field(default_factory=ResponderSettings)

    def worker(self, name: str) -> Worker:
        for w in self.workers:
            if w.name == name:
                return w
        raise KeyError(f"no worker named {name!r} in the fleet (have: {self.worker_names()})")

    def client(self, name: str) -> Client:
        for c in self.clients:
            if c.name == name:
                return c
        names = ", ".join(c.name for c in self.clients) or "none"
        raise KeyError(f"no client named {name!r} in the fleet (have: {names})")

    def worker_names(self) -> str:
        return ", ".join(w.name for w in self.workers)

    def preferences(self, client: Client) -> list[Worker]:
        """The client's workers in preference order: its `workers` list, else all in file order."""
        if client.workers is None:
            return list(self.workers)
        by_name = {w.name: w for w in self.workers}
        return [by_name[n] for n in client.workers]

    def clients_of(self, worker: Worker) -> list[Client]:
        """Clients that may use this worker (so the worker must carry them as peers)."""
        return [c for c in self.clients if c.workers is None or worker.name in c.workers]


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class Problem:
    path: str
    message: str


class FleetError(Exception):
    """A fleet file that cannot be used; carries every problem found, each with its field path."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        n = len(self.problems)
        lines = [f"{self.source}: invalid fleet file ({n} problem{'s' if n != 1 else ''}):"]
        lines += [f"  {p.path or '(top level)'}: {p.message}" for p in self.problems]
        return "\n".join(lines)


def format_loc(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _pydantic_problems(exc: ValidationError) -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        kind = err["type"]
        msg = err["msg"]
        if kind == "extra_forbidden":
            msg = "unknown key (a typo?)"
        elif kind == "missing":
            msg = "is required"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        problems.append(Problem(format_loc(loc), msg))
    return problems


def _cross_checks(data: dict[str, Any], bad: set[str]) -> list[Problem]:
    """Checks across entries, on the raw data so they run even when some fields are broken.

    Fields already reported broken (`bad`, their paths) are skipped rather than reported twice.
    """
    problems: list[Problem] = []

    def entries(section: str) -> list[tuple[int, dict[str, Any]]]:
        items = data.get(section)
        if not isinstance(items, list):
            return []
        return [(i, e) for i, e in enumerate(items) if isinstance(e, dict)]

    def values(section: str, key: str) -> list[tuple[str, Any]]:
        out = []
        for i, e in entries(section):
            path = f"{section}[{i}].{key}"
            if key in e and path not in bad and isinstance(e[key], str):
                out.append((path, e[key]))
        return out

    def dupes(items: list[tuple[str, str]], what: str) -> None:
        seen: dict[str, str] = {}
        for path, value in items:
            if value in seen:
                msg = f"duplicate {what} {value!r} (also at {seen[value]})"
                problems.append(Problem(path, msg))
            else:
                seen[value] = path

    dupes(values("workers", "name"), "worker name")
    dupes(values("clients", "name"), "client name")
    dupes(values("workers", "public_key") + values("clients", "public_key"), "public key")
    dupes(values("workers", "endpoint"), "endpoint")

    # Tunnel addresses (workers' /32s and clients' addresses) must not overlap: WireGuard would
    # route one of them to the wrong peer.
    nets = [(p, ipaddress.ip_network(ipaddress.ip_address(v)))
            for p, v in values("workers", "tunnel_address")]
    nets += [(p, ipaddress.ip_network(ipaddress.ip_interface(v).ip))
             for p, v in values("clients", "address")]
    for i, e in entries("clients"):
        extra = e.get("extra_addresses")
        for j, v in enumerate(extra if isinstance(extra, list) else []):
            try:  # a bad one is already a problem of its own
                nets.append((f"clients[{i}].extra_addresses[{j}]",
                             ipaddress.ip_network(ipaddress.ip_interface(v).ip)))
            except (TypeError, ValueError):
                continue
    # Every entry is a single address, so overlapping means equal: a dict keeps this linear
    # (a pairwise check took a minute at 10,000 clients).
    first: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, list[str]] = {}
    for pa, na in nets:
        for pb in first.get(na, []):
            problems.append(Problem(pa, f"{na} overlaps {na} at {pb}"))
        first.setdefault(na, []).append(pa)

    known = {v for _, v in values("workers", "name")}
    for i, e in entries("clients"):
        prefs = e.get("workers")
        if not isinstance(prefs, list) or f"clients[{i}].workers" in bad:
            continue
        if not prefs:
            problems.append(Problem(f"clients[{i}].workers", "is empty; leave it out for all"))
        for j, name in enumerate(prefs):
            if isinstance(name, str) and known and name not in known:
                problems.append(Problem(
                    f"clients[{i}].workers[{j}]",
                    f"unknown worker {name!r} (fleet has: {', '.join(sorted(known))})",
                ))
        dupes([(f"clients[{i}].workers[{j}]", n) for j, n in enumerate(prefs)
               if isinstance(n, str)], "worker")
    return problems


# --------------------------------------------------------------------------- loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys, which PyYAML would silently overwrite,
    non-scalar keys (a stray `? ` makes a list or a mapping a key), and numbers too long to read."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            kind = "list" if isinstance(key_node, yaml.SequenceNode) else "mapping"
            raise yaml.constructor.ConstructorError(
                None, None, f"a {kind} cannot be a key (a stray `? `?)", key_node.start_mark
            )
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep)


def _construct_int(loader: _UniqueKeyLoader, node: yaml.ScalarNode) -> int:
    try:
        return yaml.SafeLoader.construct_yaml_int(loader, node)
    except ValueError:  # Python refuses int() of more than 4300 digits
        raise yaml.constructor.ConstructorError(
            None, None, f"a number of {len(str(node.value))} characters is too long",
            node.start_mark) from None


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)
_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _too_deep(text: str) -> Problem | None:
    """The first place nested deeper than MAX_NESTING, found on the parser's flat event
    stream (the composer, which builds the nested objects, is the part that recurses)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_NESTING:
                mark = event.start_mark
                return Problem(f"line {mark.line + 1}, column {mark.column + 1}",
                               f"nested more than {MAX_NESTING} levels deep")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return None


def parse_fleet(text: str, source: str = "<fleet>") -> Fleet:
    """Parse and validate fleet YAML; raises FleetError with every problem found."""
    try:
        deep = _too_deep(text)
        if deep:
            raise FleetError(source, [deep])
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise FleetError(source, [Problem(where, f"not valid YAML: {problem}")]) from None
    if data is None:
        raise FleetError(source, [Problem("", "the file is empty; it needs at least `workers:`")])
    return validate_fleet_data(data, source)


def validate_fleet_data(data: Any, source: str = "<fleet>") -> Fleet:
    """Validate fleet data already parsed (YAML, JSON, the responder's store): the same checks and
    field-path errors as a file; raises FleetError with every problem found."""
    if not isinstance(data, dict):
        raise FleetError(source, [Problem("", "must be a mapping with `workers:` and `clients:`")])
    try:
        fleet: Fleet | None = Fleet.model_validate(data)
        problems: list[Problem] = []
    except ValidationError as exc:
        fleet = None
        problems = _pydantic_problems(exc)
    # A broken field also breaks its parents' paths' prefixes: skip anything under a bad path.
    bad = {p.path for p in problems}
    bad |= {p.path.rsplit("[", 1)[0] for p in problems if p.path.endswith("]")}
    problems += _cross_checks(data, bad)
    if problems or fleet is None:
        raise FleetError(source, problems)
    return fleet


def resolve_fleet_path(path: str | os.PathLike[str] | None) -> Path:
    """`--fleet`, else $WG_FAILOVER_FLEET, else /etc/wg-failover/fleet.yaml."""
    return Path(path or os.environ.get(FLEET_ENV) or DEFAULT_FLEET_PATH)


def load_fleet(path: str | os.PathLike[str] | None = None) -> Fleet:
    p = resolve_fleet_path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        hint = "" if path else f" (set --fleet or ${FLEET_ENV})"
        raise FleetError(str(p), [Problem("", f"no such file{hint}")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FleetError(str(p), [Problem("", f"cannot read: {exc}")]) from None
    return parse_fleet(text, str(p))


def fleet_data(fleet: Fleet) -> dict[str, Any]:
    """The fleet as plain data (what the responder stores), unset optional fields left out so
    `validate_fleet_data` reads it back as the same fleet."""
    return fleet.model_dump(mode="json", exclude_none=True)


def dump_fleet(fleet: Fleet) -> str:
    """YAML for a fleet, leaving out unset optional fields so the output stays readable."""
    data = fleet.model_dump(exclude_none=True)
    return yaml.safe_dump(data, sort_keys=False)
