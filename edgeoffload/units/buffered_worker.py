"""A gthread worker whose threads only ever see complete requests.

gunicorn's gthread worker hands a connection to a thread as soon as its first byte arrives;
the thread then reads the rest of the headers and the body with blocking reads. A client
that trickles its headers or body (slowloris) therefore holds a thread for as long as it
likes, and a few dozen such clients starve every thread: health probes time out and
Kubernetes restarts a healthy pod.

BufferingWorker reads each request in the worker's event loop instead, without blocking,
until it is complete (headers, then Content-Length bytes or the last chunk), and only then
gives it to a thread, whose parser reads it from memory; a kept-alive connection's next request
goes through the same check, also when the client pipelined it behind the last one (gthread
would give those bytes straight to a thread). What slow clients can hold is then
bounded by time and memory, not by threads:
  READ_TIMEOUT_S   a request must arrive in full within this (default 30 s) of the connection
                   opening, or of a kept-alive one sending its next request; otherwise 408 and
                   the connection is closed (checked once a second).
  READ_BUFFER_MB   bytes held for incomplete requests per worker (default 64 MiB); beyond it,
                   reading pauses until requests complete or time out.
  MAX_BUFFERED_REQUEST_BYTES  larger requests are given to a thread once this much arrived
                   (default 8 MiB + 64 KiB); the app then refuses them with 413.
The same HTTP/1.1 parser (gunicorn's) still checks every request; this worker only decides
when one is complete. TLS connections (gunicorn certfile) are served as by gthread.
"""
from __future__ import annotations

import errno
import os
import selectors
import socket
import time
from dataclasses import dataclass, field
from functools import partial

from gunicorn.workers.gthread import TConn, ThreadWorker

MAX_HEADER_BYTES = 64 * 1024
MAX_CHUNK_LINE = 1024
RECV_BYTES = 256 * 1024
TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise SystemExit(f"{name}: expected a number, got {raw!r}") from None
    if value <= 0:
        raise SystemExit(f"{name}: must be > 0, got {raw!r}")
    return value


class RequestEnd:
    """Tells, from bytes that arrive piecemeal, whether one HTTP/1.x request is complete.

    "Complete" also covers requests that are certainly bad or too large: they go to gunicorn's
    parser or the app at once, which answer 400/413 without waiting for more bytes.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._body_start: int | None = None
        self._length = 0
        self._chunked = False
        self._chunk_pos = 0        # where the next chunk-size line starts
        self._in_trailers = False
        self.expects_continue = False  # the client waits for "100 Continue" before its body

    def complete(self, data: bytes | bytearray) -> bool:
        if len(data) > self.max_bytes:
            return True
        if self._body_start is None:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                return len(data) > MAX_HEADER_BYTES
            self._body_start = self._chunk_pos = end + 4
            if not self._read_headers(bytes(data[:end])):
                return True
        if not self._chunked:
            return len(data) >= self._body_start + self._length
        return self._chunks_complete(data)

    def _read_headers(self, head: bytes) -> bool:
        """False when the headers already decide the answer (bad length, too large)."""
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                if not value.strip().isdigit():
                    return False
                self._length = int(value.strip())
            elif name == b"transfer-encoding":
                self._chunked = b"chunked" in value.lower()
            elif name == b"expect":
                self.expects_continue = value.strip().lower() == b"100-continue"
        return self._length <= self.max_bytes

    def _chunks_complete(self, data: bytes | bytearray) -> bool:
        while True:
            if self._in_trailers:  # after the last chunk: an empty line, or trailer lines then one
                rest = data[self._chunk_pos:]
                return rest.startswith(b"\r\n") or rest.find(b"\r\n\r\n") >= 0
            line_end = data.find(b"\r\n", self._chunk_pos)
            if line_end < 0:
                return len(data) - self._chunk_pos > MAX_CHUNK_LINE
            size_text = bytes(data[self._chunk_pos:line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                return True  # not chunked encoding: the parser answers 400
            if size == 0:
                self._chunk_pos, self._in_trailers = line_end + 2, True
                continue
            next_chunk = line_end + 2 + size + 2
            if len(data) < next_chunk:
                return False
            self._chunk_pos = next_chunk


@dataclass(eq=False)
class Incoming:
    """A connection whose request is still arriving."""

    conn: TConn
    deadline: float
    end: RequestEnd
    data: bytearray = field(default_factory=bytearray)
    continued: bool = False   # "100 Continue" sent


class BufferingWorker(ThreadWorker):
    """gthread, except that a thread gets a connection only once its request has fully arrived."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.read_timeout_s = _env_number("READ_TIMEOUT_S", 30.0)
        self.buffer_budget = int(_env_number("READ_BUFFER_MB", 64.0) * 1024 * 1024)
        self.max_request_bytes = int(_env_number("MAX_BUFFERED_REQUEST_BYTES", 8 * 1024 * 1024 + 64 * 1024))
        self.incoming: dict[TConn, Incoming] = {}
        self.paused: list[Incoming] = []
        self.buffered_bytes = 0

    # -- where gthread would hand the connection to a thread ---------------------------------
    def accept(self, listener: socket.socket) -> None:
        if self.cfg.is_ssl:
            super().accept(listener)
            return
        try:
            client_sock, client_addr = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        self._receive(TConn(self.cfg, client_sock, client_addr, listener.getsockname()))

    def on_client_socket_readable(self, conn: TConn, client: socket.socket) -> None:
        if self.cfg.is_ssl:
            super().on_client_socket_readable(conn, client)
            return
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._receive(conn)

    def handle(self, conn: TConn):
        """Runs in a thread: the request's bytes go back in front of gunicorn's parser."""
        prefetched = getattr(conn, "prefetched", b"")
        if prefetched:
            conn.prefetched = b""
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(prefetched)
        return super().handle(conn)

    def finish_request(self, conn: TConn, fs) -> None:
        """Runs in the event loop once a thread is done with a request. When the client pipelined
        its next request, gthread hands the connection straight back to a thread, whose parser
        would then block reading the rest of it: those bytes go through the completeness check
        here instead, like any request still arriving."""
        if not self.cfg.is_ssl and not fs.cancelled() and fs.exception() is None and fs.result() is True:
            leftover = conn.parser.unreader.take_buffered()
            if leftover:
                self._receive(conn, leftover)
                return
        super().finish_request(conn, fs)

    def murder_pending(self) -> None:
        """Called once per loop turn: also time out requests that are still arriving."""
        super().murder_pending()
        now = time.monotonic()
        for incoming in [i for i in self.incoming.values() if i.deadline <= now]:
            try:
                incoming.conn.sock.send(TIMED_OUT)
            except OSError:
                pass
            self._forget(incoming)
            self._close(incoming.conn)
        self._resume()

    # -- reading without blocking -----------------------------------------------------------
    def _receive(self, conn: TConn, arrived: bytes = b"") -> None:
        """Wait in the event loop for `conn`'s next request, of which `arrived` came already."""
        conn.sock.setblocking(False)
        incoming = Incoming(conn, time.monotonic() + self.read_timeout_s, RequestEnd(self.max_request_bytes))
        self.incoming[conn] = incoming
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, incoming))
        if arrived:
            self._add(incoming, arrived)

    def _on_readable(self, incoming: Incoming, _sock: socket.socket) -> None:
        if self.buffered_bytes >= self.buffer_budget:
            self.poller.unregister(incoming.conn.sock)
            self.paused.append(incoming)
            return
        try:
            data = incoming.conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away before finishing its request
            self._forget(incoming)
            self._close(incoming.conn)
            return
        self._add(incoming, data)

    def _add(self, incoming: Incoming, data: bytes) -> None:
        """Keep `data`; once the request is complete, give it to a thread."""
        incoming.data += data
        self.buffered_bytes += len(data)
        if not incoming.end.complete(incoming.data):
            if incoming.end.expects_continue and not incoming.continued:
                incoming.continued = True  # curl waits a second for it before sending a large body
                try:
                    incoming.conn.sock.send(CONTINUE)
                except OSError:
                    pass
            return
        self._forget(incoming)
        incoming.conn.prefetched = bytes(incoming.data)
        incoming.conn.data_ready = True
        self.enqueue_req(incoming.conn)
        self._resume()

    def _forget(self, incoming: Incoming) -> None:
        self.incoming.pop(incoming.conn, None)
        self.buffered_bytes -= len(incoming.data)
        if incoming in self.paused:
            self.paused.remove(incoming)
        else:
            try:
                self.poller.unregister(incoming.conn.sock)
            except (KeyError, ValueError, OSError):
                pass

    def _resume(self) -> None:
        while self.paused and self.buffered_bytes < self.buffer_budget:
            incoming = self.paused.pop(0)
            self.poller.register(incoming.conn.sock, selectors.EVENT_READ, partial(self._on_readable, incoming))

    def _close(self, conn: TConn) -> None:
        self.nr_conns -= 1
        conn.close()
