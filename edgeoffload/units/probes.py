"""Health probes on a port of their own, answered by a small server thread in each worker.

The units' main port is served by gunicorn's event loop, which stops accepting connections
while `worker_connections` of them are open: about a thousand idle or slow clients would then
keep out the kubelet's probes too until READ_TIMEOUT_S closes them, and Kubernetes would
restart a healthy pod. So the probes get a listener of their own (PROBE_BIND, default
0.0.0.0:8081), bound once in the gunicorn master and inherited by every worker it forks (as
gunicorn shares its own listener: a second process cannot bind the port and take a share of
the probes, which SO_REUSEPORT would allow), and served in each worker by one selector thread
that does nothing else.

It answers GET of PROBE_PATHS by calling the unit's own WSGI app in-process (the probe logic
lives once, in the app), anything else with 404/405/400. It is bounded by design, so clients
that reach this port cannot hold it either: one request per connection (`Connection: close`),
a request head of at most MAX_HEAD_BYTES, which must arrive within HEAD_TIMEOUT_S of the
connection opening (else the connection is closed), and at most MAX_CONNECTIONS open
connections (a new one closes the oldest). A probe is therefore answered within about
HEAD_TIMEOUT_S whatever other clients of this port do, as long as they open fewer than
MAX_CONNECTIONS connections in the moment it takes the kubelet to send its request.
"""
from __future__ import annotations

import json
import logging
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Callable

from werkzeug.test import EnvironBuilder, run_wsgi_app

# Every unit's probe paths (webserver /healthz, the others KServe v2's); a unit without one of
# them answers it 404 from its own app.
PROBE_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/healthz"})
MAX_HEAD_BYTES = 8 * 1024
HEAD_TIMEOUT_S = 1.0
MAX_CONNECTIONS = 64
# Headers the probe server sets itself: one request per connection, the body it sends whole.
HOP_BY_HOP = frozenset({"connection", "content-length", "transfer-encoding", "keep-alive"})

log = logging.getLogger(__name__)
WsgiApp = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class ProbeLimits:
    """What one client of the probe port can hold: bytes, time, and connections."""

    head_bytes: int = MAX_HEAD_BYTES
    head_timeout_s: float = HEAD_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS


def parse_bind(bind: str) -> tuple[str, int]:
    """`host:port` (IPv6 hosts in brackets) -> (host, port); a one-line error otherwise."""
    host, sep, port = bind.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"PROBE_BIND: expected host:port, got {bind!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def probe_listener(bind: str) -> socket.socket:
    """A listening, non-blocking socket on `bind` (SO_REUSEADDR only, as gunicorn's own)."""
    host, port = parse_bind(bind)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def http_response(status: int | str, body: bytes = b"", headers: list[tuple[str, str]] | None = None) -> bytes:
    """A complete HTTP/1.1 answer that closes the connection."""
    if isinstance(status, int):
        status = f"{status} {HTTPStatus(status).phrase}"
    lines = [f"HTTP/1.1 {status}"]
    lines += [f"{name}: {value}" for name, value in headers or [] if name.lower() not in HOP_BY_HOP]
    lines += [f"Content-Length: {len(body)}", "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _json_error(status: int, message: str) -> bytes:
    return http_response(status, json.dumps({"error": message}).encode(), [("Content-Type", "application/json")])


def answer(app: WsgiApp, head: bytes) -> bytes:
    """The response to one request head: the app's, for GET of a probe path."""
    request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return _json_error(400, "bad request line")
    method, target, _version = parts
    path, _, query = target.partition("?")
    if path not in PROBE_PATHS:
        return _json_error(404, "not a probe path")
    if method != "GET":
        return _json_error(405, "probes answer GET only")
    try:
        environ = EnvironBuilder(path=path, query_string=query, method="GET").get_environ()
        body_parts, status, headers = run_wsgi_app(app, environ, buffered=True)
        return http_response(status, b"".join(body_parts), list(headers.items()))
    except Exception:  # never let one probe end the thread that answers all of them
        log.exception("probe %s failed", path)
        return _json_error(500, "probe failed")


@dataclass(eq=False)
class _Connection:
    sock: socket.socket
    deadline: float
    data: bytearray = field(default_factory=bytearray)


class ProbeServer:
    """One selector thread answering probes on `listener` with `app` (see the module doc)."""

    def __init__(self, app: WsgiApp, listener: socket.socket, limits: ProbeLimits = ProbeLimits()) -> None:
        self.app = app
        self.listener = listener
        self.limits = limits
        self.connections: dict[socket.socket, _Connection] = {}   # oldest first
        self._selector = selectors.DefaultSelector()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="probe-server")

    @property
    def address(self) -> tuple[str, int]:
        return self.listener.getsockname()[:2]

    def start(self) -> "ProbeServer":
        self._selector.register(self.listener, selectors.EVENT_READ)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (the listener stays open: the gunicorn master owns it)."""
        self._stopping.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stopping.is_set():
            for key, _events in self._selector.select(self._wait_s()):
                if key.fileobj is self.listener:
                    self._accept()
                elif (connection := self.connections.get(key.fileobj)) is not None:  # not closed this turn
                    self._read(connection)
            self._expire(time.monotonic())
        for connection in list(self.connections.values()):
            self._close(connection)
        self._selector.close()

    def _wait_s(self) -> float:
        """Until the oldest connection's deadline (they are in deadline order), at most 0.25 s."""
        oldest = next(iter(self.connections.values()), None)
        return 0.25 if oldest is None else min(0.25, max(0.0, oldest.deadline - time.monotonic()))

    def _accept(self) -> None:
        while True:
            try:
                sock, _address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return   # another worker took it, or the backlog is empty
            except OSError as exc:   # e.g. EMFILE: keep serving the connections already open
                log.warning("probe listener: %s", exc)
                return
            if len(self.connections) >= self.limits.max_connections:
                self._close(next(iter(self.connections.values())))
            sock.setblocking(False)
            self.connections[sock] = _Connection(sock, time.monotonic() + self.limits.head_timeout_s)
            self._selector.register(sock, selectors.EVENT_READ)

    def _read(self, connection: _Connection) -> None:
        try:
            data = connection.sock.recv(self.limits.head_bytes + 1 - len(connection.data))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(connection)
            return
        connection.data += data
        end = connection.data.find(b"\r\n\r\n")
        if end >= 0:
            self._reply(connection, answer(self.app, bytes(connection.data[:end])))
        elif len(connection.data) > self.limits.head_bytes:
            self._reply(connection, _json_error(431, f"request head over {self.limits.head_bytes} bytes"))

    def _reply(self, connection: _Connection, response: bytes) -> None:
        """Answers are a few hundred bytes: they fit the socket's send buffer, or the client
        is not reading and loses its answer."""
        try:
            connection.sock.send(response)
        except OSError:
            pass
        self._close(connection)

    def _expire(self, now: float) -> None:
        while self.connections:
            oldest = next(iter(self.connections.values()))
            if oldest.deadline > now:
                return
            self._close(oldest)

    def _close(self, connection: _Connection) -> None:
        del self.connections[connection.sock]
        self._selector.unregister(connection.sock)
        connection.sock.close()


# -- gunicorn: bound in the master, served in every worker (edgeoffload/units/gunicorn_conf.py) --
_master_listener: socket.socket | None = None   # inherited by the workers the master forks


def bind_in_master(bind: str) -> socket.socket:
    """Bind PROBE_BIND once per master (a config reload keeps the listener it has)."""
    global _master_listener
    if _master_listener is None:
        _master_listener = probe_listener(bind)
    return _master_listener


def serve_in_worker(app: WsgiApp) -> ProbeServer:
    """Start this worker's probe thread on the listener the master bound."""
    if _master_listener is None:
        raise RuntimeError("the probe listener was not bound in the gunicorn master")
    return ProbeServer(app, _master_listener).start()
