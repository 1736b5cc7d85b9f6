"""Preprocessor overhead per frame and sustained throughput (target: <= 3 ms p50 overhead, 640x480).

1. In-process component timings on the 640x480 sample video (JPEG q80): decode, fit/letterbox +
   re-encode, policy decision (observation + min-latency), record build + JSON, QoS 1 publish
   to a real Mosquitto (amortised: publish a batch, wait for every PUBACK), and a camera
   preview (edgeoffload.preview: shrink, encode, payload) for the frames it samples.
2. End to end over HTTP: the preprocessor under gunicorn (1 worker x 4 threads, as deployed)
   in front of a trivially fast inference unit (OpenVINO running a 96x96 two-op ONNX model),
   frames POSTed one at a time with ?wait=1. Overhead = t_total - t_inference from the
   records, i.e. everything but the model: preprocessing, queueing, the HTTP hop to the
   inference unit and its own decode. Also the share spent before the send (t_queue_ms).
3. Sustained frames/s: 4 closed-loop client threads (POST ?wait=1) for a fixed number of
   frames; the clock stops when the last record arrives over MQTT.
Everything (client, preprocessor, inference, broker) shares the machine's 2 vCPUs.

    python benchmarks/preprocessor.py [--frames 400]
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import markdown_table, write_section  # noqa: E402
from edgeoffload.broker import RESULTS_TOPIC, start_broker  # noqa: E402
from edgeoffload.detect.testmodels import make_onnx_ssd_model  # noqa: E402
from edgeoffload.frames import decode  # noqa: E402
from edgeoffload.load.sample_video import SampleVideoSpec, sample_jpegs  # noqa: E402
from edgeoffload.messaging import MQTTSettings, Publisher, Subscriber  # noqa: E402
from edgeoffload.offload import CLOUD, EDGE, SiteConfig, SiteMonitor  # noqa: E402
from edgeoffload.policy import Observation, load_policy  # noqa: E402
from edgeoffload.preview import PreviewSampler, PreviewSettings  # noqa: E402
from edgeoffload.records import Detection, FrameRecord  # noqa: E402
from edgeoffload.serve import start_unit  # noqa: E402
from edgeoffload.units.preprocessor import FramePreparer  # noqa: E402

TARGET_P50_MS = 3.0
PREVIEW_ROW = "preview of a sampled frame: shrink to 320 px + JPEG q70 + payload"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def time_each(label: str, items: list, action: Callable, repeat: int) -> tuple[str, list[float]]:
    for item in items[:5]:  # warm-up: page faults and lazy init do not belong to steady state
        action(item)
    samples = []
    for i in range(repeat):
        item = items[i % len(items)]
        started = time.perf_counter()
        action(item)
        samples.append((time.perf_counter() - started) * 1000)
    return label, samples


def components(frames: list[bytes], repeat: int, broker) -> list[tuple[str, list[float]]]:
    images = [decode(f) for f in frames]
    default, boxed = FramePreparer(max_side=640, quality=80), FramePreparer(input_size=(416, 416), quality=80)
    policy = load_policy("min-latency")
    monitors = {EDGE: SiteMonitor(SiteConfig(EDGE, "http://edge")),
                CLOUD: SiteMonitor(SiteConfig(CLOUD, "http://cloud", rtt_s=0.04, uplink_bps=20e6, estimate_uplink=True))}

    def decide(frame: bytes) -> bool:
        obs = Observation(now=time.monotonic(), camera="cam", frame_id=1, frame_bytes=len(frame), deadline_s=0.5,
                          edge=monitors[EDGE].snapshot(), cloud=monitors[CLOUD].snapshot())
        return policy.estimate_to_cloud(obs)

    detections = tuple(Detection("face", 0.9, (10.0, 20.0, 30.0, 40.0)) for _ in range(3))

    def record_json(_frame: bytes) -> str:
        return FrameRecord(camera="cam", frame_id=1, captured_at=time.time(), site="edge", status="ok",
                           policy="min-latency", model="edge/haar-face", detections=detections, bytes_sent=50000,
                           t_queue_ms=1.0, t_network_ms=2.0, t_inference_ms=30.0, t_total_ms=33.0,
                           deadline_met=True).to_json()

    sampler = PreviewSampler(PreviewSettings(), clock=itertools.count().__next__)  # every frame is due
    answered = FrameRecord(camera="cam", frame_id=0, captured_at=time.time(), site="edge", status="ok",
                           detections=detections)

    def preview_payload(image) -> bytes:
        sampler.offer("cam", 0, image)
        return sampler.take(answered).to_json()

    rows = [time_each("decode (frames.decode)", frames, decode, repeat),
            time_each("fit max_side=640 + encode q80 (default)", images, default.from_image, repeat),
            time_each("letterbox 416x416 + encode q80", images, boxed.from_image, repeat),
            time_each("policy: observation + min-latency", frames, decide, repeat),
            time_each("FrameRecord build + JSON", frames, record_json, repeat),
            time_each(PREVIEW_ROW, images, preview_payload, repeat)]
    rows.append(("MQTT QoS 1 publish (amortised, until PUBACK)", mqtt_publish_ms(broker, repeat)))
    return rows


def mqtt_publish_ms(broker, count: int, batches: int = 5) -> list[float]:
    settings = MQTTSettings(host=broker.host, port=broker.port, username="preprocessor",
                            password=broker.users["preprocessor"])
    record = FrameRecord(camera="bench", frame_id=0, captured_at=time.time(), site="edge", status="ok")
    per_record = []
    with Publisher(settings) as publisher:
        publisher.wait_connected(10)
        for _ in range(batches):
            started = time.perf_counter()
            for _ in range(count):
                publisher.publish_record(record)
            publisher.flush(30)
            per_record.append((time.perf_counter() - started) * 1000 / count)
    return per_record


class RecordSink:
    def __init__(self, broker) -> None:
        self.records: list[FrameRecord] = []
        self.cond = threading.Condition()
        settings = MQTTSettings(host=broker.host, port=broker.port, username="webserver",
                                password=broker.users["webserver"])
        self.subscriber = Subscriber(settings, (f"{RESULTS_TOPIC}/#",), on_record=self.on_record).start()
        self.subscriber.wait_subscribed(10)

    def on_record(self, _topic: str, record: FrameRecord) -> None:
        with self.cond:
            self.records.append(record)
            self.cond.notify_all()

    def wait_count(self, camera: str, count: int, timeout: float) -> list[FrameRecord]:
        with self.cond:
            self.cond.wait_for(lambda: sum(r.camera == camera for r in self.records) >= count, timeout)
            return [r for r in self.records if r.camera == camera]


def end_to_end(frames: list[bytes], count: int, broker, workdir: Path) -> tuple[dict, dict]:
    model = make_onnx_ssd_model(workdir / "trivial.onnx", [(0, 0.1, 0.1, 0.5, 0.5)])
    inference = start_unit("inference", env={"INFER_KIND": "openvino", "INFER_MODEL_PATH": str(model),
                                             "INFER_QUEUE_BOUND": "16"}, workers=1, threads=4)
    env = {"PRE_EDGE_URL": inference.url, "PRE_CLOUD_URL": inference.url, "PRE_POLICY": "min-latency",
           "PRE_MQTT_HOST": broker.host, "PRE_MQTT_PORT": str(broker.port),
           "PRE_MQTT_PASSWORD": broker.users["preprocessor"], "PRE_QUEUE_SIZE": "64", "PRE_EDGE_REPLICA_CONCURRENCY": "2", "PRE_CLOUD_REPLICA_CONCURRENCY": "2",
           "PRE_DEADLINE_MS": "1000", "MALLOC_MMAP_THRESHOLD_": "67108864", "MALLOC_TRIM_THRESHOLD_": "268435456"}
    pre = start_unit("preprocessor", env=env, workers=1, threads=4)
    sink = RecordSink(broker)
    try:
        session = requests.Session()
        client_ms, records = [], []
        for i in range(count + 20):
            started = time.perf_counter()
            answer = session.post(pre.url + "/process", params={"camera": "seq", "wait": "1"},
                                  data=frames[i % len(frames)], headers={"Content-Type": "image/jpeg"}, timeout=10)
            elapsed = (time.perf_counter() - started) * 1000
            if i >= 20:  # warm-up excluded
                client_ms.append(elapsed)
                records.append(FrameRecord.from_dict(answer.json()))
        ok = [r for r in records if r.status == "ok"]
        sequential = {
            "frames": len(records), "ok": len(ok),
            "overhead": [r.t_total_ms - r.t_inference_ms for r in ok],
            "before_send": [r.t_queue_ms for r in ok],
            "network": [r.t_network_ms for r in ok],
            "inference": [r.t_inference_ms for r in ok],
            "client": client_ms,
        }
        sustained = throughput(pre.url, frames, count * 2, sink)
    finally:
        sink.subscriber.close()
        pre.stop()
        inference.stop()
    return sequential, sustained


def throughput(url: str, frames: list[bytes], count: int, sink: RecordSink, clients: int = 4) -> dict:
    """`clients` closed-loop clients (?wait=1): offered load adapts, so nothing is dropped by design
    and frames/s is what the whole pipeline sustains. Records are counted from MQTT."""
    per_client = count // clients
    started = time.perf_counter()

    def post_many(index: int) -> None:
        session = requests.Session()
        for i in range(per_client):
            session.post(url + "/process", params={"camera": "burst", "wait": "1"},
                         data=frames[(index + i) % len(frames)], headers={"Content-Type": "image/jpeg"}, timeout=10)
        session.close()

    threads = [threading.Thread(target=post_many, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records = sink.wait_count("burst", per_client * clients, 60)
    seconds = time.perf_counter() - started
    return {"sent": per_client * clients, "records": len(records), "seconds": seconds,
            "ok": sum(r.status == "ok" for r in records),
            "dropped": sum(r.status == "dropped" for r in records),
            "errors": sum(r.status == "error" for r in records)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=400, help="frames per measurement")
    args = parser.parse_args()
    frames = sample_jpegs(SampleVideoSpec(width=640, height=480, frames_per_scene=15))
    mean_kb = statistics.mean(len(f) for f in frames) / 1024
    with tempfile.TemporaryDirectory() as tmp, start_broker() as broker:
        parts = components(frames, args.frames, broker)
        sequential, sustained = end_to_end(frames, args.frames, broker, Path(tmp))

    component_rows = [[label, f"{statistics.median(s):.3f}", f"{percentile(s, 0.9):.3f}"] for label, s in parts]
    by_label = {label: statistics.median(s) for label, s in parts}
    in_process_sum = sum(v for k, v in by_label.items() if not k.startswith(("letterbox", PREVIEW_ROW)))
    preview_ms = by_label[PREVIEW_ROW]
    e2e_rows = [[name, f"{statistics.median(values):.2f}", f"{percentile(values, 0.9):.2f}"]
                for name, values in (("overhead = t_total - t_inference", sequential["overhead"]),
                                     ("  of which queueing: preprocessing + the unit's decode/wait (t_queue_ms)", sequential["before_send"]),
                                     ("  of which HTTP transfer + handling, loopback (t_network_ms)", sequential["network"]),
                                     ("inference (reported by the unit)", sequential["inference"]),
                                     ("client round trip (POST ?wait=1)", sequential["client"]))]
    overhead_p50 = statistics.median(sequential["overhead"])
    fps = sustained["ok"] / sustained["seconds"]
    verdict = "meets" if in_process_sum <= TARGET_P50_MS else "misses"
    body = f"""Frames: sample video 640x480, JPEG q80 (mean {mean_kb:.0f} KiB). Milliseconds.

In-process components (p50 / p90 over {args.frames} frames):

{markdown_table(["step", "p50 ms", "p90 ms"], component_rows)}

Sum of the default path's p50s (decode + fit/encode + policy + record + publish): **{in_process_sum:.2f} ms**
— {verdict} the {TARGET_P50_MS:g} ms p50 target. The default (PRE_MAX_SIDE=640) does not resize a
640x480 frame, only re-encodes it; letterboxing to a 416x416 model input costs the row above instead.
A camera preview (PRE_PREVIEW, on by default) is made of at most 2 frames a second per camera,
whatever its frame rate: {preview_ms:.2f} ms each, i.e. {2 * preview_ms:.2f} ms of CPU per second per
camera ({0.2 * preview_ms:.2f} ms per frame at 10 fps), not counted in the sum.

End to end over HTTP, sequential (preprocessor under gunicorn 1x4, trivially fast OpenVINO unit,
{sequential['ok']}/{sequential['frames']} ok):

{markdown_table(["per frame", "p50 ms", "p90 ms"], e2e_rows)}

The end-to-end overhead ({overhead_p50:.2f} ms p50) runs from the frame's arrival at the preprocessor to
the answer, so besides the preprocessor's own work it contains the loopback HTTP hop to the
inference unit, that unit's Flask/gunicorn handling and its JPEG decode (reported as queue_ms and
counted in t_queue_ms), all on the same 2 vCPUs.

Sustained: {sustained['sent']} frames from 4 closed-loop clients (POST ?wait=1) ->
**{fps:.0f} frames/s answered** ({sustained['ok']} ok, {sustained['dropped']} dropped, {sustained['errors']} errors;
{sustained['records']} records received over MQTT in {sustained['seconds']:.1f} s). The clients, the
preprocessor, the inference unit and Mosquitto share 2 vCPUs, so this is a floor for the preprocessor
alone."""
    print(body)
    write_section("preprocessor", "python benchmarks/preprocessor.py", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
