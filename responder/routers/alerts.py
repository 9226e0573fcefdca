"""`POST /v1/alerts`: Alertmanager's webhook (version 4, alert token)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from ..apidoc import errors
from ..deps import State, alert_payload, require_alert_token
from ..intake.alerts import take_delivery
from ..models import AlertsAnswer, AMPayload
from ..store import StoreError

router = APIRouter(tags=["alertmanager"])


def body_doc(model: str) -> dict[str, Any]:
    """openapi_extra for a body read by hand (see responder/http.py): its schema in /docs."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model}"}}}}}


@router.post("/v1/alerts", openapi_extra=body_doc("AMPayload"),
             dependencies=[Depends(require_alert_token)],
             responses=errors(400, 401, 413, 422, 503))
async def receive_alerts(state: State,
                         payload: Annotated[AMPayload, Depends(alert_payload)]) -> AlertsAnswer:
    """Each alert is applied at most once (fingerprint + status + startsAt); one transaction
    per delivery. Answers 503 when the store cannot commit: Alertmanager then retries."""
    deliveries = state.metrics.deliveries
    try:
        done = await take_delivery(state, payload)
    except StoreError:
        deliveries.labels(outcome="error").inc()
        raise
    if done.duplicates:
        state.metrics.duplicate_alerts.inc(done.duplicates)
    for why, n in done.ignored.items():
        state.metrics.ignored_alerts.labels(why=why).inc(n)
    outcome = "duplicate" if payload.alerts and not done.applied else "applied"
    deliveries.labels(outcome=outcome).inc()
    return AlertsAnswer(status=outcome, alerts=len(payload.alerts), applied=done.applied,
                        duplicates=done.duplicates)
