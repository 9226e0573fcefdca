"""One-shot setup for docker-compose.yml: a fleet, keys and tokens in DIR, unless already there.

Run by the compose service `init` (with the wg-failover image) into the `config` volume, which
the other services mount at /etc/wg-failover, where every part looks by default:
  fleet.yaml             the fleet (public keys and token hashes only; mode 0644)
  keys/NAME.key          private keys of the example worker and clients (0600)
  tokens/NAME.token      the clients' API tokens (0600)
  admin-token            for drain/undrain (0600)
  alert-token            Alertmanager's bearer token (0600, owned by uid 65534: the Alertmanager
                         image runs as nobody)
  read-token             Prometheus's token for the responder's http_sd (0600, uid 65534 too)
  tls/ca.crt             a CA made here, for the responder's certificate: give it to every
                         switcher (--ca-file) and to anything else that calls the responder
  tls/responder.crt      the responder's certificate: the names in WGFO_RESPONDER_NAMES
                         (default `responder`, `localhost`) and 127.0.0.1
  tls/responder.key      its key (0600, owned by uid 65534, the responder's user)
  postgres-password      for the optional `postgres` profile: the database's password (0600,
                         owned by uid 999, the postgres image's user)
  pgpass                 the same for the responder's libpq (PGPASSFILE; 0600, uid 65534)
  replicas/prometheus.yml, replicas/alertmanager.yml
                         with WGFO_REPLICAS (the other responder replicas' URLs as the master
                         reaches them, e.g. https://responder2:8080): the shipped configs
                         rendered (wg_failover.promconfig) for every replica: one http_sd config
                         and one Alertmanager webhook per replica. Written at every run, so
                         setting WGFO_REPLICAS later takes effect; the fleet's responder.urls
                         (RESPONDER_URL and the replicas) only when the fleet is made.
The CA's key is not kept: to add a name, delete tls/ and the fleet and run `init` again, or put
certificates from your own CA in tls/ (same names). Edit fleet.yaml afterwards (real endpoints,
more workers): `wg-failover check` validates it.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

from wg_failover import promconfig
from wg_failover.endpoints import split_urls
from wg_failover.fleet import dump_fleet
from wg_failover.lab import tlsca
from wg_failover.lab.gen import generate_fleet

NOBODY = 65534
POSTGRES_UID = 999  # the official postgres image's `postgres` user
WORKERS = int(os.environ.get("WGFO_WORKERS", "1"))
CLIENTS = int(os.environ.get("WGFO_CLIENTS", "2"))
# How clients and Prometheus reach the workers; compose service names by default.
WORKER_HOST = os.environ.get("WGFO_WORKER_HOST", "worker{n}")
RESPONDER_URL = os.environ.get("WGFO_RESPONDER_URL", "https://responder:8080")
# The names clients use for the responder (its certificate's DNS names); 127.0.0.1 is always in
# it, for Prometheus and Alertmanager beside it (the shipped configs say https://127.0.0.1:8080).
RESPONDER_NAMES = os.environ.get("WGFO_RESPONDER_NAMES",
                                 "responder,responder2,localhost").split(",")
# The other responder replicas (docker-compose.yml's `responder2` in the `postgres` profile),
# comma-separated, as the master's Prometheus and Alertmanager reach them; the first replica is
# beside them at https://127.0.0.1:8080, as the shipped configs say.
REPLICAS = split_urls(os.environ.get("WGFO_REPLICAS", ""))
SHIPPED = Path(__file__).resolve().parents[2] / "prometheus"  # /app/prometheus in compose
CA_DAYS, CERT_DAYS = 3650, 825


def make_tls(directory: Path) -> None:
    """A CA and the responder's certificate in DIR/tls; the CA's key is thrown away, so nobody
    can issue more with it."""
    tls = directory / "tls"
    ca = tlsca.make_ca(tls / "ca", name="wg-failover compose CA", days=CA_DAYS)
    crt, key = tlsca.issue(ca, tls, "responder", ips=["127.0.0.1"],
                           dns=[n.strip() for n in RESPONDER_NAMES if n.strip()],
                           days=CERT_DAYS)
    os.replace(ca.cert, tls / "ca.crt")
    for leftover in (ca.key, tls / "ca" / "ca.srl"):
        leftover.unlink(missing_ok=True)
    (tls / "ca").rmdir()
    for public in (tls / "ca.crt", crt):
        public.chmod(0o644)
    if os.geteuid() == 0:
        os.chown(key, NOBODY, NOBODY)  # the responder runs as 65534


def secret(path: Path, text: str, owner: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    if owner is not None:
        os.chown(path, owner, owner)


def render_replicas(directory: Path) -> None:
    """DIR/replicas/{prometheus,alertmanager}.yml for the first responder and REPLICAS (paths as
    the compose services mount them), from the shipped files; nothing without REPLICAS."""
    if not REPLICAS:
        return
    urls = ["https://127.0.0.1:8080", *REPLICAS]
    out = directory / "replicas"
    out.mkdir(parents=True, exist_ok=True, mode=0o755)
    files = {
        "prometheus.yml": promconfig.render_prometheus_config(
            responder_url=urls, alertmanager_url="http://127.0.0.1:9093",
            rules_dir="/etc/prometheus/rules", blackbox_address="127.0.0.1:9115",
            read_token_file="/etc/wg-failover/read-token",
            ca_file="/etc/wg-failover/tls/ca.crt", source=SHIPPED / "prometheus.yml"),
        "alertmanager.yml": promconfig.render_alertmanager_config(
            responder_url=urls, token_file="/etc/wg-failover/alert-token",
            ca_file="/etc/wg-failover/tls/ca.crt", source=SHIPPED / "alertmanager.yml"),
    }
    for name, text in files.items():
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out / name)
    print(f"wrote {out}/prometheus.yml and alertmanager.yml for the replicas {', '.join(urls)}")


def main(argv: list[str]) -> int:
    directory = Path(argv[0] if argv else "/etc/wg-failover")
    fleet_path = directory / "fleet.yaml"
    render_replicas(directory)
    if fleet_path.exists():
        print(f"{fleet_path} exists; nothing to do")
        return 0
    gen = generate_fleet(WORKERS, CLIENTS,
                         worker_host=lambda i: WORKER_HOST.format(n=i + 1),
                         responder_url=RESPONDER_URL)
    if REPLICAS:
        # Followers (agents, switchers) take every replica's URL from the fleet file.
        urls = split_urls([RESPONDER_URL, *REPLICAS])
        gen.fleet = gen.fleet.model_copy(update={"responder": gen.fleet.responder.model_copy(
            update={"urls": urls})})
    directory.mkdir(parents=True, exist_ok=True)
    make_tls(directory)
    for name, key in gen.private_keys.items():
        secret(directory / "keys" / f"{name}.key", key)
    for name, token in gen.tokens.items():
        if name == "admin":
            secret(directory / "admin-token", token)
        elif name in ("alert", "read"):  # for Alertmanager and Prometheus, both uid 65534
            secret(directory / f"{name}-token", token,
                   owner=NOBODY if os.geteuid() == 0 else None)
        else:
            secret(directory / "tokens" / f"{name}.token", token)
    # The optional PostgreSQL (docker-compose.yml, profile `postgres`): host, port, database and
    # user as that service and docs/deploy.md name them.
    password = secrets.token_urlsafe(24)
    root = os.geteuid() == 0
    secret(directory / "postgres-password", password, owner=POSTGRES_UID if root else None)
    secret(directory / "pgpass", f"postgres:5432:wgfo:wgfo:{password}",
           owner=NOBODY if root else None)
    tmp = fleet_path.with_suffix(".tmp")
    tmp.write_text(dump_fleet(gen.fleet))
    os.chmod(tmp, 0o644)
    os.replace(tmp, fleet_path)  # last: its presence means the rest is complete
    print(f"wrote {fleet_path}: {WORKERS} worker(s), {CLIENTS} client(s); keys and tokens "
          f"beside it (0600)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
