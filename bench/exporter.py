"""Benchmark: the exporter on one wireguard-go interface with 10,000 peers.

Prints the scrape time (p50/p95 over 20 scrapes, as Prometheus asks: plain and gzip) beside
the time of `wg show IFACE dump` alone on the same interface in the same run, their ratios
(scrape/dump, gzip/text), and the exporter's RSS. Goals: scrape p50 < 3x the bare dump and
< 250 ms; gzip p50 <= 1.3x text; RSS < 80 MB.

    sudo .venv/bin/python bench/exporter.py [--peers 10000] [--scrapes 20]
    sudo .venv/bin/python bench/exporter.py --compat mindflavor [--compat-remote]

Needs root (it makes its own network namespace, removed afterwards). Peers are random 32-byte
keys with unique /32 allowed IPs and no endpoints: no packet leaves the namespace.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wg_failover import wg  # noqa: E402
from wg_failover.lab import netns  # noqa: E402

# Runs inside the namespace: times the bare dump and the scrapes with the same clock.
TIMER = r"""
import json, subprocess, sys, time, urllib.request
iface, url, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def scrape(gzip):
    req = urllib.request.Request(url, headers={
        "Accept": "application/openmetrics-text;version=1.0.0;q=0.5,"
                  "text/plain;version=0.0.4;q=0.4,*/*;q=0.1",
        **({"Accept-Encoding": "gzip"} if gzip else {})})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=30) as r:
        body = r.read()
    return time.perf_counter() - t, len(body), body
for _ in range(3):
    scrape(False)  # warm up: imports, caches, first CPU sample
out = {"dump": [], "scrape": [], "scrape_gzip": []}
# Interleaved, so a burst of load from elsewhere on the machine hits all three alike.
for _ in range(n):
    t = time.perf_counter()
    subprocess.run(["wg", "show", iface, "dump"], check=True, capture_output=True)
    out["dump"].append(time.perf_counter() - t)
    dt, size, body = scrape(False)
    out["scrape"].append(dt)
    out["bytes"] = size
    out["samples"] = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    dt, size, _ = scrape(True)
    out["scrape_gzip"].append(dt)
    out["bytes_gzip"] = size
print(json.dumps(out))
"""


def peer_config(private_key: str, peers: int) -> str:
    lines = ["[Interface]", f"PrivateKey = {private_key}", "ListenPort = 51820", ""]
    for i in range(peers):
        key = base64.b64encode(secrets.token_bytes(32)).decode()
        ip = f"10.{100 + i // 65536}.{(i // 256) % 256}.{i % 256}/32"
        lines += ["[Peer]", f"PublicKey = {key}", f"AllowedIPs = {ip}", ""]
    return "\n".join(lines)


def quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def rss_mb(pid: int) -> tuple[float, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", type=int, default=10_000)
    ap.add_argument("--scrapes", type=int, default=20)
    ap.add_argument("--peer-metrics", choices=["on", "off"], default="on")
    ap.add_argument("--compat", choices=["mindflavor"], help="pass --compat to the exporter")
    ap.add_argument("--compat-remote", action="store_true", help="and --compat-remote")
    args = ap.parse_args()
    problems = netns.preflight()
    if problems:
        print("cannot run: " + "; ".join(problems), file=sys.stderr)
        return 2

    prefix = netns.unique_prefix("bx")
    with netns.NetLab(prefix) as lab:
        host = lab.add_host("w")
        iface = lab.wireguard(host, "e0", f"[Interface]\nPrivateKey = {wg.genkey()}\n", [
            "10.99.255.1/32"])
        t = time.perf_counter()
        with tempfile.NamedTemporaryFile("w", suffix=".conf") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(peer_config(wg.genkey(), args.peers))
            f.flush()
            wg.run_wg(["setconf", iface.name, f.name], timeout=300)
        setconf_s = time.perf_counter() - t
        configured = len(wg.show_dump(iface.name).peers)

        compat = ["--compat", args.compat] if args.compat else []
        if args.compat_remote:
            compat.append("--compat-remote")
        exporter = host.popen(
            [str(ROOT / ".venv" / "bin" / "wg-failover"), "exporter", "--listen",
             "127.0.0.1:9586", "--interface", iface.name, "--peer-metrics", args.peer_metrics,
             "--log-level", "warning", *compat])
        url = "http://127.0.0.1:9586/metrics"
        for _ in range(100):
            if host.run(["curl", "-sf", "-o", "/dev/null", url], check=False).returncode == 0:
                break
            time.sleep(0.1)
        timer = host.run([sys.executable, "-c", TIMER, iface.name, url, str(args.scrapes)],
                         timeout=600)
        res = json.loads(timer.stdout)
        rss, hwm = rss_mb(exporter.pid)
        cmdline = Path(f"/proc/{exporter.pid}/cmdline").read_bytes()
        assert b"exporter" in cmdline, "RSS would be of the wrong process"

    dump50, dump95 = quantile(res["dump"], 0.5), quantile(res["dump"], 0.95)
    s50, s95 = quantile(res["scrape"], 0.5), quantile(res["scrape"], 0.95)
    g50, g95 = quantile(res["scrape_gzip"], 0.5), quantile(res["scrape_gzip"], 0.95)
    ms = 1000
    flags = f"--peer-metrics {args.peer_metrics}" + (
        f" --compat {args.compat}" if args.compat else "") + (
        " --compat-remote" if args.compat_remote else "")
    print(f"wireguard-go, 1 interface, {configured} peers (setconf {setconf_s:.1f} s), "
          f"{flags}, {args.scrapes} runs each")
    print(f"  wg show IFACE dump alone : p50 {dump50 * ms:7.1f} ms   p95 {dump95 * ms:7.1f} ms")
    print(f"  scrape /metrics (text)   : p50 {s50 * ms:7.1f} ms   p95 {s95 * ms:7.1f} ms   "
          f"{res['samples']} samples, {res['bytes'] / 1e6:.1f} MB")
    print(f"  scrape /metrics (gzip)   : p50 {g50 * ms:7.1f} ms   p95 {g95 * ms:7.1f} ms   "
          f"{res['bytes_gzip'] / 1e6:.2f} MB")
    print(f"  ratio scrape/dump (p50)  : {s50 / dump50:.2f}x text, {g50 / dump50:.2f}x gzip")
    print(f"  ratio gzip/text (p50)    : {g50 / s50:.2f}x")
    print(f"  exporter RSS             : {rss:.1f} MB now, {hwm:.1f} MB peak")
    for label, p50 in (("text", s50), ("gzip", g50)):
        ok = p50 < 3 * dump50 and p50 < 0.250 and hwm < 80
        print(f"  goals, {label} (p50 < 3x dump and < 250 ms; RSS < 80 MB):",
              "met" if ok else "MISSED")
    print("  goal, gzip p50 <= 1.3x text:", "met" if g50 <= 1.3 * s50 else "MISSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
