"""The live fleet as plain data: merging an applied file with the nodes that joined, the diff an
apply shows, a new node from an enrollment, and each node's own view. Pure functions, no I/O.

Nodes that joined at run time (`wg-failover join`) are "enrolled" (`FleetDoc.enrolled` holds
"client:NAME" / "worker:NAME"): applying a file keeps them unless the file names them (then the
file's entry wins and the node is a file node from then on). Everything else in the served fleet
comes from the last file applied.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from wg_failover.fleet import (
    Client,
    Fleet,
    FleetError,
    Problem,
    Worker,
    fleet_data,
    validate_fleet_data,
)
from wg_failover.wire import ClientView, FleetDiff, PeerEntry, ViewWorker, WorkerPeers

from .store import FleetDoc


def tag(kind: str, name: str) -> str:
    return f"{kind}:{name}"


def merge_file(file_data: dict[str, Any], served: dict[str, Any] | None,
               enrolled: list[str]) -> tuple[dict[str, Any], list[str], list[str]]:
    """The fleet data after applying a file over the served fleet: the file's workers and clients
    (and responder settings), plus every enrolled node the file does not name, after them.
    Returns (data, enrolled that remain, the names kept because they joined)."""
    data = dict(file_data)
    kept: list[str] = []
    remain: list[str] = []
    enrolled_set = set(enrolled)
    for section, kind in (("workers", "worker"), ("clients", "client")):
        named = {e.get("name") for e in file_data.get(section) or [] if isinstance(e, dict)}
        extra = []
        for e in (served or {}).get(section) or []:
            t = tag(kind, e["name"])
            if t in enrolled_set and e["name"] not in named:
                extra.append(e)
                kept.append(e["name"])
                remain.append(t)
        if extra:
            data[section] = [*(file_data.get(section) or []), *extra]
    return data, remain, kept


def start_fleet(file_fleet: Fleet, stored: FleetDoc | None
                ) -> tuple[Fleet, FleetDoc, FleetDoc | None, str | None]:
    """The fleet to serve from the start: the file applied over the stored fleet, enrolled nodes
    kept. Returns (fleet, its document as served now, the document the start-up change commits
    or None when the stored one stands, why the file could not be applied or None)."""
    file_data = fleet_data(file_fleet)
    if stored is None:
        return file_fleet, FleetDoc(0, file_data, []), FleetDoc(1, file_data, []), None
    data, enrolled, _kept = merge_file(file_data, stored.data, stored.enrolled)
    try:
        fleet = validate_fleet_data(data, "the fleet file with the nodes that joined")
    except FleetError as exc:
        return validate_fleet_data(stored.data, "the stored fleet"), stored, None, exc.render()
    served = FleetDoc(stored.version, data, enrolled)
    if data == stored.data and sorted(enrolled) == sorted(stored.enrolled):
        return fleet, served, None, None
    return fleet, served, FleetDoc(stored.version + 1, data, enrolled), None


def _changed(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(n for n in old.keys() & new.keys() if old[n] != new[n])


def diff(old: Fleet | None, new: Fleet, version: int, applied: bool,
         enrolled_kept: list[str] | None = None) -> FleetDiff:
    """What changes from `old` to `new` (names sorted); `old` None: everything is added."""
    ow = {w.name: w for w in (old.workers if old else [])}
    nw = {w.name: w for w in new.workers}
    oc = {c.name: c for c in (old.clients if old else [])}
    nc = {c.name: c for c in new.clients}
    return FleetDiff(
        applied=applied, version=version,
        workers_added=sorted(nw.keys() - ow.keys()),
        workers_removed=sorted(ow.keys() - nw.keys()),
        workers_changed=_changed(ow, nw),
        clients_added=sorted(nc.keys() - oc.keys()),
        clients_removed=sorted(oc.keys() - nc.keys()),
        clients_changed=_changed(oc, nc),
        settings_changed=old is not None and old.responder != new.responder,
        enrolled_kept=sorted(enrolled_kept or []),
    )


def with_node(fleet: Fleet, kind: str, node: dict[str, Any]) -> dict[str, Any]:
    """Fleet data with one more worker or client (validated by the caller, as a whole)."""
    data = fleet_data(fleet)
    section = "workers" if kind == "worker" else "clients"
    data[section] = [*data.get(section, []), node]
    return data


def add_node(fleet: Fleet, data: dict[str, Any], kind: str, node: dict[str, Any],
             source: str) -> tuple[Fleet, dict[str, Any]]:
    """The fleet (and its data) with one more node, checked as the whole fleet's check would
    (same problems, same paths) but without validating every other node again: at 10,000
    clients a whole validation costs ~0.25 s per join. The node is validated with the workers
    (few) around it, then against the clients by sets. Raises FleetError."""
    section = "workers" if kind == "worker" else "clients"
    index = len(data.get(section) or [])
    workers = list(data.get("workers") or [])
    mini = {"workers": [*workers, node] if kind == "worker" else workers,
            "clients": [node] if kind == "client" else []}
    at = f"{section}[{index if kind == 'worker' else 0}]"
    try:
        checked = validate_fleet_data(mini, source)
    except FleetError as exc:
        raise FleetError(source, [Problem(p.path.replace("clients[0]", f"clients[{index}]", 1),
                                          p.message) for p in exc.problems]) from None
    model: Worker | Client = checked.workers[-1] if kind == "worker" else checked.clients[0]
    problems = []
    ip = ipaddress.ip_address(model.tunnel_address) if isinstance(model, Worker) \
        else ipaddress.ip_interface(model.address).ip
    taken = client_ips(fleet)
    if ip in taken:
        other = f"clients[{taken[ip]}].address"
        field = "tunnel_address" if kind == "worker" else "address"
        problems.append(Problem(f"{at}.{field}", f"{ip} overlaps {ip} at {other}"))
    keys = {c.public_key for c in fleet.clients}
    if kind == "worker" and model.public_key in keys:
        problems.append(Problem(f"{at}.public_key", "duplicate public key"))
    if problems:
        raise FleetError(source, problems)
    new = fleet.model_copy(update={section: [*getattr(fleet, section), model]})
    if kind == "client":
        _ips[:] = [new, {**taken, ip: index}]
    out = dict(data)
    out[section] = [*(data.get(section) or []), model.model_dump(mode="json", exclude_none=True)]
    return new, out


def drop_client(fleet: Fleet, data: dict[str, Any], name: str) -> tuple[Fleet, dict[str, Any]]:
    """The fleet (and its data) without client `name`: nothing can conflict, nothing to check."""
    new = fleet.model_copy(update={"clients": [c for c in fleet.clients if c.name != name]})
    out = dict(data)
    out["clients"] = [c for c in data.get("clients") or [] if c.get("name") != name]
    return new, out


def without_node(fleet: Fleet, kind: str, name: str) -> dict[str, Any]:
    data = fleet_data(fleet)
    section = "workers" if kind == "worker" else "clients"
    data[section] = [e for e in data.get(section, []) if e["name"] != name]
    if kind == "worker":
        # A client that listed only this worker would be left with none: it then may use all.
        for c in data.get("clients", []):
            if c.get("workers") is not None:
                rest = [w for w in c["workers"] if w != name]
                if rest:
                    c["workers"] = rest
                else:
                    del c["workers"]
    return data


IP = ipaddress.IPv4Address | ipaddress.IPv6Address
# The clients' addresses of the last fleet asked about: parsing 10,000 addresses costs ~0.25 s,
# and every join asks about the fleet the previous join made (add_node keeps this current).
_ips: list[Any] = [None, {}]


def client_ips(fleet: Fleet) -> dict[IP, int]:
    """Every client's address -> its index in the fleet."""
    if _ips[0] is not fleet:
        _ips[:] = [fleet, {ipaddress.ip_interface(a).ip: i
                           for i, c in enumerate(fleet.clients) for a in c.addresses}]
    return _ips[1]


def used_addresses(fleet: Fleet) -> set[IP]:
    return {ipaddress.ip_address(w.tunnel_address) for w in fleet.workers} | \
        client_ips(fleet).keys()


def allocate_address(fleet: Fleet, pool: str) -> str | None:
    """The first free host address of `pool` (a CIDR) as `addr/prefix`, None when it is full.
    Walks the pool in order: 10,000 clients cost a set of used addresses and a short scan."""
    net = ipaddress.ip_network(pool)
    used = used_addresses(fleet)
    for i, ip in enumerate(net.hosts()):
        if ip not in used:
            return f"{ip}/{net.prefixlen}"
        if i > 1_000_000:  # a /8 walked this far has room further on, but not worth the wait
            return None
    return None


def in_pool(address: str, pool: str) -> bool:
    return ipaddress.ip_interface(address).ip in ipaddress.ip_network(pool)


def peer_entry(c: Client) -> PeerEntry:
    """A client as one peer of a worker's interface."""
    return PeerEntry(name=c.name, public_key=c.public_key, allowed_ips=c.host_cidrs)


def peers_of(fleet: Fleet, worker: Worker, version: int, epoch: str) -> WorkerPeers:
    """The worker's view: every client allowed on it, as `wg set` wants the peers."""
    return WorkerPeers(worker=worker.name, version=version, epoch=epoch,
                       peers=[peer_entry(c) for c in fleet.clients_of(worker)])


class PeerFragments:
    """A worker's view (`peers_of`) as JSON, from each client's entry made once and reused while
    the client is unchanged. At 10,000 clients building the document anew costs ~100 ms per
    worker (10,000 validated entries, each parsing its addresses) on the event loop at every
    fleet change, for every worker; from the fragments it is ~4 ms. Same text as
    `peers_of(...).model_dump_json()` (tests/unit/test_fleet_dual_stack.py)."""

    def __init__(self) -> None:
        self.memo: dict[tuple[str, str, str, tuple[str, ...]], str] = {}

    def document(self, fleet: Fleet, worker: Worker, version: int, epoch: str) -> str:
        if len(self.memo) > 2 * len(fleet.clients) + 100:
            self.memo.clear()  # entries of clients that left or changed
        parts = []
        for c in fleet.clients_of(worker):
            # What peer_entry reads: the name, the key and the addresses.
            key = (c.name, c.public_key, c.address, tuple(c.extra_addresses or ()))
            entry = self.memo.get(key)
            if entry is None:
                entry = self.memo[key] = peer_entry(c).model_dump_json()
            parts.append(entry)
        head = WorkerPeers(worker=worker.name, version=version, epoch=epoch,
                           peers=[]).model_dump_json()
        assert head.endswith("[]}"), head  # `peers` is the document's last field
        return head[:-2] + ",".join(parts) + "]}"


def view_of(fleet: Fleet, client: Client, version: int, epoch: str) -> ClientView:
    """The client's view: its own address and routes, and its workers in preference order."""
    return ClientView(client=client.name, version=version, epoch=epoch, address=client.address,
                      routes=list(client.routes), workers=[
                          ViewWorker(name=w.name, public_key=w.public_key, endpoint=w.endpoint,
                                     tunnel_address=w.tunnel_address)
                          for w in fleet.preferences(client)])
