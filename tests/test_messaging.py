"""Messaging against a real Mosquitto configured like EdgeBrokerProvider (password file + ACL)."""
from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import pytest

from edgeoffload.broker import RESULTS_TOPIC, STATUS_TOPIC, BrokerProcess, TLSFiles, start_broker
from edgeoffload.messaging import MQTTSettings, Publisher, Subscriber, status_topic, topic_for
from edgeoffload.records import FrameRecord

WAIT = 10.0


def settings_for(broker: BrokerProcess, role: str | None, **overrides: object) -> MQTTSettings:
    password = broker.users[role] if role else None
    return MQTTSettings(host=broker.host, port=broker.port, username=role, password=password,
                        reconnect_min_s=0.1, reconnect_max_s=0.5, **overrides)  # type: ignore[arg-type]


def poll(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def record(frame_id: int, camera: str = "cam1") -> FrameRecord:
    return FrameRecord(camera=camera, frame_id=frame_id, captured_at=time.time(), site="edge", status="ok",
                       policy="test", t_total_ms=12.5)


class Collector:
    """Thread-safe sink for subscriber callbacks."""

    def __init__(self) -> None:
        self.records: list[FrameRecord] = []
        self.statuses: list[dict] = []
        self.malformed: list[tuple[str, str]] = []
        self._cond = threading.Condition()

    def on_record(self, topic: str, rec: FrameRecord) -> None:
        assert topic == topic_for(rec.camera)
        with self._cond:
            self.records.append(rec)
            self._cond.notify_all()

    def on_status(self, topic: str, status: dict) -> None:
        with self._cond:
            self.statuses.append(status)
            self._cond.notify_all()

    def on_malformed(self, topic: str, payload: bytes, error: str) -> None:
        with self._cond:
            self.malformed.append((topic, error))
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[["Collector"], bool], timeout: float = WAIT) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    def subscriber(self, settings: MQTTSettings, topics: tuple[str, ...] = (f"{RESULTS_TOPIC}/#",)) -> Subscriber:
        return Subscriber(settings, topics, on_record=self.on_record, on_status=self.on_status,
                          on_malformed=self.on_malformed)


def test_topic_for_sanitises_camera_names() -> None:
    assert topic_for("cam-1.front_door") == "edgeoffload/results/cam-1.front_door"
    assert topic_for("a/b+c#d") == "edgeoffload/results/a_b_c_d"
    assert topic_for("x\x00y\ny\x7f") == "edgeoffload/results/x_y_y_"
    assert topic_for("") == "edgeoffload/results/_"
    assert len(topic_for("c" * 1000)) < 200
    assert status_topic("preprocessor") == "edgeoffload/status/preprocessor"


def test_settings_validate() -> None:
    with pytest.raises(ValueError):
        MQTTSettings(qos=3)
    with pytest.raises(ValueError):
        MQTTSettings(port=0)
    with pytest.raises(ValueError):
        MQTTSettings(resend_window_s=-1)


def test_records_and_retained_status_reach_webserver(broker: BrokerProcess) -> None:
    with Publisher(settings_for(broker, "preprocessor")) as pub:
        assert pub.wait_connected(WAIT), pub.last_error
        assert pub.publish_status({"state": "ready", "policy": "edge-only"})
        assert pub.flush(WAIT)
        sink = Collector()
        # Subscribes after the status was published: only a retained message can reach it.
        with sink.subscriber(settings_for(broker, "webserver"), (f"{RESULTS_TOPIC}/#", f"{STATUS_TOPIC}/#")) as sub:
            assert sub.wait_subscribed(WAIT)
            for i in range(50):
                assert pub.publish_record(record(i, camera="cam/with+wildcards"))
            assert pub.flush(WAIT)
            assert sink.wait_for(lambda s: len(s.records) == 50 and s.statuses)
        stats = pub.stats()
    assert [r.frame_id for r in sink.records] == list(range(50))
    assert sink.records[0].camera == "cam/with+wildcards"
    assert sink.statuses[0]["state"] == "ready" and sink.statuses[0]["unit"] == "preprocessor"
    assert stats.acked == 51 and stats.buffered == 0 and stats.denied == 0 and stats.dropped == 0


@pytest.mark.parametrize("role,password", [(None, None), ("webserver", "wrong-password"), ("intruder", "x")])
def test_unauthenticated_clients_are_refused(broker: BrokerProcess, role: str | None, password: str | None) -> None:
    settings = MQTTSettings(host=broker.host, port=broker.port, username=role, password=password,
                            reconnect_min_s=0.5, reconnect_max_s=1)
    with Publisher(settings) as pub:
        assert not pub.wait_connected(1.5)
        assert "refused" in pub.last_error


def test_webserver_cannot_publish_results(broker: BrokerProcess) -> None:
    sink = Collector()
    with sink.subscriber(settings_for(broker, "monitor")) as monitor, \
            Publisher(settings_for(broker, "webserver"), unit="webserver") as intruder, \
            Publisher(settings_for(broker, "preprocessor")) as legit:
        assert monitor.wait_subscribed(WAIT)
        assert intruder.wait_connected(WAIT) and legit.wait_connected(WAIT)
        intruder.publish_record(record(666, camera="acl"))
        assert intruder.flush(WAIT)
        assert intruder.stats().denied == 1 and intruder.stats().acked == 0
        legit.publish_record(record(1, camera="acl"))
        assert legit.flush(WAIT)
        assert sink.wait_for(lambda s: any(r.camera == "acl" for r in s.records))
    assert [r.frame_id for r in sink.records if r.camera == "acl"] == [1]


def test_preprocessor_cannot_read_results(broker: BrokerProcess) -> None:
    """Mosquitto grants the SUBACK but the ACL withholds every message from the preprocessor."""
    control, blocked = Collector(), Collector()
    with control.subscriber(settings_for(broker, "monitor")) as monitor, \
            blocked.subscriber(settings_for(broker, "preprocessor")) as snooper, \
            Publisher(settings_for(broker, "preprocessor")) as pub:
        assert monitor.wait_subscribed(WAIT) and pub.wait_connected(WAIT)
        assert snooper.wait_subscribed(WAIT) or snooper.stats().refused_subscriptions
        pub.publish_record(record(7, camera="secret"))
        assert pub.flush(WAIT)
        assert control.wait_for(lambda s: any(r.camera == "secret" for r in s.records))
        time.sleep(0.3)
        assert snooper.stats().received == 0
    assert blocked.records == []


def test_malformed_payloads_and_failing_callbacks_do_not_stop_the_subscriber(broker: BrokerProcess) -> None:
    sink = Collector()
    calls = Counter()

    def flaky(topic: str, rec: FrameRecord) -> None:
        calls[rec.frame_id] += 1
        if rec.frame_id == 1:
            raise RuntimeError("consumer bug")
        sink.on_record(topic, rec)

    sub = Subscriber(settings_for(broker, "monitor"), on_record=flaky, on_malformed=sink.on_malformed)
    with sub, Publisher(settings_for(broker, "preprocessor")) as pub:
        assert sub.wait_subscribed(WAIT) and pub.wait_connected(WAIT)
        pub.publish(topic_for("bad"), b"\xff not json")
        pub.publish(topic_for("bad"), b'{"camera": "bad", "frame_id": 1, "site": "moon", "status": "ok"}')
        pub.publish_record(record(1, camera="bad"))
        pub.publish_record(record(2, camera="bad"))
        assert pub.flush(WAIT)
        assert sink.wait_for(lambda s: len(s.records) == 1 and len(s.malformed) == 2)
        stats = sub.stats()
    assert sink.records[0].frame_id == 2
    assert "JSON" in sink.malformed[0][1] and "site" in sink.malformed[1][1]
    assert stats.malformed == 2 and stats.callback_errors == 1 and stats.received == 4
    assert calls == {1: 1, 2: 1}


def test_broker_restart_mid_run_loses_no_record(fresh_broker: BrokerProcess) -> None:
    total = 400
    seen: Counter[int] = Counter()
    done = threading.Event()

    def on_record(topic: str, rec: FrameRecord) -> None:
        seen[rec.frame_id] += 1
        if len(seen) == total:
            done.set()

    sub_settings = settings_for(fresh_broker, "webserver", client_id="webserver-test-restart")
    with Subscriber(sub_settings, on_record=on_record) as sub, \
            Publisher(settings_for(fresh_broker, "preprocessor")) as pub:
        assert sub.wait_subscribed(WAIT) and pub.wait_connected(WAIT)
        for i in range(total):
            assert pub.publish_record(record(i))
            if i == total // 3:
                fresh_broker.restart()
            time.sleep(0.002)
        assert pub.flush(30), pub.stats()
        assert done.wait(30), f"missing {sorted(set(range(total)) - set(seen))[:20]}"
        time.sleep(0.3)  # let any QoS 1 redelivery arrive before counting
        stats, sub_stats = pub.stats(), sub.stats()
    assert sorted(seen) == list(range(total))
    assert max(seen.values()) == 1, {k: v for k, v in seen.items() if v > 1}
    assert sub_stats.received == total + sub_stats.duplicates
    assert stats.acked == total + stats.resent and stats.dropped == 0  # a restart is a lost connection: records re-sent


def _kill_broker_with_records_queued(broker: BrokerProcess, subscriber_id: str, batches: list[range],
                                     pause_s: float, **publisher_settings: object) -> tuple[Collector, int]:
    """Records queued in the broker's memory for an absent subscriber when the broker is SIGKILLed
    (before its next autosave): only the publisher's resend brings them back. Returns what the
    subscriber then receives and how many records the publisher sent again."""
    sub_settings = settings_for(broker, "webserver", client_id=subscriber_id)
    with Subscriber(sub_settings) as sub:
        assert sub.wait_subscribed(WAIT)
    broker.restart()   # graceful: the away subscriber's session is saved to disk, as autosave would
    with Publisher(settings_for(broker, "preprocessor", **publisher_settings)) as pub:
        assert pub.wait_connected(WAIT)
        for index, batch in enumerate(batches):
            if index:
                time.sleep(pause_s)
            for i in batch:
                assert pub.publish_record(record(i))
            assert pub.flush(WAIT)   # acknowledged: the broker holds them in memory only
        assert pub.stats().resent == 0
        broker.restart(kill=True)
        assert poll(lambda: pub.connected and pub.stats().resent > 0), "nothing was sent again"
        assert pub.flush(WAIT)
        resent = pub.stats().resent
    sink = Collector()
    with sink.subscriber(sub_settings) as sub:
        assert sub.wait_subscribed(WAIT)
        sink.wait_for(lambda s: len(s.records) >= sum(len(b) for b in batches), timeout=3.0)
    return sink, resent


def test_broker_sigkill_loses_no_acknowledged_record(fresh_broker: BrokerProcess) -> None:
    sink, resent = _kill_broker_with_records_queued(fresh_broker, "webserver-test-kill", [range(300)], 0.0,
                                                    resend_window_s=10.0)
    assert resent == 300
    assert sorted(r.frame_id for r in sink.records) == list(range(300))


def test_only_records_acknowledged_within_the_window_are_sent_again(fresh_broker: BrokerProcess) -> None:
    sink, resent = _kill_broker_with_records_queued(fresh_broker, "webserver-test-window",
                                                    [range(0, 50), range(50, 80)], 1.2, resend_window_s=0.6)
    assert resent == 30   # the older 50 were not (they were in memory only and died with the broker)
    received = {r.frame_id for r in sink.records}
    assert set(range(50, 80)) <= received <= set(range(80))


def test_subscriber_drops_qos1_redeliveries_but_not_new_captures(broker: BrokerProcess) -> None:
    sink = Collector()
    with sink.subscriber(settings_for(broker, "monitor")) as sub, Publisher(settings_for(broker, "preprocessor")) as pub:
        assert sub.wait_subscribed(WAIT) and pub.wait_connected(WAIT)
        first = record(5, camera="dup")
        restarted = FrameRecord(camera="dup", frame_id=5, captured_at=first.captured_at + 60, site="cloud", status="ok")
        for rec in (first, first, restarted):
            pub.publish_record(rec)
        assert pub.flush(WAIT)
        assert sink.wait_for(lambda s: len(s.records) == 2)
        time.sleep(0.2)
        assert sub.stats().duplicates == 1
    assert [r.site for r in sink.records] == ["edge", "cloud"]


def test_buffer_is_bounded_while_broker_is_away(fresh_broker: BrokerProcess) -> None:
    sink = Collector()
    with sink.subscriber(settings_for(fresh_broker, "webserver", client_id="webserver-test-buffer")) as sub, \
            Publisher(settings_for(fresh_broker, "preprocessor", max_buffered=5)) as pub:
        assert sub.wait_subscribed(WAIT) and pub.wait_connected(WAIT)
        fresh_broker.stop()
        assert not pub.wait_connected(0) or _wait_disconnected(pub)
        mids = [pub.publish_record(record(i)) for i in range(8)]
        assert [mid is not None for mid in mids] == [True] * 5 + [False] * 3
        assert pub.stats().dropped == 3 and pub.stats().buffered == 5
        assert not pub.wait_acked(mids[0], 0.3)   # held, not acknowledged: the broker is away
        fresh_broker.start()
        assert all(pub.wait_acked(mid, WAIT) for mid in mids[:5])
        assert pub.flush(0)
        assert sink.wait_for(lambda s: len(s.records) == 5)
    assert sorted(r.frame_id for r in sink.records) == [0, 1, 2, 3, 4]


def _wait_disconnected(pub: Publisher, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while pub.connected and time.monotonic() < deadline:
        time.sleep(0.02)
    return not pub.connected


@pytest.fixture
def broker_workdir() -> Path:
    """A workdir in the temp dir: reachable by the `mosquitto` user Mosquitto drops to as root."""
    workdir = Path(tempfile.mkdtemp(prefix="edgeoffload-tls-broker-"))
    yield workdir
    shutil.rmtree(workdir, ignore_errors=True)


def test_records_flow_over_tls_and_nothing_else_is_served(broker_workdir: Path, tls_files: TLSFiles) -> None:
    workdir = broker_workdir
    tls = tls_files
    with start_broker(workdir=workdir, tls=tls) as tls_broker:
        def over_tls(role: str) -> MQTTSettings:
            return MQTTSettings(host="127.0.0.1", port=tls_broker.port, username=role, password=tls_broker.users[role],
                                cafile=tls.cafile, reconnect_min_s=0.2, reconnect_max_s=1)

        config = (workdir / "mosquitto.conf").read_text()
        assert config.count("\nlistener ") == 1 and f"certfile {workdir}/tls/tls.crt" in config
        plaintext = MQTTSettings(host="127.0.0.1", port=tls_broker.port, username="preprocessor",
                                 password=tls_broker.users["preprocessor"], reconnect_min_s=0.5, reconnect_max_s=1)
        with Publisher(plaintext) as refused:  # the plaintext listener is off when TLS is on
            assert not refused.wait_connected(1.5)

        sink = Collector()
        with sink.subscriber(over_tls("webserver")) as sub, Publisher(over_tls("preprocessor")) as pub:
            assert sub.wait_subscribed(WAIT) and pub.wait_connected(WAIT), pub.last_error
            pub.publish_record(record(1, camera="tls"))
            assert pub.flush(WAIT) and sink.wait_for(lambda s: len(s.records) == 1)
        untrusted = MQTTSettings(host="127.0.0.1", port=tls_broker.port, username="preprocessor",
                                 password=tls_broker.users["preprocessor"], cafile=tls.certfile,
                                 reconnect_min_s=0.5, reconnect_max_s=1)
        with Publisher(untrusted) as rejected:  # wrong CA: the handshake must fail
            assert not rejected.wait_connected(1.5)
    assert sink.records[0].camera == "tls"


def test_previews_are_retained_at_qos0_readable_by_the_webserver_and_not_counted_as_records(
        broker: BrokerProcess) -> None:
    from edgeoffload.broker import PREVIEWS_TOPIC
    from edgeoffload.messaging import preview_topic

    assert preview_topic("door/1") == "edgeoffload/previews/door_1"
    received: list[tuple[str, bytes]] = []
    with Publisher(settings_for(broker, "preprocessor")) as pub:
        assert pub.wait_connected(WAIT), pub.last_error
        for i in range(200):  # many: every QoS 0 id must be forgotten once written
            assert pub.publish_preview("door/1", b'{"n": %d}' % i)
        assert pub.publish_record(record(1))
        assert pub.flush(WAIT)
        assert poll(lambda: not pub._previews_in_flight)  # noqa: SLF001 - no id left to clash with a record's
        stats = pub.stats()
        # Subscribes afterwards: only the retained (last) preview can reach it.
        with Subscriber(settings_for(broker, "webserver"), (f"{PREVIEWS_TOPIC}/#",),
                        on_preview=lambda topic, payload: received.append((topic, payload))) as sub:
            assert sub.wait_subscribed(WAIT)
            assert poll(lambda: len(received) == 1)
    assert received == [("edgeoffload/previews/door_1", b'{"n": 199}')]
    assert stats.published == 1 and stats.acked == 1 and stats.buffered == 0  # the record only


def test_only_the_preprocessor_may_publish_previews(broker: BrokerProcess) -> None:
    from edgeoffload.broker import PREVIEWS_TOPIC

    received: list[bytes] = []  # of this test's camera (other tests' retained previews may arrive too)
    with Subscriber(settings_for(broker, "monitor"), (f"{PREVIEWS_TOPIC}/acl-cam",),
                    on_preview=lambda _topic, payload: received.append(payload)) as monitor, \
            Publisher(settings_for(broker, "webserver"), unit="webserver") as intruder, \
            Publisher(settings_for(broker, "preprocessor")) as legit:
        assert monitor.wait_subscribed(WAIT) and intruder.wait_connected(WAIT) and legit.wait_connected(WAIT)
        intruder.publish_preview("acl-cam", b"forged")
        legit.publish_preview("acl-cam", b"real")
        assert poll(lambda: b"real" in received)
        time.sleep(0.3)
    assert received == [b"real"]
