"""Slow clients must not starve a unit: 40 connections trickle their headers or bodies for 15 s
while every health probe must be answered within 1 s and well-behaved requests keep working.

Each unit runs under real gunicorn with the shipped config (edgeoffload.units.buffered_worker).
With gunicorn's plain gthread worker the same test fails for every unit: each trickling
connection holds a thread, and the probes time out.
"""
from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest
import requests

from edgeoffload.broker import BrokerProcess
from edgeoffload.serve import READY_PATHS, UnitProcess, start_unit

TRICKLE_S = 15.0
PROBE_LIMIT_S = 1.0
CONNECTIONS = 40
THREADS = 8
JPEG = cv2.imencode(".jpg", np.random.default_rng(3).integers(0, 256, (120, 160, 3), dtype=np.uint8))[1].tobytes()


@dataclass
class Trickle:
    """CONNECTIONS sockets: half send their headers a byte at a time, half their body."""

    url: str
    path: str
    sockets: list[socket.socket] = field(default_factory=list)
    bytes_sent: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> threading.Thread:
        host, port = urlsplit(self.url).hostname, urlsplit(self.url).port
        for index in range(CONNECTIONS):
            sock = socket.create_connection((host, port), timeout=5)
            if index % 2:  # complete headers, a body that never finishes
                sock.sendall(f"POST {self.path} HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                             f"Content-Length: 100000\r\n\r\n".encode())
            else:  # headers that never finish
                sock.sendall(f"POST {self.path} HTTP/1.1\r\nHost: x\r\n".encode())
            self.sockets.append(sock)
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        return thread

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for index, sock in enumerate(self.sockets):
                try:
                    sock.sendall(b"a" if index % 2 else b"X")
                    self.bytes_sent += 1
                except OSError as exc:
                    self.failures.append(f"connection {index}: {exc}")

    def stop(self) -> None:
        self._stop.set()
        for sock in self.sockets:
            sock.close()


def probe_while_trickling(unit: UnitProcess, trickle_path: str, request_ok: Callable[[], bool]) -> None:
    trickle = Trickle(unit.url, trickle_path)
    thread = trickle.start()
    slow_probes: list[str] = []
    good_requests = failed_requests = probes = 0
    try:
        deadline = time.monotonic() + TRICKLE_S
        next_request = time.monotonic()
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                answer = requests.get(unit.url + READY_PATHS[unit.unit], timeout=PROBE_LIMIT_S)
                elapsed = time.monotonic() - started
                if answer.status_code != 200 or elapsed > PROBE_LIMIT_S:
                    slow_probes.append(f"{answer.status_code} after {elapsed:.2f}s")
            except requests.RequestException as exc:
                slow_probes.append(f"{type(exc).__name__} after {time.monotonic() - started:.2f}s")
            probes += 1
            if time.monotonic() >= next_request:
                next_request += 1.0
                try:
                    ok = request_ok()
                except requests.RequestException:
                    ok = False
                good_requests += ok
                failed_requests += not ok
            time.sleep(0.2)
    finally:
        trickle.stop()
        thread.join(5)
    # The slow connections were really open and trickling all along (READ_TIMEOUT_S is 30 s).
    assert not trickle.failures, trickle.failures[:3]
    assert trickle.bytes_sent >= CONNECTIONS * (TRICKLE_S / 0.5 - 2)
    assert not slow_probes, f"{len(slow_probes)} of {probes} probes failed: {slow_probes[:5]}\n{unit.log()[-3000:]}"
    assert probes >= TRICKLE_S / 0.4
    assert failed_requests == 0 and good_requests >= TRICKLE_S - 2


@pytest.fixture(scope="module")
def inference() -> Iterator[UnitProcess]:
    unit = start_unit("inference", env={"INFER_KIND": "haar-face"}, threads=THREADS)
    yield unit
    unit.stop()


def test_inference_serves_probes_and_frames_while_slow_clients_trickle(inference: UnitProcess) -> None:
    probe_while_trickling(inference, "/infer", lambda: requests.post(
        inference.url + "/infer", data=JPEG, headers={"Content-Type": "image/jpeg"}, timeout=5).status_code == 200)


def test_preprocessor_serves_probes_and_frames_while_slow_clients_trickle(broker: BrokerProcess,
                                                                           inference: UnitProcess) -> None:
    env = {"PRE_EDGE_URL": inference.url, "PRE_CLOUD_URL": inference.url, "PRE_MQTT_HOST": broker.host,
           "PRE_MQTT_PORT": str(broker.port), "PRE_MQTT_PASSWORD": broker.users["preprocessor"]}
    with start_unit("preprocessor", env=env, threads=THREADS) as unit:
        probe_while_trickling(unit, "/process?camera=slow", lambda: requests.post(
            unit.url + "/process", params={"camera": "good", "wait": "1"}, data=JPEG,
            headers={"Content-Type": "image/jpeg"}, timeout=5).json().get("status") == "ok")


def test_webserver_serves_probes_and_pages_while_slow_clients_trickle(broker: BrokerProcess, tmp_path) -> None:
    env = {"WEB_MQTT_HOST": broker.host, "WEB_MQTT_PORT": str(broker.port),
           "WEB_MQTT_PASSWORD": broker.users["webserver"], "WEB_RESULTS_DIR": str(tmp_path)}
    with start_unit("webserver", env=env, threads=THREADS) as unit:
        probe_while_trickling(unit, "/api/results", lambda: requests.get(
            unit.url + "/api/summary", timeout=5).status_code == 200)
