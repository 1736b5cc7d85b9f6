"""A TCP relay for the local testbed: round-robin over replicas, optionally through an emulated WAN.

Locally there is no kube-proxy and no WAN, so one small relay plays both parts: it spreads
new connections over the current replica list (which the local autoscaler changes at
run time), as a Service does (per connection: a keep-alive connection stays where it is),
and, when given a link, delays and rate-limits the bytes it forwards. Relays given the same
`Wan` share its bandwidth (the cloud Service and each cloud replica's own address).

The link model matches the simulator's: each direction is one FIFO line shared by all
connections, a chunk occupies it for `bytes*8/bandwidth` seconds and arrives `delay_s`
after leaving it (propagation). It runs in-process (threads), needs no privileges, and
works on any OS; it shapes data, not the TCP handshake.
"""
from __future__ import annotations

import collections
import itertools
import math
import socket
import threading
import time
from dataclasses import dataclass
from typing import Iterable

Address = tuple[str, int]
CHUNK = 64 * 1024
MAX_QUEUED_BYTES = 1024 * 1024  # per direction of a connection: the emulated router's buffer


@dataclass(frozen=True, slots=True)
class LinkProfile:
    """One-way propagation delay and bandwidth of each direction (inf = unlimited)."""

    delay_s: float = 0.0
    uplink_bps: float = math.inf
    downlink_bps: float = math.inf

    def __post_init__(self) -> None:
        if self.delay_s < 0 or not math.isfinite(self.delay_s):
            raise ValueError(f"link delay must be finite and >= 0, got {self.delay_s}")
        if not (self.uplink_bps > 0 and self.downlink_bps > 0):
            raise ValueError("link bandwidths must be > 0 bits/s")

    @property
    def shaped(self) -> bool:
        return self.delay_s > 0 or math.isfinite(self.uplink_bps) or math.isfinite(self.downlink_bps)


class Line:
    """One direction of a link: FIFO serialisation at `bps`, then `delay_s` of propagation."""

    def __init__(self, bps: float, delay_s: float) -> None:
        self.bps = bps
        self.delay_s = delay_s
        self._free_at = 0.0
        self._lock = threading.Lock()
        self.bytes = 0

    def delivery_time(self, nbytes: int, arrival: float) -> float:
        """When a chunk handed over at `arrival` reaches the far end (reserves the line)."""
        with self._lock:
            self.bytes += nbytes
            start = max(arrival, self._free_at)
            done = start + (nbytes * 8 / self.bps if math.isfinite(self.bps) else 0.0)
            self._free_at = done
            return done + self.delay_s


class Wan:
    """One emulated link: a Line each way, shared by every relay that crosses it (the Service's
    relay and each replica's own), so they all compete for the same bandwidth."""

    def __init__(self, profile: LinkProfile) -> None:
        self.profile = profile
        self.uplink = Line(profile.uplink_bps, profile.delay_s)
        self.downlink = Line(profile.downlink_bps, profile.delay_s)


class _DelayedPipe:
    """Forward src -> dst through a Line: a reader stamps chunks, a writer releases them on time."""

    def __init__(self, src: socket.socket, dst: socket.socket, line: Line | None, on_close) -> None:
        self._src, self._dst, self._line = src, dst, line
        self._queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self._queued_bytes = 0
        self._broken = False      # the destination failed: stop queueing for it
        self._ready = threading.Condition()
        self._on_close = on_close
        self._reader = threading.Thread(target=self._read, daemon=True, name="relay-read")
        self._writer = threading.Thread(target=self._write, daemon=True, name="relay-write")

    def start(self) -> None:
        self._reader.start()
        self._writer.start()

    def _read(self) -> None:
        try:
            while not self._broken and (data := self._src.recv(CHUNK)):
                now = time.monotonic()
                due = self._line.delivery_time(len(data), now) if self._line else now
                self._push(due, data)
        except OSError:
            pass
        self._push(0.0, None)

    def _push(self, due: float, data: bytes | None) -> None:
        """Queue a chunk; block while the buffer is full, so TCP back-pressure reaches the sender."""
        with self._ready:
            while data is not None and self._queued_bytes > MAX_QUEUED_BYTES and not self._broken:
                self._ready.wait()
            self._queue.append((due, data))
            self._queued_bytes += len(data or b"")
            self._ready.notify_all()

    def _write(self) -> None:
        try:
            while True:
                with self._ready:
                    while not self._queue:
                        self._ready.wait()
                    due, data = self._queue.popleft()
                    self._queued_bytes -= len(data or b"")
                    self._ready.notify_all()
                if data is None:
                    break
                if (wait := due - time.monotonic()) > 0:
                    time.sleep(wait)
                self._dst.sendall(data)
            self._dst.shutdown(socket.SHUT_WR)
        except OSError:
            with self._ready:
                self._broken = True
                self._ready.notify_all()
        self._on_close()


class TcpRelay:
    """Accepts on host:port and relays each connection to the next backend (round robin)."""

    def __init__(self, backends: Iterable[Address] = (), host: str = "127.0.0.1", port: int = 0,
                 link: LinkProfile | Wan | None = None, name: str = "relay") -> None:
        self.name = name
        wan = link if isinstance(link, Wan) else Wan(link) if link is not None and link.shaped else None
        self.wan = wan
        self.link = wan.profile if wan else None
        self.uplink = wan.uplink if wan else None
        self.downlink = wan.downlink if wan else None
        self._backends: list[Address] = list(backends)
        self._cycle = itertools.count()
        self._lock = threading.Lock()
        self._server = socket.create_server((host, port), reuse_port=False)
        self._server.settimeout(0.2)
        self.host, self.port = self._server.getsockname()[:2]
        self._stopped = threading.Event()
        self._open: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name=f"{name}-accept")
        self.connections = 0
        self.refused = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def backends(self) -> list[Address]:
        with self._lock:
            return list(self._backends)

    def set_backends(self, backends: Iterable[Address]) -> None:
        """Replace the replica list; open connections stay where they are (as with kube-proxy)."""
        with self._lock:
            self._backends = list(backends)

    def start(self) -> "TcpRelay":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(2)
        self._server.close()
        with self._lock:
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            _close(sock)

    def __enter__(self) -> "TcpRelay":
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _next_backend(self) -> Address | None:
        with self._lock:
            if not self._backends:
                return None
            return self._backends[next(self._cycle) % len(self._backends)]

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._server.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            self._connect(client)

    def _connect(self, client: socket.socket) -> None:
        backend = self._next_backend()
        try:
            if backend is None:
                raise OSError("no backends")
            upstream = socket.create_connection(backend, timeout=5)
            upstream.settimeout(None)
        except OSError:
            self.refused += 1
            _close(client)
            return
        client.settimeout(None)
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self.connections += 1
            self._open.update((client, upstream))
        remaining = [2]

        def half_closed() -> None:
            with self._lock:
                remaining[0] -= 1
                done = remaining[0] == 0
                if done:
                    self._open.difference_update((client, upstream))
            if done:
                _close(client)
                _close(upstream)

        _DelayedPipe(client, upstream, self.uplink, half_closed).start()
        _DelayedPipe(upstream, client, self.downlink, half_closed).start()


def _close(sock: socket.socket) -> None:
    """Shut down first: close() alone neither wakes a thread blocked in recv nor sends FIN."""
    for action in (lambda: sock.shutdown(socket.SHUT_RDWR), sock.close):
        try:
            action()
        except OSError:
            pass


__all__ = ["LinkProfile", "Line", "TcpRelay", "Wan"]
