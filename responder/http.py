"""HTTP plumbing shared by the FastAPI routers and the stream front: API errors and their JSON
answers, bearer tokens, and request bodies read with a size limit and strict JSON.

Bodies are read by hand, not by FastAPI, for two answers its body parameters cannot give: 413
before a large body is buffered, and 400 (malformed JSON, which Alertmanager never retries)
apart from 422 (valid JSON of the wrong shape).
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.types import Receive

from .limits import store_errors
from .store import StoreError

log = logging.getLogger("wg_failover.responder")

MAX_BODY = 1024 * 1024


class ApiError(Exception):
    """An answer other than 2xx: status, `detail` (the JSON body's only key) and headers."""

    def __init__(self, status: int, detail: Any, headers: dict[str, str] | None = None):
        super().__init__(status, detail)
        self.status, self.detail, self.headers = status, detail, headers


def unauthorized(why: str = "missing or wrong bearer token") -> ApiError:
    return ApiError(401, why, {"WWW-Authenticate": "Bearer"})


def error_response(exc: ApiError | StoreError) -> JSONResponse:
    """The answer for an API error, or 503 when the store could not commit (nothing changed;
    Alertmanager and the followers retry a 5xx, and Retry-After says when)."""
    if isinstance(exc, StoreError):
        store_errors.error(f"store:{exc.reason}", "%s", exc)  # one line per reason per 10 s
        return JSONResponse({"detail": f"state store unavailable ({exc.reason}); retry"},
                            status_code=503, headers={"Retry-After": "1"})
    detail = exc.detail
    if exc.status == 422 and isinstance(detail, list):
        # Every 422 item has the documented shape (models.FieldError), whoever raised it.
        detail = [{"type": "value_error", **d} if isinstance(d, dict) else d for d in detail]
    return JSONResponse({"detail": detail}, status_code=exc.status, headers=exc.headers)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header value; None for anything else."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


async def read_json_body(receive: Receive, content_length: str | None,
                         limit: int = MAX_BODY) -> Any:
    """Read the request body (at most `limit` bytes) from ASGI `receive` and parse it."""
    if content_length is not None:
        try:
            length = int(content_length)
        except ValueError:
            raise ApiError(400, "bad Content-Length") from None
        if length > limit:
            raise ApiError(413, f"body larger than {limit} bytes")
    body = bytearray()
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ApiError(400, "the client went away mid-body")
        body += msg.get("body", b"")
        if len(body) > limit:
            raise ApiError(413, f"body larger than {limit} bytes")
        if not msg.get("more_body", False):
            return parse_json(body)


def parse_json(body: bytes | bytearray) -> Any:
    try:
        return json.loads(body, parse_constant=_no_constant, parse_float=_finite_float)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"malformed JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "malformed JSON: nested too deeply") from None


def _no_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON does not, and they would poison the event log.
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float | int:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:20]} is out of range")
    # JSON has one number type: 3.0 is the integer 3, as JSON Schema's "integer" (the schemas
    # in /docs) says; a float field takes an int all the same.
    return int(value) if value.is_integer() else value


def validation_detail(exc: ValidationError | RequestValidationError) -> list[dict[str, Any]]:
    """A validation error as `detail: [{"loc", "msg", "type"}]` (models.ValidationErrors; no
    input echoed back)."""
    errs = exc.errors(include_url=False, include_context=False, include_input=False) \
        if isinstance(exc, ValidationError) else exc.errors()
    return [{"loc": [p if isinstance(p, int) else _echo(str(p)) for p in e.get("loc", ())],
             "msg": _echo(str(e.get("msg", ""))), "type": str(e.get("type", "value_error"))}
            for e in errs]


def _echo(text: str, limit: int = 100) -> str:
    """Text from the request that an error answer names (a dict key in `loc`): bounded, and
    with lone surrogates replaced, which UTF-8 cannot encode (the answer would be a 500)."""
    text = text[:limit]
    return text if text.isascii() else text.encode("utf-8", "replace").decode("utf-8")
