"""MQTT notifier: every assignment and worker change, retained QoS 1, on the fleet's broker.

Topics (`wg_failover/mqtt.py` names them, docs/notify.md lists them):
`{prefix}/clients/{name}/assignment` (the API's assignment JSON, with version) and
`{prefix}/workers/{name}` (the `GET /v1/workers` entry); `{prefix}/responder` holds "online", and
the broker sets it to "offline" (our last will) when the responder vanishes.

The seam's callbacks run on the event loop inside the state's write lock, so they only record the
newest payload of a topic in a dict and mark the topic dirty. One publisher thread hands dirty
topics to paho (whose own network thread does the socket work and reconnects with backoff).
Because a topic's payload is read at publish time, a backlog holds at most one message per topic
and the newest state always wins. On every (re)connect all topics are marked dirty again: a
broker that restarted without persistence, or lost messages in flight, gets the full current
state back, so no assignment is lost through an outage.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import ssl
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import Counter, Gauge

from wg_failover.mqtt import MqttUrl, MqttUrlError, assignment_topic, parse_mqtt_url, worker_topic

from . import NotifierHost, register_factory

log = logging.getLogger("wg_failover.responder.mqtt")

# Unacknowledged publishes handed to paho at once: enough to fill the pipe to a remote broker,
# small enough that a dead connection does not pile up a large duplicate backlog inside paho.
MAX_OUTSTANDING = 2000
STALE_SECONDS = 60.0
RECONNECT_MIN, RECONNECT_MAX = 1, 30  # seconds; paho doubles the delay between attempts


class MqttConfigError(ValueError):
    """Bad MQTT settings (URL, password file): the notifier does not start."""


def parse_broker_url(url: str) -> MqttUrl:
    """The fleet's `responder.mqtt.url`, as a config error the notifier reports at start."""
    try:
        return parse_mqtt_url(url)
    except MqttUrlError as exc:
        raise MqttConfigError(str(exc)) from None


def read_secret_file(path: str, what: str) -> str:
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise MqttConfigError(f"{what} {path}: cannot read ({type(exc).__name__})") from None
    if not value:
        raise MqttConfigError(f"{what} {path}: empty")
    return value


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


class MqttNotifier:
    name = channel = "mqtt"

    def __init__(self, settings: Any, password: str | None = None,
                 client_id: str | None = None):
        self.settings = settings
        self.broker = parse_broker_url(settings.url)
        self.prefix = settings.topic_prefix.rstrip("/")
        self.password = password
        self.client_id = client_id or f"wgfo-responder-{socket.gethostname()}-{os.getpid()}"
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        # topic -> [payload dict, t0 (monotonic time of the change, None once published), client]
        self.state: dict[str, list[Any]] = {}
        self.dirty: dict[str, None] = {}  # insertion-ordered set
        self.connected = False
        self.stopping = False
        self.acks: deque[tuple[int, float]] = deque()  # filled by paho's thread (on_publish)
        # mid -> (topic, version, t0, when handed to paho); read and written by the publisher only
        self.outstanding: dict[int, tuple[str, int | None, float | None, float]] = {}
        self.acked_version: dict[str, int] = {}  # client -> newest version the broker took
        self.mqttc: paho.Client | None = None
        self.thread: threading.Thread | None = None
        self.latency: Any = None
        self.published: Counter | None = None
        self.connects: Counter | None = None

    # ----------------------------------------------------------------- the seam

    def assignment_changed(self, assignment: dict[str, Any]) -> None:
        self._put(assignment_topic(self.prefix, assignment["client"]), assignment,
                  assignment["client"])

    def worker_changed(self, worker: dict[str, Any]) -> None:
        self._put(worker_topic(self.prefix, worker["name"]), worker, None)

    def _put(self, topic: str, payload: dict[str, Any], client: str | None) -> None:
        with self.cond:
            self.state[topic] = [payload, time.monotonic(), client]
            self.dirty[topic] = None
            self.cond.notify()

    def client_status(self, name: str) -> dict[str, Any]:
        topic = assignment_topic(self.prefix, name)
        with self.lock:
            item = self.state.get(topic)
            pending = topic in self.dirty
        return {"connected": self.connected, "topic": topic,
                "published_version": self.acked_version.get(name),
                "pending_version": item[0]["version"] if item and pending else None}

    # ----------------------------------------------------------------- start / stop

    async def start(self, host: NotifierHost) -> None:
        m = host.metrics
        self.latency = m.notification_latency.labels(channel="mqtt")
        self.published = Counter("wgfo_mqtt_published_total",
                                 "MQTT messages the broker acknowledged (PUBACK)",
                                 registry=m.collector_registry)
        self.connects = Counter("wgfo_mqtt_connects_total", "Successful MQTT (re)connects",
                                registry=m.collector_registry)
        up = Gauge("wgfo_mqtt_connected", "1 while connected to the MQTT broker",
                   registry=m.collector_registry)
        up.set_function(lambda: 1.0 if self.connected else 0.0)
        backlog = Gauge("wgfo_mqtt_backlog", "Topics waiting to be published or acknowledged",
                        registry=m.collector_registry)
        backlog.set_function(lambda: float(len(self.dirty) + len(self.outstanding)))
        # The current state, so a fresh broker (or one that lost its retained store) has it all.
        for w in host.fleet.workers:
            if w.name in host.workers:
                self.worker_changed(host.worker_json(w.name))
        for aj in host.all_assignments():  # fleet clients only (not removed ones)
            self.assignment_changed(aj)
        with self.lock:
            for item in self.state.values():
                item[1] = None  # a republish at start is not a change: no latency sample
        self.mqttc = self._make_client()
        self.mqttc.connect_async(self.broker.host, self.broker.port, keepalive=30)
        self.mqttc.loop_start()
        self.thread = threading.Thread(target=self._publisher, name="mqtt-publisher",
                                       daemon=True)
        self.thread.start()
        log.info("MQTT: publishing to %s:%d (%s) under %s/", self.broker.host, self.broker.port,
                 "TLS" if self.broker.tls else "plain", self.prefix)

    async def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        if self.thread is not None:
            self.thread.join(5)
        if self.mqttc is not None:
            # A clean disconnect suppresses the will: say "offline" ourselves.
            if self.connected:
                info = self.mqttc.publish(f"{self.prefix}/responder", b"offline", qos=1,
                                          retain=True)
                with contextlib.suppress(RuntimeError, ValueError):
                    info.wait_for_publish(1.0)
            self.mqttc.disconnect()
            self.mqttc.loop_stop()

    def _make_client(self) -> paho.Client:
        s = self.settings
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                        clean_session=True, protocol=paho.MQTTv311)
        if s.username:
            c.username_pw_set(s.username, self.password)
        if self.broker.tls:
            c.tls_set(ca_certs=s.tls_ca_file, certfile=s.tls_cert_file, keyfile=s.tls_key_file,
                      cert_reqs=ssl.CERT_REQUIRED)
        c.will_set(f"{self.prefix}/responder", b"offline", qos=1, retain=True)
        c.reconnect_delay_set(RECONNECT_MIN, RECONNECT_MAX)
        c.max_inflight_messages_set(200)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        return c

    # ----------------------------------------------------------------- paho's thread

    def _on_connect(self, client: paho.Client, _ud: Any, _flags: Any, reason: Any,
                    _props: Any) -> None:
        if reason.is_failure:
            log.warning("MQTT: broker refused the connection: %s", reason)
            return
        client.publish(f"{self.prefix}/responder", b"online", qos=1, retain=True)
        with self.cond:
            self.connected = True
            # Republish everything: the broker may have restarted without its retained store.
            for topic in self.state:
                self.dirty[topic] = None
            self.cond.notify()
        if self.connects is not None:
            self.connects.inc()
        log.info("MQTT: connected to %s:%d; republishing %d topics", self.broker.host,
                 self.broker.port, len(self.state))

    def _on_disconnect(self, _client: paho.Client, _ud: Any, _flags: Any, reason: Any,
                       _props: Any) -> None:
        with self.cond:
            was = self.connected
            self.connected = False
        if was and not self.stopping:
            log.warning("MQTT: disconnected (%s); reconnecting with backoff", reason)

    def _on_publish(self, _client: paho.Client, _ud: Any, mid: int, _reason: Any,
                    _props: Any) -> None:
        # paho calls this with its message lock held; our lock is never held while calling
        # into paho, so taking it here cannot deadlock. Matching mids is the publisher's job.
        self.acks.append((mid, time.monotonic()))
        with self.cond:
            self.cond.notify()

    # ----------------------------------------------------------------- the publisher thread

    def _publisher(self) -> None:
        while True:
            with self.cond:
                if not self.stopping and not self.acks and not (
                        self.connected and self.dirty
                        and len(self.outstanding) < MAX_OUTSTANDING):
                    self.cond.wait(1.0)  # at least once a second: stale acks are forgotten
                if self.stopping:
                    return
                batch: list[tuple[str, dict[str, Any], float | None, str | None]] = []
                if self.connected:
                    room = MAX_OUTSTANDING - len(self.outstanding)
                    while self.dirty and len(batch) < min(room, 500):
                        topic = next(iter(self.dirty))
                        del self.dirty[topic]
                        payload, t0, client = self.state[topic]
                        self.state[topic][1] = None
                        batch.append((topic, payload, t0, client))
            self._handle_acks()
            self._forget_stale()
            for i, (topic, payload, t0, client) in enumerate(batch):
                if not self._publish_one(topic, payload, t0, client):
                    with self.cond:  # not connected after all: back to dirty, keep the order
                        for t, _p, t0b, _c in batch[i:]:
                            self.dirty[t] = None
                            if t0b is not None and self.state[t][1] is None:
                                self.state[t][1] = t0b
                    time.sleep(0.1)  # paho's queue is full or the link just dropped: no spinning
                    break

    def _publish_one(self, topic: str, payload: dict[str, Any], t0: float | None,
                     client: str | None) -> bool:
        assert self.mqttc is not None
        version = payload.get("version") if client is not None else None
        info = self.mqttc.publish(topic, encode(payload), qos=1, retain=True)
        if info.rc == paho.MQTT_ERR_NO_CONN:
            # paho queued it and sends it on reconnect; we republish on reconnect anyway.
            self.outstanding[info.mid] = (topic, version, t0, time.monotonic())
            return True
        if info.rc != paho.MQTT_ERR_SUCCESS:
            return False
        self.outstanding[info.mid] = (topic, version, t0, time.monotonic())
        return True

    def _forget_stale(self) -> None:
        # An ack that never comes (a message paho gave up on) must not block publishing
        # forever; the state is republished on every reconnect anyway.
        if len(self.outstanding) < MAX_OUTSTANDING:
            return
        cutoff = time.monotonic() - STALE_SECONDS
        for mid in [m for m, item in self.outstanding.items() if item[3] < cutoff]:
            del self.outstanding[mid]

    def _handle_acks(self) -> None:
        while self.acks:
            mid, t_ack = self.acks.popleft()
            item = self.outstanding.pop(mid, None)
            if item is None:
                continue
            topic, version, t0, _sent = item
            if self.published is not None:
                self.published.inc()
            if version is not None:
                client = topic[len(self.prefix) + len("/clients/"):-len("/assignment")]
                if version > self.acked_version.get(client, -1):
                    self.acked_version[client] = version
            if t0 is not None and self.latency is not None:
                self.latency.observe(max(0.0, t_ack - t0))


def factory(fleet: Any, settings: Any) -> MqttNotifier | None:
    mqtt = getattr(settings, "mqtt", None)
    if mqtt is None:
        return None
    password = read_secret_file(mqtt.password_file, "mqtt password_file") \
        if mqtt.password_file else None
    return MqttNotifier(mqtt, password)


register_factory("mqtt", factory)
