"""Latency placement inside one plan (issue 18): the planner's latency-aware steps, apart from
planner.py so each stays readable. Pure functions on the plan's working state.

- `estimates`: a client's RTT per worker, unmeasured workers by their region's best figure.
- `swap_for_latency`: in a batch of movers the spread chose the counts; clients swap
  destinations when both gain.
- `latency_moves`: a client on a usable worker moves for latency alone by the rule (large,
  lasting, not too often), or once to settle when it was placed before its figures came (the
  rule without its absolute floor).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .latency_rule import ClientLatency, LatencyRule, gain_enough, settle_rule
from .placement_base import (
    INF,
    R_LATENCY,
    R_SETTLE,
    ClientView,
    Plan,
    WorkerView,
    record_move,
    room,
    usable,
)


def estimates(rtt: Mapping[str, float], workers: Mapping[str, WorkerView]) -> dict[str, float]:
    """Measured RTTs, and for an unmeasured worker the best measured one in its region."""
    best: dict[str, float] = {}
    for n, ms in rtt.items():
        region = workers[n].region if n in workers else None
        if region is not None and ms < best.get(region, INF):
            best[region] = ms
    out = dict(rtt)
    for n, w in workers.items():
        if n not in out and w.region in best:
            out[n] = best[w.region]
    return out


def swap_for_latency(workers: Mapping[str, WorkerView], movers: Sequence[ClientView],
                     assign: dict[str, str | None], load: dict[str, int], out: Plan,
                     latency: Mapping[str, ClientLatency]) -> None:
    """In one batch of movers, two clients swap their new workers when that lowers their summed
    RTT: every worker keeps the count the spread gave it (so capacity and the spread hold), and
    clients sit on the faster of the workers the spread chose."""
    skip = set(out.unplaceable)
    ok = {c.name: c for c in movers if c.name in out.moves and c.name not in skip
          and (info := latency.get(c.name)) is not None and info.rtt}
    est = {n: estimates(latency[n].rtt, workers) for n in ok}
    dest: dict[str, list[str]] = {}
    for n in ok:
        dest.setdefault(assign[n] or "", []).append(n)
    names = sorted(dest)

    def gains(frm: str, to: str) -> list[tuple[float, str]]:
        return sorted((est[n][to] - est[n][frm], n) for n in dest[frm]
                      if frm in est[n] and to in est[n] and to in ok[n].prefs
                      and to != out.moves[n].from_worker and usable(ok[n], workers[to]))

    for i, x in enumerate(names):
        for y in names[i + 1:]:
            for (da, a), (db, b) in zip(gains(x, y), gains(y, x), strict=False):
                if da + db >= -1e-9:
                    break
                record_move(out, assign, load, a, x, y, R_LATENCY)
                record_move(out, assign, load, b, y, x, R_LATENCY)
                dest[x].remove(a)
                dest[y].remove(b)
                dest[x].append(b)
                dest[y].append(a)


def latency_moves(workers: Mapping[str, WorkerView], clients: Sequence[ClientView],
                  assign: dict[str, str | None], load: dict[str, int], out: Plan,
                  latency: Mapping[str, ClientLatency], rule: LatencyRule, now: float) -> None:
    """Up to `rule.batch` clients to a faster worker with room: by the rule (gain large, lasting
    and allowed now), or to settle (placed before its figures came: `settle_rule`, once)."""
    moved = 0
    for c in clients:
        if moved >= rule.batch:
            return
        info, cur = latency.get(c.name), assign[c.name]
        if info is None or cur is None or c.name in out.moves or info.against != cur \
                or cur not in info.rtt:
            continue
        if info.last_move is not None and now - info.last_move < rule.move_interval_seconds:
            continue
        # A client placed on a guess (preference order, before its figures came) settles once:
        # the same rule without its absolute floor.
        r, reason = (settle_rule(rule), R_SETTLE) if info.settle else (rule, R_LATENCY)
        cands = [(info.rtt[n], i, n) for i, n in enumerate(c.prefs)
                 if n != cur and n in workers and n in info.rtt and usable(c, workers[n])
                 and not workers[n].fled
                 and room(workers[n], load.get(n, 0)) > 0
                 and gain_enough(info.rtt[cur], info.rtt[n], r)
                 and (since := info.better_since.get(n)) is not None
                 and now - since >= r.sustain_seconds]
        if cands:
            to = min(cands)[2]
            if reason == R_SETTLE and gain_enough(info.rtt[cur], info.rtt[to], rule):
                reason = R_LATENCY  # the rule itself allows it: an ordinary latency move
            record_move(out, assign, load, c.name, cur, to, reason)
            moved += 1
