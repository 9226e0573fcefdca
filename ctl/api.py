"""The admin API as `ctl` calls it: one request, and every failure turned into one `CliError`
line that says what to check (the token file, the CA file, the URL), never a traceback.
Tokens are sent as bearer tokens and never appear in a message."""

from __future__ import annotations

import os
import ssl
import stat
import sys
from pathlib import Path
from typing import Any

import httpx

from wg_failover.cli import CliError

ENV_TOKEN_FILE = "WG_FAILOVER_TOKEN_FILE"


def read_token(path: str | None) -> str:
    """The admin token from `path`; a warning (not a refusal) when others may read the file,
    since refusing would break a working setup while the operator fixes the mode."""
    path = path or os.environ.get(ENV_TOKEN_FILE)
    if not path:
        raise CliError(f"no admin token: give --token-file FILE or set ${ENV_TOKEN_FILE}")
    p = Path(path)
    try:
        mode = p.stat().st_mode
        token = p.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or exc.__class__.__name__
        raise CliError(f"--token-file {path}: cannot read: {why}") from None
    if not token or any(c.isspace() for c in token):
        raise CliError(f"--token-file {path}: expected one token on one line")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        print(f"wg-failover ctl: warning: --token-file {path} is readable by group or others "
              f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it", file=sys.stderr)
    return token


def _verify_failed(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification error under an httpx error, if that is what it was."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, ssl.SSLCertVerificationError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _detail(resp: httpx.Response) -> str:
    """The responder's one-line reason (`{"detail": ...}`), else the status text."""
    try:
        detail = resp.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, str) and detail:
        return detail
    if isinstance(detail, list) and detail and all(isinstance(d, dict) for d in detail):
        # Field problems (422): one line each, the path without the leading "body".
        lines = []
        for d in detail[:50]:
            loc = [str(x) for x in d.get("loc") or [] if x != "body"]
            lines.append(f"  {'.'.join(loc) or '(top level)'}: {d.get('msg')}")
        return "the responder refused it:\n" + "\n".join(lines) + "\n"
    if detail:
        return str(detail)[:300]
    return resp.reason_phrase or f"HTTP {resp.status_code}"


class Api:
    """An admin-token client for one responder URL."""

    def __init__(self, url: str, token: str, verify: ssl.SSLContext | bool, timeout: float):
        self.url = url.rstrip("/")
        self._client = httpx.Client(base_url=self.url, verify=verify, timeout=timeout,
                                    headers={"Authorization": f"Bearer {token}"})

    def close(self) -> None:
        self._client.close()

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return self._call("GET", path, params)

    def post(self, path: str, body: Any = None) -> Any:
        return self._call("POST", path, None, body)

    def put(self, path: str, body: Any, params: dict[str, Any] | None = None) -> Any:
        return self._call("PUT", path, params, body)

    def delete(self, path: str, timeout: float | None = None) -> Any:
        return self._call("DELETE", path, None, None, timeout)

    def _call(self, method: str, path: str, params: dict[str, Any] | None, body: Any = None,
              timeout: float | None = None) -> Any:
        where = f"{self.url}{path}"
        try:
            resp = self._client.request(method, path, params=params, json=body,
                                        **({"timeout": timeout} if timeout else {}))
        except httpx.TimeoutException:
            raise CliError(f"cannot reach the responder at {where}: timed out "
                           "(--timeout)") from None
        except httpx.HTTPError as exc:
            bad = _verify_failed(exc)
            if bad is not None:
                raise CliError(f"cannot verify the responder's certificate at {self.url}: "
                               f"{bad.verify_message or bad.reason}; check --ca-file (the CA "
                               "that signed the responder's certificate)") from None
            raise CliError(f"cannot reach the responder at {where}: "
                           f"{exc.__class__.__name__}: {exc or 'no answer'}") from None
        if resp.status_code == 401:
            raise CliError("the responder refused the token (401): check --token-file "
                           "(the admin token)")
        if resp.status_code == 503:
            raise CliError(f"the responder cannot answer now (503): {_detail(resp)}")
        if resp.status_code >= 400:
            raise CliError(f"{_detail(resp)} ({resp.status_code})")
        try:
            return resp.json()
        except ValueError:
            raise CliError(f"{where}: the answer is not JSON (is this a wg-failover "
                           "responder?)") from None
