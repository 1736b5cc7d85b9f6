"""The probe listener: only probe paths, through the unit's own app, and bounded against
clients that hold connections (head size, head time, open connections)."""
from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests
from flask import Flask, jsonify

from edgeoffload.localscale import process_tree
from edgeoffload.serve import free_port, start_unit
from edgeoffload.units.probes import (ProbeLimits, ProbeServer, answer, parse_bind, probe_listener)

LIMITS = ProbeLimits(head_bytes=1024, head_timeout_s=0.5, max_connections=8)


def probed_app() -> Flask:
    app = Flask("probed")
    app.config["calls"] = 0

    @app.get("/v2/health/ready")
    def ready():
        app.config["calls"] += 1
        return jsonify(ready=True), 200, {"X-Unit": "test"}

    @app.get("/v2/health/live")
    def live():
        raise RuntimeError("a probe handler that fails")

    @app.get("/secret")
    def secret():
        return "not for probes"

    return app


@pytest.fixture
def server() -> Iterator[ProbeServer]:
    listener = probe_listener(f"127.0.0.1:{free_port()}")
    running = ProbeServer(probed_app(), listener, LIMITS).start()
    yield running
    running.stop()
    listener.close()


def url(server: ProbeServer, path: str) -> str:
    host, port = server.address
    return f"http://{host}:{port}{path}"


def connect(server: ProbeServer) -> socket.socket:
    return socket.create_connection(server.address, timeout=5)


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def test_a_probe_path_is_answered_by_the_app_and_the_connection_closes(server: ProbeServer) -> None:
    answer = requests.get(url(server, "/v2/health/ready"), timeout=2)
    assert answer.status_code == 200 and answer.json() == {"ready": True}
    assert answer.headers["X-Unit"] == "test" and answer.headers["Connection"] == "close"
    assert server.app.config["calls"] == 1
    with connect(server) as sock:   # even a client asking for keep-alive gets one answer, then EOF
        sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
        raw = read_all(sock)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and raw.count(b"HTTP/1.1") == 1
    assert server.app.config["calls"] == 2


def test_other_paths_and_methods_never_reach_the_app(server: ProbeServer) -> None:
    assert requests.get(url(server, "/secret"), timeout=2).status_code == 404
    assert requests.post(url(server, "/v2/health/ready"), timeout=2).status_code == 405
    assert requests.get(url(server, "/healthz"), timeout=2).status_code == 404   # a probe path this app lacks
    assert server.app.config["calls"] == 0


def test_a_failing_handler_is_a_500_and_the_server_keeps_answering(server: ProbeServer) -> None:
    answer = requests.get(url(server, "/v2/health/live"), timeout=2)
    assert answer.status_code == 500
    assert requests.get(url(server, "/v2/health/ready"), timeout=2).status_code == 200


def test_a_head_larger_than_the_limit_is_refused(server: ProbeServer) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nX-Pad: " + b"a" * LIMITS.head_bytes)
        raw = read_all(sock)
    assert raw.startswith(b"HTTP/1.1 431 ")
    assert server.app.config["calls"] == 0


def test_a_client_that_does_not_finish_its_head_in_time_is_closed(server: ProbeServer) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\n")
        started = time.monotonic()
        raw = read_all(sock)   # returns at EOF
        waited = time.monotonic() - started
    assert raw == b""
    assert LIMITS.head_timeout_s * 0.8 <= waited <= LIMITS.head_timeout_s + 1.0
    assert not server.connections


def test_at_the_connection_cap_a_new_connection_closes_the_oldest(server: ProbeServer) -> None:
    idle = [connect(server) for _ in range(LIMITS.max_connections + 2)]
    try:
        time.sleep(0.1)
        assert read_all(idle[0]) == b"" and read_all(idle[1]) == b""   # closed at once, not at the timeout
        assert len(server.connections) <= LIMITS.max_connections
        started = time.monotonic()
        assert requests.get(url(server, "/v2/health/ready"), timeout=2).status_code == 200
        assert time.monotonic() - started < LIMITS.head_timeout_s
    finally:
        for sock in idle:
            sock.close()


@pytest.mark.parametrize("head, status", [
    (b"GET /v2/health/ready?verbose=1 HTTP/1.1", 200),
    (b"GARBAGE", 400),
    (b"GET /v2/health/ready SPDY/3", 400),
    (b"DELETE /healthz HTTP/1.0", 405),
    (b"GET /v2/health/ready/../../secret HTTP/1.1", 404),
])
def test_answer_reads_the_request_line(head: bytes, status: int) -> None:
    response = answer(probed_app(), head + b"\r\nHost: x")
    assert response.startswith(f"HTTP/1.1 {status} ".encode()), response
    if status != 200:
        assert "error" in json.loads(response.split(b"\r\n\r\n", 1)[1])


@pytest.mark.parametrize("bind, expected", [("0.0.0.0:8081", ("0.0.0.0", 8081)), (":9000", ("0.0.0.0", 9000)),
                                            ("[::1]:8081", ("::1", 8081))])
def test_parse_bind(bind: str, expected: tuple[str, int]) -> None:
    assert parse_bind(bind) == expected


@pytest.mark.parametrize("bind", ["8081", "host:", "host:http", "host:70000"])
def test_parse_bind_names_the_setting_in_its_error(bind: str) -> None:
    with pytest.raises(ValueError, match=r"^PROBE_BIND: expected host:port"):
        parse_bind(bind)


def test_a_unit_whose_probe_port_is_taken_stops_with_one_line_naming_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match="exited with 4") as failure:
            start_unit("webserver", env={"WEB_MQTT_ENABLED": "false", "WEB_RESULTS_DIR": str(tmp_path)},
                       probe_port=port, log_dir=tmp_path, ready_timeout=30)
    assert f"PROBE_BIND 127.0.0.1:{port}: [Errno 98] Address already in use" in str(failure.value)


def test_every_worker_of_a_unit_answers_on_the_one_probe_port() -> None:
    """Bound once in the master, accepted on by each worker's thread: with either worker of two
    stopped (SIGSTOP), the other answers every probe."""
    with start_unit("inference", env={"INFER_KIND": "haar-face"}, workers=2) as unit:
        workers = [pid for pid in process_tree(unit.process.pid) if pid != unit.process.pid]
        assert len(workers) == 2
        for stopped in workers:
            os.kill(stopped, signal.SIGSTOP)
            try:
                slow = [elapsed for elapsed in (timed_probe(unit.probe_url) for _ in range(20)) if elapsed > 1.0]
            finally:
                os.kill(stopped, signal.SIGCONT)
            assert not slow, f"{len(slow)} of 20 probes slower than 1 s with worker {stopped} stopped"


def timed_probe(base_url: str) -> float:
    started = time.monotonic()
    try:
        ok = requests.get(base_url + "/v2/health/live", timeout=2).status_code == 200
    except requests.RequestException:
        ok = False
    return time.monotonic() - started if ok else float("inf")


def test_closing_the_oldest_for_a_newcomer_while_it_has_sent_its_request_keeps_the_server_up() -> None:
    """At the cap, connections arriving with their request already sent: the oldest is closed
    while its own read event may be due in the same turn of the loop."""
    listener = probe_listener(f"127.0.0.1:{free_port()}")
    running = ProbeServer(probed_app(), listener, ProbeLimits(max_connections=1)).start()
    sockets = [connect(running)]
    try:
        for _ in range(100):
            time.sleep(0.005)   # the last one is accepted and waits for its request
            sockets.append(connect(running))   # a newcomer, then at once the request of the one it evicts
            sockets[-2].sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        assert requests.get(url(running, "/v2/health/ready"), timeout=2).status_code == 200
    finally:
        for sock in sockets:
            sock.close()
        running.stop()
        listener.close()
