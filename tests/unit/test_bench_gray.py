"""The pure parts of bench/failover.py and bench/gray.py (issue 18): the gap after a kill and
the switch line the gray bench waits for."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str):
    # bench/ is not a package: load each script as `python bench/NAME.py` would.
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, mod)
    spec.loader.exec_module(mod)
    return mod


fo = _load("failover")
gray = _load("gray")


def test_failover_gap_is_not_ended_by_an_echo_already_on_its_way_back():
    replies = [0.97, 0.98, 0.99, 1.0, 1.0004, 1.19, 1.2, 1.21, 1.5]
    assert abs(fo.gap_after_kill(replies, 1.0) - 0.1896) < 1e-9
    assert fo.gap_after_kill(replies, 1.4) is None  # nothing 0.2 s after it yet
    assert fo.gap_after_kill([1.1, 1.5], 1.0) is None  # nothing before the kill


def test_gray_bench_reads_both_kinds_of_switch_line():
    rx = re.compile(gray.SWITCH.format(w="w1"))
    m = rx.search("2026-12-01T22:40:01.123 INFO switch w1 -> w2 (gray): w1 lost 10 of 47 "
                  "probes (limit 10 of 100); w2 lost 0 of its last 50 [wg set 2.0 ms]\n")
    assert m and m.group(2, 3) == ("w2", "gray") and m.group(4).startswith("w1 lost 10")
    m = rx.search("2026-12-01T22:40:01.123 INFO switch w1 -> w3 (failover) after 191 ms: w1 "
                  "missed 4 probes (last reply 191 ms ago); w3 answers [wg set 2.0 ms]\n")
    assert m and m.group(2, 3) == ("w3", "failover")
    assert not rx.search("2026-12-01T22:40:01.123 INFO switch w1 -> w2 (assignment): x\n")
    assert abs(fo.log_time("2026-12-01T22:40:01.123") % 1 - 0.123) < 1e-6
