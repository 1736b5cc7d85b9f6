"""gunicorn settings shared by every unit: gthread workers sized to the CPU limit.

Read from the environment so a Deployment sets them: BIND (default 0.0.0.0:8080),
WORKERS (default: CPUs available, capped at 4), THREADS (default 4), TIMEOUT, MAX_REQUESTS,
WORKER_CONNECTIONS (default 1000, as gunicorn: beyond it a worker stops accepting), the
slow-client bounds READ_TIMEOUT_S, READ_BUFFER_MB, MAX_BUFFERED_REQUEST_BYTES
(edgeoffload.units.buffered_worker: gthread whose threads only get complete requests), and
PROBE_BIND (default 0.0.0.0:8081): the health probes' own listener, bound in the master and
served by a thread in each worker (edgeoffload.units.probes), which clients of BIND cannot
keep busy.
Eventlet is not used (deprecated upstream, removed in gunicorn 26).
"""
import glob
import os
import shutil
import sys
import tempfile

# prometheus_client picks its value storage at import: the directory must be set before.
_owned_metrics_dir = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _owned_metrics_dir = tempfile.mkdtemp(prefix="edgeoffload-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _owned_metrics_dir

from gunicorn.arbiter import Arbiter  # noqa: E402
from prometheus_client import multiprocess  # noqa: E402

from edgeoffload.units import probes  # noqa: E402


def _cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


bind = os.environ.get("BIND", "0.0.0.0:8080")
worker_class = "edgeoffload.units.buffered_worker.BufferingWorker"
workers = int(os.environ.get("WORKERS", min(_cpus(), 4)))
threads = int(os.environ.get("THREADS", "4"))
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "1000"))
probe_bind = os.environ.get("PROBE_BIND", "0.0.0.0:8081")
timeout = int(os.environ.get("TIMEOUT", "60"))
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "10"))
keepalive = int(os.environ.get("KEEPALIVE", "30"))
max_requests = int(os.environ.get("MAX_REQUESTS", "0"))
max_requests_jitter = max_requests // 10
accesslog = os.environ.get("ACCESSLOG") or None
errorlog = "-"
loglevel = os.environ.get("LOGLEVEL", "info")
# gunicorn 27's control socket defaults to one path per user ($HOME/.gunicorn): units and tests
# running side by side would fight over it, and nothing here uses it.
control_socket_disable = True
# Bounded request line/header sizes; bodies are bounded by each app (MAX_BODY_BYTES).
limit_request_line = 4094
limit_request_fields = 50


def on_starting(server):
    """Start from an empty metrics directory: a restarted container keeps its emptyDir and
    reuses PIDs, and stale files would report frames in flight that no longer exist."""
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(directory, exist_ok=True)
    for stale in glob.glob(os.path.join(directory, "*.db")):
        os.remove(stale)


def when_ready(server):
    """Bind the probe listener before any worker is forked, so every worker inherits it."""
    try:
        probes.bind_in_master(probe_bind)
        server.log.info("Probes listening at: http://%s", probe_bind)
    except (OSError, ValueError) as exc:
        server.log.error("PROBE_BIND %s: %s", probe_bind, exc)
        on_exit(server)
        sys.exit(Arbiter.APP_LOAD_ERROR)


def post_worker_init(worker):
    """Serve the probes from a thread of this worker, with the app it loaded."""
    probes.serve_in_worker(worker.wsgi)


def child_exit(server, worker):
    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _owned_metrics_dir:
        shutil.rmtree(_owned_metrics_dir, ignore_errors=True)
