"""Units started as child processes (what the local testbed and the tests use)."""
from __future__ import annotations

from pathlib import Path

from edgeoffload.serve import start_unit


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
