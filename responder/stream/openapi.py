"""/docs for the stream front's routes, which FastAPI never sees (see `front.py`)."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from wg_failover.wire import Assignment, ClientEvent

from ..models import Accepted


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


_NAME = {"name": "name", "in": "path", "required": True,
         "schema": {"type": "string", "title": "Name"}, "description": "the client's fleet name"}
_ERRORS = {
    "401": {"description": "missing or wrong bearer token (the client's own, or admin)"},
    "404": {"description": "no such client (admin token only)"},
}

PATHS: dict[str, dict[str, Any]] = {
    "/v1/clients/{name}/assignment": {"get": {
        "tags": ["clients"], "summary": "Assignment (long-poll)",
        "operationId": "assignment_v1_clients__name__assignment_get",
        "description": "Long-poll: with `after`, answers once version > after or `wait` seconds "
                       "passed (clamped to 60), 200 with the current assignment either way.",
        "parameters": [
            _NAME,
            {"name": "after", "in": "query", "required": False,
             "schema": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
             "description": "answer once version > after"},
            {"name": "wait", "in": "query", "required": False,
             "schema": {"type": "number", "minimum": 0, "default": 0},
             "description": "seconds to wait (max 60)"},
        ],
        "responses": {"200": _json("Assignment", "the client's assignment"), **_ERRORS,
                      "422": _json("HTTPValidationError", "Validation Error")},
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
        ],
        "responses": {"200": {"description": "the event stream",
                              "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                      "400": {"description": "Last-Event-ID is not a version"}, **_ERRORS},
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
                      "400": {"description": "malformed JSON"},
                      "413": {"description": "body larger than 1 MiB"}, **_ERRORS,
                      "422": _json("HTTPValidationError", "Validation Error"),
                      "503": {"description": "the store cannot commit; retry"}},
    }},
}

SCHEMAS: dict[str, TypeAdapter[Any]] = {
    "Assignment": TypeAdapter(Assignment),
    "ClientEvent": ClientEvent,
    "Accepted": TypeAdapter(Accepted),
}
