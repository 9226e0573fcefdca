"""Request and response models of the responder's own API. The ones its followers share (the
assignment, client events, worker and client status, the event log) are in `wg_failover.wire`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from wg_failover.wire import ReportAccepted, is_printable


class _Lenient(BaseModel):
    # Unknown fields are ignored (Alertmanager adds some now and then), but the known ones are
    # strict JSON types: `"truncatedAlerts": false` is not a count, as the schema in /docs says.
    model_config = ConfigDict(extra="ignore", strict=True)


def _printable(v: str) -> str:
    if not is_printable(v):
        raise ValueError("must be printable text (no control characters or lone surrogates)")
    return v


# The fields of an alert that go into the store as they are (the de-duplication key and the
# alerts holding a worker down): Alertmanager sends a 16-hex-digit fingerprint and an RFC 3339
# time (Go's, nanoseconds), so anything long or unprintable is not Alertmanager's and is refused
# (422). The patterns are in /docs too, so a client generated from it sends what we accept.
PRINTABLE = r"^[^\u0000-\u001f\u007f-\u009f]*$"
RFC3339 = (r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
           r"([Zz]|[+-][0-9]{2}:[0-9]{2})$")
Fingerprint = Annotated[str, Field(min_length=1, max_length=128, pattern=PRINTABLE),
                        AfterValidator(_printable)]
Time = Annotated[str, Field(pattern=RFC3339)]


# --------------------------------------------------------------------------- requests


class AMAlert(_Lenient):
    """One alert of an Alertmanager webhook (the fields the responder reads)."""

    status: Literal["firing", "resolved"]
    # Label and annotation values are free text: the responder reads `worker`, `action`,
    # `alertname` and the `summary` annotation and checks each as what it is before storing it
    # (responder/intake/alerts.py), so an odd value elsewhere never costs a failover.
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: Time
    endsAt: str | None = None
    fingerprint: Fingerprint | None = None


class AMPayload(_Lenient):
    """Alertmanager's webhook body, version 4."""

    version: Literal["4"] | None = None
    status: str | None = None
    groupKey: str | None = None
    truncatedAlerts: int = Field(default=0, ge=0, le=2**31)
    alerts: list[AMAlert]



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
    leader: bool = Field(default=True, description="this replica holds the leader lease and "
                         "serves (always true on SQLite; replicas on PostgreSQL: one leads)")
    epoch: str | None = Field(default=None, description="the state store's epoch")
    reason: str | None = Field(default=None, description="why not ready, e.g. `state store: "
                               "disk full`")


Accepted = ReportAccepted  # one wire schema: the switcher parses the answer with it


# --------------------------------------------------------------------------- errors


class ErrorMessage(BaseModel):
    """Every error answer but 422: what is wrong, in one line."""

    detail: str


class FieldError(BaseModel):
    """One problem of a request that does not fit the schema."""

    loc: list[str | int] = Field(description="where: body, query or header, then the path")
    msg: str
    type: str = Field(description="pydantic's error type, e.g. missing, int_parsing")


class ValidationErrors(BaseModel):
    """422: valid JSON (or parameters) of the wrong shape; the input is never echoed back."""

    detail: list[FieldError]
