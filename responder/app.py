"""The responder's FastAPI application: routers, the stream front, error answers, lifespan.

    request ─► StreamFront (stream/front.py: long-poll, SSE, client reports)
                 └─► FastAPI ─► routers/ (alerts, workers, clients, ops) with deps.py
    both ─► intake/ (functions over a Draft) ─► ResponderState.change (state.py) ─► store/
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.routing import Match

from wg_failover.fleet import Fleet, FleetError, fleet_data, load_fleet

from . import apidoc
from .deps import single_query_values
from .http import ApiError, error_response, validation_detail
from .intake.fleet import apply_fleet
from .leader import LeaderGate, Leadership, Solo
from .models import AMPayload
from .routers import ROUTERS
from .routers.fleet import BODY_SCHEMAS
from .state import ResponderState
from .store import StoreError, is_postgres, open_store
from .stream import openapi as stream_openapi
from .stream.front import StreamFront

log = logging.getLogger("wg_failover.responder")

TOKENS = ("alert (POST /v1/alerts), admin (everything but the webhook), read (GET /v1/workers, "
          "/v1/targets), each client's own (its endpoints only). /metrics, /healthz and "
          "/readyz need none.")


async def reload_fleet(state: ResponderState, path: str) -> None:
    """SIGHUP: apply the fleet file again; an invalid file is logged and changes nothing."""
    try:
        fleet = load_fleet(path)
        diff = await apply_fleet(state, fleet_data(fleet), path)
    except FleetError as exc:
        log.error("SIGHUP: %s; the served fleet is unchanged", exc.render())
    except (StoreError, ApiError) as exc:
        log.error("SIGHUP: cannot apply %s: %s; the served fleet is unchanged", path, exc)
    else:
        log.info("SIGHUP: applied %s: %s", path, diff.model_dump_json(exclude_defaults=True))


def _allowed(app: FastAPI, scope: Any) -> list[str]:
    methods: set[str] = set()
    for route in app.routes:
        match, _ = route.matches({**scope, "method": "GET", "type": "http"})
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    # A route with GET also answers HEAD in Starlette.
    return sorted(methods | ({"HEAD"} if "GET" in methods else set()))


def create_app(fleet: Fleet, db: str, fleet_path: str | None = None) -> FastAPI:
    """The responder for `fleet`, its state in store `db`; the state starts with the app's
    lifespan and is `app.state.responder` from then on. With `fleet_path`, SIGHUP applies that
    file again."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = open_store(db)
        # PostgreSQL: a replica that leads or waits as a standby (leader.py); SQLite: always.
        role = Leadership(app, fleet, store, db) if is_postgres(db) else Solo(app, fleet, store,
                                                                              db)
        await role.start()
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        if fleet_path is not None:
            def hup() -> None:
                state = role.state
                if state is None:
                    log.warning("SIGHUP: a standby applies the fleet file when it leads")
                    return
                task = asyncio.ensure_future(reload_fleet(state, fleet_path))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            with contextlib.suppress(RuntimeError, ValueError):  # not the main thread (tests)
                loop.add_signal_handler(signal.SIGHUP, hup)
        try:
            yield
        finally:
            with contextlib.suppress(RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGHUP)
            await role.stop()
            store.close()

    app = FastAPI(
        title="wg-failover responder",
        middleware=[Middleware(LeaderGate), Middleware(StreamFront)],
        version="1",
        description="Alertmanager webhook in, worker state and client assignments out. "
                    "Bearer tokens: " + TOKENS,
        lifespan=lifespan,
        dependencies=[Depends(single_query_values)],
    )
    for router in ROUTERS:
        app.include_router(router)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StoreError)
    async def _store_error(_request: Request, exc: StoreError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_detail(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            # Starlette names only the first route of the path; a path served by several
            # routes (GET and DELETE /v1/clients/{name}) allows all their methods.
            headers = {**(headers or {}), "Allow": ", ".join(_allowed(app, request.scope))}
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code,
                            headers=headers)

    def openapi() -> dict[str, Any]:
        # Bodies read by hand (responder/http.py) and the stream front's routes are not
        # FastAPI's to describe: add their schemas and paths; then the error answers' schemas
        # and the bearer scheme (apidoc.py).
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            schema.setdefault("paths", {}).update(stream_openapi.PATHS)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            adapters = {"AMPayload": TypeAdapter(AMPayload), **stream_openapi.SCHEMAS,
                        **BODY_SCHEMAS}
            for name, adapter in adapters.items():
                js = adapter.json_schema(ref_template="#/components/schemas/{model}",
                                         schema_generator=apidoc.DocSchema)
                components.update(js.pop("$defs", {}))
                components[name] = js
            stream_openapi.require_tags(components)
            apidoc.finish(schema, TOKENS)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
