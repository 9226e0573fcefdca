"""`wg-failover join`: the node side of enrollment (DESIGN.md "The fleet is live").

The private key is made here and written (0600) before the responder is contacted; only the
public key is sent. The responder answers the node's API token once (it keeps only its sha256):
it goes straight into DIR/token (0600) and is never printed. Then the node's wg-quick config
(DIR/IFACE.conf, 0600) and DIR/node.json (what `agent` and `switcher` need to find the rest).
A failed join changes nothing on the responder (every refusal is a 4xx with its reason) and
leaves only the private key, which the next `join` into the same DIR reuses.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from wg_failover import tls
from wg_failover.backoff import Backoff
from wg_failover.files import atomic_write
from wg_failover.fleet import parse_host_port
from wg_failover.wgquick import (
    KeyFileError,
    read_private_key,
    render_client_view,
    render_worker_interface,
)
from wg_failover.wire import Enrolled, EnrollRequest

from . import keys

IFACE_RE = re.compile(r"^[A-Za-z0-9_=+.-]{1,15}$")  # what wg-quick takes as an interface name
NODE_FILE = "node.json"
TRIES = 5  # 503 or no answer: tried this many times (with backoff) before giving up


class JoinError(Exception):
    """One line for the operator (exit 2)."""


@dataclass
class JoinOptions:
    url: str
    enroll_key_file: str
    name: str
    interface: str
    state_dir: str
    ca_file: str | None = None
    insecure_http: bool = False
    address: str | None = None
    routes: list[str] = field(default_factory=list)
    workers: list[str] | None = None
    endpoint: str | None = None
    tunnel_address: str | None = None
    exporter: str | None = None
    capacity: int | None = None
    region: str | None = None
    timeout: float = 10.0


def read_secret(path: str, what: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise JoinError(f"{what} {path}: cannot read: {type(exc).__name__}") from None
    if not text or any(c.isspace() for c in text) or len(text) > 512:
        raise JoinError(f"{what} {path}: expected one key on one line")
    return text


def write_private(path: Path, text: str) -> None:
    """A new file only this user reads (0600 from its creation, never wider for a moment)."""
    atomic_write(path, text)
    os.chmod(path, 0o600)


def private_key(state: Path) -> tuple[str, str, bool]:
    """(private, public, made now): the key of an earlier, failed join is used again."""
    path = state / "private.key"
    if path.exists():
        try:
            priv = read_private_key(path)
        except KeyFileError as exc:
            raise JoinError(str(exc)) from None
        return priv, keys.public_of(priv), False
    priv, pub = keys.keypair()
    write_private(path, priv + "\n")
    return priv, pub, True


def request_body(o: JoinOptions, public_key: str) -> dict[str, Any]:
    body: dict[str, Any] = {"name": o.name, "public_key": public_key}
    for key in ("address", "workers", "endpoint", "tunnel_address", "exporter", "capacity",
                "region"):
        if getattr(o, key) is not None:
            body[key] = getattr(o, key)
    if o.routes:
        body["routes"] = o.routes
    try:
        EnrollRequest.model_validate(body)  # the responder checks too; this names the flag
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "request"
        raise JoinError(f"--{where.split('.')[0].replace('_', '-')}: {err['msg']}") from None
    return body


def check(o: JoinOptions) -> None:
    """Everything that can be refused before a key is made or the responder is contacted."""
    if not IFACE_RE.match(o.interface):
        raise JoinError(f"--interface {o.interface!r}: 1-15 letters, digits or _=+.-")
    try:
        tls.check_responder_url(o.url, insecure_http=o.insecure_http, tls_files=bool(o.ca_file),
                                token="the enrollment key and the node's new token")
    except tls.TlsError as exc:
        raise JoinError(str(exc).replace("--responder", "URL", 1)) from None
    if o.endpoint:
        try:
            parse_host_port(o.endpoint)
        except ValueError as exc:
            raise JoinError(f"--endpoint: {exc}") from None
    worker_flags = [o.endpoint, o.tunnel_address, o.exporter]
    if any(worker_flags) and not all(worker_flags):
        raise JoinError("a worker gives --endpoint, --tunnel-address and --exporter together")
    request_body(o, "A" * 43 + "=")  # every field checked before a key is made
    state = Path(o.state_dir)
    if (state / NODE_FILE).exists():
        raise JoinError(f"{state / NODE_FILE}: this directory holds a node that joined already; "
                        "give another --state-dir (or remove it to join again)")


def enroll(o: JoinOptions, key: str, body: dict[str, Any],
           verify: ssl.SSLContext | bool) -> Enrolled:
    url = o.url.rstrip("/") + "/v1/enroll"
    headers = {"Authorization": f"Bearer {key}", "Accept-Encoding": "identity"}
    backoff = Backoff(base=0.5, cap=5.0)
    last = ""
    with httpx.Client(verify=verify, timeout=o.timeout) as http:
        for attempt in range(1, TRIES + 1):
            try:
                r = http.post(url, json=body, headers=headers)
            except httpx.HTTPError as exc:
                last = _describe(exc, o.ca_file)
                if "TLS" in last:
                    raise JoinError(f"{o.url}: {last}") from None
            else:
                if r.status_code in (200, 201):
                    try:
                        return Enrolled.model_validate_json(r.content)
                    except ValidationError:
                        raise JoinError(f"{o.url}: enrolled, but the answer does not parse; "
                                        "ask the operator to remove node "
                                        f"{o.name} and join again") from None
                reason = _detail(r)
                if r.status_code != 503 and r.status_code < 500:
                    raise JoinError(f"{o.url}: enrollment refused ({r.status_code}): {reason}")
                last = f"HTTP {r.status_code}: {reason}"
            if attempt < TRIES:
                time.sleep(backoff.next())
    raise JoinError(f"{o.url}: no enrollment after {TRIES} tries ({last}); try again later "
                    "(the same private key is used)")


def _detail(r: httpx.Response) -> str:
    """The responder's reason: `detail` as text, or its field problems as `field: message`."""
    with contextlib.suppress(ValueError, AttributeError):
        detail = r.json().get("detail")
        if isinstance(detail, str):
            return detail[:300]
        if isinstance(detail, list) and all(isinstance(d, dict) for d in detail):
            parts = []
            for d in detail[:5]:
                loc = ".".join(str(x) for x in d.get("loc", []) if x != "body")
                parts.append(f"{loc}: {d.get('msg', '')}" if loc else str(d.get("msg", "")))
            return "; ".join(parts)[:300]
        if detail is not None:
            return json.dumps(detail)[:300]
    return r.reason_phrase or "no reason given"


def _describe(exc: BaseException, ca_file: str | None) -> str:
    seen: BaseException | None = exc
    for _ in range(8):
        if isinstance(seen, ssl.SSLCertVerificationError):
            against = f"--ca-file {ca_file}" if ca_file else "the system CAs"
            return f"TLS: the responder's certificate does not verify against {against}"
        if isinstance(seen, ssl.SSLError):
            return f"TLS: {seen.reason or seen}"
        if seen is None:
            break
        seen = seen.__cause__ or seen.__context__
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def join(o: JoinOptions) -> dict[str, Any]:
    """Enroll this node; returns what was written (never the token or the private key)."""
    check(o)
    key = read_secret(o.enroll_key_file, "--enroll-key-file")
    try:
        verify: ssl.SSLContext | bool = (tls.client_context(o.ca_file)
                                         if o.url.startswith("https") else True)
    except tls.TlsError as exc:
        raise JoinError(str(exc)) from None
    # node.json names files by absolute paths: agent and switcher read it from anywhere.
    state = Path(o.state_dir).absolute()
    try:
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
        priv, pub, _made = private_key(state)
    except OSError as exc:
        raise JoinError(f"--state-dir {state}: {exc.strerror or exc}") from None
    body = request_body(o, pub)
    got = enroll(o, key, body, verify)
    files = {"private_key": state / "private.key", "token": state / "token",
             "config": state / f"{o.interface}.conf", "node": state / NODE_FILE}
    try:
        write_private(files["token"], got.token + "\n")
        if got.kind == "client":
            if got.client is None:
                raise JoinError(f"{o.url}: enrolled client {got.name}, but the answer has no "
                                "view to write a config from")
            config = render_client_view(got.client, priv)
            where = {"address": got.client.address,
                     "workers": [w.name for w in got.client.workers]}
        else:
            tunnel = got.tunnel_address or o.tunnel_address
            port = got.listen_port or (parse_host_port(o.endpoint).port if o.endpoint else None)
            if not tunnel or not port:
                raise JoinError(f"{o.url}: enrolled worker {got.name}, but neither the answer "
                                "nor the flags give its tunnel address and listen port")
            peers = got.worker.peers if got.worker else []
            config = render_worker_interface(got.name, tunnel, port, priv, peers)
            where = {"tunnel_address": tunnel, "listen_port": port, "peers": len(peers)}
        write_private(files["config"], config)
        node = {"name": got.name, "kind": got.kind, "responder": o.url,
                "interface": o.interface, "token_file": str(files["token"]),
                "config": str(files["config"]),
                "ca_file": str(Path(o.ca_file).absolute()) if o.ca_file else None,
                "public_key": pub}
        write_private(files["node"], json.dumps(node, indent=1) + "\n")
    except OSError as exc:
        raise JoinError(f"enrolled as {got.kind} {got.name}, but writing into {state} failed "
                        f"({exc.strerror or exc}); what is missing cannot be fetched again: ask "
                        "the operator to remove the node, then join again") from None
    return {"kind": got.kind, "name": got.name, "public_key": pub, **where,
            "files": {k: str(v) for k, v in files.items()}}
