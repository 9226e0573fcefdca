"""Run the real Debian Prometheus, Alertmanager and blackbox exporter on loopback, and stop them.

The lab, the tests and the benchmarks start these with the configs that
`wg_failover.promconfig` renders from the shipped files:

- `start_prometheus(config_path, data_dir, port) -> Popen` and
  `start_alertmanager(config_path, data_dir, port, cluster_off=True) -> Popen` start the real
  binaries on 127.0.0.1 and return once `/-/ready` answers 200 (logs go to `data_dir/*.log`);
  `start_blackbox_exporter(port, log_dir, config_path=BLACKBOX_YML) -> Popen` runs Debian's
  `prometheus-blackbox-exporter` with the shipped `icmp` module the same way;
- `stop_process(proc)` ends one; `find_free_port()` picks a loopback port;
- `poll_until(pred, timeout, step)`: the one bounded wait loop the lab, tests and benchmarks use;
- `wgfo_argv(*args)`: a `wg-failover` subcommand from the installation running this code.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wg_failover.promconfig import ALERTMANAGER_BIN, BLACKBOX_BIN, BLACKBOX_YML, PROMETHEUS_BIN


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (bind port 0 and let the kernel choose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        # Debian's package names equal the binaries' names.
        raise FileNotFoundError(f"`{name}` not found: apt-get install {name}")
    return path


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 30,
               log_path: Path | None = None) -> None:
    """Poll `url` until it answers 200; fail early if `proc` exits, with its log's tail."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before ready"
                               + _log_tail(log_path))
        with contextlib.suppress(OSError, urllib.error.URLError), \
                urllib.request.urlopen(url, timeout=1) as resp:
            if resp.status == 200:
                return
        if time.monotonic() > deadline:
            stop_process(proc)
            raise TimeoutError(f"{url} not ready after {timeout:g} s" + _log_tail(log_path))
        time.sleep(0.1)


def _log_tail(log_path: Path | None, lines: int = 20) -> str:
    if log_path is None or not log_path.exists():
        return ""
    tail = log_path.read_text(errors="replace").splitlines()[-lines:]
    return "\n--- " + str(log_path) + " ---\n" + "\n".join(tail)


def _start(argv: list[str], log_path: Path, ready_url: str, timeout: float) -> subprocess.Popen:
    log = log_path.open("ab")
    try:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    finally:
        log.close()  # the child holds its own descriptor
    wait_ready(ready_url, proc, timeout, log_path)
    return proc


def start_prometheus(config_path: Path | str, data_dir: Path | str, port: int, *,
                     timeout: float = 30) -> subprocess.Popen:
    """Run the real `prometheus` on 127.0.0.1:`port`; returns once /-/ready answers."""
    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        _binary(PROMETHEUS_BIN),
        f"--config.file={config_path}",
        f"--storage.tsdb.path={data / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1d",
    ]
    return _start(argv, data / "prometheus.log", f"http://127.0.0.1:{port}/-/ready", timeout)


def start_alertmanager(config_path: Path | str, data_dir: Path | str, port: int,
                       cluster_off: bool = True, *, timeout: float = 30) -> subprocess.Popen:
    """Run the real Alertmanager on 127.0.0.1:`port`; returns once /-/ready answers.

    `cluster_off` passes an empty `--cluster.listen-address`: a single instance then opens no
    gossip port (9094 by default, which two instances on one machine would fight over).
    """
    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        _binary(ALERTMANAGER_BIN),
        f"--config.file={config_path}",
        f"--storage.path={data / 'am'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    if cluster_off:
        argv.append("--cluster.listen-address=")
    return _start(argv, data / "alertmanager.log", f"http://127.0.0.1:{port}/-/ready", timeout)


def start_blackbox_exporter(port: int, log_dir: Path | str, config_path: Path | str = BLACKBOX_YML,
                            *, timeout: float = 30) -> subprocess.Popen:
    """Run the real blackbox exporter on 127.0.0.1:`port`; returns once /-/ready answers.

    ICMP probes need a raw socket: run as root (the tests and the lab do) or grant CAP_NET_RAW.
    """
    logs = Path(log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    argv = [_binary(BLACKBOX_BIN), f"--config.file={config_path}",
            f"--web.listen-address=127.0.0.1:{port}"]
    return _start(argv, logs / "blackbox.log", f"http://127.0.0.1:{port}/-/ready", timeout)


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    """Terminate a process this module started (SIGTERM, then SIGKILL after `timeout`)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def poll_until(pred: Callable[[], Any], timeout: float, step: float = 0.05) -> Any:
    """Call `pred` every `step` seconds until it returns something truthy (returned) or `timeout`
    seconds pass (then its last, falsy, value is returned). Bounded in time, never a tight loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step)


def wgfo_argv(*args: str) -> list[str]:
    """A `wg-failover` subcommand from the same installation as this very interpreter."""
    script = Path(sys.executable).parent / "wg-failover"
    if script.exists():
        return [str(script), *args]
    # Not `-m wg_failover.cli`: that would load the CLI twice (as __main__ too), with two
    # different CliError classes.
    return [sys.executable, "-c", "import sys; from wg_failover.cli import main; "
            "sys.exit(main())", *args]
