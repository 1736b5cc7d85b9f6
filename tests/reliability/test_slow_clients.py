"""Slow clients must not starve a unit: 40 connections trickle their headers or bodies for 15 s
while every health probe must be answered within 1 s and well-behaved requests keep working.

Each unit runs under real gunicorn with the shipped config (edgeoffload.units.buffered_worker).
With gunicorn's plain gthread worker the same test fails for every unit: each trickling
connection holds a thread, and the probes time out.

More connections than a worker's `worker_connections` stop it accepting on its main port, probes
included, whatever the worker does with them: the probes therefore have a port of their own
(edgeoffload.units.probes), which must keep answering then, and while clients trickle into it.
"""
from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest
import requests

from edgeoffload.broker import BrokerProcess
from edgeoffload.serve import READY_PATHS, UnitProcess, start_unit
from edgeoffload.units.probes import HEAD_TIMEOUT_S

TRICKLE_S = 15.0
PROBE_LIMIT_S = 1.0
CONNECTIONS = 40
THREADS = 8
JPEG = cv2.imencode(".jpg", np.random.default_rng(3).integers(0, 256, (120, 160, 3), dtype=np.uint8))[1].tobytes()


@dataclass
class Trickle:
    """`connections` sockets: half send their headers a byte at a time, half their body. With
    `reconnect`, a socket the server closed is opened again, as a client that keeps trying."""

    url: str
    path: str
    connections: int = CONNECTIONS
    reconnect: bool = False
    sockets: list[socket.socket] = field(default_factory=list)
    bytes_sent: int = 0
    reconnects: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> threading.Thread:
        self.sockets = [self._open(index) for index in range(self.connections)]
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        return thread

    def _open(self, index: int) -> socket.socket:
        sock = socket.create_connection((urlsplit(self.url).hostname, urlsplit(self.url).port), timeout=5)
        if index % 2:  # complete headers, a body that never finishes
            sock.sendall(f"POST {self.path} HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                         f"Content-Length: 100000\r\n\r\n".encode())
        else:  # headers that never finish
            sock.sendall(f"POST {self.path} HTTP/1.1\r\nHost: x\r\n".encode())
        return sock

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for index, sock in enumerate(self.sockets):
                try:
                    sock.sendall(b"a" if index % 2 else b"X")
                    self.bytes_sent += 1
                except OSError as exc:
                    if not self.reconnect:
                        self.failures.append(f"connection {index}: {exc}")
                        continue
                    sock.close()
                    self.sockets[index] = self._open(index)
                    self.reconnects += 1

    def stop(self) -> None:
        self._stop.set()
        for sock in self.sockets:
            sock.close()


@contextmanager
def trickling(trickle: Trickle) -> Iterator[Trickle]:
    """Run `trickle` for the block; then check its connections really were open and trickling
    all along (READ_TIMEOUT_S is 30 s), or, reconnecting, were opened again when closed."""
    thread = trickle.start()
    try:
        yield trickle
    finally:
        trickle.stop()
        thread.join(5)
    assert not trickle.failures, trickle.failures[:3]
    assert trickle.bytes_sent + trickle.reconnects >= trickle.connections * (TRICKLE_S / 0.5 - 2)


def probe_for(unit: UnitProcess, probe_url: str, request_ok: Callable[[], bool] | None = None) -> None:
    """Probe `probe_url` every 0.2 s (and, given `request_ok`, make a request every second) for
    TRICKLE_S: every probe must be answered 200 within PROBE_LIMIT_S, every request succeed."""
    slow_probes: list[str] = []
    good_requests = failed_requests = probes = 0
    deadline = time.monotonic() + TRICKLE_S
    next_request = time.monotonic()
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            answer = requests.get(probe_url, timeout=PROBE_LIMIT_S)
            elapsed = time.monotonic() - started
            if answer.status_code != 200 or elapsed > PROBE_LIMIT_S:
                slow_probes.append(f"{answer.status_code} after {elapsed:.2f}s")
        except requests.RequestException as exc:
            slow_probes.append(f"{type(exc).__name__} after {time.monotonic() - started:.2f}s")
        probes += 1
        if request_ok is not None and time.monotonic() >= next_request:
            next_request += 1.0
            try:
                ok = request_ok()
            except requests.RequestException:
                ok = False
            good_requests += ok
            failed_requests += not ok
        time.sleep(0.2)
    assert not slow_probes, f"{len(slow_probes)} of {probes} probes failed: {slow_probes[:5]}\n{unit.log()[-3000:]}"
    assert probes >= TRICKLE_S / 0.4
    if request_ok is not None:
        assert failed_requests == 0 and good_requests >= TRICKLE_S - 2


def main_port_probes(unit: UnitProcess, trickle_path: str, request_ok: Callable[[], bool]) -> None:
    """The units' guarantee on their main port: probes and requests served while 40 trickle."""
    with trickling(Trickle(unit.url, trickle_path)):
        probe_for(unit, unit.url + READY_PATHS[unit.unit], request_ok)


def preprocessor_env(broker: BrokerProcess, inference: UnitProcess) -> dict[str, str]:
    return {"PRE_EDGE_URL": inference.url, "PRE_CLOUD_URL": inference.url, "PRE_MQTT_HOST": broker.host,
            "PRE_MQTT_PORT": str(broker.port), "PRE_MQTT_PASSWORD": broker.users["preprocessor"]}


def webserver_env(broker: BrokerProcess, results_dir: Path) -> dict[str, str]:
    return {"WEB_MQTT_HOST": broker.host, "WEB_MQTT_PORT": str(broker.port),
            "WEB_MQTT_PASSWORD": broker.users["webserver"], "WEB_RESULTS_DIR": str(results_dir)}


@pytest.fixture(scope="module")
def inference() -> Iterator[UnitProcess]:
    unit = start_unit("inference", env={"INFER_KIND": "haar-face"}, threads=THREADS)
    yield unit
    unit.stop()


def test_inference_serves_probes_and_frames_while_slow_clients_trickle(inference: UnitProcess) -> None:
    main_port_probes(inference, "/infer", lambda: requests.post(
        inference.url + "/infer", data=JPEG, headers={"Content-Type": "image/jpeg"}, timeout=5).status_code == 200)


def test_preprocessor_serves_probes_and_frames_while_slow_clients_trickle(broker: BrokerProcess,
                                                                           inference: UnitProcess) -> None:
    with start_unit("preprocessor", env=preprocessor_env(broker, inference), threads=THREADS) as unit:
        main_port_probes(unit, "/process?camera=slow", lambda: requests.post(
            unit.url + "/process", params={"camera": "good", "wait": "1"}, data=JPEG,
            headers={"Content-Type": "image/jpeg"}, timeout=5).json().get("status") == "ok")


def test_webserver_serves_probes_and_pages_while_slow_clients_trickle(broker: BrokerProcess, tmp_path) -> None:
    with start_unit("webserver", env=webserver_env(broker, tmp_path), threads=THREADS) as unit:
        main_port_probes(unit, "/api/results", lambda: requests.get(
            unit.url + "/api/summary", timeout=5).status_code == 200)


# ------------------------------------------------------------------ the probe port
WORKER_CONNECTIONS = 50
# Main-port paths to hold connections on (any path would do: gunicorn counts connections).
HOLD_PATHS = {"inference": "/infer", "preprocessor": "/process?camera=slow", "webserver": "/api/results"}


def answered_within(url: str, limit_s: float) -> bool:
    try:
        return requests.get(url, timeout=limit_s).status_code == 200
    except requests.RequestException:
        return False


def probe_port_answers_while_the_main_port_is_full(unit: UnitProcess) -> None:
    """More slow connections than WORKER_CONNECTIONS stop the worker accepting on its main port:
    a probe there goes unanswered (the gap, shown first, so this test can fail), while every
    probe on the probe port is answered within PROBE_LIMIT_S; once they go, the main port serves again."""
    ready = READY_PATHS[unit.unit]
    with trickling(Trickle(unit.url, HOLD_PATHS[unit.unit], connections=WORKER_CONNECTIONS + 10)):
        assert not answered_within(unit.url + ready, PROBE_LIMIT_S), "the main port still accepted"
        probe_for(unit, unit.probe_url + ready)
    deadline = time.monotonic() + 10
    while not answered_within(unit.url + ready, PROBE_LIMIT_S):
        assert time.monotonic() < deadline, "the main port did not serve again after the clients left"


def test_inference_probe_port_answers_while_slow_clients_fill_the_main_port() -> None:
    with start_unit("inference", env={"INFER_KIND": "haar-face", "WORKER_CONNECTIONS": str(WORKER_CONNECTIONS)},
                    threads=THREADS) as unit:
        probe_port_answers_while_the_main_port_is_full(unit)


def test_preprocessor_probe_port_answers_while_slow_clients_fill_the_main_port(broker: BrokerProcess,
                                                                                inference: UnitProcess) -> None:
    env = {**preprocessor_env(broker, inference), "WORKER_CONNECTIONS": str(WORKER_CONNECTIONS)}
    with start_unit("preprocessor", env=env, threads=THREADS) as unit:
        probe_port_answers_while_the_main_port_is_full(unit)


def test_webserver_probe_port_answers_while_slow_clients_fill_the_main_port(broker: BrokerProcess,
                                                                             tmp_path: Path) -> None:
    env = {**webserver_env(broker, tmp_path), "WORKER_CONNECTIONS": str(WORKER_CONNECTIONS)}
    with start_unit("webserver", env=env, threads=THREADS) as unit:
        probe_port_answers_while_the_main_port_is_full(unit)


def test_clients_trickling_into_the_probe_port_do_not_stop_its_probes(inference: UnitProcess) -> None:
    """40 connections that never finish a request head on the probe port itself: each is closed
    after HEAD_TIMEOUT_S and opened again at once, and every probe is still answered in time."""
    ready = inference.probe_url + READY_PATHS["inference"]
    with trickling(Trickle(inference.probe_url, "/v2/health/ready", reconnect=True)) as trickle:
        probe_for(inference, ready)
    assert trickle.reconnects >= CONNECTIONS / 2 * (TRICKLE_S / HEAD_TIMEOUT_S - 3)   # the server closed them
