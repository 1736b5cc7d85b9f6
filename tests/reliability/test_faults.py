"""Faults on a running testbed: a killed inference worker, a WAN cut, a restarted webserver.

Real Mosquitto, real inference units under gunicorn (Haar faces), the preprocessor in-process
(the same create_app gunicorn serves) and the webserver under gunicorn. After each fault every
frame sent must have exactly one FrameRecord (ok / dropped / error with a reason), as counted by
an independent subscriber with the read-only `monitor` account, and the service must go on.
The per-fault counts are printed and written to test-artifacts/reliability-faults.json.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest
import requests
from skimage import data

from edgeoffload.broker import RESULTS_TOPIC, BrokerProcess
from edgeoffload.messaging import MQTTSettings, Subscriber
from edgeoffload.records import FrameRecord
from edgeoffload.relay import TcpRelay
from edgeoffload.serve import UnitProcess, free_port, start_unit
from edgeoffload.units.preprocessor import PreprocessorConfig, create_app

log = logging.getLogger(__name__)
WAIT = 30.0
FrameKey = tuple[str, int]


@pytest.fixture(scope="module")
def astronaut_jpeg() -> bytes:
    return cv2.imencode(".jpg", np.ascontiguousarray(data.astronaut()[:, :, ::-1]))[1].tobytes()


def haar_unit(site: str) -> UnitProcess:
    # KEEPALIVE=0 as in the local testbed: every request is a new connection, so a cut relay
    # refuses them all instead of leaving an old keep-alive connection open.
    return start_unit("inference", env={"INFER_KIND": "haar-face", "INFER_SITE": site, "KEEPALIVE": "0"},
                      workers=1, threads=4)


@pytest.fixture(scope="module")
def edge() -> Iterator[UnitProcess]:
    unit = haar_unit("edge")
    yield unit
    unit.stop()


@pytest.fixture(scope="module")
def cloud() -> Iterator[UnitProcess]:
    unit = haar_unit("cloud")
    yield unit
    unit.stop()


class Monitor:
    """Every record delivery on edgeoffload/results/#, seen as the read-only `monitor` account.

    Deduplication is off, so a frame recorded twice shows up as a count of 2.
    """

    def __init__(self, broker: BrokerProcess) -> None:
        self.deliveries: Counter[FrameKey] = Counter()
        self.records: dict[FrameKey, FrameRecord] = {}
        self._cond = threading.Condition()
        settings = MQTTSettings(host=broker.host, port=broker.port, username="monitor",
                                password=broker.users["monitor"], session_expiry_s=0)
        self.subscriber = Subscriber(settings, (f"{RESULTS_TOPIC}/#",), on_record=self._on_record,
                                     role="monitor", dedupe_window=0).start()
        assert self.subscriber.wait_subscribed(WAIT), self.subscriber.last_error

    def _on_record(self, _topic: str, record: FrameRecord) -> None:
        with self._cond:
            self.deliveries[(record.camera, record.frame_id)] += 1
            self.records[(record.camera, record.frame_id)] = record
            self._cond.notify_all()

    def wait_for(self, keys: set[FrameKey], timeout: float = WAIT) -> list[FrameRecord]:
        with self._cond:
            self._cond.wait_for(lambda: keys <= self.records.keys(), timeout)
            return [self.records[key] for key in sorted(keys) if key in self.records]

    def account(self, keys: set[FrameKey], settle_s: float = 0.5) -> dict[str, object]:
        """Wait for a record of every key, then check none arrived twice; the counts as a dict."""
        records = self.wait_for(keys)
        time.sleep(settle_s)  # a duplicate would arrive right behind the first delivery
        with self._cond:
            missing = sorted(keys - self.records.keys())
            repeated = {f"{cam}#{fid}": n for (cam, fid), n in self.deliveries.items() if (cam, fid) in keys and n != 1}
        assert not missing, f"frames without a record: {missing}"
        assert not repeated, f"frames recorded more than once: {repeated}"
        for record in records:
            assert record.status == "ok" or record.reason, f"{record.status} record without a reason: {record}"
        return {"frames": len(keys), "records": len(records),
                "outcomes": dict(Counter(f"{r.status} on {r.site}" for r in records)),
                "reasons": dict(Counter(r.reason.split(";")[0][:60] for r in records if r.reason))}

    def close(self) -> None:
        self.subscriber.close()


@pytest.fixture
def monitor(broker: BrokerProcess) -> Iterator[Monitor]:
    watcher = Monitor(broker)
    yield watcher
    watcher.close()


@pytest.fixture(scope="module")
def fault_summary(artifacts_dir: Path) -> Iterator[dict[str, dict]]:
    """Per-fault accounting, printed and written out at the end of the module."""
    summary: dict[str, dict] = {}
    yield summary
    text = json.dumps(summary, indent=2, sort_keys=True)
    print("\nfault accounting:\n" + text)
    log.info("fault accounting: %s", text)
    (artifacts_dir / "reliability-faults.json").write_text(text + "\n", encoding="utf-8")


class InProcessPreprocessor:
    """The preprocessor app with a test client; close() drains it and flushes its records."""

    def __init__(self, broker: BrokerProcess, edge_url: str, cloud_url: str, policy: str) -> None:
        config = PreprocessorConfig(edge_url=edge_url, cloud_url=cloud_url, policy=policy, queue_size=32,
                                    health_interval_s=0.25, request_timeout_s=5.0, mqtt_host=broker.host,
                                    mqtt_port=broker.port, mqtt_password=broker.users["preprocessor"])
        self.app = create_app(config)
        self.service = self.app.extensions["preprocessor"]
        self.client = self.app.test_client()
        assert self.service.publisher.wait_connected(WAIT), self.service.publisher.last_error

    def send(self, camera: str, frame: bytes, wait: bool = False) -> FrameKey:
        query = {"camera": camera, **({"wait": "1"} if wait else {})}
        answer = self.client.post("/process", query_string=query, data=frame, content_type="image/jpeg")
        assert answer.status_code == (200 if wait else 202), answer.get_data(as_text=True)
        return camera, answer.get_json()["frame_id"]

    def send_and_wait(self, camera: str, frame: bytes) -> FrameRecord:
        query = {"camera": camera, "wait": "1"}
        answer = self.client.post("/process", query_string=query, data=frame, content_type="image/jpeg")
        assert answer.status_code == 200, answer.get_data(as_text=True)
        return FrameRecord.from_dict(answer.get_json())

    def site_healthy(self, site: str) -> bool:
        return self.service.offloader.monitors[site].snapshot().healthy

    def close(self) -> None:
        self.service.close()


@pytest.fixture
def preprocessor(broker: BrokerProcess) -> Iterator[Callable[..., InProcessPreprocessor]]:
    started: list[InProcessPreprocessor] = []

    def start(edge_url: str, cloud_url: str, policy: str) -> InProcessPreprocessor:
        unit = InProcessPreprocessor(broker, edge_url, cloud_url, policy)
        started.append(unit)
        return unit

    yield start
    for unit in started:
        unit.close()


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def worker_pids(unit: UnitProcess) -> set[int]:
    """The gunicorn workers: children of the unit's master process."""
    children: set[int] = set()
    for task in Path(f"/proc/{unit.process.pid}/task").iterdir():
        children.update(int(pid) for pid in (task / "children").read_text().split())
    return children


def is_ready(unit: UnitProcess) -> bool:
    try:
        return requests.get(unit.url + "/v2/health/ready", timeout=2).status_code == 200
    except requests.RequestException:
        return False


# -- (a) an inference worker killed mid-request ---------------------------------------------------

def test_inference_worker_killed_mid_request(broker, edge, cloud, monitor, preprocessor, fault_summary,
                                             astronaut_jpeg) -> None:
    unit = preprocessor(edge.url, cloud.url, policy="edge-only")
    (old_worker,) = worker_pids(edge)
    edge_monitor = unit.service.offloader.monitors["edge"]
    sent = {unit.send("kill", astronaut_jpeg) for _ in range(16)}
    # Two dispatchers keep two requests at the worker while frames are queued: kill once the
    # worker has answered a couple and several frames are still waiting.
    wait_until(lambda: edge_monitor.answered >= 2, what="the edge worker to answer")
    assert unit.service.offloader.state()["open_frames"] >= 4
    os.kill(old_worker, signal.SIGKILL)

    outcome = monitor.account(sent)
    records = monitor.wait_for(sent)
    hit = [r for r in records if r.reason.startswith("failover:edge->cloud") or (r.site == "edge" and r.status == "error")]
    assert hit, f"no frame was caught by the kill: {outcome}"
    for record in hit:
        assert (record.status, record.site) in (("ok", "cloud"), ("error", "cloud"), ("error", "edge")), record
    assert any(r.status == "ok" and r.site == "edge" and not r.reason for r in records)  # answered before the kill

    # gunicorn's master respawns the worker, which loads its model again; edge service resumes.
    wait_until(lambda: worker_pids(edge) - {old_worker}, what="a new gunicorn worker")
    wait_until(lambda: is_ready(edge), what="the respawned worker to be ready")
    wait_until(lambda: unit.site_healthy("edge"), what="the preprocessor to see the edge healthy again")
    after = [unit.send_and_wait("kill", astronaut_jpeg) for _ in range(3)]
    assert [(r.status, r.site, r.reason) for r in after] == [("ok", "edge", "")] * 3
    fault_summary["inference worker SIGKILL"] = {
        **outcome, "caught by the kill": len(hit),
        "after respawn": monitor.account({(r.camera, r.frame_id) for r in after}, settle_s=0.2)["outcomes"]}


# -- (b) the cloud unreachable for a while (WAN cut), then back -------------------------------------

def test_wan_cut_fails_over_to_edge_and_cloud_resumes(broker, edge, cloud, monitor, preprocessor, fault_summary,
                                                      astronaut_jpeg) -> None:
    cloud_address = (urlsplit(cloud.url).hostname, urlsplit(cloud.url).port)
    with TcpRelay([cloud_address], name="wan") as wan:
        unit = preprocessor(edge.url, wan.url, policy="cloud-only")
        before = [unit.send_and_wait("wan", astronaut_jpeg) for _ in range(2)]
        assert [(r.status, r.site, r.reason) for r in before] == [("ok", "cloud", "")] * 2

        wan.set_backends([])  # the cut: every new connection to the cloud is closed at once
        cut_started = time.monotonic()
        during: set[FrameKey] = set()
        while time.monotonic() - cut_started < 3.0:  # frames keep coming during a 3 s cut
            during.add(unit.send("wan", astronaut_jpeg))
            time.sleep(0.25)
        wait_until(lambda: not unit.site_healthy("cloud"), what="the cloud to be seen unhealthy")
        cut_outcome = monitor.account(during)
        cut_records = monitor.wait_for(during)
        assert all(r.status in ("ok", "dropped", "error") for r in cut_records)
        assert not [r for r in cut_records if r.site == "cloud" and r.status == "ok"], "the cloud answered through a cut"
        assert sum(1 for r in cut_records if r.status == "ok" and r.site == "edge"
                   and r.reason == "failover:cloud->edge") >= len(during) // 2, cut_outcome

        wan.set_backends([cloud_address])
        restored = time.monotonic()
        wait_until(lambda: unit.site_healthy("cloud"), what="the cloud to be healthy again")
        back_after_s = time.monotonic() - restored
        after = [unit.send_and_wait("wan", astronaut_jpeg) for _ in range(3)]
        assert [(r.status, r.site, r.reason) for r in after] == [("ok", "cloud", "")] * 3
    fault_summary["WAN cut 3 s"] = {**cut_outcome, "cloud healthy again after s": round(back_after_s, 2),
                                    "after restore": monitor.account({(r.camera, r.frame_id) for r in before + after},
                                                                     settle_s=0.2)["outcomes"]}


# -- (c) the webserver restarted ----------------------------------------------------------------------

def web_frame_ids(web_url: str, camera: str) -> set[int]:
    try:
        answer = requests.get(web_url + "/api/results", params={"camera": camera, "limit": "50"}, timeout=5)
    except requests.RequestException:
        return set()
    return {r["frame_id"] for r in answer.json().get("results", [])} if answer.status_code == 200 else set()


def test_restarted_webserver_receives_new_records(broker, edge, cloud, monitor, preprocessor, fault_summary,
                                                  astronaut_jpeg, tmp_path: Path) -> None:
    port = free_port()
    env = {"WEB_MQTT_HOST": broker.host, "WEB_MQTT_PORT": str(broker.port), "WEB_MQTT_PASSWORD": broker.users["webserver"],
           "WEB_RESULTS_DIR": str(tmp_path)}

    def start_web() -> UnitProcess:
        web = start_unit("webserver", env=env, port=port, workers=1, threads=4, log_dir=tmp_path)
        wait_until(lambda: requests.get(web.url + "/healthz", timeout=2).json()["mqtt"]["connected"],
                   what="the webserver's MQTT subscription")
        return web

    unit = preprocessor(edge.url, cloud.url, policy="alternate")
    web = start_web()
    try:
        first = {unit.send("web", astronaut_jpeg, wait=True) for _ in range(3)}
        wait_until(lambda: {fid for _, fid in first} <= web_frame_ids(web.url, "web"), what="records on the page")
        web.stop()
        while_down = {unit.send("web", astronaut_jpeg, wait=True) for _ in range(3)}
        web = start_web()
        assert web.url.endswith(f":{port}")
        again = {unit.send("web", astronaut_jpeg, wait=True) for _ in range(3)}
        wait_until(lambda: {fid for _, fid in again} <= web_frame_ids(web.url, "web"), what="new records after restart")
        summary = requests.get(web.url + "/api/summary", timeout=5).json()
        assert summary["mqtt"]["connected"] is True
    finally:
        web.stop()
    outcome = monitor.account(first | while_down | again)
    assert outcome["outcomes"] == {"ok on edge": 5, "ok on cloud": 4}
    fault_summary["webserver restart"] = {**outcome, "shown after restart": len(again),
                                          "missed while down (no persistent session)": len(while_down)}
