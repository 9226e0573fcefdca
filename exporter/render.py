"""Page output that re-uses the unchanged parts of the previous scrape.

At 10,000 peers the per-peer info series (`wireguard_peer_info`,
`wireguard_peer_allowed_ips_info`) are nearly half the page and rarely change between scrapes
(an endpoint roams, a peer is added), while compressing the page for Prometheus (which asks for
gzip) costs more than writing it. So each big family's text, and its gzip-compressed form, are
kept while its samples compare equal to the previous scrape's.

The gzip body is assembled the way pigz does it: every family is an independent raw-deflate
segment ending in a full flush (byte-aligned, no back-references across it), segments are
concatenated, a final empty block closes the stream, and the gzip header and CRC-32/size
trailer wrap it. Any gzip reader sees one ordinary member.
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from .collector import Family, render_family

CACHE_MIN_SAMPLES = 1000  # small families are cheaper to redo than to compare
PARALLEL_MIN_BYTES = 1 << 18  # below this, handing a chunk to a thread costs more than it saves


def cacheable(f: Family) -> bool:
    # Only info families: counters and handshake times of a live worker change every scrape,
    # so caching them would cost comparisons and memory for nothing.
    return f.name.endswith("_info") and len(f.samples) >= CACHE_MIN_SAMPLES
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, mtime 0, OS unknown
FINAL_BLOCK = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS).flush(zlib.Z_FINISH)


def deflate_segment(data: bytes) -> bytes:
    # Level 1: most of the size gain for a fraction of the CPU of higher levels.
    z = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    return z.compress(data) + z.flush(zlib.Z_FULL_FLUSH)


def gzip_wrap(segments: Sequence[bytes], crc: int, size: int) -> list[bytes]:
    return [GZIP_HEADER, *segments, FINAL_BLOCK,
            struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF)]


class _Entry:
    __slots__ = ("samples", "text", "deflated")

    def __init__(self, samples: list, text: bytes):
        self.samples = samples
        self.text = text
        self.deflated: bytes | None = None


class PageRenderer:
    """Text and gzip pages from families, re-using big families that did not change."""

    def __init__(self) -> None:
        self._cache: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="wgfo-gzip")

    def _entries(self, families: Sequence[Family]) -> Iterator[tuple[bytes, _Entry | None]]:
        for f in families:
            if not cacheable(f):
                self._cache.pop(f.name, None)
                text = render_family(f)
                if text:
                    yield text, None
                continue
            entry = self._cache.get(f.name)
            if entry is None or entry.samples != f.samples:
                entry = _Entry(f.samples, render_family(f))
                self._cache[f.name] = entry
            yield entry.text, entry

    def text(self, families: Sequence[Family]) -> list[bytes]:
        with self._lock:
            return [text for text, _ in self._entries(families)]

    def gzip(self, families: Sequence[Family]) -> list[bytes]:
        with self._lock:
            parts: list[tuple[_Entry | None, bytes | Future[bytes]]] = []
            crc = size = 0
            # zlib releases the GIL while it compresses: big families are compressed in the
            # pool while this thread writes the next one (random public keys make the counter
            # families the slow part of compressing).
            for text, entry in self._entries(families):
                crc = zlib.crc32(text, crc)
                size += len(text)
                if entry is not None and entry.deflated is not None:
                    parts.append((None, entry.deflated))
                elif len(text) >= PARALLEL_MIN_BYTES:
                    parts.append((entry, self._pool.submit(deflate_segment, text)))
                else:
                    parts.append((entry, deflate_segment(text)))
            segments = []
            for entry, part in parts:
                seg = part if isinstance(part, bytes) else part.result()
                if entry is not None:
                    entry.deflated = seg
                segments.append(seg)
            return gzip_wrap(segments, crc, size)
