"""MQTT messaging (paho-mqtt 2.x, MQTT 5): frame records out, frame records and unit status in.

Topics: every FrameRecord goes QoS 1 to `edgeoffload/results/<camera>`; each unit keeps one
retained status message on `edgeoffload/status/<unit>`. Both clients use persistent
sessions (clean_start False + a session expiry) so a broker restart neither loses QoS 1
records in flight (paho re-sends every unacknowledged publish on reconnect, and queues new
ones while the broker is away) nor drops what a subscriber missed while disconnected (the
broker keeps its queue). QoS 1 is at-least-once: a message whose acknowledgement was lost
in a restart arrives twice, so the Subscriber drops repeats of a (camera, frame_id,
captured_at) it saw recently (an idempotent consumer) and counts them.

A broker that is killed (SIGKILL, OOM, node loss) loses what it acknowledged but had neither
delivered nor saved: Mosquitto writes its database only every `autosave_interval` (5 s). So the
Publisher keeps every record the broker acknowledged in the last `resend_window_s` (10 s, twice
the autosave interval) and sends those again after a lost connection; everything older is in the
broker's saved database if it was still undelivered. Subscribers drop the repeats.
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Self, Sequence

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeoffload.broker import PREVIEWS_TOPIC, RESULTS_TOPIC, STATUS_TOPIC
from edgeoffload.brokerplugin import client_id_allowed
from edgeoffload.records import FrameRecord

log = logging.getLogger(__name__)

_UNSAFE_TOPIC_CHARS = re.compile(r"[+#/\x00-\x1f\x7f]")
MAX_TOPIC_LEVEL = 128
# Records a Subscriber remembers to drop repeats, and so the most a Publisher re-sends after a
# lost connection: a re-sent record must still be remembered when it arrives again.
DEDUPE_WINDOW = 4096


@dataclass(frozen=True, slots=True)
class MQTTSettings:
    """Where and how to connect. TLS is used when `cafile` is set (client cert optional)."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    client_id: str = ""            # "" = a fresh unique id; set a stable one to resume a session
    keepalive: int = 30
    qos: int = 1
    session_expiry_s: int = 3600   # how long the broker keeps our session while we are away
    max_buffered: int = 10000      # outgoing messages held (in flight + waiting) before refusing
    resend_window_s: float = 10.0  # records acked this long before a lost connection are sent again
    reconnect_min_s: float = 0.1
    reconnect_max_s: float = 5.0

    def __post_init__(self) -> None:
        if self.qos not in (0, 1, 2):
            raise ValueError(f"MQTT qos must be 0, 1 or 2, got {self.qos}")
        if not 0 < self.port < 65536:
            raise ValueError(f"MQTT port must be 1..65535, got {self.port}")
        if self.max_buffered < 1:
            raise ValueError("MQTT max_buffered must be at least 1")
        if not 0 <= self.resend_window_s <= 3600:
            raise ValueError(f"MQTT resend_window_s must be 0..3600, got {self.resend_window_s}")
        if self.client_id and self.username and not client_id_allowed(self.client_id, self.username):
            raise ValueError(f"MQTT client id {self.client_id!r} must be {self.username!r} or start with "
                             f"'{self.username}-': the broker binds client ids to accounts")


def sanitise_topic_level(name: str) -> str:
    """One safe topic level: wildcards, separators and control characters become '_'."""
    cleaned = _UNSAFE_TOPIC_CHARS.sub("_", name)[:MAX_TOPIC_LEVEL]
    return cleaned or "_"


def topic_for(camera: str) -> str:
    """The results topic of one camera."""
    return f"{RESULTS_TOPIC}/{sanitise_topic_level(camera)}"


def preview_topic(camera: str) -> str:
    """The retained preview topic of one camera."""
    return f"{PREVIEWS_TOPIC}/{sanitise_topic_level(camera)}"


def status_topic(unit: str) -> str:
    """The retained status topic of one unit."""
    return f"{STATUS_TOPIC}/{sanitise_topic_level(unit)}"


def default_client_id(account: str) -> str:
    """Unique per client: two clients sharing an id (e.g. two gunicorn workers) keep kicking each
    other off. It starts with the broker account's name, as the broker requires
    (edgeoffload.brokerplugin). Set MQTTSettings.client_id to a stable id to resume a session after a restart."""
    return f"{account}-{socket.gethostname()[:32]}-{os.getpid()}-{secrets.token_hex(3)}"


def _new_client(settings: MQTTSettings, role: str) -> mqtt.Client:
    client_id = settings.client_id or default_client_id(settings.username or role)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if settings.username:
        client.username_pw_set(settings.username, settings.password)
    if settings.cafile:
        client.tls_set(ca_certs=settings.cafile, certfile=settings.certfile, keyfile=settings.keyfile)
    # paho doubles the delay per failed attempt up to the cap; fractional seconds work.
    client.reconnect_delay_set(min_delay=settings.reconnect_min_s, max_delay=settings.reconnect_max_s)  # type: ignore[arg-type]
    client.max_queued_messages_set(settings.max_buffered)
    return client


def _connect_properties(settings: MQTTSettings) -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = settings.session_expiry_s
    return props


def _disconnect(client: mqtt.Client, settings: MQTTSettings) -> None:
    """Disconnect; a generated client id can never resume its session, so end it now rather
    than leave the broker queueing messages for it until the session expires."""
    properties = None
    if not settings.client_id:
        properties = Properties(PacketTypes.DISCONNECT)
        properties.SessionExpiryInterval = 0
    client.disconnect(properties=properties)
    client.loop_stop()


def _start(client: mqtt.Client, settings: MQTTSettings) -> None:
    """Connect in the background: the network thread retries (with backoff) until the broker answers."""
    client.connect_async(settings.host, settings.port, keepalive=settings.keepalive, clean_start=False,
                         properties=_connect_properties(settings))
    client.loop_start()


class _Connection:
    """Connection state shared by Publisher and Subscriber: an event plus the last refusal."""

    def __init__(self) -> None:
        self.connected = threading.Event()
        self.last_error = ""
        self.connects = 0

    def on_connect(self, reason_code: Any) -> bool:
        if reason_code.is_failure:
            self.last_error = f"connection refused: {reason_code}"
            log.warning("MQTT %s", self.last_error)
            return False
        self.connects += 1
        self.last_error = ""
        self.connected.set()
        return True

    def on_disconnect(self, reason_code: Any) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        # After a refused CONNACK paho reports a disconnect too; keep the refusal as the error.
        if was_connected and reason_code is not None and getattr(reason_code, "is_failure", False):
            self.last_error = f"disconnected: {reason_code}"
            log.warning("MQTT %s; reconnecting", self.last_error)


@dataclass
class PublisherStats:
    """Counters of a Publisher; `buffered` = published but not yet acknowledged by the broker."""

    published: int = 0   # handed to the client
    acked: int = 0       # acknowledged by the broker (PUBACK success)
    denied: int = 0      # acknowledged with a failure reason (e.g. not authorised by the ACL)
    dropped: int = 0     # refused because the outgoing buffer was full
    buffered: int = 0
    resent: int = 0      # acknowledged records sent again after a lost connection


class _Endpoint:
    """What Publisher and Subscriber share: one paho client, its connection state, start()."""

    settings: MQTTSettings
    _client: mqtt.Client
    _connection: _Connection
    _started: bool = False

    def start(self) -> Self:
        """Connect in the background (idempotent); returns self for chaining."""
        if not self._started:
            _start(self._client, self.settings)
            self._started = True
        return self

    @property
    def connected(self) -> bool:
        return self._connection.connected.is_set()

    @property
    def last_error(self) -> str:
        return self._connection.last_error


class Publisher(_Endpoint):
    """QoS 1 publisher of FrameRecords and retained unit status, with a bounded outgoing buffer.

    While the broker is away paho keeps QoS 1 messages (up to `max_buffered`) and re-sends
    them with the unacknowledged ones once it reconnects, so a restart loses nothing;
    past the bound, publish() refuses and counts the drop instead of growing without limit.
    Records the broker acknowledged shortly before the connection was lost are sent again
    (see the module docstring): a crashed broker may have lost them after acknowledging.
    """

    def __init__(self, settings: MQTTSettings, unit: str = "preprocessor",
                 online_status: dict[str, Any] | None = None) -> None:
        """`online_status`, if given, is published (retained, state "online") on every connect:
        the broker publishes the retained "offline" will when the connection drops uncleanly."""
        self.settings = settings
        self.unit = unit
        self._online_status = online_status
        self._connection = _Connection()
        self._lock = threading.Condition()
        # mid -> (topic, payload) of a record to keep once acknowledged, None for other messages
        self._pending: dict[int, tuple[str, bytes] | None] = {}
        self._acked_early: set[int] = set()
        self._previews_in_flight: set[int] = set()   # QoS 0 previews handed to paho, not yet written
        self._acked_records: deque[tuple[float, str, bytes]] = deque()  # (acked at, topic, payload)
        self._lost_at: float | None = None   # when the connection was lost, until the next connect
        self._stats = PublisherStats()
        self._client = _new_client(settings, unit)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        offline = json.dumps({"unit": unit, "state": "offline"})
        self._client.will_set(status_topic(unit), offline, qos=1, retain=True)
        self._started = False

    # -- lifecycle -------------------------------------------------------------------------
    def wait_connected(self, timeout: float) -> bool:
        return self._connection.connected.wait(timeout)

    def close(self, flush_timeout: float = 5.0, offline_status: dict[str, Any] | None = None) -> bool:
        """Flush, announce `offline` (retained) and disconnect; False if records were still pending."""
        if not self._started:
            return True
        if offline_status is not None and self.connected:
            self.publish_status({"state": "offline", **offline_status})
        flushed = self.flush(flush_timeout)
        _disconnect(self._client, self.settings)
        with self._lock:
            self._lost_at = None   # closing on purpose: nothing to send again on a later start()
        self._started = False
        return flushed

    def __enter__(self) -> "Publisher":
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- publishing ------------------------------------------------------------------------
    def publish_record(self, record: FrameRecord) -> int | None:
        """Queue one record for `edgeoffload/results/<camera>`: its message id (for
        `wait_acked`), None when the buffer is full."""
        return self._publish(topic_for(record.camera), record.to_json().encode(), resendable=True)

    def publish_status(self, status: dict[str, Any]) -> bool:
        """Replace this unit's retained status message."""
        payload = json.dumps({"unit": self.unit, "time": time.time(), **status}, separators=(",", ":"))
        return self.publish(status_topic(self.unit), payload, retain=True)

    def publish_preview(self, camera: str, payload: bytes) -> bool:
        """Replace a camera's retained preview at QoS 0: neither buffered while the broker is away
        nor sent again (the next preview replaces a lost one), nor counted with the records."""
        info = self._client.publish(preview_topic(camera), payload, qos=0, retain=True)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        with self._lock:
            if info.mid in self._acked_early:  # already written: _on_publish took it for a record's ack
                self._acked_early.discard(info.mid)
                self._stats.acked -= 1
            else:
                self._previews_in_flight.add(info.mid)
        return True

    def publish(self, topic: str, payload: str | bytes, retain: bool = False, resendable: bool = False) -> bool:
        """Queue one message; `resendable` ones are kept after their acknowledgement for
        `resend_window_s`, to be sent again if the connection is lost (see the module docstring)."""
        body = payload.encode() if isinstance(payload, str) else payload
        return self._publish(topic, body, retain, resendable) is not None

    def _publish(self, topic: str, body: bytes, retain: bool = False, resendable: bool = False) -> int | None:
        info = self._client.publish(topic, body, qos=self.settings.qos, retain=retain)
        with self._lock:
            if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                self._stats.dropped += 1
                log.warning("MQTT outgoing buffer full (%d): dropped a message for %s",
                            self.settings.max_buffered, topic)
                return None
            self._stats.published += 1
            if self.settings.qos == 0:
                return info.mid if info.rc == mqtt.MQTT_ERR_SUCCESS else None
            keep = resendable and self.settings.resend_window_s > 0
            # NO_CONN is fine for QoS > 0: paho keeps the message and sends it on reconnect.
            if info.mid in self._acked_early:
                self._acked_early.discard(info.mid)
                if keep:
                    self._keep_acked(topic, body)
            else:
                self._pending[info.mid] = (topic, body) if keep else None
            return info.mid

    def wait_acked(self, mid: int, timeout: float) -> bool:
        """True once the broker acknowledged message `mid` (at once for QoS 0); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while mid in self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(remaining)
        return True

    def _keep_acked(self, topic: str, payload: bytes) -> None:
        """Remember an acknowledged record for the resend window (caller holds the lock)."""
        now = time.monotonic()
        kept = self._acked_records
        kept.append((now, topic, payload))
        horizon = now - self.settings.resend_window_s
        while kept and (kept[0][0] < horizon or len(kept) > DEDUPE_WINDOW):
            kept.popleft()

    def _resend_recent(self) -> None:
        """After a lost connection, send again what the broker acknowledged in the window before it."""
        with self._lock:
            lost_at, self._lost_at = self._lost_at, None
            if lost_at is None:
                return
            horizon = lost_at - self.settings.resend_window_s
            again = [(topic, payload) for acked_at, topic, payload in self._acked_records if acked_at >= horizon]
            self._acked_records.clear()   # each one is kept again when its new copy is acknowledged
            self._stats.resent += len(again)
        if again:
            log.warning("MQTT publisher %s: re-sending %d record(s) the broker acknowledged in the %.0f s "
                        "before the connection was lost", self.unit, len(again), self.settings.resend_window_s)
        for topic, payload in again:
            self.publish(topic, payload, resendable=True)

    def flush(self, timeout: float) -> bool:
        """Wait until every QoS 1 publish so far is acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(remaining)
        return True

    def stats(self) -> PublisherStats:
        with self._lock:
            return PublisherStats(self._stats.published, self._stats.acked, self._stats.denied,
                                  self._stats.dropped, len(self._pending), self._stats.resent)

    # -- paho callbacks (network thread) ---------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if self._connection.on_connect(reason_code):
            log.info("MQTT publisher %s connected to %s:%d (session present: %s)", self.unit,
                     self.settings.host, self.settings.port, flags.session_present)
            if self._online_status is not None:
                self.publish_status({"state": "online", **self._online_status})
            self._resend_recent()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if self._connection.connected.is_set():
            with self._lock:
                self._lost_at = time.monotonic()
        with self._lock:  # paho forgets unsent QoS 0 messages on reconnect: their ids will be reused
            self._previews_in_flight.clear()
        self._connection.on_disconnect(reason_code)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        # Runs under paho's outgoing-message lock: only touch our own state here.
        with self._lock:
            if mid in self._previews_in_flight:  # a QoS 0 preview left the client: nothing to count
                self._previews_in_flight.discard(mid)
                return
            if reason_code.is_failure:
                self._stats.denied += 1
                log.warning("MQTT broker refused message %d: %s", mid, reason_code)
            else:
                self._stats.acked += 1
            if mid in self._pending:
                kept = self._pending.pop(mid)
                if kept is not None and not reason_code.is_failure:
                    self._keep_acked(*kept)
                self._lock.notify_all()
            else:  # acknowledged before publish() got to record the mid
                self._acked_early.add(mid)


RecordCallback = Callable[[str, FrameRecord], None]
StatusCallback = Callable[[str, dict[str, Any]], None]
MalformedCallback = Callable[[str, bytes, str], None]
PreviewCallback = Callable[[str, bytes], None]


@dataclass
class SubscriberStats:
    received: int = 0
    malformed: int = 0
    callback_errors: int = 0
    duplicates: int = 0  # QoS 1 redeliveries dropped before the callback
    refused_subscriptions: list[str] = field(default_factory=list)


class Subscriber(_Endpoint):
    """Receives FrameRecords (results topics), status objects (status topics) and camera
    previews (previews topics, handed on as raw bytes).

    Subscriptions are (re)made in on_connect, so they survive reconnects; a payload that is
    not a valid record/status object is reported to `on_malformed` and counted, never raised
    into the network thread, and so is an exception from a user callback. Records already seen
    among the last `dedupe_window` are dropped (QoS 1 may redeliver); 0 turns that off.
    """

    def __init__(self, settings: MQTTSettings, topics: Sequence[str] = (f"{RESULTS_TOPIC}/#",),
                 on_record: RecordCallback | None = None, on_status: StatusCallback | None = None,
                 on_malformed: MalformedCallback | None = None, role: str = "subscriber",
                 dedupe_window: int = DEDUPE_WINDOW,  # repeats come within seconds of a reconnect
                 on_preview: PreviewCallback | None = None) -> None:
        self.settings = settings
        self.topics = list(topics)
        self._on_record = on_record
        self._on_status = on_status
        self._on_preview = on_preview
        self._on_malformed = on_malformed
        self._connection = _Connection()
        self._subscribed = threading.Event()
        self._lock = threading.Lock()
        self._stats = SubscriberStats()
        self._dedupe_window = dedupe_window
        self._seen: OrderedDict[tuple[str, int, float], None] = OrderedDict()
        self._client = _new_client(settings, role)
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_subscribe = self._handle_subscribe
        self._client.on_message = self._handle_message
        self._started = False

    def wait_subscribed(self, timeout: float) -> bool:
        """True once the broker acknowledged the subscriptions of the current connection."""
        return self._subscribed.wait(timeout)

    def stats(self) -> SubscriberStats:
        with self._lock:
            return SubscriberStats(self._stats.received, self._stats.malformed, self._stats.callback_errors,
                                   self._stats.duplicates, list(self._stats.refused_subscriptions))

    def close(self) -> None:
        if self._started:
            _disconnect(self._client, self.settings)
            self._started = False

    def __enter__(self) -> "Subscriber":
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- paho callbacks (network thread) ---------------------------------------------------
    def _handle_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if not self._connection.on_connect(reason_code):
            return
        self._subscribed.clear()
        if self.topics:
            client.subscribe([(topic, self.settings.qos) for topic in self.topics])

    def _handle_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._subscribed.clear()
        self._connection.on_disconnect(reason_code)

    def _handle_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        refused = [topic for topic, code in zip(self.topics, reason_codes) if code.is_failure]
        with self._lock:
            self._stats.refused_subscriptions = refused
        if refused:
            log.warning("MQTT broker refused subscription(s) %s for user %s", refused, self.settings.username)
        else:
            self._subscribed.set()

    def _handle_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        topic, payload = message.topic, message.payload
        with self._lock:
            self._stats.received += 1
        try:
            self._dispatch(topic, payload)
        except ValueError as exc:
            self._report_malformed(topic, payload, str(exc))
        except Exception:  # a consumer bug must not kill the network thread
            with self._lock:
                self._stats.callback_errors += 1
            log.exception("MQTT message callback failed for %s", topic)

    def _dispatch(self, topic: str, payload: bytes) -> None:
        if topic.startswith(RESULTS_TOPIC + "/"):
            record = FrameRecord.from_json(payload)
            if self._is_repeat(record):
                return
            if self._on_record:
                self._on_record(topic, record)
        elif topic.startswith(STATUS_TOPIC + "/"):
            status = json_object(payload)
            if self._on_status:
                self._on_status(topic, status)
        elif topic.startswith(PREVIEWS_TOPIC + "/"):
            if self._on_preview:  # raw bytes: the receiver validates them (edgeoffload.preview)
                self._on_preview(topic, payload)
        else:
            raise ValueError(f"unexpected topic {topic!r}")

    def _is_repeat(self, record: FrameRecord) -> bool:
        if self._dedupe_window <= 0:
            return False
        key = (record.camera, record.frame_id, record.captured_at)
        with self._lock:
            if key in self._seen:
                self._stats.duplicates += 1
                return True
            self._seen[key] = None
            if len(self._seen) > self._dedupe_window:
                self._seen.popitem(last=False)
        return False

    def _report_malformed(self, topic: str, payload: bytes, error: str) -> None:
        with self._lock:
            self._stats.malformed += 1
        log.warning("MQTT malformed message on %s: %s", topic, error)
        if self._on_malformed:
            try:
                self._on_malformed(topic, payload, error)
            except Exception:
                log.exception("MQTT on_malformed callback failed")


def json_object(payload: bytes, what: str = "status") -> dict[str, Any]:
    """An untrusted payload as a JSON object; ValueError naming `what` otherwise."""
    try:
        value = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object")
    return value


__all__ = ["MQTTSettings", "Publisher", "PublisherStats", "Subscriber", "SubscriberStats",
           "topic_for", "status_topic", "preview_topic", "json_object", "sanitise_topic_level", "default_client_id"]
