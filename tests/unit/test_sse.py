"""The core SSE reader (wg_failover.sse) that every follower of the responder uses: the worker
agent and the switcher's assignment and view streams. Plain logic: bytes in, events out."""

from __future__ import annotations

import pytest

from wg_failover.sse import SseEventTooLarge, SseLineTooLong, SseReader, SseTooLarge


def events(reader: SseReader, *chunks: bytes) -> list[tuple[str, str | None, str]]:
    out = []
    for chunk in chunks:
        out += [(e.event, e.id, e.data) for e in reader.feed(chunk)]
    return out


def test_fields_comments_and_multiline_data():
    r = SseReader()
    stream = (b": keep-alive\nid: 7\nevent: assignment\ndata: {\"worker\":\ndata: \"w2\"}\n\n"
              b"\ndata: plain\n\n")
    assert events(r, stream) == [("assignment", "7", '{"worker":\n"w2"}'),
                                 ("message", None, "plain")]
    assert r.last_id == "7"


def test_an_event_without_data_is_dropped_and_resets_its_fields():
    # WHATWG: an empty data buffer dispatches nothing (the switcher's own parser used to hand
    # out such an event, which no source could use anyway).
    r = SseReader()
    assert events(r, b"event: assignment\nid: 3\n\n", b"data: x\n\n") == [
        ("message", None, "x")]
    assert r.last_id is None


def test_lf_cr_and_crlf_even_across_chunks_and_a_bom_at_the_start():
    r = SseReader(max_line=64)
    stream = b"\xef\xbb\xbfdata: a\r\n\r\ndata: b\r\rdata: c\n\n"
    got = []
    for i in range(len(stream)):  # one byte at a time: a CR and its LF in different chunks
        got += events(r, stream[i:i + 1])
    assert got == [("message", None, "a"), ("message", None, "b"), ("message", None, "c")]


def test_a_long_line_is_refused_without_holding_it():
    r = SseReader(max_line=16)
    assert r.feed(b"data: " + b"x" * 10) == []
    with pytest.raises(SseLineTooLong, match="an SSE line longer than 16 bytes"):
        r.feed(b"y")
    with pytest.raises(SseLineTooLong):
        SseReader(max_line=16).feed(b"data: " + b"z" * 17 + b"\n")
    r = SseReader(max_line=16)
    for _ in range(1000):  # short lines, as many as come, are fine
        assert events(r, b"data: 0123456789\n\n") == [("message", None, "0123456789")]
    assert issubclass(SseLineTooLong, SseTooLarge)  # callers that catch the base still do


def test_event_size_is_bounded_and_the_reader_starts_afresh():
    r = SseReader(max_line=100, max_event=100)
    for _ in range(9):
        r.feed(b"data: " + b"x" * 10 + b"\n")
    with pytest.raises(SseEventTooLarge, match="an SSE event larger than 100 bytes"):
        r.feed(b"data: " + b"x" * 10 + b"\n")
    assert events(r, b"data: ok\n\n") == [("message", None, "ok")]
    assert issubclass(SseEventTooLarge, SseTooLarge)
