"""/docs for the stream front's routes, which FastAPI never sees (see `front.py`)."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from wg_failover.wire import Assignment, ClientEvent

from ..apidoc import errors
from ..models import Accepted


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


_NAME = {"name": "name", "in": "path", "required": True,
         "schema": {"type": "string", "title": "Name"}, "description": "the client's fleet name"}
# Before OpenAPI 3.2, a text/event-stream schema describes one event: its fields as the SSE
# parser sees them, `data` being the assignment's JSON.
_SSE_EVENT = {
    "type": "object", "required": ["id", "event", "data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$", "description": "the version"},
        "event": {"const": "assignment"},
        "data": {"type": "string", "contentMediaType": "application/json",
                 "contentSchema": _ref("Assignment")},
    },
}
_WHO = {"e401": "missing or wrong bearer token (the client's own, or admin)",
        "e404": "no such client (admin token only)"}
_EPOCH = {"name": "epoch", "in": "query", "required": False,
          "schema": {"type": "string", "pattern": "^[0-9a-f]{8,32}$"},
          "description": "the store epoch the follower last saw; when it is not the store's, "
                         "`after` / `Last-Event-ID` are ignored and the current assignment is "
                         "answered at once"}

PATHS: dict[str, dict[str, Any]] = {
    "/v1/clients/{name}/assignment": {"get": {
        "tags": ["clients"], "summary": "Assignment (long-poll)",
        "operationId": "assignment_v1_clients__name__assignment_get",
        "description": "Long-poll: with `after`, answers once version > after or `wait` seconds "
                       "passed (clamped to 60), 200 with the current assignment either way.",
        "parameters": [
            _NAME,
            {"name": "after", "in": "query", "required": False,
             "schema": {"type": "integer"}, "description": "answer once version > after"},
            {"name": "wait", "in": "query", "required": False,
             "schema": {"type": "number", "minimum": 0, "default": 0},
             "description": "seconds to wait (max 60)"},
            _EPOCH,
        ],
        "responses": {"200": _json("Assignment", "the client's assignment"),
                      **errors(401, 404, 422, 503, **_WHO,
                               e422="`after` is not an integer, `wait` not a number >= 0 or "
                                    "`epoch` not 8-32 lowercase hex digits")},
    }},
    "/v1/clients/{name}/assignment/stream": {"get": {
        "tags": ["clients"], "summary": "Assignment stream (SSE)",
        "operationId": "stream_v1_clients__name__assignment_stream_get",
        "description": "Server-Sent Events: `id: VERSION`, `event: assignment`, `data: JSON` "
                       "(an Assignment); resumes from the `Last-Event-ID` header (or "
                       "`last_event_id`); `: keepalive` every 15 s.",
        "parameters": [
            _NAME,
            {"name": "Last-Event-ID", "in": "header", "required": False,
             "schema": {"type": "integer"}, "description": "the last version received"},
            {"name": "last_event_id", "in": "query", "required": False,
             "schema": {"type": "integer"}, "description": "the same, as a query parameter"},
            _EPOCH,
        ],
        "responses": {"200": {"description": "the event stream; one event per new version",
                              "content": {"text/event-stream": {"schema": _SSE_EVENT}}},
                      **errors(400, 401, 404, 422, **_WHO,
                               e400="Last-Event-ID is not an assignment version",
                               e422="`epoch` is not 8-32 lowercase hex digits")},
    }},
    "/v1/clients/{name}/events": {"post": {
        "tags": ["clients"], "summary": "Client report",
        "operationId": "client_events_v1_clients__name__events_post",
        "description": "A switcher's report: probe results, a fast-path switch, an applied or "
                       "rejected assignment version.",
        "parameters": [_NAME],
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": _ref("ClientEvent")}}},
        "responses": {"202": _json("Accepted", "recorded"),
                      **errors(400, 401, 404, 413, 422, 429, 503, **_WHO,
                               e400="malformed JSON or Content-Length",
                               e429="past the client's report rate (--report-rate)")},
    }},
}

SCHEMAS: dict[str, TypeAdapter[Any]] = {
    "Assignment": TypeAdapter(Assignment),
    "ClientEvent": ClientEvent,
    "Accepted": TypeAdapter(Accepted),
}
# The report's `type` picks the variant, so it is required although each model has a default
# (which only serves the switcher, building reports in Python).
TAGGED = ("ProbeEvent", "SwitchEvent", "AppliedEvent", "RejectedEvent")


def require_tags(components: dict[str, Any]) -> None:
    for name in TAGGED:
        schema = components.get(name)
        if schema is not None and "type" not in schema.setdefault("required", []):
            schema["required"].insert(0, "type")
