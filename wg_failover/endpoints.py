"""Several responder URLs (replicas, DESIGN.md "How it grows past one machine"): which one to
use now, moving on after a failure and coming back to the first after a while.

    eps = Endpoints(["https://r1:8080", "https://r2:8080"])   # or split_urls("a,b")
    url = eps.current()              # the one to use now
    eps.failed(url)                  # it refused to connect, timed out, or answered 5xx (503: a
                                     # standby): the next one becomes current
    eps.ok(url)                      # it answered: stay on it
    for url in eps.order(): ...      # every URL once, current first: one request that moves on

Only one replica leads and serves at a time, and the others answer 503: a follower that meets
a failure moves to the next URL at once (no back-off between URLs; its own back-off applies
when every URL has failed in a row, `all_failed()`). It stays on the URL that works, but after
`home_after` seconds away from the first URL it tries the first again, so followers gather on
the operator's preferred replica when it is back. URLs are kept as given (the order is the
operator's preference); duplicates are dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

HOME_AFTER = 300.0  # seconds away from the first URL before trying it again


def split_urls(values: str | Iterable[str]) -> list[str]:
    """URLs from one comma-separated text or several (each may hold commas): empty parts and
    duplicates dropped, trailing slashes removed, order kept."""
    parts = [values] if isinstance(values, str) else list(values)
    out: dict[str, None] = {}
    for text in parts:
        for url in text.split(","):
            url = url.strip().rstrip("/")
            if url:
                out[url] = None
    return list(out)


class Endpoints:
    def __init__(self, urls: Iterable[str], home_after: float = HOME_AFTER,
                 clock: Callable[[], float] = time.monotonic):
        self.urls = split_urls(urls)
        if not self.urls:
            raise ValueError("no responder URL")
        self.home_after = home_after
        self.clock = clock
        self._i = 0
        self._left_home: float | None = None  # when the first URL was left
        self._failures = 0  # in a row, over all URLs

    def current(self) -> str:
        if self._i and self._left_home is not None and \
                self.clock() - self._left_home >= self.home_after:
            self._i, self._left_home = 0, None  # try the first one again
        return self.urls[self._i]

    def failed(self, url: str | None = None) -> str:
        """`url` (default: the current one) failed; the URL to use next. A failure of a URL
        that is no longer current (an older request) moves nothing."""
        self._failures += 1
        if url is None or url.rstrip("/") == self.urls[self._i]:
            self._i = (self._i + 1) % len(self.urls)
            if self._i == 0:
                self._left_home = None
            elif self._left_home is None:
                self._left_home = self.clock()
        return self.urls[self._i]

    def ok(self, url: str | None = None) -> None:
        self._failures = 0

    def all_failed(self) -> bool:
        """Every URL failed in a row since the last success: time for the caller's back-off."""
        return self._failures >= len(self.urls)

    def order(self) -> list[str]:
        """Every URL once, the current one first, then the rest in the given order after it."""
        i = self.urls.index(self.current())
        return self.urls[i:] + self.urls[:i]
