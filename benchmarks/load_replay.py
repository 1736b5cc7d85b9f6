"""Open-loop replay accuracy and the wall time of `edgeoffload demo`.

1. Scheduler accuracy: Poisson traces (4 cameras) at rising offered rates are replayed
   against a trivially fast HTTP target (answers 202 at once, publishes nothing), with 16
   sender threads. Lateness = send start - trace instant; "late" = more than 50 ms. This is
   the rate up to which the replay itself, not the system under test, sets the load.
2. `edgeoffload demo` with its defaults (2 cameras x 5 fps x 20 s of sample frames through
   the whole local testbed, haar-face on edge and cloud), run as a subprocess: wall time from
   launch to exit with every process stopped, and the outcome it printed.
Everything shares the machine's 2 vCPUs.

    python benchmarks/load_replay.py [--seconds 5] [--skip-demo]
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import markdown_table, write_section  # noqa: E402
from edgeoffload.broker import start_broker  # noqa: E402
from edgeoffload.load.replay import ReplayOptions, replay  # noqa: E402
from edgeoffload.load.sample_video import SampleVideoSpec, sample_source  # noqa: E402
from edgeoffload.load.summary import percentiles  # noqa: E402
from edgeoffload.load.trace import TraceSpec, generate  # noqa: E402
from edgeoffload.messaging import MQTTSettings  # noqa: E402

RATES_FPS = (50, 200, 500)
DEMO_RUNNER = ("import argparse, sys; from edgeoffload import demo; parser = argparse.ArgumentParser(); "
               "demo.register(parser); sys.exit(demo.run(parser.parse_args(sys.argv[1:])))")


class _Accept(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


def scheduler_accuracy(seconds: float) -> list[list[object]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Accept)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    frames = sample_source(SampleVideoSpec(frames_per_scene=5))
    rows = []
    with start_broker(persistence=False) as broker:
        mqtt = MQTTSettings(host=broker.host, port=broker.port, username="monitor", password=broker.users["monitor"])
        for rate in RATES_FPS:
            trace = generate(TraceSpec(kind="poisson", cameras=4, rate=rate / 4, duration_s=seconds, seed=rate))
            result = replay(trace, url, frames, mqtt, None,
                            ReplayOptions(concurrency=16, drain_timeout_s=0.0, progress=False))
            lateness = percentiles([1000 * s.lateness_s for s in result.sends], (50, 99, 100))
            rows.append([rate, len(trace), result.accepted, f"{lateness[50]:.2f}", f"{lateness[99]:.2f}",
                         f"{lateness[100]:.1f}", f"{len(result.late)} ({100 * len(result.late) / len(trace):.1f}%)"])
            print(rows[-1], file=sys.stderr)
    server.shutdown()
    server.server_close()
    return rows


def demo_run(extra: list[str]) -> tuple[float, str, int]:
    with tempfile.TemporaryDirectory() as workdir:
        began = time.monotonic()
        completed = subprocess.run([sys.executable, "-c", DEMO_RUNNER, "--quiet", "--port", "0", "--web-port", "0",
                                    "--workdir", workdir, *extra], capture_output=True, text=True, timeout=300)
        return time.monotonic() - began, completed.stdout, completed.returncode


def demo_rows(stdout: str) -> list[list[str]]:
    wanted = ("frames sent", "accounted", "site edge", "site cloud", "status dropped", "latency ms p50/p95/p99",
              "late sends", "edge replicas", "cloud replicas")
    rows = []
    for line in stdout.splitlines():
        for name in wanted:
            if line.startswith(name):
                rows.append([name, re.split(r"\s{2,}", line.strip(), maxsplit=1)[-1]])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="trace length per offered rate")
    parser.add_argument("--skip-demo", action="store_true")
    args = parser.parse_args()
    body = ["### Replay scheduler accuracy (16 senders, 4 cameras, Poisson, null target)", "",
            markdown_table(["offered fps", "frames", "accepted", "lateness p50 ms", "p99 ms", "max ms", "late (>50 ms)"],
                           scheduler_accuracy(args.seconds))]
    if not args.skip_demo:
        runs = {"defaults (frames downscaled to 320 px)": [], "--max-side 640 (full 640x480 frames)": ["--max-side", "640"]}
        results = {label: demo_run(extra) for label, extra in runs.items()}
        body += ["", "### `edgeoffload demo` (2 cameras x 5 fps x 20 s of sample frames, haar-face on edge and cloud)", "",
                 "Wall time is from launch to exit, with every process stopped.", ""]
        names = [name for name, _ in demo_rows(next(iter(results.values()))[1])]
        rows = [["wall time", *(f"{wall:.1f} s (exit {code})" for wall, _, code in results.values())]]
        for name in names:
            rows.append([name, *(dict(demo_rows(stdout)).get(name, "-") for _, stdout, _ in results.values())])
        body.append(markdown_table(["", *results], rows))
    write_section("load replay and demo", "python benchmarks/load_replay.py", "\n".join(body))


if __name__ == "__main__":
    main()
