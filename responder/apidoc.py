"""What the OpenAPI document (/docs, /openapi.json) says each route answers besides success.

Generated clients and API fuzzers (tests/integration/test_responder_fuzz.py runs schemathesis
against the live responder) trust the document, so every status a route can answer is listed
with its real body and headers: the routers pass `responses=errors(...)`, and the stream front's
hand-written entries (stream/openapi.py) use the same function. `finish()` adds the bearer
security scheme to every operation that can answer 401.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from wg_failover.wire import _printable as wire_printable

from .models import PRINTABLE, ErrorMessage, ValidationErrors
from .models import _printable as models_printable

BEARER = "bearer"
SCHEMAS: dict[str, TypeAdapter[Any]] = {
    "ErrorMessage": TypeAdapter(ErrorMessage),
    "ValidationErrors": TypeAdapter(ValidationErrors),
}

_STRING = {"schema": {"type": "string"}}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "`Bearer`", **_STRING}},
    429: {"Retry-After": {"description": "seconds to wait before trying again", **_STRING}},
    503: {"Retry-After": {"description": "seconds to wait before trying again", **_STRING}},
}
_DESCRIPTIONS: dict[int, str] = {
    400: "malformed request: not JSON, a bad Content-Length or header",
    401: "missing or wrong bearer token",
    403: "the enrollment key cannot be used (revoked, expired, used, or for another node)",
    404: "no such worker or client",
    409: "a conflict with the fleet (a name, public key or address taken; the pool full)",
    413: "body larger than 1 MiB",
    422: "well-formed but not what the schema allows (the input is never echoed back)",
    429: "too many requests; retry after Retry-After seconds",
    503: "the state store cannot answer or commit; nothing changed, retry after Retry-After",
}


class DocSchema(GenerateJsonSchema):
    """Request schemas as /docs shows them, saying what the validation does: a string that must
    be printable text (a check in Python, not in the schema) gets the PRINTABLE pattern, so a
    generated client or a fuzzer knows that a control character is refused (422)."""

    def function_after_schema(self, schema: core_schema.AfterValidatorFunctionSchema
                              ) -> JsonSchemaValue:
        js = super().function_after_schema(schema)
        check = schema.get("function", {}).get("function")
        if check in (wire_printable, models_printable) and js.get("type") == "string":
            js.setdefault("pattern", PRINTABLE)
        return js

    def dict_schema(self, schema: core_schema.DictSchema) -> JsonSchemaValue:
        # A dict whose keys must match a pattern (worker names) refuses other keys; pydantic
        # says only `patternProperties`, which lets any other key through.
        js = super().dict_schema(schema)
        if "patternProperties" in js:
            js.setdefault("additionalProperties", False)
        return js


def json_body(schema: str, description: str) -> dict[str, Any]:
    """One response with a JSON body of the component schema `schema`."""
    return {"description": description, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def errors(*codes: int, **why: str) -> dict[int | str, dict[str, Any]]:
    """The documented error answers `codes`; `why` (e.g. `e404="no such client"`) replaces a
    code's generic description."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        schema = "ValidationErrors" if code == 422 else "ErrorMessage"
        entry = json_body(schema, why.get(f"e{code}", _DESCRIPTIONS[code]))
        if code in _HEADERS:
            entry["headers"] = _HEADERS[code]
        out[str(code)] = entry
    return out


def finish(schema: dict[str, Any], token_help: str) -> None:
    """Complete the generated document: the error schemas, the bearer scheme on every operation
    that answers 401, and no 422 that FastAPI assumed but no route answers."""
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name, adapter in SCHEMAS.items():
        js = adapter.json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(js.pop("$defs", {}))
        schemas[name] = js
    components.setdefault("securitySchemes", {})[BEARER] = {
        "type": "http", "scheme": "bearer", "description": token_help}
    for methods in schema.get("paths", {}).values():
        for op in methods.values():
            responses = op.get("responses", {})
            default_422 = responses.get("422", {}).get("content", {}).get(
                "application/json", {}).get("schema", {}).get("$ref", "")
            if default_422.endswith("/HTTPValidationError"):
                # FastAPI lists 422 for any route with a parameter; ours list it where a
                # parameter can in fact be refused.
                del responses["422"]
            if "401" in responses:
                op["security"] = [{BEARER: []}]
    for name in ("HTTPValidationError", "ValidationError"):  # in this order: one uses the other
        others = {k: v for k, v in schemas.items() if k != name}
        if f'/{name}"' not in json.dumps([schema.get("paths"), others]):
            schemas.pop(name, None)
