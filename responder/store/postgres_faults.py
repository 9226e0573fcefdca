"""What PostgreSQL's failures mean for the responder (a reason from base.py for each psycopg
error, the one message for a damaged database), and the `--db` URL as messages may show it:
without its password."""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlsplit

from .base import DAMAGED, DISK_FULL, IO_ERROR, LOCKED, READ_ONLY, UNAVAILABLE, StoreCorrupt


def redact(url: str) -> str:
    """The URL without its password (in the user part or as a `password=` parameter): what logs,
    errors and answers may show. Works on the text as written, so several hosts
    (`h1:5432,h2:5432`, libpq's failover list) stay as they are."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return f"{url.split('://', 1)[0]}://(a URL that does not parse)"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, hosts = netloc.rsplit("@", 1)
        netloc = f"{userinfo.split(':', 1)[0]}@{hosts}"
    query = "&".join(p for p in parts.query.split("&")
                     if p and unquote(p.split("=", 1)[0]).lower() != "password")
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def secrets_in(url: str) -> list[str]:
    """The password as written in `url` and decoded, to scrub from any driver message."""
    out: set[str] = set()
    try:
        parts = urlsplit(url)
        if parts.password:
            out |= {parts.password, unquote(parts.password)}
        for k, v in parse_qsl(parts.query, keep_blank_values=True):
            if k.lower() == "password" and v:
                out.add(v)
    except ValueError:
        # Unparsable: scrub everything between "://" and the last "@" instead.
        rest = url.split("://", 1)[-1]
        if "@" in rest:
            out.add(rest.rsplit("@", 1)[0])
    return sorted((s for s in out if s), key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    for s in secrets:
        text = text.replace(s, "***")
    return text




def reason_of(exc: BaseException) -> str:
    """A psycopg error as one of base's reasons, by its SQLSTATE (None: the client's own,
    e.g. connection refused or lost, or no connection within the pool's timeout)."""
    state = getattr(exc, "sqlstate", None) or ""
    if state == "53100":
        return DISK_FULL
    if state == "25006":  # a read-only transaction: a hot standby, or read-only by setting
        return READ_ONLY
    if state in ("55P03", "40P01", "40001"):  # lock_timeout, deadlock, serialization
        return LOCKED
    if state in ("XX001", "XX002"):  # data or index corrupted
        return DAMAGED
    if state.startswith("58"):  # system errors: I/O
        return IO_ERROR
    return UNAVAILABLE


def damaged(where: str, detail: object) -> StoreCorrupt:
    return StoreCorrupt(
        f"the state store {where} is damaged ({str(detail)[:300]}). Restore it from a backup, "
        "or move it aside (rename the database, or point --db at a new empty one) to start a "
        "new store: it gets a new epoch, and the switchers take their current assignments "
        "from it")
