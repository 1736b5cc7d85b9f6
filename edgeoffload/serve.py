"""Run a unit's Flask app under gunicorn (gthread), in the foreground or as a child process.

The container entry point (`edgeoffload serve inference`) and the local testbed and tests
(`start_unit`) go through the same gunicorn config, so what is tested is what is deployed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

UNITS: dict[str, str] = {
    "inference": "edgeoffload.units.inference:create_app()",
    "preprocessor": "edgeoffload.units.preprocessor:create_app()",
    "webserver": "edgeoffload.units.webserver:create_app()",
}
READY_PATHS: dict[str, str] = {
    "inference": "/v2/health/ready",
    "preprocessor": "/v2/health/ready",
    "webserver": "/healthz",
}
GUNICORN_CONF = Path(__file__).resolve().parent / "units" / "gunicorn_conf.py"
# These units keep per-process state (queues, policy, subscriptions, history): one worker, many threads.
SINGLE_WORKER_UNITS = ("preprocessor", "webserver")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def gunicorn_command(unit: str) -> list[str]:
    if unit not in UNITS:
        raise ValueError(f"unknown unit {unit!r}; choose from {', '.join(UNITS)}")
    return [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), UNITS[unit]]


def exec_unit(unit: str) -> None:
    """Replace this process with gunicorn serving `unit` (container entry point)."""
    command = gunicorn_command(unit)
    if unit in SINGLE_WORKER_UNITS:
        os.environ.setdefault("WORKERS", "1")
    os.execv(command[0], command)


def stop_process_group(process: subprocess.Popen, timeout: float) -> int:
    """SIGTERM a child started in its own session (its process group), SIGKILL it after `timeout`."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process.pid)
        except ProcessLookupError:   # the group ended between poll() and killpg()
            pass
        process.wait()
    return process.returncode


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass
class UnitProcess:
    """A unit served by gunicorn in a child process; stop() ends the whole process group."""

    unit: str
    url: str
    process: subprocess.Popen
    log_path: Path
    metrics_dir: str = field(default="")
    probe_url: str = ""   # the probe listener (PROBE_BIND), where the kubelet's probes go

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def probe_port(self) -> int:
        return int(self.probe_url.rsplit(":", 1)[1])

    def ready(self, timeout: float = 2.0) -> bool:
        """Whether its readiness probe answers 200 within `timeout`."""
        try:
            with urllib.request.urlopen(self.probe_url + READY_PATHS[self.unit], timeout=timeout) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def stop(self, timeout: float = 15.0) -> int:
        """Stop the unit and remove its temporary metrics folder (nothing reads it afterwards)."""
        code = stop_process_group(self.process, timeout)
        if self.metrics_dir:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        return code

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> "UnitProcess":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def start_unit(unit: str, env: Mapping[str, str] | None = None, port: int | None = None,
               host: str = "127.0.0.1", workers: int = 1, threads: int = 4,
               ready_timeout: float = 90.0, wait_ready: bool = True,
               log_dir: str | Path | None = None, command_prefix: Sequence[str] = (),
               probe_port: int | None = None) -> UnitProcess:
    """Start `unit` under gunicorn on host:port, its probes on host:probe_port (a free one by
    default), and (by default) wait until it reports ready there, as the kubelet would.

    `command_prefix` runs gunicorn through another command, e.g. `ip netns exec NAME` to serve
    on an address of a network namespace (the k8s tests' pod IPs)."""
    port = port or free_port(host)
    probe_port = probe_port or free_port(host)
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="edgeoffload-logs-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{unit}-{port}.log"
    metrics_dir = tempfile.mkdtemp(prefix=f"edgeoffload-metrics-{unit}-")
    child_env = {**os.environ, **(env or {}), "BIND": f"{host}:{port}", "PROBE_BIND": f"{host}:{probe_port}",
                 "WORKERS": str(workers), "THREADS": str(threads), "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    with log_path.open("ab") as log:
        process = subprocess.Popen([*command_prefix, *gunicorn_command(unit)], env=child_env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    running = UnitProcess(unit, f"http://{host}:{port}", process, log_path, metrics_dir,
                          probe_url=f"http://{host}:{probe_port}")
    if wait_ready:
        try:
            wait_until_ready(running, ready_timeout)
        except Exception:
            running.stop()
            raise
    return running


def wait_until_ready(running: UnitProcess, timeout: float) -> None:
    """Poll the unit's ready path on its probe port until it answers 200 (the readiness probe)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            raise RuntimeError(f"{running.unit} exited with {running.process.returncode}:\n{running.log()[-4000:]}")
        if running.ready():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{running.unit} at {running.url} not ready after {timeout:.0f}s:\n{running.log()[-4000:]}")


def register(parser: argparse.ArgumentParser) -> None:
    """`edgeoffload serve UNIT`: the container entry point (gunicorn replaces this process)."""
    parser.add_argument("unit", choices=sorted(UNITS))
    parser.add_argument("--bind", help="host:port (default $BIND or 0.0.0.0:8080)")
    parser.add_argument("--probe-bind", help="host:port of the health probes' own listener "
                                             "(default $PROBE_BIND or 0.0.0.0:8081)")
    parser.add_argument("--workers", type=int,
                        help=f"gunicorn workers (default $WORKERS, else 1 for {' and '.join(SINGLE_WORKER_UNITS)}, "
                             "which keep per-process state, and for inference the CPUs available, at most 4)")
    parser.add_argument("--threads", type=int, help="threads per worker (default 4)")


def run(args: argparse.Namespace) -> int:
    for name, value in (("BIND", args.bind), ("PROBE_BIND", args.probe_bind), ("WORKERS", args.workers),
                        ("THREADS", args.threads)):
        if value is not None:
            os.environ[name] = str(value)
    exec_unit(args.unit)
    return 0
