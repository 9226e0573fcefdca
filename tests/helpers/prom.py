"""The real Prometheus and Alertmanager with the shipped configs, and reading what they say.

    start_alertmanager(workdir, responder_url, token, ca_file=None) -> Server
        the shipped alertmanager.yml rendered to deliver to `responder_url` with the bearer
        `token` (written to workdir/alert-token, mode 0600), trusting `ca_file` for an https://
        responder, on the real Alertmanager
    start_prometheus(workdir, responder_url, alertmanager_url, *, read_token=None, **render)
        -> Server
        the shipped prometheus.yml and rules rendered for these addresses (`render`: the other
        arguments of promconfig.render_prometheus_config, e.g. ca_file), on the real
        Prometheus; `read_token` (the responder's, written to workdir/read-token, mode 0600) is
        what its http_sd sends: without it the responder lists no targets
    Server: .url, .proc, .log (its log file), .stop()
    scrape_interval_from_env() -> "1s", or None (the shipped interval) for
        WGFO_PROM_INTERVAL=shipped
    prom_query(prom_url, expr) -> list of result dicts (instant query)
    alerts(prom_url, alertname) -> the alerts of that name Prometheus holds (pending or firing)
    sample(text, series) -> the value of one series in a text exposition (0 when absent)
    worker_states(responder) -> {worker: state} from the responder's /v1/workers (read token)
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from wg_failover import promconfig
from wg_failover.lab import procs

from .responder import ResponderProc
from .wait import free_port


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        procs.stop_process(self.proc)


def _secret(path: Path, token: str) -> Path:
    path.write_text(token + "\n")
    path.chmod(0o600)  # as deployed: the token is a secret
    return path


def start_alertmanager(workdir: Path, responder_url: str, token: str,
                       ca_file: Path | str | None = None) -> Server:
    workdir.mkdir(parents=True, exist_ok=True)
    token_file = _secret(workdir / "alert-token", token)
    cfg = workdir / "alertmanager.yml"
    cfg.write_text(promconfig.render_alertmanager_config(responder_url=responder_url,
                                                         token_file=token_file,
                                                         ca_file=ca_file))
    port = free_port()
    proc = procs.start_alertmanager(cfg, workdir / "am", port)
    return Server(f"http://127.0.0.1:{port}", proc, workdir / "am" / "alertmanager.log")


def start_prometheus(workdir: Path, responder_url: str, alertmanager_url: str, *,
                     read_token: str | None = None, **render: Any) -> Server:
    workdir.mkdir(parents=True, exist_ok=True)
    if read_token is not None:
        render["read_token_file"] = _secret(workdir / "read-token", read_token)
    cfg = workdir / "prometheus.yml"
    cfg.write_text(promconfig.render_prometheus_config(
        responder_url=responder_url, alertmanager_url=alertmanager_url, **render))
    port = free_port()
    proc = procs.start_prometheus(cfg, workdir / "data", port)
    return Server(f"http://127.0.0.1:{port}", proc, workdir / "data" / "prometheus.log")


def scrape_interval_from_env() -> str | None:
    # The tests scrape every second to run fast; `shipped` measures what a deployment gets.
    interval = os.environ.get("WGFO_PROM_INTERVAL", "1s")
    return None if interval == "shipped" else interval


def prom_query(url: str, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=5)
    r.raise_for_status()
    return r.json()["data"]["result"]


def alerts(url: str, alertname: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{url}/api/v1/alerts", timeout=5)
    r.raise_for_status()
    return [a for a in r.json()["data"]["alerts"] if a["labels"]["alertname"] == alertname]


def sample(text: str, series: str) -> float:
    """The value of one series in a text exposition (0 when it is not there)."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            # The value follows the series; a label value may hold spaces, so never split those.
            return float(line[len(series) + 1:].split()[0])
    return 0.0


def worker_states(responder: ResponderProc) -> dict[str, str]:
    r = httpx.get(f"{responder.url}/v1/workers", headers=responder.headers("read"), timeout=5,
                  verify=responder.verify)
    r.raise_for_status()
    return {w["name"]: w["state"] for w in r.json()}
