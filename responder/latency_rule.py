"""The latency rule and one client's latency figures: the plain data latency placement hands the
planner (`planner.plan(latency=..., rule=...)`); `latency.py` derives them from probe reports."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class LatencyRule:
    """When a client moves for latency alone (fleet file `responder.latency_*`)."""

    min_gain_ms: float = 20.0
    min_gain_ratio: float = 0.25
    sustain_seconds: float = 60.0
    move_interval_seconds: float = 600.0
    batch: int = 10  # latency moves per plan


@dataclass(frozen=True)
class ClientLatency:
    """One client's latency figures, derived from its probe reports (responder/latency.py)."""

    rtt: Mapping[str, float]  # smoothed RTT in ms, for the workers it has figures for
    against: str | None = None  # the worker `better_since` compares with
    better_since: Mapping[str, float] = field(default_factory=dict)  # worker -> since, `now` clock
    last_move: float | None = None  # its last latency move
    # Its worker was given before the responder had its figures, which are new: it may settle
    # once on a faster worker by `settle_rule` (latency.py, placement.py).
    settle: bool = False


def gain_enough(cur_ms: float, new_ms: float, rule: LatencyRule) -> bool:
    """Is `new_ms` better than `cur_ms` by both bounds of the rule?"""
    gain = cur_ms - new_ms
    return gain >= rule.min_gain_ms and gain >= rule.min_gain_ratio * cur_ms



SETTLE_MIN_GAIN_MS = 2.0


def settle_rule(rule: LatencyRule) -> LatencyRule:
    """The rule for the one settling move of a client placed before its figures came: the same
    ratio and sustain time, without the absolute floor (20 ms by default). The floor stops a
    client from being moved back and forth for small gains; a client placed on a guess has not
    been placed by its figures yet, and this move happens once per blind placement."""
    return replace(rule, min_gain_ms=min(rule.min_gain_ms, SETTLE_MIN_GAIN_MS))
