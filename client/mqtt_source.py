"""Assignments over MQTT: the switcher subscribes to its own retained topic instead of SSE.

The responder publishes each client's assignment retained, QoS 1, on
`{prefix}/clients/{name}/assignment`; subscribing hands over the current assignment at once (the
retained message) and every later one. paho's network thread does the socket work and reconnects
with backoff; messages cross into the switcher's event loop with `call_soon_threadsafe`. The
switcher drops versions it already has, so a republished (duplicate) message is harmless.

With a broker ACL of `pattern read {prefix}/clients/%u/assignment` and the client's fleet name as
its MQTT username, a client reads only its own assignment (docs/notify.md).

Payloads are bounded like the HTTP source's bodies (`client.bounds`): the switcher connects with
MQTT 5 and a Maximum Packet Size, so the broker drops a larger message instead of sending it
(MQTT 3.1.1 has no way to say so, and paho reads a whole packet, up to 256 MB, before anyone can
look at it); a payload over the bound that arrives anyway is refused before it is parsed.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from wg_failover.mqtt import MqttUrlError, assignment_topic, parse_mqtt_url
from wg_failover.wire import Assignment, AssignmentError, parse_assignment

from .bounds import MAX_BODY, LogLimiter, WireInputError, loads_json, shown
from .sources import Deliver, EpochOf

log = logging.getLogger("wg_failover.switcher")

# The largest packet the broker may send us: one payload at the bound, plus the topic and headers.
MAX_PACKET = MAX_BODY + 1024


class MqttAssignmentSource:
    """An `AssignmentSource` (client.sources) fed by the client's retained MQTT topic."""

    def __init__(self, url: str, client: str, *, username: str | None = None,
                 password: str | None = None, ca_file: str | None = None,
                 topic_prefix: str = "wg-failover",
                 on_connected: Callable[[bool], None] | None = None) -> None:
        self.url = parse_mqtt_url(url)
        self.client = client
        self.username = username
        self.password = password
        self.ca_file = ca_file
        self.topic = assignment_topic(topic_prefix, client)
        self.on_connected = on_connected or (lambda _up: None)
        self.connected = False
        self.limiter = LogLimiter(log)

    def parse(self, payload: bytes) -> Assignment | None:
        try:
            if len(payload) > MAX_BODY:
                raise WireInputError(f"a payload of {len(payload)} bytes (at most {MAX_BODY})")
            return parse_assignment(loads_json(payload, "assignment"), self.client)
        except (WireInputError, AssignmentError) as exc:
            self.limiter.warning("unusable", "mqtt: ignoring an unusable assignment on %s: %s",
                                 self.topic, shown(exc, 200))
            return None

    async def run(self, deliver: Deliver, after: Callable[[], int],
                  epoch: EpochOf | None = None) -> None:
        # `after` and `epoch` are not needed: the retained message is always the newest
        # assignment (with its store's epoch), and the switcher ignores versions it already has.
        loop = asyncio.get_running_loop()

        def status(up: bool) -> None:
            self.connected = up
            self.on_connected(up)

        def on_connect(c: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            if reason.is_failure:
                self.limiter.warning("refused", "mqtt: broker refused the connection: %s",
                                     shown(reason, 80))
                return
            c.subscribe(self.topic, qos=1)
            log.info("mqtt: connected to %s:%d, following %s", self.url.host, self.url.port,
                     self.topic)
            loop.call_soon_threadsafe(status, True)

        def on_disconnect(_c: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            self.limiter.log(logging.INFO, "disconnected", "mqtt: disconnected (%s); reconnecting",
                             shown(reason, 80))
            loop.call_soon_threadsafe(status, False)

        def on_message(_c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
            a = self.parse(msg.payload)
            if a is not None:
                loop.call_soon_threadsafe(deliver, a)

        c = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        if self.username:
            c.username_pw_set(self.username, self.password)
        if self.url.tls:
            c.tls_set(ca_certs=self.ca_file, cert_reqs=ssl.CERT_REQUIRED)
        c.reconnect_delay_set(1, 30)
        c.on_connect, c.on_disconnect, c.on_message = on_connect, on_disconnect, on_message
        props = Properties(PacketTypes.CONNECT)
        props.MaximumPacketSize = MAX_PACKET
        c.connect_async(self.url.host, self.url.port, keepalive=30, properties=props)
        c.loop_start()
        try:
            await asyncio.Event().wait()  # until cancelled
        finally:
            c.disconnect()
            await asyncio.to_thread(c.loop_stop)


def source_from_options(url: str, client: str, *, username: str | None,
                        password_file: str | None, ca_file: str | None,
                        on_connected: Callable[[bool], None] | None = None
                        ) -> MqttAssignmentSource:
    """The switcher's `--mqtt*` options as a source; ValueError with a message for the user."""
    password = None
    if password_file:
        try:
            password = open(password_file, encoding="utf-8").read().strip()  # noqa: SIM115
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--mqtt-password-file {password_file}: cannot read "
                             f"({type(exc).__name__})") from None
        if not password:
            raise ValueError(f"--mqtt-password-file {password_file}: empty")
    try:
        return MqttAssignmentSource(url, client, username=username or client, password=password,
                                    ca_file=ca_file, on_connected=on_connected)
    except MqttUrlError as exc:
        raise ValueError(f"--mqtt: {exc}") from None
