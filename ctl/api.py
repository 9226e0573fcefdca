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
from wg_failover.endpoints import Endpoints

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
    """An admin-token client for one responder URL, or several (replicas: one leads, the others
    answer 503): a request that cannot connect, or meets a 503, goes to the next URL at once
    (wg_failover/endpoints.py); a change whose answer timed out is not sent again elsewhere,
    since it may have been applied."""

    def __init__(self, url: str | list[str], token: str, verify: ssl.SSLContext | bool,
                 timeout: float):
        self.endpoints = Endpoints([url] if isinstance(url, str) else url)
        self.url = self.endpoints.current()
        self._client = httpx.Client(verify=verify, timeout=timeout,
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

    def _send(self, method: str, path: str, params: dict[str, Any] | None, body: Any = None,
              timeout: float | None = None) -> Any:
        urls = self.endpoints.order()
        for n, url in enumerate(urls):
            last = n == len(urls) - 1
            self.url = url
            try:
                resp = self._client.request(method, url + path, params=params, json=body,
                                            **({"timeout": timeout} if timeout else {}))
            except (httpx.ConnectError, httpx.ConnectTimeout):
                if last:
                    raise
                self.endpoints.failed(url)
                continue
            except httpx.TransportError:
                if last or method != "GET":
                    raise
                self.endpoints.failed(url)
                continue
            if resp.status_code == 503 and not last:
                self.endpoints.failed(url)
                continue
            self.endpoints.ok(url)
            return resp
        raise AssertionError("unreachable: the last URL returns or raises")

    def _where(self, path: str) -> str:
        n = len(self.endpoints.urls)
        return f"{self.url}{path}" + (f" (and the {n - 1} other URLs before it)" if n > 1
                                      else "")

    def _call(self, method: str, path: str, params: dict[str, Any] | None,
              body: Any = None, timeout: float | None = None) -> Any:
        try:
            resp = self._send(method, path, params, body, timeout)
        except httpx.TimeoutException:
            where = self._where(path)
            raise CliError(f"cannot reach the responder at {where}: timed out "
                           "(--timeout)") from None
        except httpx.HTTPError as exc:
            where = self._where(path)
            bad = _verify_failed(exc)
            if bad is not None:
                raise CliError(f"cannot verify the responder's certificate at {self.url}: "
                               f"{bad.verify_message or bad.reason}; check --ca-file (the CA "
                               "that signed the responder's certificate)") from None
            raise CliError(f"cannot reach the responder at {where}: "
                           f"{exc.__class__.__name__}: {exc or 'no answer'}") from None
        where = f"{self.url}{path}"
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
