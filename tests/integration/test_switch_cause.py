"""The responder counts clients' fast-path switches by cause (issue 18): the cause a switcher
reports (dead, gray-loss, gray-rtt), `unknown` from one older than the field, and an invalid one
refused with a reason (4xx), never counted."""

from __future__ import annotations

import httpx

from tests.helpers.responder import (  # noqa: F401  (the fixtures register by import)
    ResponderProc,
    responder_fixture,
)


def _report(p: ResponderProc, body: dict) -> int:
    r = httpx.post(p.url + "/v1/clients/c1/events", json=body, timeout=10, verify=p.verify,
                   headers={"Authorization": f"Bearer {p.gen.tokens['c1']}"})
    return r.status_code


def test_switch_events_are_counted_by_cause(responder):
    p = responder
    series = 'wgfo_client_switch_causes_total{{cause="{}"}}'
    base = {"type": "switch", "from_worker": "w1", "to_worker": "w2", "reason": "x"}
    assert _report(p, {**base, "cause": "gray-loss"}) == 202
    assert _report(p, {**base, "from_worker": "w2", "to_worker": "w3", "cause": "gray-rtt"}) == 202
    assert _report(p, {**base, "from_worker": "w3", "to_worker": "w1"}) == 202  # an older one
    assert _report(p, {**base, "cause": "bored"}) == 422
    assert p.metric(series.format("gray-loss")) == 1
    assert p.metric(series.format("gray-rtt")) == 1
    assert p.metric(series.format("unknown")) == 1
    page = httpx.get(p.url + "/metrics", timeout=10, verify=p.verify).text
    assert "bored" not in page
