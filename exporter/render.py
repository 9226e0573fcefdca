"""Page output that re-uses the unchanged parts of the previous scrape.

At 10,000 peers the per-peer info series (`wireguard_peer_info`,
`wireguard_peer_allowed_ips_info`) are nearly half the page and rarely change between scrapes
(an endpoint roams, a peer is added), while compressing the page for Prometheus (which asks for
gzip) costs more than writing it. So each big family's text, and its gzip-compressed form, are
kept while its samples equal the previous scrape's, in any order: wireguard-go lists its peers
in a new order at every `wg show` (a Go map), the kernel module in the same one. A re-used family
keeps the order of the scrape that wrote it; the order of a family's series means nothing to
Prometheus.

The gzip body is assembled the way pigz does it: every family (or piece of a big one) is an
independent raw-deflate segment ending in a full flush (byte-aligned, no back-references across
it), segments are concatenated, a final empty block closes the stream, and the gzip header and
CRC-32/size trailer wrap it. Any gzip reader sees one ordinary member.

Compressing is the only work the gzip page adds to the text page, so it runs where it costs
least: after all of the page's Python work, split into pieces that a small pool compresses in
parallel (zlib releases the GIL) while this thread computes the CRC. Compressing while the
Python work still ran cost more than it overlapped: every time a deflate call returned, its
thread waited for the GIL (up to the 5 ms switch interval) behind the rendering thread.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from .collector import Family, render_family

CACHE_MIN_SAMPLES = 1000  # small families are cheaper to redo than to compare
PARALLEL_MIN_BYTES = 1 << 16  # below this, handing a chunk to a thread costs more than it saves
# Pieces of a big family: small enough that the pool's threads finish together (a 10,000-peer
# counter family is ~1.1 MB), big enough that a piece's own deflate state costs nothing.
PIECE_BYTES = 1 << 18
POOL_THREADS = max(2, min(4, os.cpu_count() or 1))


def cacheable(f: Family) -> bool:
    # Only info families: counters and handshake times of a live worker change every scrape,
    # so caching them would cost comparisons and memory for nothing.
    return f.name.endswith("_info") and len(f.samples) >= CACHE_MIN_SAMPLES
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, mtime 0, OS unknown
FINAL_BLOCK = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS).flush(zlib.Z_FINISH)


def deflate_segment(data: bytes | memoryview) -> bytes:
    # Level 1: most of the size gain for a fraction of the CPU of higher levels.
    z = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    return z.compress(data) + z.flush(zlib.Z_FULL_FLUSH)


def pieces(data: bytes, size: int = PIECE_BYTES) -> list[memoryview]:
    """`data` in near-equal slices of at most `size` bytes (no copies)."""
    count = max(1, -(-len(data) // size))
    step = max(1, -(-len(data) // count))
    view = memoryview(data)
    return [view[i:i + step] for i in range(0, len(data), step)]


def gzip_wrap(segments: Sequence[bytes], crc: int, size: int) -> list[bytes]:
    return [GZIP_HEADER, *segments, FINAL_BLOCK,
            struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF)]


class _Entry:
    __slots__ = ("samples", "text", "deflated", "_set")

    def __init__(self, samples: list, text: bytes):
        self.samples = samples
        self.text = text
        self.deflated: bytes | None = None
        self._set: set | None = None

    def matches(self, samples: list) -> bool:
        """The same samples, in any order (an info family's series are unique)."""
        if samples == self.samples:  # the kernel's stable order: no set needed
            return True
        if len(samples) != len(self.samples):
            return False
        if self._set is None:
            self._set = set(self.samples)
        return self._set == set(samples)


class PageRenderer:
    """Text and gzip pages from families, re-using big families that did not change."""

    def __init__(self) -> None:
        self._cache: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=POOL_THREADS, thread_name_prefix="wgfo-gzip")

    def _entries(self, families: Sequence[Family]) -> Iterator[tuple[bytes, _Entry | None]]:
        for f in families:
            if not cacheable(f):
                self._cache.pop(f.name, None)
                text = render_family(f)
                if text:
                    yield text, None
                continue
            entry = self._cache.get(f.name)
            if entry is None or not entry.matches(f.samples):
                entry = _Entry(f.samples, render_family(f))
                self._cache[f.name] = entry
            yield entry.text, entry

    def text(self, families: Sequence[Family]) -> list[bytes]:
        with self._lock:
            return [text for text, _ in self._entries(families)]

    def gzip(self, families: Sequence[Family]) -> list[bytes]:
        with self._lock:
            # All Python work first (see the module doc), then only GIL-free work.
            texts = list(self._entries(families))
            # Per segment: its entry (to keep the result), and the segment, its pieces in the
            # pool, or the text to compress here once the pool has its work.
            parts: list[tuple[_Entry | None, bytes | list[Future[bytes]] | memoryview]] = []
            small: list[bytes] = []  # a run of small uncached texts: one segment
            for text, entry in texts:
                if entry is None and len(text) < PARALLEL_MIN_BYTES:
                    small.append(text)
                    continue
                if small:
                    parts.append((None, memoryview(b"".join(small))))
                    small = []
                if entry is not None and entry.deflated is not None:
                    parts.append((None, entry.deflated))
                elif len(text) >= PARALLEL_MIN_BYTES:
                    # Random public keys make the counter families the slow part to compress.
                    parts.append((entry, [self._pool.submit(deflate_segment, p)
                                          for p in pieces(text)]))
                else:
                    parts.append((entry, memoryview(text)))
            if small:
                parts.append((None, memoryview(b"".join(small))))
            crc = size = 0
            for text, _ in texts:
                crc = zlib.crc32(text, crc)
                size += len(text)
            segments = []
            for entry, part in parts:
                if isinstance(part, memoryview):
                    seg = deflate_segment(part)
                elif isinstance(part, list):
                    seg = b"".join(f.result() for f in part)
                else:
                    seg = part
                if entry is not None:
                    entry.deflated = seg
                segments.append(seg)
            return gzip_wrap(segments, crc, size)
