"""EventHub / stream: bounded fan-out, slow clients cut off, snapshots, heartbeats, shutdown."""
from __future__ import annotations

import threading
import time

import pytest

from edgeoffload.units.event_stream import EventHub, StreamTiming, TooManyClients, format_event, stream

FAST = StreamTiming(snapshot_interval_s=0.05, heartbeat_s=0.2, max_duration_s=30, poll_s=0.02)


def test_format_event_is_one_data_line() -> None:
    assert format_event("record", {"camera": "a\nb"}) == 'event: record\ndata: {"camera":"a\\nb"}\n\n'
    with pytest.raises(ValueError):
        format_event("bad\nname", {})


def test_client_slots_are_capped_and_freed() -> None:
    hub = EventHub(max_clients=2)
    first, _second = hub.connect(), hub.connect()
    with pytest.raises(TooManyClients):
        hub.connect()
    hub.disconnect(first)
    hub.connect()
    assert hub.stats().refused == 1 and hub.stats().served == 3


def test_a_full_client_is_cut_off_without_blocking_the_others() -> None:
    hub = EventHub(max_clients=4, queue_size=3)
    slow, fast = hub.connect(), hub.connect()
    started = time.monotonic()
    cut = [hub.publish("record", {"n": n}) for n in range(3)]
    fast.queue.get_nowait(), fast.queue.get_nowait(), fast.queue.get_nowait()  # fast keeps up
    cut.append(hub.publish("record", {"n": 3}))
    assert time.monotonic() - started < 1.0
    assert cut == [0, 0, 0, 1]
    assert slow.overflowed.is_set() and not fast.overflowed.is_set()
    assert '"n":3' in fast.queue.get_nowait()
    assert hub.stats().clients == 1 and hub.stats().overflowed == 1


def test_stream_sends_snapshot_then_events_and_disconnects_when_closed() -> None:
    hub = EventHub()
    client = hub.connect()
    body = stream(hub, client, snapshot=lambda: {"cameras": 0}, is_changing=lambda: False, timing=FAST)
    assert next(body) == "retry: 3000\n\n"
    assert next(body) == format_event("snapshot", {"cameras": 0})
    hub.publish("record", {"camera": "a"})
    hub.publish("record", {"camera": "b"})
    batch = next(body)
    assert batch == format_event("record", {"camera": "a"}) + format_event("record", {"camera": "b"})
    body.close()  # what the server does when the browser goes away
    assert hub.stats().clients == 0


def test_snapshots_repeat_only_while_data_changes_and_heartbeats_fill_silence() -> None:
    hub = EventHub()
    changing = threading.Event()
    changing.set()
    body = stream(hub, hub.connect(), snapshot=lambda: {"n": 1}, is_changing=changing.is_set, timing=FAST)
    next(body), next(body)
    assert next(body).startswith("event: snapshot")
    changing.clear()
    assert next(body) == ": heartbeat\n\n"
    body.close()


def test_stream_ends_on_hub_close_overflow_and_max_duration() -> None:
    hub = EventHub(queue_size=1)
    closing = stream(hub, hub.connect(), lambda: {}, lambda: False, FAST)
    next(closing), next(closing)
    hub.close()
    assert list(closing) == []
    with pytest.raises(TooManyClients):  # a closed hub takes no new streams
        hub.connect()

    hub = EventHub(queue_size=1)
    client = hub.connect()
    overflowing = stream(hub, client, lambda: {}, lambda: False, FAST)
    next(overflowing), next(overflowing)
    hub.publish("record", {}), hub.publish("record", {})
    assert client.overflowed.is_set()
    assert list(overflowing) == [] and hub.stats().clients == 0

    hub = EventHub()
    short = StreamTiming(snapshot_interval_s=0.05, heartbeat_s=10, max_duration_s=0.1, poll_s=0.02)
    expiring = stream(hub, hub.connect(), lambda: {}, lambda: False, short)
    started = time.monotonic()
    list(expiring)
    assert time.monotonic() - started < 5 and hub.stats().clients == 0
