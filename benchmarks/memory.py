"""Peak memory of each unit at its maximum input, against its Deployment's memory limit.

Every unit runs under gunicorn with its ConfigMap's settings (WORKERS, THREADS, limits), and
the resident memory of its whole process tree (what the container limit counts) is sampled
every 5 ms while it works, in one run:
- inference (edge ConfigMap, haar-face): 4 concurrent 4096x4096 PNGs (INFER_MAX_PIXELS), then
  4 concurrent 4096x4096 JPEGs;
- preprocessor: 8 concurrent 4096x4096 PNGs (PRE_MAX_PIXELS; more than its decode budget
  admits at once, so some get 503);
- webserver: its whole history filled (WEB_MAX_CAMERAS x WEB_HISTORY records of 20 detections
  each) through the broker.

    python benchmarks/memory.py
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import requests  # noqa: E402

from benchmarks.report import markdown_table, publish  # noqa: E402
from edgeoffload.broker import start_broker  # noqa: E402
from edgeoffload.localscale import peak_tree_rss, process_tree_rss_bytes  # noqa: E402
from edgeoffload.messaging import MQTTSettings, Publisher  # noqa: E402
from edgeoffload.records import Detection, FrameRecord  # noqa: E402
from edgeoffload.serve import start_unit  # noqa: E402
from edgeoffload.unitfolders import unit_settings  # noqa: E402
from tests.reliability.test_memory import (SIDE, deployed_preprocessor, largest_png,  # noqa: E402
                                           post_concurrently)

MIB = 2**20


def largest_jpeg() -> bytes:
    image = np.random.default_rng(1).integers(0, 256, (SIDE // 8, SIDE // 8, 3), dtype=np.uint8)
    resized = cv2.resize(image, (SIDE, SIDE), interpolation=cv2.INTER_CUBIC)
    return cv2.imencode(".jpg", resized, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()


def row(unit: str, load: str, pid: int, work, limit: float) -> list[object]:
    idle = process_tree_rss_bytes(pid)
    statuses: list[int] = []
    peak = peak_tree_rss(pid, lambda: statuses.extend(work()))
    answers = ", ".join(f"{statuses.count(code)}x{code}" for code in sorted(set(statuses)))
    return [unit, load, answers, f"{idle / MIB:.0f}", f"{peak / MIB:.0f}", f"{limit / MIB:.0f}",
            f"{100 * peak / limit:.0f}%"]


def main() -> None:
    rows: list[list[object]] = []
    png, jpeg = largest_png(), largest_jpeg()
    with start_broker() as broker:
        inference_settings = unit_settings("edge-inference")
        env = inference_settings.env
        with start_unit("inference", env={**env, "INFER_KIND": "haar-face"}, workers=int(env.get("WORKERS", "1")),
                        threads=int(env.get("THREADS", "8"))) as inference:
            pid, limit = inference.process.pid, inference_settings.memory_limit
            url = inference.url + "/infer"
            rows.append(row("inference", f"4 x PNG {SIDE}x{SIDE} ({len(png) // 1024} KiB)", pid,
                            lambda: post_concurrently(url, png, 4), limit))
            rows.append(row("inference", f"4 x JPEG {SIDE}x{SIDE} ({len(jpeg) // 1024} KiB)", pid,
                            lambda: post_concurrently(url, jpeg, 4), limit))
            with deployed_preprocessor(broker, inference.url) as pre:
                rows.append(row("preprocessor", f"8 x PNG {SIDE}x{SIDE}", pre.process.pid,
                                lambda: post_concurrently(pre.url + "/process?camera=big", png, 8),
                                unit_settings("preprocessor").memory_limit))
        rows.append(webserver_row(broker))
    load = os.getloadavg()
    body = (markdown_table(["unit", "load", "answers", "idle RSS MiB", "peak RSS MiB", "limit MiB", "peak / limit"],
                           rows)
            + f"\n\nRSS of the unit's process tree (gunicorn master + workers), sampled every 5 ms, units run "
              f"with their ConfigMaps' settings. Load average at the end of the run: {load[0]:.2f} {load[1]:.2f} "
              f"{load[2]:.2f} (`uptime`).")
    publish("Peak memory per unit at maximum input", "python benchmarks/memory.py", body)


def webserver_row(broker) -> list[object]:
    settings = unit_settings("webserver")
    env = {**settings.env, "WEB_MQTT_HOST": broker.host, "WEB_MQTT_PORT": str(broker.port),
           "WEB_MQTT_PASSWORD": broker.users["webserver"], "WEB_MQTT_CAFILE": ""}
    cameras, history = int(env.get("WEB_MAX_CAMERAS", "32")), int(env.get("WEB_HISTORY", "200"))
    detections = tuple(Detection("person", 0.9, (i, i, 50.0, 80.0)) for i in range(20))
    publisher = Publisher(MQTTSettings(host=broker.host, port=broker.port, username="preprocessor",
                                       password=broker.users["preprocessor"]), unit="preprocessor").start()
    with start_unit("webserver", env=env, threads=int(env.get("THREADS", "16"))) as web:
        time.sleep(1.0)  # its subscription

        def fill() -> list[int]:
            for frame_id in range(history):
                for camera in range(cameras):
                    publisher.publish_record(FrameRecord(
                        camera=f"camera-{camera}", frame_id=frame_id, captured_at=time.time(), site="edge",
                        status="ok", policy="min-latency", model="edge/haar-face", detections=detections,
                        bytes_sent=50_000, t_total_ms=30.0))
            publisher.flush(60)
            time.sleep(1.0)
            return [requests.get(web.url + "/api/summary", timeout=10).status_code]

        result = row("webserver", f"{cameras} cameras x {history} records", web.process.pid, fill,
                     settings.memory_limit)
    publisher.close()
    return result


if __name__ == "__main__":
    main()
