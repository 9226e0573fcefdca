"""Render the shipped Prometheus and Alertmanager configs for one deployment.

The files in `prometheus/` (prometheus.yml, rules/, alertmanager.yml) are the product. Tests, the
lab and a real deployment all run those same files; only addresses change. So the render
functions take the shipped text and swap exactly these things, nothing else:

- `render_prometheus_config(*, responder_url, alertmanager_url, rules_dir, scrape_interval=None,
  extra_static_exporters=(), blackbox_address=None, sd_refresh_interval=None,
  read_token_file=None, ca_file=None) -> str`:
  the responder's http_sd URL and scrape target, the Alertmanager target, the rule files'
  directory (absolute), optionally the global scrape/evaluation interval (the lab and tests use
  1 s), extra static exporter targets (`"host:port"` or `"worker=host:port"`), the blackbox
  exporter's address (the ICMP job is dropped when it is None), the file holding the
  responder's read token (http_sd's bearer `credentials_file`; None keeps the shipped path) and
  the CA that signed the responder's certificate (`tls_config.ca_file` of every section that
  talks to the responder; None keeps the shipped path). With an http:// responder_url those
  sections lose their `tls_config`. Several responder URLs (replicas; a list or
  comma-separated, one scheme and path for all): one http_sd config per URL in each job that
  discovers (Prometheus drops a target found twice with the same labels, so the union is every
  worker once, and a replica that is down or a standby keeps its last list) and every replica
  a target of the responder job (a standby's /metrics says `wg_failover_responder_leader 0`).
- `render_alertmanager_config(*, responder_url, token_file, ca_file=None) -> str`: the
  responder's webhook URL (`{responder_url}/v1/alerts`), the bearer token file and the CA (as
  above). Several responder URLs (replicas; a list or comma-separated): one webhook config each.
- `render_*_text(source, ...)`: the same on text, pure (no file I/O); `duration_seconds("5s")`.

Running the real binaries is the lab's job (`wg_failover.lab.procs`).
The shipped files live in `prometheus/` at the repository root (`SHIPPED_DIR`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from .endpoints import split_urls

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "prometheus"
PROMETHEUS_YML = SHIPPED_DIR / "prometheus.yml"
ALERTMANAGER_YML = SHIPPED_DIR / "alertmanager.yml"
BLACKBOX_YML = SHIPPED_DIR / "blackbox.yml"
RULES_DIR = SHIPPED_DIR / "rules"

EXPORTER_JOB = "wg-failover-exporter"
RESPONDER_JOB = "wg-failover-responder"
BLACKBOX_JOB = "wg-failover-blackbox"
RESPONDER_RECEIVER = "wg-failover-responder"

PROMETHEUS_BIN = "prometheus"
ALERTMANAGER_BIN = "prometheus-alertmanager"  # Debian's name for the alertmanager binary
BLACKBOX_BIN = "prometheus-blackbox-exporter"  # Debian's name for blackbox_exporter


class PromConfigError(ValueError):
    """A shipped file does not have the shape the renderer relies on, or bad arguments."""


# --------------------------------------------------------------------------- pure rendering


def _split_url(url: str, what: str) -> tuple[str, str, str]:
    """(scheme, host:port, path without trailing slash) of an http(s) URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise PromConfigError(f"{what}: {url!r} is not an http:// or https:// URL")
    return parts.scheme, parts.netloc, parts.path.rstrip("/")


_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(duration: str) -> float:
    """A simple Prometheus duration ("500ms", "5s", "1m") in seconds."""
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)", str(duration).strip())
    if not m:
        raise PromConfigError(f"{duration!r} is not a duration such as 1s, 500ms or 1m")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _job(config: dict[str, Any], name: str) -> dict[str, Any]:
    for job in config.get("scrape_configs") or []:
        if job.get("job_name") == name:
            return job
    raise PromConfigError(f"prometheus.yml has no scrape job {name!r}")


def _static_target(item: str) -> dict[str, Any]:
    worker, sep, address = item.rpartition("=")
    if not address or ":" not in address:
        raise PromConfigError(f"extra exporter {item!r}: write host:port or worker=host:port")
    entry: dict[str, Any] = {"targets": [address]}
    if sep:
        entry["labels"] = {"worker": worker}
    return entry


def render_prometheus_text(
    source: str,
    *,
    responder_url: str | Sequence[str],
    alertmanager_url: str,
    rules_dir: Path | str,
    scrape_interval: str | None = None,
    extra_static_exporters: Sequence[str] = (),
    blackbox_address: str | None = None,
    sd_refresh_interval: str | None = None,
    read_token_file: Path | str | None = None,
    ca_file: Path | str | None = None,
) -> str:
    """The shipped prometheus.yml text with this deployment's addresses swapped in (pure)."""
    config = yaml.safe_load(source)
    urls = split_urls(responder_url)
    if not urls:
        raise PromConfigError("responder_url: no URL")
    replicas = [_split_url(url, "responder_url") for url in urls]
    r_scheme, _, r_path = replicas[0]
    if any((scheme, path) != (r_scheme, r_path) for scheme, _, path in replicas):
        raise PromConfigError("responder_url: every replica URL needs the same scheme and path "
                              "(one scrape job scrapes them all)")
    a_scheme, a_host, a_path = _split_url(alertmanager_url, "alertmanager_url")

    if scrape_interval:
        limit = duration_seconds(scrape_interval)
        glob = config.setdefault("global", {})
        glob["scrape_interval"] = scrape_interval
        glob["evaluation_interval"] = scrape_interval
        # Prometheus refuses a scrape timeout longer than the interval; cap the shipped ones.
        for section in (glob, *(config.get("scrape_configs") or [])):
            if "scrape_timeout" in section and duration_seconds(section["scrape_timeout"]) > limit:
                section["scrape_timeout"] = scrape_interval
    config["rule_files"] = [str(Path(rules_dir).resolve() / "*.yml")]

    am: dict[str, Any] = {"scheme": a_scheme, "static_configs": [{"targets": [a_host]}]}
    if a_path:
        am["path_prefix"] = a_path
    config.setdefault("alerting", {})["alertmanagers"] = [am]

    def http_sd(job: dict[str, Any]) -> list[dict[str, Any]]:
        extra = _sd_extra(job, sd_refresh_interval)
        out = []
        for url in urls:  # one per replica: Prometheus drops the duplicate targets
            sd = {"url": f"{url}/v1/targets", **copy.deepcopy(extra)}
            if read_token_file is not None:
                auth = sd.setdefault("authorization", {"type": "Bearer"})
                auth["credentials_file"] = str(Path(read_token_file).resolve())
            _responder_tls(sd, r_scheme, ca_file)
            out.append(sd)
        return out

    exporter = _job(config, EXPORTER_JOB)
    exporter["http_sd_configs"] = http_sd(exporter)
    if extra_static_exporters:
        exporter["static_configs"] = [_static_target(t) for t in extra_static_exporters]
    else:
        exporter.pop("static_configs", None)

    responder = _job(config, RESPONDER_JOB)
    responder["scheme"] = r_scheme
    responder["metrics_path"] = f"{r_path}/metrics"
    responder["static_configs"] = [{"targets": [host for _, host, _ in replicas]}]
    _responder_tls(responder, r_scheme, ca_file)

    jobs = config["scrape_configs"]
    if blackbox_address is None:
        config["scrape_configs"] = [j for j in jobs if j.get("job_name") != BLACKBOX_JOB]
    else:
        blackbox = _job(config, BLACKBOX_JOB)
        blackbox["http_sd_configs"] = http_sd(blackbox)
        # The relabelling's last address rewrite points at the blackbox exporter.
        for rule in blackbox.get("relabel_configs") or []:
            if rule.get("target_label") == "__address__":
                rule["replacement"] = blackbox_address
    return yaml.safe_dump(config, sort_keys=False)


def _responder_tls(section: dict[str, Any], scheme: str, ca_file: Path | str | None) -> None:
    """The `tls_config` of a section that talks to the responder: the CA its certificate is
    checked against over https (the shipped path unless `ca_file`); none over plain http."""
    if scheme != "https":
        section.pop("tls_config", None)
    elif ca_file is not None:
        section.setdefault("tls_config", {})["ca_file"] = str(Path(ca_file).resolve())


def _sd_extra(job: dict[str, Any], refresh: str | None) -> dict[str, Any]:
    old = (job.get("http_sd_configs") or [{}])[0]
    out = {k: v for k, v in old.items() if k != "url"}
    if refresh:
        out["refresh_interval"] = refresh
    return out


def render_alertmanager_text(source: str, *, responder_url: str | Sequence[str],
                             token_file: Path | str, ca_file: Path | str | None = None) -> str:
    """The shipped alertmanager.yml text pointing at this responder, token file and CA (pure).
    Several responder URLs (replicas, comma-separated or a list): one webhook config per URL,
    made from the shipped one, so every alert goes to every replica (the leader acts on it, a
    standby answers 503, and a duplicate is harmless)."""
    config = yaml.safe_load(source)
    urls = split_urls(responder_url)
    if not urls:
        raise PromConfigError("responder_url: no URL")
    for receiver in config.get("receivers") or []:
        if receiver.get("name") == RESPONDER_RECEIVER:
            shipped = receiver.get("webhook_configs") or []
            if not shipped:
                break
            hooks = []
            for url in urls:
                scheme, _, _ = _split_url(url, "responder_url")
                for template in shipped:
                    hook = copy.deepcopy(template)
                    hook["url"] = f"{url}/v1/alerts"
                    auth = hook.setdefault("http_config", {}).setdefault("authorization", {})
                    auth["credentials_file"] = str(Path(token_file).resolve())
                    _responder_tls(hook["http_config"], scheme, ca_file)
                    hooks.append(hook)
            receiver["webhook_configs"] = hooks
            return yaml.safe_dump(config, sort_keys=False)
    raise PromConfigError(
        f"alertmanager.yml has no receiver {RESPONDER_RECEIVER!r} with webhook_configs")


def render_prometheus_config(
    *,
    responder_url: str | Sequence[str],
    alertmanager_url: str,
    rules_dir: Path | str = RULES_DIR,
    scrape_interval: str | None = None,
    extra_static_exporters: Sequence[str] = (),
    blackbox_address: str | None = None,
    sd_refresh_interval: str | None = None,
    read_token_file: Path | str | None = None,
    ca_file: Path | str | None = None,
    source: Path = PROMETHEUS_YML,
) -> str:
    """The shipped prometheus.yml (or `source`) rendered for a deployment; see the module doc."""
    return render_prometheus_text(
        source.read_text(), responder_url=responder_url, alertmanager_url=alertmanager_url,
        rules_dir=rules_dir, scrape_interval=scrape_interval,
        extra_static_exporters=extra_static_exporters, blackbox_address=blackbox_address,
        sd_refresh_interval=sd_refresh_interval, read_token_file=read_token_file,
        ca_file=ca_file)


def render_alertmanager_config(
    *, responder_url: str | Sequence[str], token_file: Path | str,
    ca_file: Path | str | None = None, source: Path = ALERTMANAGER_YML
) -> str:
    """The shipped alertmanager.yml (or `source`) rendered for a deployment."""
    return render_alertmanager_text(source.read_text(), responder_url=responder_url,
                                    token_file=token_file, ca_file=ca_file)
