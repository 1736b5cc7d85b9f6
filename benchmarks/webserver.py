"""EdgeWebServerUnit: ingest cost, snapshot cost, and MQTT -> browser stream latency.

1. In-process ingest: records/s through WebState.on_record (the MQTT callback: validation,
   history, statistics, fan-out to every connected event stream) with 0 and 8 streams
   whose queues are drained by reader threads.
2. Snapshot cost: building and JSON-encoding the live page's snapshot (sent once a second
   to every stream while data changes; streams share one build for 0.25 s) with 4 and 32
   cameras x 200 records of history.
3. End to end: Mosquitto + the webserver under gunicorn (1 worker x 16 threads, as
   deployed); records published QoS 1 at a fixed rate by the preprocessor account; event
   stream readers over HTTP. Latency = publish -> `record` event read by the client, all on
   one monotonic clock in this process. Also how many records every reader got.
Everything shares the machine's 2 vCPUs.

    python benchmarks/webserver.py [--seconds 4] [--rate 400]
"""
from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import queue
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import markdown_table, write_section  # noqa: E402
from edgeoffload.broker import start_broker  # noqa: E402
from edgeoffload.messaging import MQTTSettings, Publisher  # noqa: E402
from edgeoffload.records import Detection, FrameRecord  # noqa: E402
from edgeoffload.serve import start_unit  # noqa: E402
from edgeoffload.units.event_stream import Client  # noqa: E402
from edgeoffload.units.webserver import WebConfig, WebState  # noqa: E402


def frame(camera: str, frame_id: int) -> FrameRecord:
    return FrameRecord(camera=camera, frame_id=frame_id, captured_at=time.time(),
                       site="edge" if frame_id % 3 else "cloud", status="ok", policy="min-latency",
                       model="yolov3-tiny", detections=(Detection("person", 0.9, (10, 20, 100, 200)),
                                                        Detection("car", 0.7, (300, 200, 200, 120))),
                       bytes_sent=48_000, t_total_ms=30.0 + frame_id % 17)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ingest_rate(streams: int, count: int = 20_000) -> float:
    state = WebState(WebConfig(mqtt_enabled=False, max_stream_clients=max(1, streams),
                               stream_queue_size=100_000), max(1, streams))
    clients = [state.hub.connect() for _ in range(streams)]
    stop = threading.Event()

    def drain(client: Client) -> None:
        while not stop.is_set():
            with contextlib.suppress(queue.Empty):
                client.queue.get(timeout=0.1)

    readers = [threading.Thread(target=drain, args=(c,), daemon=True) for c in clients]
    for reader in readers:
        reader.start()
    records = [frame(f"cam-{i % 4}", i) for i in range(count)]
    started = time.perf_counter()
    for record in records:
        state.on_record("", record)
    elapsed = time.perf_counter() - started
    stop.set()
    return count / elapsed


def snapshot_ms(cameras: int) -> float:
    state = WebState(WebConfig(mqtt_enabled=False), 1)
    for i in range(cameras * 200):
        state.on_record("", frame(f"cam-{i % cameras}", i))
    times = []
    for _ in range(30):
        started = time.perf_counter()
        json.dumps({"summary": state.summary(), "streams": state.live.streams()}, separators=(",", ":"))
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


class StreamReader(threading.Thread):
    """Reads `record` events from /api/events and notes when each frame arrived."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(daemon=True)
        self.connection = http.client.HTTPConnection(host, port, timeout=30)
        self.connection.request("GET", "/api/events")
        self.response = self.connection.getresponse()
        assert self.response.status == 200
        self.arrivals: dict[int, float] = {}

    def run(self) -> None:
        event = ""
        try:
            while True:
                line = self.response.readline()
                if not line:
                    return
                text = line.decode().rstrip("\n")
                if text.startswith("event: "):
                    event = text[7:]
                elif text.startswith("data: ") and event == "record":
                    self.arrivals[json.loads(text[6:])["frame_id"]] = time.monotonic()
        except (OSError, http.client.HTTPException, ValueError, AttributeError):  # closed under us
            return


def end_to_end(seconds: float, rate: float, readers: int) -> dict[str, float]:
    # The broker gets a directory of its own: Mosquitto drops root and must reach its files.
    with tempfile.TemporaryDirectory() as workdir, start_broker() as broker:
        env = {"WEB_MQTT_HOST": broker.host, "WEB_MQTT_PORT": str(broker.port),
               "WEB_MQTT_PASSWORD": broker.users["webserver"], "WEB_RESULTS_DIR": workdir,
               "WEB_STREAM_QUEUE_SIZE": "4096"}
        with start_unit("webserver", env=env, workers=1, threads=16, log_dir=workdir) as unit:
            host, port = unit.url.removeprefix("http://").split(":")
            _wait_mqtt(unit.url)
            streams = [StreamReader(host, int(port)) for _ in range(readers)]
            for stream in streams:
                stream.start()
            settings = MQTTSettings(host=broker.host, port=broker.port, username="preprocessor",
                                    password=broker.users["preprocessor"], session_expiry_s=0)
            sent: dict[int, float] = {}
            with Publisher(settings) as publisher:
                assert publisher.wait_connected(10)
                total = int(seconds * rate)
                started = time.monotonic()
                for frame_id in range(total):
                    due = started + frame_id / rate
                    time.sleep(max(0.0, due - time.monotonic()))
                    sent[frame_id] = time.monotonic()
                    publisher.publish_record(frame(f"cam-{frame_id % 4}", frame_id))
                publisher.flush(10)
            time.sleep(1.0)
            latencies = [(arrival - sent[fid]) * 1000 for s in streams for fid, arrival in s.arrivals.items()]
            delivered = min(len(s.arrivals) for s in streams) / total
            for stream in streams:
                stream.connection.close()
    shutil.rmtree(broker.workdir, ignore_errors=True)
    return {"p50": statistics.median(latencies), "p95": percentile(latencies, 0.95),
            "p99": percentile(latencies, 0.99), "delivered": delivered}


def _wait_mqtt(url: str) -> None:
    import urllib.request

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
            if json.load(response)["mqtt"]["connected"]:
                return
        time.sleep(0.1)
    raise TimeoutError("webserver did not connect to MQTT")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rate", type=float, default=400.0, help="records published per second")
    args = parser.parse_args()

    ingest: list[list[object]] = [[streams, f"{ingest_rate(streams):,.0f}"] for streams in (0, 8)]
    snapshots: list[list[object]] = [[cameras, f"{snapshot_ms(cameras):.2f}"] for cameras in (4, 32)]
    e2e: list[list[object]] = []
    for readers in (1, 4):
        result = end_to_end(args.seconds, args.rate, readers)
        e2e.append([f"{args.rate:.0f}", readers, f"{result['p50']:.1f}", f"{result['p95']:.1f}",
                    f"{result['p99']:.1f}", f"{result['delivered']:.1%}"])
    body = "\n\n".join([
        "In-process ingest (the MQTT callback: validate, store, fan out):",
        markdown_table(["event streams", "records/s"], ingest),
        "Live snapshot build + JSON (sent once a second to every stream while data changes; one build is "
        "shared by all streams for 0.25 s; 200 records/camera):",
        markdown_table(["cameras", "ms"], snapshots),
        f"MQTT publish -> `record` event read by an HTTP client (gunicorn 1 worker x 16 threads, "
        f"{args.seconds:.0f} s at a fixed rate, 4 cameras):",
        markdown_table(["records/s", "streams", "p50 ms", "p95 ms", "p99 ms", "delivered to every stream"], e2e),
    ])
    print(body)
    write_section("webserver", "python benchmarks/webserver.py", body)


if __name__ == "__main__":
    main()
