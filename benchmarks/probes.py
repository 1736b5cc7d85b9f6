"""Probe latency while slow clients fill a unit's main port: the main port against the probe port.

An inference unit with WORKER_CONNECTIONS=50 (1000 as deployed: the effect is the same, it
needs fewer sockets) gets 60 clients that trickle request bodies into its main port, so its
worker stops accepting there. For 15 s the readiness probe is then asked on both ports: on
the main port as the Deployments did before PROBE_BIND, on the probe port as they do now.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import markdown_table, publish  # noqa: E402
from edgeoffload.serve import READY_PATHS, start_unit  # noqa: E402
from tests.reliability.test_slow_clients import Trickle, trickling  # noqa: E402

WORKER_CONNECTIONS = 50
SLOW_CLIENTS = 60
PROBE_TIMEOUT_S = 1.0   # what the tests and the manifests' tightest probe allow
DURATION_S = 15.0


def probe(url: str) -> float | None:
    """Seconds to a 200, or None when there was none within PROBE_TIMEOUT_S."""
    started = time.monotonic()
    try:
        ok = requests.get(url, timeout=PROBE_TIMEOUT_S).status_code == 200
    except requests.RequestException:
        ok = False
    return time.monotonic() - started if ok else None


def summary(latencies: list[float | None]) -> list[object]:
    answered = [s for s in latencies if s is not None]
    if not answered:
        return [f"0 / {len(latencies)}", "-", "-"]
    return [f"{len(answered)} / {len(latencies)}", f"{1000 * statistics.median(answered):.1f} ms",
            f"{1000 * max(answered):.1f} ms"]


def main() -> None:
    load = os.getloadavg()[0]
    env = {"INFER_KIND": "haar-face", "WORKER_CONNECTIONS": str(WORKER_CONNECTIONS)}
    with start_unit("inference", env=env, threads=8) as unit:
        ready = READY_PATHS["inference"]
        idle = [probe(unit.probe_url + ready) for _ in range(20)]
        main_port: list[float | None] = []
        probe_port: list[float | None] = []
        with trickling(Trickle(unit.url, "/infer", connections=SLOW_CLIENTS)):
            deadline = time.monotonic() + DURATION_S
            while time.monotonic() < deadline:
                main_port.append(probe(unit.url + ready))
                probe_port.append(probe(unit.probe_url + ready))
                time.sleep(0.2)
    rows = [["probe port, no slow clients", *summary(idle)],
            [f"main port, {SLOW_CLIENTS} slow clients", *summary(main_port)],
            [f"probe port, {SLOW_CLIENTS} slow clients", *summary(probe_port)]]
    body = (f"An inference unit (haar-face, `WORKER_CONNECTIONS={WORKER_CONNECTIONS}`) with {SLOW_CLIENTS} clients "
            f"trickling into its main port for {DURATION_S:g} s; the readiness probe is asked on both ports in turn, "
            f"every 0.2 s, each with a {PROBE_TIMEOUT_S:g} s timeout. 1-min load average before: {load:.2f}.\n\n"
            + markdown_table(["probe", "answered within 1 s", "p50", "max"], rows))
    publish("Probe latency with the main port full", "python benchmarks/probes.py", body)


if __name__ == "__main__":
    main()
