"""A real mosquitto broker on 127.0.0.1 for tests and benches (started here, killed after).

    broker = Mosquitto.start(workdir, users={"c1": "pw"}, acl="pattern read ...")
    broker.url            "mqtt://127.0.0.1:PORT"
    broker.stop() / .start_again() (same port and config; no persistence: retained state is
    gone after a restart, as after a broker that lost its disk)
    Subscriber(broker, topic, username=None, password=None): collects messages in a thread
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from wg_failover.lab.procs import stop_process

from .wait import free_port, wait_started

__all__ = ["MOSQUITTO", "MOSQUITTO_PASSWD", "Mosquitto", "Subscriber", "free_port"]

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


class Mosquitto:
    def __init__(self, workdir: Path, port: int, conf: Path, host: str = "127.0.0.1",
                 netns_host: Any = None):
        self.workdir, self.port, self.conf = workdir, port, conf
        self.host, self.netns_host = host, netns_host
        self.url = f"mqtt://{host}:{port}"
        self.tls_url = f"mqtts://{host}:{port}"
        self.log_path = workdir / f"mosquitto-{port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, workdir: str | Path, *, users: dict[str, str] | None = None,
              acl: str | None = None, max_queued: int = 100000,
              tls: dict[str, str] | None = None, netns_host: Any = None,
              host: str = "127.0.0.1") -> Mosquitto:
        """`netns_host` (a wg_failover.lab.netns.Host): run inside that namespace, listening on
        `host`:1883 there."""
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        port = 1883 if netns_host is not None else free_port()
        lines = [f"listener {port} {host}", "persistence false",
                 f"max_queued_messages {max_queued}", "log_dest stderr",
                 "log_type error", "log_type warning"]
        if tls:  # {"cafile": ..., "certfile": ..., "keyfile": ..., "require_certificate": "true"}
            lines += [f"{k} {v}" for k, v in tls.items()]
        if os.geteuid() == 0:
            # As root mosquitto drops to user `mosquitto`, which cannot read pytest's 0700 dirs.
            lines.append("user root")
        if users:
            pw = workdir / "passwd"
            pw.write_text("")
            for user, password in users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", str(pw), user, password], check=True,
                               capture_output=True)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines.append("allow_anonymous true")
        if acl:
            aclf = workdir / "acl"
            aclf.write_text(acl)
            lines.append(f"acl_file {aclf}")
        conf = workdir / f"mosquitto-{port}.conf"
        conf.write_text("\n".join(lines) + "\n")
        b = cls(workdir, port, conf, host, netns_host)
        b.start_again()
        return b

    def start_again(self, timeout: float = 10) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            argv = [MOSQUITTO, "-c", str(self.conf)]
            popen = self.netns_host.popen if self.netns_host is not None else subprocess.Popen
            self.proc = popen(argv, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        wait_started(self.proc, self._listening, timeout, "mosquitto",
                     lambda: self.log_path.read_text(errors="replace"))

    def _listening(self) -> bool:
        if self.netns_host is None:
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return True
            except OSError:
                return False
        probe = f"import socket; socket.create_connection(({self.host!r}, {self.port}), 0.5)"
        return self.netns_host.run([sys.executable, "-c", probe], check=False).returncode == 0

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=5)


class Subscriber:
    """A paho client in its own thread that records every message on `topic` (wildcards ok)."""

    def __init__(self, broker: Mosquitto, topic: str, *, username: str | None = None,
                 password: str | None = None, timeout: float = 10):
        self.topic = topic
        self.messages: list[tuple[str, bytes, bool, float]] = []  # topic, payload, retain, t
        self.latest: dict[str, bytes] = {}
        self.cond = threading.Condition()
        self.subscribed = threading.Event()
        self.refused: str | None = None
        self.granted: list[Any] = []
        c = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
        if username:
            c.username_pw_set(username, password)
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        self.c = c
        c.connect("127.0.0.1", broker.port, 30)
        c.loop_start()
        if not self.subscribed.wait(timeout) and self.refused is None:
            self.close()
            raise RuntimeError(f"could not subscribe to {topic}")

    def _on_connect(self, c: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.refused = str(reason)
            self.subscribed.set()
            return
        c.subscribe(self.topic, qos=1)

    def _on_subscribe(self, _c: paho.Client, _u: Any, _mid: int, codes: Any, _p: Any) -> None:
        self.granted = list(codes)
        self.subscribed.set()

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        with self.cond:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain), time.monotonic()))
            self.latest[msg.topic] = msg.payload
            self.cond.notify_all()

    def json(self, topic: str) -> Any:
        with self.cond:
            raw = self.latest.get(topic)
        return None if raw is None else json.loads(raw)

    def wait_for(self, pred, timeout: float = 20) -> bool:
        """Until `pred(self)` is true (checked on each message), at most `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.5))
        return True

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()
