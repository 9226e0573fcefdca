"""Reading a server-sent event stream (WHATWG HTML, "server-sent events") with bounds.

Bytes in, whole events out, and never more than `max_line` bytes held for a line that has not
ended nor more than `max_event` bytes for an event: a stream that passes a bound raises
`SseTooLarge` (the caller drops the connection; a stream that sends one will send more): its
subclass `SseLineTooLong` or `SseEventTooLarge` says which bound. The one reader of every follower
of the responder (the worker agent, the switcher's assignment and view streams), in the core so
components need not import each other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_EOL = re.compile(rb"\r\n?|\n")


class SseTooLarge(ValueError):
    """A line or an event past its bound."""


class SseLineTooLong(SseTooLarge):
    """A line past `max_line` bytes (held or not: it is refused before it is all read)."""


class SseEventTooLarge(SseTooLarge):
    """An event whose data passes `max_event` bytes."""


@dataclass
class SseEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None


@dataclass
class SseReader:
    """Feed it the body's chunks as they come; it returns the events they complete. Comments
    (`: keepalive`) and events without data are dropped; `last_id` is the newest id seen."""

    max_line: int = 64 * 1024
    max_event: int = 256 * 1024
    last_id: str | None = None
    _buf: bytearray = field(default_factory=bytearray)
    _after_cr: bool = False
    _first: bool = True
    _event: str = ""
    _data: list[str] = field(default_factory=list)
    _size: int = 0
    _id: str | None = None

    def feed(self, chunk: bytes) -> list[SseEvent]:
        out: list[SseEvent] = []
        for line in self._lines(chunk):
            text = line.decode("utf-8", "replace")
            if self._first:
                text, self._first = text.removeprefix("\ufeff"), False
            ev = self._line(text)
            if ev is not None:
                out.append(ev)
        return out

    def _lines(self, chunk: bytes) -> list[bytes]:
        # A CR that ended the previous chunk and an LF opening this one are one line end.
        start = 1 if self._after_cr and chunk[:1] == b"\n" else 0
        self._after_cr = False
        out: list[bytes] = []
        for m in _EOL.finditer(chunk, start):
            piece = chunk[start:m.start()]
            if self._buf:
                self._buf += piece
                line, self._buf = bytes(self._buf), bytearray()
            else:
                line = piece
            if len(line) > self.max_line:
                raise SseLineTooLong(f"an SSE line longer than {self.max_line} bytes")
            out.append(line)
            start = m.end()
            if m.group() == b"\r" and start == len(chunk):
                self._after_cr = True
        if len(self._buf) + len(chunk) - start > self.max_line:
            self._buf = bytearray()
            raise SseLineTooLong(f"an SSE line longer than {self.max_line} bytes")
        self._buf += chunk[start:]
        return out

    def _line(self, line: str) -> SseEvent | None:
        if not line:
            if not self._data:
                self._event, self._id = "", None
                return None
            ev = SseEvent(self._event or "message", "\n".join(self._data), self._id)
            if self._id is not None:
                self.last_id = self._id
            self._event, self._data, self._size, self._id = "", [], 0, None
            return ev
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._event = value
        elif name == "data":
            self._size += len(value) + 1
            if self._size > self.max_event:
                self._event, self._data, self._size, self._id = "", [], 0, None
                raise SseEventTooLarge(f"an SSE event larger than {self.max_event} bytes")
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        return None
