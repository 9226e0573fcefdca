"""Generate a fleet (keys from the real `wg genkey`) for the lab, tests and benchmarks."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from wg_failover import wg
from wg_failover.fleet import Client, Fleet, ResponderSettings, Worker
from wg_failover.tokens import sha256_hex


@dataclass
class Generated:
    fleet: Fleet
    private_keys: dict[str, str]  # host name -> private key; kept out of the fleet on purpose
    tokens: dict[str, str] = field(default_factory=dict)  # client / "alert" / "admin" / "read"


def generate_fleet(
    workers: int,
    clients: int,
    *,
    worker_host: Callable[[int], str] = lambda i: f"198.18.0.{i + 10}",
    listen_port: int = 51820,
    exporter_port: int = 9586,
    routes: Sequence[str] = ("10.99.0.0/24",),
    capacity: int | None = None,
    responder_url: str = "http://127.0.0.1:8080",
    hold_down_seconds: float = 60,
    preempt: bool = False,
) -> Generated:
    """A fleet of `workers` and `clients` with fresh key pairs and API tokens.

    Worker i has tunnel address 10.66.0.(i+1) and endpoint worker_host(i):listen_port; client j
    has 10.66.1.(j+2)/32 and prefers the workers in rotated order, so the first choices spread.
    """
    keys: dict[str, str] = {}
    tokens: dict[str, str] = {}
    ws = []
    for i in range(workers):
        name = f"w{i + 1}"
        priv, pub = wg.keypair()
        keys[name] = priv
        ws.append(Worker(
            name=name, public_key=pub, endpoint=f"{worker_host(i)}:{listen_port}",
            tunnel_address=f"10.66.0.{i + 1}", exporter=f"{worker_host(i)}:{exporter_port}",
            capacity=capacity, region="lab",
        ))
    cs = []
    for j in range(clients):
        name = f"c{j + 1}"
        priv, pub = wg.keypair()
        keys[name] = priv
        token = secrets.token_urlsafe(24)
        tokens[name] = token
        order = [ws[(j + k) % workers].name for k in range(workers)]
        cs.append(Client(
            name=name, public_key=pub, address=f"10.66.1.{j + 2}/32", routes=list(routes),
            workers=order, token_sha256=sha256_hex(token),
        ))
    tokens["alert"] = secrets.token_urlsafe(24)
    tokens["admin"] = secrets.token_urlsafe(24)
    # Prometheus's http_sd reads the fleet's targets with it (GET /v1/targets).
    tokens["read"] = secrets.token_urlsafe(24)
    responder = ResponderSettings(
        url=responder_url,
        alert_token_sha256=sha256_hex(tokens["alert"]),
        admin_token_sha256=sha256_hex(tokens["admin"]),
        read_token_sha256=sha256_hex(tokens["read"]),
        hold_down_seconds=hold_down_seconds,
        preempt=preempt,
    )
    return Generated(Fleet(workers=ws, clients=cs, responder=responder), keys, tokens)
