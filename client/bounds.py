"""Limits on what the switcher takes from the wire, and how it speaks of what it refused.

Whatever the responder (or a broker, or anything posing as one) sends is read with a bound:
SSE lines and events (the core's reader, `wg_failover.sse`, with MAX_LINE and MAX_EVENT),
response bodies, MQTT payloads and JSON nesting. A message over a bound is
refused like any malformed one, in one log line without a traceback; a stream line over its bound
drops the connection (a stream that sends one will send more). Log lines about refused input are
rate-limited per kind, and whatever part of the input they show is escaped and truncated, so the
wire can neither fill the disk nor write into the terminal that reads the log.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wg_failover.wire import is_printable

# An assignment is a few hundred bytes; these leave room for a fleet of a thousand workers
# (backups) and still keep one hostile message from costing more than a fraction of a megabyte.
MAX_LINE = 64 * 1024  # one SSE line
MAX_EVENT = 256 * 1024  # one SSE event (all its data lines)
MAX_BODY = 256 * 1024  # one HTTP response body, one MQTT payload
LOG_EVERY = 10.0  # seconds between two log lines of the same kind of refused input


class WireInputError(ValueError):
    """Input from the wire the switcher refuses: malformed, too large or nested too deep."""


class BodyTooLarge(WireInputError):
    pass


def shown(text: object, limit: int = 120) -> str:
    """`text` as it may appear in a log line: as is when short and printable, else its repr()
    (escapes every control character), cut at `limit` characters."""
    s = str(text)
    if len(s) <= limit and is_printable(s):
        return s
    r = repr(s[:limit])
    return r + ("..." if len(s) > limit else "")


def loads_json(data: bytes | str, what: str = "message") -> Any:
    """json.loads for wire input: any failure, including nesting too deep for the parser's
    recursion (RecursionError), is a WireInputError with a short message."""
    try:
        if isinstance(data, bytes):
            data = data.decode("utf-8")
        return json.loads(data)
    except RecursionError:
        raise WireInputError(f"{what}: JSON nested too deep") from None
    except UnicodeDecodeError:
        raise WireInputError(f"{what}: not UTF-8") from None
    except ValueError as exc:  # JSONDecodeError's message names a position, never the input
        raise WireInputError(f"{what}: not JSON ({shown(exc, 80)})") from None


@dataclass
class _Seen:
    last: float
    suppressed: int = 0


class LogLimiter:
    """At most one log line per `every` seconds for each kind of message; the next line that
    gets through says how many were held back. Kinds are the caller's own constants, never
    text from the wire, so the table stays small."""

    def __init__(self, logger: logging.Logger, every: float = LOG_EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.every = every
        self.clock = clock
        self._seen: dict[str, _Seen] = {}

    def log(self, level: int, kind: str, msg: str, *args: Any) -> bool:
        """Log `msg % args` unless a `kind` line went out less than `every` seconds ago.
        Returns whether it was logged."""
        now = self.clock()
        seen = self._seen.get(kind)
        if seen is not None and now - seen.last < self.every:
            seen.suppressed += 1
            return False
        if seen is not None and seen.suppressed:
            msg += " (%d more like it in the last %.0f s)"
            args = (*args, seen.suppressed, now - seen.last)
        self._seen[kind] = _Seen(now)
        self.logger.log(level, msg, *args)
        return True

    def warning(self, kind: str, msg: str, *args: Any) -> bool:
        return self.log(logging.WARNING, kind, msg, *args)
