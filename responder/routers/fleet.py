"""The live fleet (admin token): `GET|PUT /v1/fleet` (apply, with `dry_run`),
`DELETE /v1/workers/{name}` (drain, then remove), `DELETE /v1/clients/{name}` (revoke),
enrollment keys `POST|GET /v1/enroll-keys`, `DELETE /v1/enroll-keys/{id}`; and `POST /v1/enroll`
(an enrollment key as the bearer token)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import TypeAdapter, ValidationError

from wg_failover.fleet import Fleet, FleetError, fleet_data
from wg_failover.wire import (
    Enrolled,
    EnrollKeyCreated,
    EnrollKeyInfo,
    EnrollKeyRequest,
    EnrollRequest,
    FleetDiff,
)

from ..apidoc import errors
from ..deps import State, require_admin
from ..http import ApiError, bearer_token, read_json_body, validation_detail
from ..intake import fleet as intake
from .alerts import body_doc

router = APIRouter(tags=["fleet"])

MAX_FLEET_BODY = 64 * 1024 * 1024  # a 100,000-client fleet is ~25 MB of JSON
# Bodies read by hand (responder/http.py), for /openapi.json (app.py adds them).
BODY_SCHEMAS = {"Fleet": TypeAdapter(Fleet), "EnrollKeyRequest": TypeAdapter(EnrollKeyRequest),
                "EnrollRequest": TypeAdapter(EnrollRequest)}


@router.get("/v1/fleet", dependencies=[Depends(require_admin)], responses=errors(401))
async def get_fleet(state: State) -> dict[str, Any]:
    """The served fleet (the same shape as the fleet file), its version and the joined nodes."""
    return {"version": state.fleet_doc.version, "epoch": state.epoch,
            "enrolled": state.fleet_doc.enrolled, "fleet": fleet_data(state.fleet)}


@router.put("/v1/fleet", dependencies=[Depends(require_admin)], openapi_extra=body_doc("Fleet"),
            responses=errors(400, 401, 413, 422, 503))
async def put_fleet(request: Request, state: State, dry_run: bool = False) -> FleetDiff:
    """Apply a fleet (the fleet file as JSON): the diff; `dry_run` changes nothing. Nodes that
    joined at run time are kept unless the fleet names them. Removed workers are drained first."""
    body = await read_json_body(request.receive, request.headers.get("content-length"),
                                MAX_FLEET_BODY)
    try:
        return await intake.apply_fleet(state, body, "PUT /v1/fleet", dry_run=dry_run)
    except FleetError as exc:
        raise intake.fleet_problems(exc) from None


@router.delete("/v1/workers/{name}", dependencies=[Depends(require_admin)],
               responses=errors(401, 404, 409, 422, 503))
async def delete_worker(state: State, name: str,
                        wait: Annotated[float, Query(ge=0, le=60)] = intake.REMOVE_WAIT
                        ) -> FleetDiff:
    """Drain the worker, wait (at most `wait` seconds, default 10) until its clients applied
    their new assignments, then remove it."""
    return await intake.remove_worker(state, name, wait)


@router.delete("/v1/clients/{name}", dependencies=[Depends(require_admin)],
               responses=errors(401, 404, 503))
async def delete_client(state: State, name: str) -> FleetDiff:
    """Revoke a client: no peer on any worker, its token and streams end."""
    return await intake.remove_client(state, name)


@router.post("/v1/enroll-keys", status_code=201, dependencies=[Depends(require_admin)],
             openapi_extra=body_doc("EnrollKeyRequest"),
             responses=errors(400, 401, 422, 503))
async def create_key(request: Request, state: State) -> EnrollKeyCreated:
    """A new enrollment key; the answer is the only time it is shown (kept as sha256)."""
    body = await read_json_body(request.receive, request.headers.get("content-length"))
    try:
        req = EnrollKeyRequest.model_validate(body)
    except ValidationError as exc:
        raise ApiError(422, validation_detail(exc)) from None
    return await intake.create_key(state, req)


@router.get("/v1/enroll-keys", dependencies=[Depends(require_admin)], responses=errors(401))
async def list_keys(state: State) -> list[EnrollKeyInfo]:
    """Every enrollment key, newest first (never the key itself)."""
    return [intake.key_info(k) for k in
            sorted(state.keys.values(), key=lambda k: k.created, reverse=True)]


@router.delete("/v1/enroll-keys/{key_id}", dependencies=[Depends(require_admin)],
               responses=errors(401, 404, 503))
async def revoke_key(state: State, key_id: str) -> EnrollKeyInfo:
    return await intake.revoke_key(state, key_id)


@router.post("/v1/enroll", status_code=201, openapi_extra=body_doc("EnrollRequest"),
             responses=errors(400, 401, 403, 409, 422, 503))
async def enroll(request: Request, state: State) -> Enrolled:
    """A node joins with an enrollment key: it registers its public key (its private key never
    leaves it) and gets its API token, shown once."""
    token = bearer_token(request.headers.get("authorization"))
    intake.find_key(state, token)  # 401/403 before the body is read
    body = await read_json_body(request.receive, request.headers.get("content-length"))
    try:
        req = EnrollRequest.model_validate(body)
    except ValidationError as exc:
        raise ApiError(422, validation_detail(exc)) from None
    return await intake.enroll(state, token, req)
