"""Benchmark MQTT fan-out: one failover that updates N client topics, until all are readable.

    .venv/bin/python bench/mqtt_fanout.py [--clients 10000] [--rounds 3]

Runs a real mosquitto on 127.0.0.1 (free port, generated config, no persistence) and the real
`wg-failover responder` (uvicorn, SQLite in a temp dir) with `responder.mqtt` set, as
subprocesses. Draining (then undraining) a worker gives every client a new assignment version
(moved clients a new worker, the others new backups), so N retained topics are updated. Prints
per round:
  - live: drain request sent -> the last of the N new versions received by a subscriber that was
    already subscribed to `wg-failover/clients/+/assignment` (the broker stores a retained message
    before it forwards it, so this is also when the last retained message became readable);
  - retained read: a fresh subscriber connecting afterwards -> it holds all N newest retained
    messages (what a fleet of switchers reconnecting at once would need);
then once: the broker restarted (no persistence: every retained message gone) -> all N retained
again, from the responder's republish on reconnect.
Every wait is bounded; mosquitto and the responder are stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers.mosquitto import Mosquitto, Subscriber  # noqa: E402
from tests.helpers.responder import ResponderProc, make_fleet  # noqa: E402
from wg_failover.fleet import MqttSettings  # noqa: E402
from wg_failover.lab.gen import Generated  # noqa: E402

WILDCARD = "wg-failover/clients/+/assignment"


def versions(sub: Subscriber) -> dict[str, int]:
    with sub.cond:
        items = list(sub.latest.items())
    return {t: json.loads(p)["version"] for t, p in items}


def wait_all_newer(sub: Subscriber, before: dict[str, int], n: int,
                   timeout: float) -> float | None:
    """Monotonic arrival time of the message that made all `n` topics newer than `before`."""
    done: set[str] = set()
    seen = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sub.cond:
            new = sub.messages[seen:]
        seen += len(new)
        for topic, payload, _retain, t in new:
            if json.loads(payload)["version"] > before.get(topic, 0):
                done.add(topic)
                if len(done) >= n:
                    return t
        time.sleep(0.02)
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=120.0, help="per wait, seconds")
    args = ap.parse_args()
    n = args.clients
    with tempfile.TemporaryDirectory(prefix="wgfo-mqtt-bench-") as tmp:
        work = Path(tmp)
        broker = Mosquitto.start(work / "mqtt", max_queued=10 * n)
        gen = make_fleet(3, n, prefs="same")
        fleet = gen.fleet.model_copy(update={"responder": gen.fleet.responder.model_copy(
            update={"mqtt": MqttSettings(url=broker.url)})})
        proc = None
        subs: list[Subscriber] = []
        try:
            t = time.monotonic()
            proc = ResponderProc.start(work / "responder", Generated(fleet, {}, gen.tokens),
                                       timeout=120)
            live = Subscriber(broker, WILDCARD)
            subs.append(live)
            if not live.wait_for(lambda s: len(s.latest) >= n, args.timeout):
                print(f"initial state incomplete: {len(live.latest)}/{n}\n{proc.log()[-2000:]}")
                return 1
            print(f"{n} clients: responder start -> all {n} retained: "
                  f"{time.monotonic() - t:.2f} s")
            live_s, fresh_s = [], []
            workers = [w.name for w in fleet.workers]
            for r in range(args.rounds):
                before = versions(live)
                # Drain w1, then undrain it: each changes every client's worker or backups.
                op = "drain" if r % 2 == 0 else "undrain"
                t0 = time.monotonic()
                resp = httpx.post(f"{proc.url}/v1/workers/{workers[0]}/{op}",
                                  headers=proc.headers("admin"), timeout=60)
                resp.raise_for_status()
                answered = time.monotonic() - t0
                last = wait_all_newer(live, before, n, args.timeout)
                if last is None:
                    print(f"round {r}: not all updated within {args.timeout} s")
                    return 1
                live_s.append(last - t0)
                t1 = time.monotonic()
                fresh = Subscriber(broker, WILDCARD)
                try:
                    ok = wait_all_newer(fresh, before, n, args.timeout) is not None
                finally:
                    fresh.close()
                if not ok:
                    print(f"round {r}: fresh subscriber did not read all {n}")
                    return 1
                fresh_s.append(time.monotonic() - t1)
                print(f"round {r + 1}: {op} {workers[0]} -> last of {n} topics updated (live "
                      f"subscriber) {live_s[-1]:.2f} s; fresh subscriber read all {n} retained "
                      f"in {fresh_s[-1]:.2f} s (the responder answered the drain after "
                      f"{answered:.2f} s: re-plan + SQLite commit)")
            print(f"median over {args.rounds} rounds: live {statistics.median(live_s):.2f} s, "
                  f"retained read {statistics.median(fresh_s):.2f} s")

            before = versions(live)
            broker.stop()
            t2 = time.monotonic()
            broker.start_again()
            deadline = t2 + args.timeout
            done = False
            while time.monotonic() < deadline and not done:
                probe = Subscriber(broker, WILDCARD)
                try:
                    done = probe.wait_for(lambda s: len(s.latest) >= n, 2.0)
                    count = len(probe.latest)
                finally:
                    probe.close()
            print(f"broker restart (retained store lost) -> all {n} retained again: "
                  f"{time.monotonic() - t2:.2f} s" if done
                  else f"broker restart: only {count}/{n} retained after {args.timeout} s")
            return 0 if done else 1
        finally:
            for s in subs:
                s.close()
            if proc is not None:
                proc.stop()
            broker.stop()


if __name__ == "__main__":
    sys.exit(main())
