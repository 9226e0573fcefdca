"""The responder's API, one router per resource. The per-client hot paths (assignment long-poll
and stream, client reports) are not here: `responder/stream/front.py` serves them."""

from __future__ import annotations

from fastapi import APIRouter

from . import alerts, clients, fleet, ops, views, workers

ROUTERS: tuple[APIRouter, ...] = (ops.router, alerts.router, workers.router, clients.router,
                                  fleet.router, views.router)
