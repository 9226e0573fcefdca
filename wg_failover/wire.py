"""The wire schema: what the responder answers and what its followers (switcher, agent, ctl) parse.

One set of pydantic models, so the two sides cannot drift apart:
- `Assignment`: a client's assignment (long-poll body, SSE `assignment` event data, MQTT retained
  message); `parse_assignment` is the followers' entry point and raises `AssignmentError`.
- `ClientEvent` (`ProbeEvent | SwitchEvent | AppliedEvent | RejectedEvent`, discriminated by
  `type`): what a switcher reports to `POST /v1/clients/{name}/events`.
- `WorkerStatus`: one entry of `GET /v1/workers`; `ClientStatus` (`GET /v1/clients/{name}`) and
  `EventsPage` (`GET /v1/events`) with their `EventRecord`s; `ClientSummary`: one entry of
  `GET /v1/clients`.

Every model ignores fields it does not know, so a newer responder can add fields without breaking
an older follower (and the other way round).
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    TypeAdapter,
    ValidationError,
    field_serializer,
)

from .fleet import NAME_RE

# Every name on the wire is a fleet name ([a-z0-9-], at most 63): checked before anything stores
# or logs it, so a name can carry no newline, escape sequence or markup.
WorkerName = Annotated[str, Field(pattern=NAME_RE.pattern)]
Name = WorkerName
# Versions are JSON-safe integers: a store commits far fewer changes than 2**53 in its life, so a
# larger one is forged or corrupt, and accepting it would outrank every real version after it.
MAX_VERSION = 2**53 - 1
Version = Annotated[StrictInt, Field(ge=0, le=MAX_VERSION)]
# The store's epoch: made when its database is created. A new database (lost, replaced, restored)
# is a new epoch whose versions start again at 1; followers accept it and say so.
Epoch = Annotated[str, Field(pattern=r"^[0-9a-f]{8,32}$")]
MAX_TEXT = 200


def is_printable(text: str) -> bool:
    """No control characters (newlines, escapes) and no lone surrogates (which cannot be
    encoded as UTF-8, so a stored one would break every later read of it)."""
    return not any(unicodedata.category(c) in ("Cc", "Cs") for c in text)


def _printable(text: str) -> str:
    if not is_printable(text):
        raise ValueError("must be printable text (no control characters or lone surrogates)")
    return text


# Free text from a client (reasons): bounded and printable.
Text = Annotated[str, Field(max_length=MAX_TEXT), AfterValidator(_printable)]
Millis = Annotated[float, Field(ge=0, le=3_600_000, allow_inf_nan=False)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


# --------------------------------------------------------------------------- assignments


class AssignmentError(ValueError):
    """An assignment message a follower cannot use (wrong shape, wrong client)."""


class Assignment(_Wire):
    """A client's assignment: the active worker, the backups in order, and a version that only
    grows for this client."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    client: Annotated[str, Field(pattern=f"^$|{NAME_RE.pattern}")]
    worker: WorkerName
    version: Version
    backups: tuple[WorkerName, ...] = Field(default=(), max_length=1000)
    reason: str = ""
    since: str | None = None
    epoch: Epoch | None = None

    def to_json(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        if data["epoch"] is None:  # the shape older followers and caches know
            del data["epoch"]
        return data


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
    # Lenient about the descriptive fields (an odd reason never costs a failover, it is dropped
    # rather than logged), strict about the ones a follower acts on.
    for key, empty in (("reason", ""), ("since", None)):
        value = fields.get(key)
        if not isinstance(value, str) or len(value) > MAX_TEXT or not is_printable(value):
            fields[key] = empty
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
    rtt_ms: Millis | None = None
    loss: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)


class ProbeEvent(_Wire):
    """The switcher's probe results for every worker it probes."""

    type: Literal["probe"] = "probe"
    workers: dict[WorkerName, ProbeResult] = Field(max_length=1000)
    # The longest gap the switcher promises between two probe reports (it reports on a change
    # and at least this often): the responder keeps the vote fresh that long and a bit. None from
    # switchers that report every few seconds (older ones, `--once`): the responder's default,
    # and then left out, so the report keeps the shape older responders always got.
    heartbeat_s: float | None = Field(default=None, gt=0, le=300, allow_inf_nan=False,
                                      exclude_if=lambda v: v is None)


class SwitchEvent(_Wire):
    """The switcher moved its routes on its own (fast path)."""

    type: Literal["switch"] = "switch"
    from_worker: WorkerName | None = None
    to_worker: WorkerName
    reason: Text = ""
    elapsed_ms: Millis | None = None
    # Why the old worker was left: it stopped answering ("dead"), or answers badly (gray failure:
    # "gray-loss", "gray-rtt"). None from switchers older than the field.
    cause: Literal["dead", "gray-loss", "gray-rtt"] | None = None


class AppliedEvent(_Wire):
    """The switcher applied an assignment version."""

    type: Literal["applied"] = "applied"
    version: Version
    worker: WorkerName | None = None


class RejectedEvent(_Wire):
    """The switcher refused an assignment version (its own probes see that worker dead)."""

    type: Literal["rejected"] = "rejected"
    version: Version
    worker: WorkerName
    reason: Text = ""


ClientEventModel = Annotated[ProbeEvent | SwitchEvent | AppliedEvent | RejectedEvent,
                             Field(discriminator="type")]
ClientEvent = TypeAdapter(ClientEventModel)


class ReportAccepted(_Wire):
    """The answer to a client report (202)."""

    accepted: bool = True
    # The responder's advice (issue 15, additive): send unchanged probe reports no more often
    # than this, so the whole fleet's heartbeats fit the responder's report budget
    # (`--report-budget`); a switcher takes the longer of it and its own heartbeat. None from
    # responders older than the field.
    heartbeat_s: float | None = Field(default=None, gt=0, le=300, allow_inf_nan=False)


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
    # Issue 18, additive. `healthy` is the alerts' and drains' word; a suspect mark (a quorum of
    # its clients switched away, not yet confirmed by an alert) also keeps clients off it.
    suspect: bool = False
    suspect_until: str | None = None  # ISO 8601 UTC, while marked
    # Latency placement's figures for it: its clients' smoothed RTTs (fresh ones only).
    rtt_clients: int = 0
    rtt_ms_median: float | None = None
    rtt_ms_p90: float | None = None


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

    @field_serializer("assignment")
    def _assignment_json(self, assignment: Assignment) -> dict[str, Any]:
        return assignment.to_json()  # the shape every other answer and cache has


class ClientSummary(_Wire):
    """One client as `GET /v1/clients` lists it: its assignment in one line and the workers its
    probes rejected (`GET /v1/clients/{name}` has the probes and events)."""

    name: str
    worker: str
    version: int
    epoch: str | None = None
    reason: str = ""
    since: str | None = None
    unusable: list[str] = Field(default_factory=list)


# --------------------------------------------------------------------------- the live fleet
# The responder holds the fleet (DESIGN.md "The fleet is live"); every fleet change has a new
# `version` (only growing within the store's `epoch`). Followers get only their own view.

# A WireGuard public key as `wg pubkey` prints it (checked in full where the fleet takes it).
WgKey = Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$")]
Cidr = Annotated[str, Field(max_length=50, pattern=r"^[0-9A-Fa-f:.]+/[0-9]{1,3}$")]
NodeKind = Literal["client", "worker"]


class PeerEntry(_Wire):
    """One client as a peer of a worker's interface (what the agent sets with `wg set`)."""

    name: Name
    public_key: WgKey
    allowed_ips: list[Cidr]


class WorkerPeers(_Wire):
    """`GET /v1/workers/{name}/peers`: every client allowed on the worker, the agent's view."""

    worker: Name
    version: Version
    epoch: Epoch
    peers: list[PeerEntry]


class ViewWorker(_Wire):
    """A worker in a client's view: what the client's interface needs for its peer."""

    name: Name
    public_key: WgKey
    endpoint: str = Field(max_length=300)
    tunnel_address: str = Field(max_length=50)


class ClientView(_Wire):
    """`GET /v1/clients/{name}/view`: what one client needs to run, and nothing about any other
    client: its address, its routes, and the workers it may use in preference order."""

    client: Name
    version: Version
    epoch: Epoch
    address: Cidr
    routes: list[Cidr] = Field(default_factory=list)
    workers: list[ViewWorker]


class FleetDiff(_Wire):
    """What applying a fleet changes (`applied` false: a dry run, or nothing to change)."""

    applied: bool
    version: Version
    workers_added: list[str] = Field(default_factory=list)
    workers_removed: list[str] = Field(default_factory=list)
    workers_changed: list[str] = Field(default_factory=list)
    clients_added: list[str] = Field(default_factory=list)
    clients_removed: list[str] = Field(default_factory=list)
    clients_changed: list[str] = Field(default_factory=list)
    settings_changed: bool = False
    # Nodes that joined at run time are kept when the file does not name them.
    enrolled_kept: list[str] = Field(default_factory=list)

    def empty(self) -> bool:
        return not (self.workers_added or self.workers_removed or self.workers_changed
                    or self.clients_added or self.clients_removed or self.clients_changed
                    or self.settings_changed)


class EnrollKeyRequest(_Wire):
    """`POST /v1/enroll-keys`: a key for `wg-failover join`."""

    model_config = ConfigDict(extra="forbid", strict=True)
    kind: NodeKind
    reusable: bool = False
    expires_seconds: StrictInt = Field(default=86400, ge=1, le=365 * 86400)
    # A one-time key may fix the node's name and (clients) address.
    name: Name | None = None
    address: Cidr | None = None


class EnrollKeyInfo(_Wire):
    """An enrollment key as `GET /v1/enroll-keys` lists it (never the key itself)."""

    id: str
    kind: NodeKind
    reusable: bool
    created: str
    expires: str
    uses: int = 0
    revoked: bool = False
    name: str | None = None
    address: str | None = None


class EnrollKeyCreated(EnrollKeyInfo):
    """The answer to `POST /v1/enroll-keys`: the only time the key is shown."""

    key: str


class EnrollRequest(_Wire):
    """`POST /v1/enroll` with an enrollment key as bearer token: a node registers its public key
    (its private key never leaves it). Clients may name an address (else one from the pool);
    workers give what the fleet needs to reach and scrape them."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: Name
    public_key: WgKey
    address: Cidr | None = None
    routes: list[Cidr] = Field(default_factory=list, max_length=100)
    workers: list[Name] | None = Field(default=None, max_length=1000)
    endpoint: str | None = Field(default=None, max_length=300)
    tunnel_address: str | None = Field(default=None, max_length=50)
    exporter: str | None = Field(default=None, max_length=300)
    capacity: StrictInt | None = Field(default=None, ge=1, le=1_000_000)
    region: Text | None = None


class Enrolled(_Wire):
    """The answer to `POST /v1/enroll`: the node's API token (shown once; the responder keeps only
    its sha256) and its view."""

    kind: NodeKind
    name: Name
    token: str
    client: ClientView | None = None
    worker: WorkerPeers | None = None
    listen_port: int | None = None
    tunnel_address: str | None = None
