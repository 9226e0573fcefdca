"""Request and response models of the responder's own API. The ones its followers share (the
assignment, client events, worker and client status, the event log) are in `wg_failover.wire`."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _check_time(v: str) -> str:
    try:
        datetime.fromisoformat(v)
    except ValueError:
        raise ValueError(f"{v!r} is not an RFC 3339 time") from None
    return v


# --------------------------------------------------------------------------- requests


class AMAlert(_Lenient):
    """One alert of an Alertmanager webhook (the fields the responder reads)."""

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: str
    endsAt: str | None = None
    fingerprint: str | None = None

    _t = field_validator("startsAt")(_check_time)


class AMPayload(_Lenient):
    """Alertmanager's webhook body, version 4."""

    version: str | None = None
    status: str | None = None
    groupKey: str | None = None
    truncatedAlerts: int = 0
    alerts: list[AMAlert]

    @field_validator("version")
    @classmethod
    def _v4(cls, v: str | None) -> str | None:
        if v is not None and v != "4":
            raise ValueError(f"webhook version {v!r} is not supported (expected \"4\")")
        return v


# --------------------------------------------------------------------------- responses


class AlertsAnswer(BaseModel):
    """`POST /v1/alerts`: `duplicate` when every alert of the delivery was applied before."""

    status: Literal["applied", "duplicate"]
    alerts: int
    applied: int
    duplicates: int


class TargetGroup(BaseModel):
    """One Prometheus http_sd target group: a worker's exporter."""

    targets: list[str]
    labels: dict[str, str]


class Health(BaseModel):
    ok: bool
    epoch: str | None = Field(default=None, description="the state store's epoch")


class Readiness(BaseModel):
    ready: bool
    epoch: str | None = Field(default=None, description="the state store's epoch")
    reason: str | None = Field(default=None, description="why not ready, e.g. `state store: "
                               "disk full`")


class Accepted(BaseModel):
    accepted: bool
