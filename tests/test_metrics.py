import subprocess
import sys

from prometheus_client import multiprocess
from prometheus_client.parser import text_string_to_metric_families

from edgeoffload import metrics


def samples(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_render_in_process_shows_inference_metrics():
    metrics.INFERENCE_REQUESTS.labels("cloud", "/infer", "200").inc(3)
    metrics.INFERENCE_SECONDS.labels("cloud", "test-model").observe(0.004)
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    found = samples(body.decode())
    assert found[("edgeoffload_inference_requests_total", (("code", "200"), ("route", "/infer"), ("site", "cloud")))] >= 3
    assert found[("edgeoffload_inference_seconds_bucket", (("le", "0.005"), ("model", "test-model"), ("site", "cloud")))] >= 1


def test_multiprocess_mode_aggregates_processes_and_sums_live_in_flight(tmp_path):
    """Two processes write to one PROMETHEUS_MULTIPROC_DIR; render() adds them up."""
    script = ("import sys; from edgeoffload import metrics; "
              "metrics.INFERENCE_REQUESTS.labels('edge', '/infer', '200').inc(); "
              "metrics.INFERENCE_IN_FLIGHT.labels('edge').inc(2); "
              "sys.stdout.write(metrics.render()[0].decode()) if len(sys.argv) > 1 else None")
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    first = subprocess.Popen([sys.executable, "-c", script], env=env)
    assert first.wait() == 0
    multiprocess.mark_process_dead(first.pid, str(tmp_path))
    output = subprocess.run([sys.executable, "-c", script, "render"], env=env, check=True,
                            capture_output=True, text=True).stdout
    found = samples(output)
    assert found[("edgeoffload_inference_requests_total", (("code", "200"), ("route", "/infer"), ("site", "edge")))] == 2
    # livesum: gunicorn's child_exit hook marks a dead worker, whose in-flight gauge then drops out
    assert found[("edgeoffload_inference_in_flight", (("site", "edge"),))] == 2
