"""Server-Sent Events fan-out with bounded per-client queues.

The MQTT network thread publishes into every connected client's queue without ever
waiting: a client whose queue is full (a slow or stalled browser) is disconnected instead
of slowing ingest or growing memory, and its browser's EventSource reconnects and starts
again from a fresh snapshot. Under gunicorn's gthread worker every open stream holds one
worker thread, so the number of concurrent streams is capped (`max_clients`) below the
thread count to leave threads for the page and the API.
"""
from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

RETRY_MS = 3000  # how long a browser waits before reconnecting a closed stream


class TooManyClients(RuntimeError):
    """Every stream slot is taken; the caller answers 503 with Retry-After."""


def format_event(event: str, data: Any) -> str:
    """One SSE message; compact JSON never contains a newline, so one `data:` line suffices."""
    if "\n" in event or "\r" in event:
        raise ValueError("SSE event names must be a single line")
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@dataclass(eq=False)
class Client:
    """One open stream: its queue of formatted messages and whether it was cut off."""

    queue: "queue.Queue[str]"
    overflowed: threading.Event = field(default_factory=threading.Event)


@dataclass
class HubStats:
    clients: int
    max_clients: int
    served: int          # streams ever opened
    refused: int         # connections refused because every slot was taken
    overflowed: int      # clients cut off because they did not keep up


class EventHub:
    """Broadcasts events to connected clients without blocking the publisher."""

    def __init__(self, max_clients: int = 8, queue_size: int = 512) -> None:
        if max_clients < 1 or queue_size < 1:
            raise ValueError("EventHub needs max_clients >= 1 and queue_size >= 1")
        self.max_clients = max_clients
        self.queue_size = queue_size
        self._lock = threading.Lock()
        self._clients: set[Client] = set()
        self._closed = threading.Event()
        self._served = self._refused = self._overflowed = 0

    def connect(self) -> Client:
        with self._lock:
            if self._closed.is_set() or len(self._clients) >= self.max_clients:
                self._refused += 1
                raise TooManyClients(f"all {self.max_clients} event-stream slots are in use")
            client = Client(queue.Queue(self.queue_size))
            self._clients.add(client)
            self._served += 1
            return client

    def disconnect(self, client: Client) -> None:
        with self._lock:
            self._clients.discard(client)

    def publish(self, event: str, data: Any) -> int:
        """Queue `event` for every client; returns how many clients were cut off for being full."""
        message = format_event(event, data)
        cut = 0
        with self._lock:
            for client in list(self._clients):
                try:
                    client.queue.put_nowait(message)
                except queue.Full:
                    client.overflowed.set()
                    self._clients.discard(client)
                    cut += 1
            self._overflowed += cut
        return cut

    def close(self) -> None:
        """End every stream (worker shutdown): generators notice within one poll interval."""
        self._closed.set()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def stats(self) -> HubStats:
        with self._lock:
            return HubStats(len(self._clients), self.max_clients, self._served, self._refused, self._overflowed)


@dataclass(frozen=True, slots=True)
class StreamTiming:
    """How often a stream sends snapshots and heartbeats, and how long it lives."""

    snapshot_interval_s: float = 1.0   # at most one snapshot per interval, only while data changes
    heartbeat_s: float = 15.0          # comment line after this much silence (keeps proxies open)
    max_duration_s: float = 300.0      # then the stream ends and the browser reconnects
    poll_s: float = 0.5                # how quickly a stream notices shutdown or overflow


def stream(hub: EventHub, client: Client, snapshot: Callable[[], Any], is_changing: Callable[[], bool],
           timing: StreamTiming = StreamTiming(), clock: Callable[[], float] = time.monotonic) -> Iterator[str]:
    """The SSE body for one client: a snapshot first, then queued events, snapshots and heartbeats.

    `snapshot()` builds the `snapshot` event's data; it is re-sent every interval while
    `is_changing()` (so rates decay visibly to zero), and not at all on an idle testbed.
    """
    try:
        yield f"retry: {RETRY_MS}\n\n"
        yield format_event("snapshot", snapshot())
        started = last_write = last_snapshot = clock()
        while not hub.closed and not client.overflowed.is_set():
            now = clock()
            if now - started >= timing.max_duration_s:
                return
            wait = min(timing.poll_s, max(0.0, timing.snapshot_interval_s - (now - last_snapshot)))
            batch = _take_batch(client.queue, wait)
            if batch:
                yield batch
                last_write = clock()
            now = clock()
            if now - last_snapshot >= timing.snapshot_interval_s:
                last_snapshot = now
                if is_changing():
                    yield format_event("snapshot", snapshot())
                    last_write = now
            if now - last_write >= timing.heartbeat_s:
                yield ": heartbeat\n\n"
                last_write = now
    finally:
        hub.disconnect(client)


def _take_batch(messages: "queue.Queue[str]", wait: float, most: int = 64) -> str:
    """Wait up to `wait` for one message, then take what else is already queued (one write)."""
    try:
        batch = [messages.get(timeout=wait)]
    except queue.Empty:
        return ""
    while len(batch) < most:
        try:
            batch.append(messages.get_nowait())
        except queue.Empty:
            break
    return "".join(batch)


__all__ = ["EventHub", "Client", "HubStats", "StreamTiming", "TooManyClients", "format_event", "stream", "RETRY_MS"]
