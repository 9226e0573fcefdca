"""MQTT names shared by the responder (publisher) and the switcher (subscriber).

Kept in the core so both sides parse broker URLs alike and agree on the topic names
(docs/notify.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_TOPIC_PREFIX = "wg-failover"


class MqttUrlError(ValueError):
    pass


@dataclass(frozen=True)
class MqttUrl:
    host: str
    port: int
    tls: bool


def parse_mqtt_url(url: str) -> MqttUrl:
    """`mqtt://host[:1883]` or `mqtts://host[:8883]` (also `tcp://`, `ssl://`).

    Credentials are refused in the URL: URLs end up in logs and process listings, so the user
    goes in a username option and the password in a file.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise MqttUrlError(f"{url!r}: expected mqtt://host:port or mqtts://host:port")
    if parts.username or parts.password:
        raise MqttUrlError(f"{parts.hostname}: put the user in a username option and the "
                           "password in a password file, not in the URL")
    if not parts.hostname:
        raise MqttUrlError(f"{url!r}: no host")
    tls = scheme in ("mqtts", "ssl")
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise MqttUrlError(f"{url!r}: bad port") from None
    return MqttUrl(parts.hostname, port, tls)


def assignment_topic(prefix: str, client: str) -> str:
    return f"{prefix.rstrip('/')}/clients/{client}/assignment"


def worker_topic(prefix: str, worker: str) -> str:
    return f"{prefix.rstrip('/')}/workers/{worker}"
