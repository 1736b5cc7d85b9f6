"""Units started as child processes (what the local testbed and the tests use)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import requests

from edgeoffload.serve import UnitProcess, free_port, start_unit, stop_process_group, wait_until_ready


def test_a_stopped_unit_leaves_no_temporary_metrics_folder(tmp_path: Path) -> None:
    unit = start_unit("webserver", env={"WEB_MQTT_ENABLED": "false", "WEB_RESULTS_DIR": str(tmp_path)},
                      log_dir=tmp_path)
    metrics = Path(unit.metrics_dir)
    try:
        assert metrics.is_dir() and metrics.name.startswith("edgeoffload-metrics-webserver-")
    finally:
        unit.stop()
    assert not metrics.exists()
    unit.stop()  # idempotent


def test_the_entry_point_serves_probes_where_probe_bind_says(tmp_path: Path) -> None:
    """`edgeoffload serve` (the container's command): --probe-bind sets PROBE_BIND."""
    port, probe_port = free_port(), free_port()
    env = {**os.environ, "WEB_MQTT_ENABLED": "false", "WEB_RESULTS_DIR": str(tmp_path),
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    process = subprocess.Popen([sys.executable, "-m", "edgeoffload.cli", "serve", "webserver",
                                "--bind", f"127.0.0.1:{port}", "--probe-bind", f"127.0.0.1:{probe_port}"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        unit = UnitProcess("webserver", f"http://127.0.0.1:{port}", process, tmp_path / "none.log",
                           probe_url=f"http://127.0.0.1:{probe_port}")
        wait_until_ready(unit, timeout=60)
        assert requests.get(unit.probe_url + "/healthz", timeout=2).status_code == 200
        assert requests.get(unit.probe_url + "/api/summary", timeout=2).status_code == 404   # probes only
        assert requests.get(unit.url + "/api/summary", timeout=2).status_code == 200
    finally:
        stop_process_group(process, 15)
