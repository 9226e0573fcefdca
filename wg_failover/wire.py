"""The wire schema: what the responder answers and what its followers (switcher, agent, ctl) parse.

One set of pydantic models, so the two sides cannot drift apart:
- `Assignment`: a client's assignment (long-poll body, SSE `assignment` event data, MQTT retained
  message); `parse_assignment` is the followers' entry point and raises `AssignmentError`.
- `ClientEvent` (`ProbeEvent | SwitchEvent | AppliedEvent | RejectedEvent`, discriminated by
  `type`): what a switcher reports to `POST /v1/clients/{name}/events`.
- `WorkerStatus`: one entry of `GET /v1/workers`; `ClientStatus` (`GET /v1/clients/{name}`) and
  `EventsPage` (`GET /v1/events`) with their `EventRecord`s.

Every model ignores fields it does not know, so a newer responder can add fields without breaking
an older follower (and the other way round).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, TypeAdapter, ValidationError

WorkerName = Annotated[str, Field(min_length=1, max_length=63)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


# --------------------------------------------------------------------------- assignments


class AssignmentError(ValueError):
    """An assignment message a follower cannot use (wrong shape, wrong client)."""


class Assignment(_Wire):
    """A client's assignment: the active worker, the backups in order, and a version that only
    grows for this client."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    client: str
    worker: WorkerName
    version: StrictInt = Field(ge=0)
    backups: tuple[str, ...] = ()
    reason: str = ""
    since: str | None = None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def parse_assignment(data: Any, client: str | None = None) -> Assignment:
    """Validate one assignment object as the responder sends it; `client` is who we are (an
    assignment addressed to another client is refused, a missing `client` field is ours)."""
    if not isinstance(data, dict):
        raise AssignmentError("assignment is not a JSON object")
    who = data.get("client")
    if client is not None and who not in (None, client):
        raise AssignmentError(f"assignment is for client {who!r}, not {client!r}")
    fields = dict(data)
    fields["client"] = who or client or ""
    # Lenient about the descriptive fields (an odd reason never costs a failover), strict about
    # the ones a follower acts on.
    if not isinstance(fields.get("reason"), str):
        fields["reason"] = ""
    if not isinstance(fields.get("since"), str):
        fields["since"] = None
    if fields.get("backups") is None:
        fields["backups"] = ()
    try:
        return Assignment.model_validate(fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "assignment"
        raise AssignmentError(f"assignment {where}: {err['msg']}") from None


# --------------------------------------------------------------------------- client events


class ProbeResult(_Wire):
    up: bool
    rtt_ms: float | None = Field(default=None, ge=0)
    loss: float | None = Field(default=None, ge=0, le=1)


class ProbeEvent(_Wire):
    """The switcher's probe results for every worker it probes."""

    type: Literal["probe"] = "probe"
    workers: dict[str, ProbeResult]


class SwitchEvent(_Wire):
    """The switcher moved its routes on its own (fast path)."""

    type: Literal["switch"] = "switch"
    from_worker: WorkerName | None = None
    to_worker: WorkerName
    reason: str = ""
    elapsed_ms: float | None = None


class AppliedEvent(_Wire):
    """The switcher applied an assignment version."""

    type: Literal["applied"] = "applied"
    version: int
    worker: WorkerName | None = None


class RejectedEvent(_Wire):
    """The switcher refused an assignment version (its own probes see that worker dead)."""

    type: Literal["rejected"] = "rejected"
    version: int
    worker: WorkerName
    reason: str = ""


ClientEventModel = Annotated[ProbeEvent | SwitchEvent | AppliedEvent | RejectedEvent,
                             Field(discriminator="type")]
ClientEvent = TypeAdapter(ClientEventModel)


# --------------------------------------------------------------------------- views


class WorkerStatus(_Wire):
    """One worker as `GET /v1/workers` shows it."""

    name: str
    state: str
    draining: bool
    healthy: bool
    since: str
    capacity: int | None = None
    region: str | None = None
    assigned: int = 0
    exporter: str | None = None


class EventRecord(_Wire):
    """One entry of the responder's append-only event log."""

    id: int
    time: str  # ISO 8601 UTC, the same instant as `ts`
    ts: float
    kind: str
    worker: str | None = None
    client: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class EventsPage(_Wire):
    """`GET /v1/events`: a page of the event log; the next page is `after=last_id`."""

    events: list[EventRecord]
    last_id: int


class ProbeReport(_Wire):
    """A client's latest probe report, as the responder keeps it."""

    time: str
    workers: dict[str, ProbeResult]


class ClientStatus(_Wire):
    """`GET /v1/clients/{name}`: a client's assignment and what the responder knows about it."""

    assignment: Assignment
    unusable: list[str] = Field(default_factory=list)
    probes: ProbeReport | None = None
    events: list[EventRecord] = Field(default_factory=list)
    delivery: dict[str, Any] = Field(default_factory=dict)
