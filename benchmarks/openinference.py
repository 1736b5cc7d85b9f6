"""Overhead of the Open Inference Protocol (v2) path over the native /infer, as ratios in one run.

One inference unit (gunicorn 1 worker x 2 threads) runs a trivially fast OpenVINO model (a
96x96 ONNX SSD head that reports 3 boxes), so the protocol's cost is not hidden behind the
model's. The client is the preprocessor's own request path (`offload.post_frame` on a urllib3
keep-alive pool) asking about the same 640x480 JPEG q80 frame, sequentially, with:

  native      POST /infer, the JPEG as the body, a JSON answer
  v2 binary   POST /v2/models/{m}/infer, binary tensor data (raw JPEG), a JSON answer
  v2 JSON     the same with the JPEG as base64 text in the JSON body

The three run in interleaved blocks (`--block` requests each, rotating), so load from other
processes hits them alike. Per protocol: round-trip p50/p90, the client's CPU per request
(building the request, parsing the answer: thread CPU time), and the unit's CPU per request
(its whole process group, from /proc, over the protocol's blocks). Ratios are v2 / native.

    python benchmarks/openinference.py [--requests 600] [--block 50]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import urllib3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.inference import server_cpu_seconds, test_frame  # noqa: E402
from benchmarks.report import markdown_table, publish  # noqa: E402
from edgeoffload.detect.testmodels import make_onnx_ssd_model  # noqa: E402
from edgeoffload.offload import NATIVE, SiteProtocol, V2Protocol, post_frame  # noqa: E402
from edgeoffload.openinference import DetectionMapping  # noqa: E402
from edgeoffload.serve import start_unit  # noqa: E402

MODEL = "openvino"      # the unit's default v2 model name: its detector kind
WARMUP = 30


@dataclass
class Measured:
    label: str
    protocol: SiteProtocol
    round_trips_ms: list[float] = field(default_factory=list)
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    detections: int = -1

    def p(self, q: float) -> float:
        ordered = sorted(self.round_trips_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def count(self) -> int:
        return len(self.round_trips_ms)

    def client_cpu_ms(self) -> float:
        return 1000 * self.client_cpu_s / self.count

    def server_cpu_ms(self) -> float:
        return 1000 * self.server_cpu_s / self.count


def run_block(measured: Measured, pool: urllib3.HTTPConnectionPool, jpeg: bytes, count: int, group: int) -> None:
    server_before = server_cpu_seconds(group)
    for _ in range(count):
        cpu, started = time.thread_time(), time.perf_counter()
        answer = post_frame(pool, "", jpeg, 10.0, protocol=measured.protocol)
        measured.round_trips_ms.append((time.perf_counter() - started) * 1000)
        measured.client_cpu_s += time.thread_time() - cpu
        if measured.detections not in (-1, len(answer.detections)):
            raise RuntimeError(f"{measured.label}: the answers changed")
        measured.detections = len(answer.detections)
    measured.server_cpu_s += server_cpu_seconds(group) - server_before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=600, help="requests per protocol")
    parser.add_argument("--block", type=int, default=50, help="requests per interleaved block")
    parser.add_argument("--no-write", action="store_true", help="print only (a trial run)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    jpeg = test_frame()
    rows = [Measured("native `/infer`", NATIVE),
            Measured("v2, binary tensor data", V2Protocol(DetectionMapping(MODEL, binary=True))),
            Measured("v2, JSON (base64)", V2Protocol(DetectionMapping(MODEL, binary=False)))]
    with tempfile.TemporaryDirectory(prefix="edgeoffload-bench-") as workdir:
        model = make_onnx_ssd_model(Path(workdir) / "trivial.onnx", [(0, 0.1, 0.1, 0.5, 0.5), (1, 0.5, 0.5, 0.9, 0.9),
                                                                     (2, 0.2, 0.6, 0.4, 0.8)])
        env = {"INFER_KIND": "openvino", "INFER_MODEL_PATH": str(model), "INFER_QUEUE_BOUND": "4"}
        with start_unit("inference", env=env, workers=1, threads=2) as unit:
            pool = urllib3.connection_from_url(unit.url, maxsize=1, retries=False)
            for measured in rows:   # warm-up, not counted
                for _ in range(WARMUP):
                    post_frame(pool, "", jpeg, 10.0, protocol=measured.protocol)
            for _ in range(max(1, args.requests // args.block)):
                for measured in rows:
                    run_block(measured, pool, jpeg, args.block, unit.process.pid)
            pool.close()
    load_after = os.getloadavg()
    native = rows[0]
    table = markdown_table(
        ["request path", "p50 ms", "p90 ms", "p50 / native", "client CPU ms", "unit CPU ms", "total CPU / native"],
        [[m.label, f"{m.p(0.5):.2f}", f"{m.p(0.9):.2f}", f"{m.p(0.5) / native.p(0.5):.2f}",
          f"{m.client_cpu_ms():.3f}", f"{m.server_cpu_ms():.2f}",
          f"{(m.client_cpu_ms() + m.server_cpu_ms()) / (native.client_cpu_ms() + native.server_cpu_ms()):.2f}"]
         for m in rows])
    body = (f"Frame: 640x480 JPEG q80 ({len(jpeg)} bytes); model: a 96x96 ONNX SSD head on OpenVINO "
            f"({native.detections} detections per answer). {native.count} requests per path, sequential, "
            f"in interleaved blocks of {args.block}, through `offload.post_frame` (the preprocessor's "
            f"request path) to one unit (gunicorn 1x2); CPU per request: the client thread's, and the unit's "
            f"whole process group (from /proc).\n\n{table}\n\n"
            f"The v2 answer is the same detections as three tensors plus the unit's timings as response "
            f"parameters; binary tensor data adds a JSON header and a 4-byte length to the raw JPEG, JSON "
            f"adds base64 (+33% bytes) and its encoding/decoding. With a real model the same absolute "
            f"cost is a smaller share (Haar faces: ~80 ms per frame, YOLOv3-tiny: ~30 ms).\n\n"
            f"Load average (1/5/15 min) before: {' / '.join(f'{v:.2f}' for v in load_before)}; after: "
            f"{' / '.join(f'{v:.2f}' for v in load_after)} (2 vCPU).")
    publish("open inference protocol", "python benchmarks/openinference.py", body)   # --no-write: print only
    return 0


if __name__ == "__main__":
    sys.exit(main())
