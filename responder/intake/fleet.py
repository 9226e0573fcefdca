"""Changes to the live fleet: apply a fleet (file or admin API), enroll a node, revoke a client,
remove a worker, and enrollment keys. Each is one `ResponderState.change`; a fleet that does not
validate as a whole changes nothing (422 with the same field paths as `wg-failover check`).

Removing a worker is two changes: first it is drained (its clients get new assignments), then,
once those clients said they applied them (or `REMOVE_WAIT` passed), it leaves the fleet. So a
client's routes are on another worker before its old worker's peer goes away.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import time
from dataclasses import replace
from typing import Any

from wg_failover.fleet import Fleet, FleetError, Problem, fleet_data, validate_fleet_data
from wg_failover.tokens import sha256_hex
from wg_failover.wire import (
    Enrolled,
    EnrollKeyCreated,
    EnrollKeyInfo,
    EnrollKeyRequest,
    EnrollRequest,
    FleetDiff,
)

from .. import fleetdoc
from ..draft import Draft
from ..http import ApiError
from ..state import ResponderState
from ..store import EnrollKeyRow, FleetDoc
from ..views import iso
from .drains import drain_worker

REMOVE_WAIT = 10.0  # seconds a removed worker's clients get to apply their new assignment


def fleet_problems(exc: FleetError) -> ApiError:
    """A fleet that does not validate, as 422 with one entry per problem (field path)."""
    return ApiError(422, [{"loc": ["body", *(p.path.split(".") if p.path else [])],
                           "msg": p.message, "type": "value_error"} for p in exc.problems])


def field_error(field: str, msg: str) -> ApiError:
    """422 in the documented shape (a list of field problems), for a rule across fields."""
    return ApiError(422, [{"loc": ["body", field], "msg": msg, "type": "value_error"}])


def _new_doc(state_or_draft_version: int, data: dict[str, Any], enrolled: list[str]) -> FleetDoc:
    return FleetDoc(state_or_draft_version + 1, data, sorted(set(enrolled)))


# --------------------------------------------------------------------------- apply


def plan_apply(state: ResponderState, file_data: dict[str, Any], source: str
               ) -> tuple[Fleet, FleetDoc, FleetDiff]:
    """The fleet that applying `file_data` would serve, its document, and the diff. Raises
    FleetError when the result does not validate."""
    doc = state.fleet_doc
    validate_fleet_data(file_data, source)  # the file alone first: its own field paths
    data, enrolled, kept = fleetdoc.merge_file(file_data, fleet_data(state.fleet), doc.enrolled)
    fleet = validate_fleet_data(data, source)
    new = _new_doc(doc.version, data, enrolled)
    d = fleetdoc.diff(state.fleet, fleet, new.version, applied=False, enrolled_kept=kept)
    return fleet, new, d


async def apply_fleet(state: ResponderState, file_data: Any, source: str,
                      dry_run: bool = False, wait: float = REMOVE_WAIT) -> FleetDiff:
    """Apply a fleet (file contents as data). Raises FleetError, StoreError."""
    if not isinstance(file_data, dict):
        raise FleetError(source, [Problem("", "must be a mapping with `workers:` and `clients:`")])
    fleet, _doc, d = plan_apply(state, file_data, source)
    if dry_run or d.empty():
        return d.model_copy(update={"version": state.fleet_doc.version})
    if d.workers_removed:
        await _drain_and_wait(state, d.workers_removed, wait)
        fleet, _doc, d = plan_apply(state, file_data, source)  # the fleet may have moved on

    def build(dr: Draft) -> FleetDiff:
        fleet2, doc2, d2 = plan_apply(state, file_data, source)
        dr.set_fleet(fleet2, doc2)
        dr.event("fleet-applied", version=doc2.version, cause=source[:100],
                 **_diff_counts(d2))
        return d2

    d = await state.change(build)
    return d.model_copy(update={"applied": True})


def _diff_counts(d: FleetDiff) -> dict[str, int]:
    return {k: len(v) for k, v in d.model_dump().items() if isinstance(v, list) and v}


async def _drain_and_wait(state: ResponderState, workers: list[str], wait: float) -> None:
    """Drain `workers`, then wait (at most `wait` s) until every client that was on them applied
    its new assignment, so its routes left those workers before their peers go."""
    before = [c for c, a in state.assignments.items() if a.worker in workers]

    def build(d: Draft) -> None:
        for w in workers:
            if w in d.worker_by_name:
                drain_worker(d, w, True)

    await state.change(build)
    pending = {c: state.assignments[c].version for c in before if c in state.assignments}
    deadline = time.monotonic() + wait
    while pending and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        pending = {c: v for c, v in pending.items()
                   if state.applied.get(c, 0) < v and c in state.client_by_name}


# --------------------------------------------------------------------------- nodes


async def remove_client(state: ResponderState, name: str) -> FleetDiff:
    """Revoke a client: it leaves the fleet, its token stops working, its peers go."""
    if name not in state.client_by_name:
        raise ApiError(404, f"no client named {name!r}")

    def build(d: Draft) -> FleetDiff:
        if name not in d.client_by_name:
            raise ApiError(404, f"no client named {name!r}")
        fleet, data = fleetdoc.drop_client(d.fleet, state.fleet_doc.data, name)
        doc = state.fleet_doc
        new = _new_doc(doc.version, data, [t for t in doc.enrolled if t != f"client:{name}"])
        d.set_fleet(fleet, new)
        d.event("client-removed", client=name, version=new.version)
        return fleetdoc.diff(state.fleet, fleet, new.version, applied=True)

    return await state.change(build)


async def remove_worker(state: ResponderState, name: str, wait: float = REMOVE_WAIT) -> FleetDiff:
    """Drain a worker (its clients move first), then take it out of the fleet."""
    if name not in state.worker_by_name:
        raise ApiError(404, f"no worker named {name!r}")
    if len(state.worker_by_name) == 1:
        raise ApiError(409, f"{name!r} is the fleet's only worker")
    await _drain_and_wait(state, [name], wait)

    def build(d: Draft) -> FleetDiff:
        if name not in d.worker_by_name:
            raise ApiError(404, f"no worker named {name!r}")
        return _commit_data(d, state, fleetdoc.without_node(d.fleet, "worker", name),
                            f"remove worker {name}", "worker-removed", worker=name)

    return await state.change(build)


def _commit_data(d: Draft, state: ResponderState, data: dict[str, Any], source: str,
                 kind: str, **event: Any) -> FleetDiff:
    try:
        fleet = validate_fleet_data(data, source)
    except FleetError as exc:
        raise fleet_problems(exc) from None
    doc = state.fleet_doc
    enrolled = [t for t in doc.enrolled
                if t.split(":", 1)[1] in {n.name for n in (*fleet.workers, *fleet.clients)}]
    new = _new_doc(doc.version, data, enrolled)
    d.set_fleet(fleet, new)
    d.event(kind, version=new.version, **event)
    return fleetdoc.diff(state.fleet, fleet, new.version, applied=True)


# --------------------------------------------------------------------------- enrollment


def key_info(k: EnrollKeyRow) -> EnrollKeyInfo:
    return EnrollKeyInfo(id=k.id, kind=k.kind, reusable=k.reusable,  # type: ignore[arg-type]
                         created=iso(k.created), expires=iso(k.expires), uses=k.uses,
                         revoked=k.revoked, name=k.name, address=k.address)


async def create_key(state: ResponderState, req: EnrollKeyRequest) -> EnrollKeyCreated:
    if req.address is not None and req.kind != "client":
        raise field_error("address", "an address is for client keys only")
    if req.address is not None:
        _check_address(req.address)
    secret = "wgfo-ek-" + secrets.token_urlsafe(32)
    now = state.clock()
    row = EnrollKeyRow(id=secrets.token_hex(6), sha256=sha256_hex(secret), kind=req.kind,
                       reusable=req.reusable, created=now, expires=now + req.expires_seconds,
                       name=req.name, address=req.address)

    def build(d: Draft) -> None:
        d.tx.keys[row.id] = row
        d.event("enroll-key-created", key_id=row.id, node_kind=row.kind, reusable=row.reusable)

    await state.change(build)
    return EnrollKeyCreated(key=secret, **key_info(row).model_dump())


async def revoke_key(state: ResponderState, key_id: str) -> EnrollKeyInfo:
    row = state.keys.get(key_id)
    if row is None:
        raise ApiError(404, f"no enrollment key {key_id[:40]!r}")
    new = replace(row, revoked=True)

    def build(d: Draft) -> None:
        if not row.revoked:
            d.tx.keys[key_id] = new
            d.event("enroll-key-revoked", key_id=key_id)

    await state.change(build)
    return key_info(new)


def _check_address(address: str) -> None:
    try:
        ipaddress.ip_interface(address)
    except ValueError:
        raise field_error("address", f"{address!r} is not an address in CIDR form") from None


def find_key(state: ResponderState, token: str | None) -> EnrollKeyRow:
    """The usable enrollment key `token` is; 401 for no such key, 403 for one that cannot be
    used any more (the reason says why)."""
    if not token:
        raise ApiError(401, "an enrollment key is needed (Authorization: Bearer KEY)",
                       {"WWW-Authenticate": "Bearer"})
    h = sha256_hex(token)
    # Compared as hashes of a 256-bit random key: a timing difference reveals nothing usable.
    row = next((k for k in state.keys.values() if k.sha256 == h), None)
    if row is None:
        raise ApiError(401, "unknown enrollment key", {"WWW-Authenticate": "Bearer"})
    if row.revoked:
        raise ApiError(403, "this enrollment key was revoked")
    if state.clock() >= row.expires:
        raise ApiError(403, f"this enrollment key expired at {iso(row.expires)}")
    if not row.reusable and row.uses > 0:
        raise ApiError(403, "this one-time enrollment key was already used")
    return row


def _node(state: ResponderState, d: Draft, key: EnrollKeyRow, req: EnrollRequest,
          token_sha: str) -> dict[str, Any]:
    if key.name is not None and req.name != key.name:
        raise ApiError(403, f"this enrollment key is for the node named {key.name!r}")
    if req.name in d.worker_by_name or req.name in d.client_by_name:
        raise ApiError(409, f"the name {req.name!r} is taken")
    if any(n.public_key == req.public_key for n in (*d.fleet.workers, *d.fleet.clients)):
        raise ApiError(409, "this public key is already in use by another node")
    if key.kind == "worker":
        missing = [f for f in ("endpoint", "tunnel_address", "exporter")
                   if getattr(req, f) is None]
        if missing:
            raise field_error(missing[0], f"a worker must give {', '.join(missing)}")
        node = {"name": req.name, "public_key": req.public_key, "endpoint": req.endpoint,
                "tunnel_address": req.tunnel_address, "exporter": req.exporter,
                "token_sha256": token_sha}
        if req.capacity is not None:
            node["capacity"] = req.capacity
        if req.region is not None:
            node["region"] = req.region
        return node
    pool = d.settings.client_pool
    address = req.address or key.address
    if req.address is not None:
        _check_address(req.address)
    if address is None:
        if pool is None:
            raise field_error("address",
                              "no address given and the fleet has no responder.client_pool")
        address = fleetdoc.allocate_address(d.fleet, pool)
        if address is None:
            raise ApiError(409, f"the client pool {pool} is full")
    elif key.address is not None and address != key.address:
        raise ApiError(403, f"this enrollment key is for the address {key.address}")
    elif pool is not None and key.address is None and not fleetdoc.in_pool(address, pool):
        raise field_error("address", f"address {address} is outside the client pool {pool}")
    node = {"name": req.name, "public_key": req.public_key, "address": address,
            "token_sha256": token_sha}
    if req.routes:
        node["routes"] = list(req.routes)
    if req.workers is not None:
        node["workers"] = list(req.workers)
    return node


async def enroll(state: ResponderState, token: str | None, req: EnrollRequest) -> Enrolled:
    """A node joins: validated as part of the whole fleet, committed with the key's use."""
    secret = "wgfo-" + secrets.token_urlsafe(32)

    def build(d: Draft) -> Enrolled:
        key = find_key(state, token)  # under the write lock: a one-time key is used once
        node = _node(state, d, key, req, sha256_hex(secret))
        doc = state.fleet_doc
        try:
            fleet, data = fleetdoc.add_node(d.fleet, doc.data, key.kind, node,
                                            f"enrollment of {req.name}")
        except FleetError as exc:
            raise fleet_problems(exc) from None
        new = _new_doc(doc.version, data, [*doc.enrolled, fleetdoc.tag(key.kind, req.name)])
        d.set_fleet(fleet, new)
        d.tx.keys[key.id] = replace(key, uses=key.uses + 1)
        d.event("node-enrolled", worker=req.name if key.kind == "worker" else None,
                client=req.name if key.kind == "client" else None, node_kind=key.kind,
                key_id=key.id, version=new.version)
        out = Enrolled(kind=key.kind, name=req.name, token=secret)  # type: ignore[arg-type]
        if key.kind == "client":
            out.client = fleetdoc.view_of(fleet, fleet.client(req.name), new.version,
                                          state.epoch)
        else:
            w = fleet.worker(req.name)
            out.worker = fleetdoc.peers_of(fleet, w, new.version, state.epoch)
            out.listen_port, out.tunnel_address = w.listen_port, w.tunnel_address
        return out

    return await state.change(build)
