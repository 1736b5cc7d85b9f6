"""TcpRelay: round robin over replicas, emulated WAN delay and bandwidth, clean shutdown."""
from __future__ import annotations

import socket
import socketserver
import threading
import time

import pytest

from edgeoffload.relay import Line, LinkProfile, TcpRelay


class _Echo(socketserver.BaseRequestHandler):
    """Answers each connection with its own name, then echoes everything back."""

    def handle(self) -> None:
        self.request.sendall(self.server.name)  # type: ignore[attr-defined]
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo_servers():
    servers = []
    for name in (b"A", b"B"):
        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
        server.daemon_threads = True
        server.name = name  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


def _greeting(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        return sock.recv(1)


def _round_trip(port: int, payload: bytes) -> float:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.recv(1)
        started = time.monotonic()
        sock.sendall(payload)
        received = b""
        while len(received) < len(payload):
            received += sock.recv(65536)
        assert received == payload
        return time.monotonic() - started


def test_round_robin_over_backends_and_backend_changes(echo_servers) -> None:
    a, b = (s.server_address for s in echo_servers)
    with TcpRelay([a, b]) as relay:
        assert [_greeting(relay.port) for _ in range(4)] == [b"A", b"B", b"A", b"B"]
        relay.set_backends([b])
        assert {_greeting(relay.port) for _ in range(3)} == {b"B"}
        relay.set_backends([])
        assert _greeting(relay.port) == b""  # refused: connection closed straight away
        assert relay.refused == 1


def test_delay_applies_to_both_directions(echo_servers) -> None:
    with TcpRelay([echo_servers[0].server_address], link=LinkProfile(delay_s=0.05)) as relay:
        rtt = _round_trip(relay.port, b"x" * 100)
    assert 0.1 <= rtt < 0.3


def test_bandwidth_limits_throughput(echo_servers) -> None:
    payload = b"y" * 100_000  # 0.8 Mbit: 0.2 s at 4 Mbit/s uplink, the echo at 40 Mbit/s downlink
    link = LinkProfile(delay_s=0.0, uplink_bps=4e6, downlink_bps=40e6)
    with TcpRelay([echo_servers[0].server_address], link=link) as relay:
        elapsed = _round_trip(relay.port, payload)
        assert relay.uplink is not None and relay.uplink.bytes >= len(payload)
    assert 0.2 <= elapsed < 0.6


def test_line_serialises_chunks_fifo() -> None:
    line = Line(bps=8000.0, delay_s=0.5)  # 1000 bytes/s
    assert line.delivery_time(1000, arrival=10.0) == pytest.approx(11.5)
    assert line.delivery_time(500, arrival=10.2) == pytest.approx(12.0)  # queued behind the first
    assert line.delivery_time(100, arrival=20.0) == pytest.approx(20.6)


def test_stop_closes_open_connections(echo_servers) -> None:
    relay = TcpRelay([echo_servers[0].server_address]).start()
    sock = socket.create_connection(("127.0.0.1", relay.port), timeout=5)
    assert sock.recv(1) == b"A"
    relay.stop()
    sock.settimeout(2)
    assert sock.recv(10) == b""
    sock.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", relay.port), timeout=1).close()


def test_invalid_link_profiles_are_refused() -> None:
    with pytest.raises(ValueError):
        LinkProfile(delay_s=-1)
    with pytest.raises(ValueError):
        LinkProfile(uplink_bps=0)


def test_a_slow_link_pushes_back_on_the_sender(echo_servers) -> None:
    """With a 1 Mbit/s uplink the relay stops reading once its buffer is full: the sender is held
    back (unbounded, loopback would take gigabytes in 2 s)."""
    from edgeoffload.relay import MAX_QUEUED_BYTES

    link = LinkProfile(uplink_bps=1e6)
    with TcpRelay([echo_servers[0].server_address], link=link) as relay:
        with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
            sock.recv(1)
            sock.setblocking(False)
            accepted = 0
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                try:
                    accepted += sock.send(b"z" * 65536)
                except BlockingIOError:
                    time.sleep(0.05)
        # relay buffer + kernel socket buffers (autotuned, a few MB) + what the link drained (250 KB)
        assert MAX_QUEUED_BYTES < accepted < MAX_QUEUED_BYTES + 16_000_000
        assert relay.uplink is not None and relay.uplink.bytes <= MAX_QUEUED_BYTES + 2 * 65536 + 250_000 * 2
