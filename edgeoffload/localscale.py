"""The local autoscaler: the Kubernetes HPA algorithm (edgeoffload.hpa) over local processes.

`edgeoffload up` has no cluster, so each inference "Deployment" is a ReplicaPool of
gunicorn unit processes behind a TcpRelay (the "Service"). Every sync period the
autoscaler feeds the HPA controller per-replica samples, exactly as metrics-server and a
Prometheus adapter would: CPU cores used since the last sync (from /proc, against a
per-replica CPU request) and the in-flight gauge scraped from each replica's /metrics at
every sync and averaged over the last minute (`avg_over_time(...[1m])`,
edgeoffload.podmetrics), then starts or stops replicas and publishes the replica counts
retained on `edgeoffload/status/autoscaler`.
"""
from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlparse

from prometheus_client.parser import text_string_to_metric_families

from edgeoffload.endpointslices import Endpoint, EndpointSliceStore
from edgeoffload.hpa import HPAController, HPAError, HPASpec, MetricTarget, PodSample, metric_averages
from edgeoffload.podmetrics import ScrapedSeries
from edgeoffload.relay import TcpRelay, Wan
from edgeoffload.serve import UnitProcess, start_unit

log = logging.getLogger(__name__)
IN_FLIGHT_METRIC = "edgeoffload_inference_in_flight"
RESTART_BACKOFF_S = 10.0       # the kubelet's CrashLoopBackOff: 10 s, doubling ...
RESTART_BACKOFF_MAX_S = 300.0  # ... up to 5 min, reset after a container ran this long
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def check_servable(spec: HPASpec) -> None:
    """The local autoscaler knows two metrics: cpu (Resource) and in-flight requests (Pods)."""
    for metric in spec.metrics:
        if metric.kind == "Resource" and metric.name != "cpu":
            raise HPAError(f"local autoscaler: resource metric {metric.name!r} is not measured (only cpu)")
        if metric.kind == "Pods" and "in_flight" not in metric.name:
            raise HPAError(f"local autoscaler: pods metric {metric.name!r} is not served (only in-flight)")


def restart_delay(crash_streak: int) -> float:
    """Seconds before restarting after `crash_streak` early deaths in a row: the first restart
    is immediate, then 10, 20, 40 ... s up to 5 min (the kubelet's CrashLoopBackOff)."""
    if crash_streak <= 1:
        return 0.0
    return min(RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_S * 2 ** (crash_streak - 2))


def scrape_in_flight(url: str, timeout: float = 2.0) -> float | None:
    """Current value of the in-flight gauge at `url`/metrics (summed over label sets), or None."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=timeout) as response:
            text = response.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    total, found = 0.0, False
    for family in text_string_to_metric_families(text):
        if family.name == IN_FLIGHT_METRIC:
            for sample in family.samples:
                total += sample.value
                found = True
    return total if found else None


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants (gunicorn master + workers), those alive now."""
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                stack.extend(int(child) for child in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
        found.append(current)
    return found


def process_tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (gunicorn master + workers)."""
    total = 0.0
    for current in process_tree(pid):
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        except (OSError, IndexError, ValueError):
            continue
    return total


def process_tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and its descendants: what a container's memory limit counts
    (less the page cache, which the kernel reclaims before it OOM-kills)."""
    total = 0
    for current in process_tree(pid):
        try:
            total += int(Path(f"/proc/{current}/statm").read_text().split()[1]) * PAGE_BYTES
        except (OSError, IndexError, ValueError):
            continue
    return total


def peak_tree_rss(pid: int, work: Callable[[], object], interval_s: float = 0.005) -> int:
    """The highest process_tree_rss_bytes(pid) seen while `work()` runs (in this thread)."""
    peak, done = process_tree_rss_bytes(pid), threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(interval_s):
            peak = max(peak, process_tree_rss_bytes(pid))

    sampler = threading.Thread(target=sample, daemon=True, name="rss-sampler")
    sampler.start()
    try:
        work()
    finally:
        done.set()
        sampler.join()
    return max(peak, process_tree_rss_bytes(pid))


@dataclass
class ReplicaWindow:
    """One replica's metrics: its scraped in-flight gauge (averaged as prometheus-adapter does)
    and the CPU-time baseline of the window since the last sync (as metrics-server reports)."""

    in_flight: ScrapedSeries = field(default_factory=ScrapedSeries)
    cpu_start_s: float = 0.0
    wall_start: float = 0.0

    def reset(self, cpu_s: float, now: float) -> None:
        self.cpu_start_s, self.wall_start = cpu_s, now


@dataclass(eq=False)
class LocalReplica:
    """One replica: its gunicorn process and, across a WAN, the relay that is its address."""

    name: str
    unit: UnitProcess
    wan_relay: TcpRelay | None = None
    started_at: float = 0.0    # time.monotonic() at process start (the pod's startTime)
    ready_at: float = 0.0      # ... when it answered ready (its Ready condition's last transition)

    @property
    def pid(self) -> int:
        return self.unit.process.pid

    @property
    def address(self) -> tuple[str, int]:
        """Where callers reach it: through its WAN relay if it has one."""
        if self.wan_relay is not None:
            return self.wan_relay.host, self.wan_relay.port
        return _unit_address(self.unit)

    def stop(self) -> None:
        self.unit.stop()
        if self.wan_relay is not None:
            self.wan_relay.stop()


@dataclass(eq=False)
class StartingReplica:
    """A replica being started (a Pending pod): not ready, no metrics yet; scale-down cancels it first."""

    name: str
    since: float
    cancelled: bool = False


class ReplicaPool:
    """Replicas of one inference unit, like a Deployment behind a Service.

    scale_to() starts gunicorn processes (each ready before it gets traffic; with wait=False in
    the background, as a ReplicaSet creates pods and returns, so `desired` counts them at once
    while `size` counts the ready ones) or, cancelling replicas still starting first, retires the
    newest ones as Kubernetes deletes a pod: out of the Service and marked terminating in its
    EndpointSlice at once, serving what it holds for `pre_stop_s` (the preStop hook), then
    SIGTERM (gunicorn finishes in-flight requests) and the slice is deleted. Every replica is
    published to `endpoints` (the testbed's EndpointSlice API, which the preprocessor watches)
    and to `relay` (the Service: per-connection round robin). Across a WAN (`wan`) each replica
    gets a relay of its own on that shared link, and that relay is its published address. A
    replica whose process dies leaves the rotation at once and a new replica (a new name, as a
    ReplicaSet creates a new pod) starts in its place: at once, or after a back-off that doubles
    from RESTART_BACKOFF_S up to RESTART_BACKOFF_MAX_S while replicas keep dying within
    RESTART_BACKOFF_MAX_S of their start (as the kubelet's CrashLoopBackOff).
    """

    def __init__(self, name: str, env: Mapping[str, str], relay: TcpRelay, log_dir: Path,
                 service: str | None = None, endpoints: EndpointSliceStore | None = None, wan: Wan | None = None,
                 pre_stop_s: float = 0.0, cpu_request: float = 1.0,
                 on_change: Callable[[], None] | None = None) -> None:
        self.name = name
        self.service = service or f"{name}-inference"
        self.on_change = on_change
        self.env = dict(env)
        self.workers = int(self.env.get("WORKERS", "1"))
        self.threads = int(self.env.get("THREADS", "4"))
        self.relay = relay
        self.endpoints = endpoints
        self.wan = wan
        self.log_dir = log_dir
        self.pre_stop_s = pre_stop_s
        self.cpu_request = cpu_request
        self.replicas: list[LocalReplica] = []
        self.starting: list[StartingReplica] = []
        self.terminating: list[LocalReplica] = []
        self.peak = 0            # most replicas at once
        self.rescales = 0        # scale_to calls that changed the count
        self.exits = 0           # replicas whose process died on its own
        self.restarts = 0        # replacements started for them, and failed starts tried again
        self._crash_streak = 0   # replicas in a row that died soon after starting
        self.windows: dict[int, ReplicaWindow] = {}
        self._serial = itertools.count(1)
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def size(self) -> int:
        """Ready replicas (those serving)."""
        with self._lock:
            return len(self.replicas)

    @property
    def desired(self) -> int:
        """Ready and starting replicas: the Deployment's replicas, which the HPA reads and sets."""
        with self._lock:
            return len(self.replicas) + len(self.starting)

    def scale_to(self, count: int, wait: bool = True) -> None:
        """Add replicas (each ready before it receives traffic; `wait=False`: in the background)
        or remove some: replicas still starting first, then the newest ready ones."""
        count = max(count, 0)
        with self._lock:
            if count == len(self.replicas) + len(self.starting):
                return
            self.rescales += 1
            while self.starting and len(self.replicas) + len(self.starting) > count:
                self.starting.pop().cancelled = True
            leaving = [self.replicas.pop() for _ in range(max(0, len(self.replicas) - count))]
            for replica in leaving:
                self.windows.pop(replica.pid, None)
                self.terminating.append(replica)
            added = [StartingReplica(f"{self.service}-{next(self._serial)}", time.monotonic())
                     for _ in range(count - len(self.replicas) - len(self.starting))]
            self.starting.extend(added)
        for replica in leaving:
            self._publish(replica, ready=False)
            threading.Thread(target=self._retire, args=(replica, self.pre_stop_s), daemon=True,
                             name=f"retire-{replica.name}").start()
            log.info("%s: replica %s terminating (%d left)", self.name, replica.name, self.size)
        if leaving and self.on_change:
            self.on_change()
        for pending in added:
            if wait:
                try:
                    self._add(pending)
                except Exception:
                    self._forget(pending)
                    if not (self._stopping.is_set() or pending.cancelled):
                        raise
            else:
                self._start_in_background(pending, 0.0)

    def _forget(self, pending: StartingReplica) -> None:
        with self._lock:
            if pending in self.starting:
                self.starting.remove(pending)

    def _start_in_background(self, pending: StartingReplica, delay_s: float) -> None:
        threading.Thread(target=self._start_until_up, args=(pending, delay_s), daemon=True,
                         name=f"start-{pending.name}").start()

    def _start_until_up(self, pending: StartingReplica, delay_s: float) -> None:
        """Start `pending` after `delay_s`, and again after every failed start, with the kubelet's
        back-off, for as long as the Deployment still wants it (as a pod's container is restarted)."""
        while not (self._stopping.wait(delay_s) or pending.cancelled):
            try:
                self._add(pending)
                return
            except Exception as exc:
                with self._lock:
                    self._crash_streak += 1
                    self.restarts += 1
                    delay_s = restart_delay(self._crash_streak)
                    restarts = self.restarts
                log.warning("%s: replica %s failed to start (%s: %s); next try in %.0fs (restart %d)", self.name,
                            pending.name, type(exc).__name__, str(exc)[:300], delay_s, restarts)
                if self.on_change:
                    self.on_change()
        self._forget(pending)

    def _add(self, pending: StartingReplica) -> None:
        """Start `pending`'s process and put it in rotation once ready; raises if it cannot start."""
        name = pending.name
        unit = start_unit("inference", env={**self.env, "INFER_REPLICA_NAME": name}, workers=self.workers,
                          threads=self.threads, log_dir=self.log_dir)
        wan_relay = None
        if self.wan is not None:
            host, port = _unit_address(unit)
            wan_relay = TcpRelay([(host, port)], host=host, link=self.wan, name=f"{name}-wan").start()
        replica = LocalReplica(name, unit, wan_relay, started_at=pending.since, ready_at=time.monotonic())
        with self._lock:
            live = pending in self.starting and not self._stopping.is_set()
            if live:
                self.starting.remove(pending)
                self.replicas.append(replica)
        if not live:   # scaled down (or stopped) while it started
            replica.stop()
            log.info("%s: replica %s cancelled while starting", self.name, name)
            return
        with self._lock:
            self.windows[replica.pid] = ReplicaWindow(cpu_start_s=process_tree_cpu_seconds(replica.pid),
                                                      wall_start=replica.ready_at)
            self.peak = max(self.peak, len(self.replicas))
        self._publish(replica, ready=True)
        self._watch()
        log.info("%s: replica %s ready at %s (%d now)", self.name, name, unit.url, self.size)
        if self.on_change:
            self.on_change()

    def _publish(self, replica: LocalReplica, ready: bool) -> None:
        """Tell the Service relay and the EndpointSlice API about a change of `replica`."""
        with self._lock:
            self.relay.set_backends([_unit_address(r.unit) for r in self.replicas])
        if self.endpoints is not None:
            host, port = replica.address
            self.endpoints.set_endpoint(self.service, Endpoint(replica.name, host, port, ready=ready,
                                                               terminating=not ready))

    def _retire(self, replica: LocalReplica, grace_s: float) -> None:
        """preStop, then SIGTERM (in-flight requests finish), then the endpoint goes away."""
        if grace_s > 0:
            self._stopping.wait(grace_s)
        replica.stop()
        if self.endpoints is not None:
            self.endpoints.delete_endpoint(self.service, replica.name)
        with self._lock:
            if replica in self.terminating:
                self.terminating.remove(replica)
        log.info("%s: replica %s stopped", self.name, replica.name)
        if self.on_change:
            self.on_change()

    def _watch(self) -> None:
        with self._lock:
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._reap_loop, daemon=True, name=f"{self.name}-reaper")
                self._watcher.start()

    def _reap_loop(self) -> None:
        """A replica whose process exited leaves the rotation at once (a failing readiness probe);
        a replacement keeps the Deployment at its replicas."""
        while not self._stopping.wait(0.2):
            with self._lock:
                dead = [r for r in self.replicas if r.unit.process.poll() is not None]
                for replica in dead:
                    self.replicas.remove(replica)
                    self.windows.pop(replica.pid, None)
                    self.exits += 1
            for replica in dead:
                self._publish(replica, ready=False)
                self._retire(replica, 0.0)
                self._replace(replica)

    def _replace(self, dead: LocalReplica) -> None:
        lived_s = time.monotonic() - dead.started_at
        with self._lock:
            if self._stopping.is_set():
                return
            self._crash_streak = self._crash_streak + 1 if lived_s < RESTART_BACKOFF_MAX_S else 0
            delay = restart_delay(self._crash_streak)
            pending = StartingReplica(f"{self.service}-{next(self._serial)}", time.monotonic())
            self.starting.append(pending)
            self.restarts += 1
        log.warning("%s: replica %s exited with %s after %.0fs; out of rotation, replacement %s starts in %.0fs "
                    "(restart %d)", self.name, dead.name, dead.unit.process.returncode, lived_s, pending.name, delay,
                    self.restarts)
        if self.on_change:
            self.on_change()
        self._start_in_background(pending, delay)

    def sample(self, now: float | None = None) -> None:
        """Scrape each replica's in-flight gauge once (as Prometheus does, at every sync), stamped
        `now` (default: the monotonic clock), the clock the autoscaler's syncs run on."""
        with self._lock:
            replicas = list(self.replicas)
        for replica in replicas:
            value = scrape_in_flight(replica.unit.url)
            stamp = time.monotonic() if now is None else now
            with self._lock:
                window = self.windows.get(replica.pid)
                if window is not None and value is not None:
                    window.in_flight.add(stamp, value)

    def reset_windows(self) -> None:
        """Start every replica's metric window afresh (nothing measured before now counts)."""
        now = time.monotonic()
        with self._lock:
            for replica in self.replicas:
                self.windows[replica.pid] = ReplicaWindow(cpu_start_s=process_tree_cpu_seconds(replica.pid),
                                                          wall_start=now)

    def pids(self) -> list[int]:
        with self._lock:
            return [replica.pid for replica in [*self.replicas, *self.terminating]]

    def pod_samples(self, spec: HPASpec, now: float) -> list[PodSample]:
        """One PodSample per replica with the window's averages; the windows restart."""
        samples = []
        with self._lock:
            replicas = list(self.replicas)
        with self._lock:
            pending = [PodSample(name=p.name, ready=False, phase="Pending", requests={"cpu": self.cpu_request})
                       for p in self.starting]
        for replica in replicas:
            pid = replica.pid
            alive = replica.unit.process.poll() is None
            cpu_now = process_tree_cpu_seconds(pid)
            with self._lock:
                window = self.windows.setdefault(pid, ReplicaWindow(cpu_start_s=cpu_now, wall_start=now))
                values: dict[str, float] = {}
                window_start = window.wall_start
                elapsed = now - window_start
                for metric in spec.metrics:
                    if metric.kind == "Resource" and elapsed > 0:
                        values["cpu"] = max(0.0, cpu_now - window.cpu_start_s) / elapsed
                    elif metric.kind == "Pods" and (average := window.in_flight.average(now)) is not None:
                        values[metric.name] = average
                window.reset(cpu_now, now)
            samples.append(PodSample(name=replica.name, ready=alive, phase="Running" if alive else "Failed",
                                     values=values, requests={"cpu": self.cpu_request}, started_at=replica.started_at,
                                     ready_changed_at=replica.ready_at, window_start=window_start))
        return samples + pending

    def stop(self) -> None:
        """Stop every replica now (the testbed is going down: no traffic, no preStop wait)."""
        self._stopping.set()
        with self._lock:
            replicas, self.replicas = [*self.replicas, *self.terminating], []
            self.terminating = []
            for pending in self.starting:
                pending.cancelled = True
            self.starting = []
        for replica in replicas:
            replica.stop()
            if self.endpoints is not None:
                self.endpoints.delete_endpoint(self.service, replica.name)
        self.relay.set_backends([])
        if self._watcher is not None:
            self._watcher.join(timeout=2)


def _unit_address(unit: UnitProcess) -> tuple[str, int]:
    url = urlparse(unit.url)
    return url.hostname or "127.0.0.1", url.port or 80


@dataclass(frozen=True, slots=True)
class ScaleStatus:
    """What the autoscaler did for one pool at one sync (published retained for the web page)."""

    pool: str
    replicas: int                 # ready replicas when the sync began
    desired: int                  # what the HPA set (the Deployment's replicas from now on)
    reason: str
    metrics: dict[str, float]
    at: float = 0.0               # wall-clock time of the sync
    current: int = 0              # the Deployment's replicas the HPA read (ready + starting)


def status_message(pools: Mapping[str, ReplicaPool], statuses: list[ScaleStatus]) -> dict[str, Any]:
    """The retained status the web page shows: replicas per Deployment (as the HPA set them), and
    each pool's decision with its ready replicas at the sync."""
    return {"state": "running", "replicas": {pools[s.pool].service: s.desired for s in statuses},
            "pools": {s.pool: {"ready": s.replicas, "desired": s.desired, "reason": s.reason, "metrics": s.metrics}
                      for s in statuses}}


class LocalAutoscaler:
    """Runs HPAController.step for each pool every sync period, in a background thread."""

    def __init__(self, pools: Mapping[str, tuple[ReplicaPool, HPASpec]],
                 publish: Callable[[dict], object] | None = None) -> None:
        for _, spec in pools.values():
            check_servable(spec)
        self.pools = dict(pools)
        self.controllers = {name: HPAController(spec) for name, (_, spec) in self.pools.items()}
        self.publish = publish
        self.history: list[ScaleStatus] = []
        self.started_at = self.started_wall = 0.0   # monotonic and wall clock at start(): the sync grid
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="local-autoscaler")

    def start(self) -> "LocalAutoscaler":
        self.started_at = time.monotonic()
        self.started_wall = time.time()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def sync(self, now: float) -> list[ScaleStatus]:
        """One reconcile of every pool (public so tests can drive it without waiting)."""
        statuses = []
        for name, (pool, spec) in self.pools.items():
            pool.sample(now)   # Prometheus's scrape (edgeoffload.podmetrics)
            pods = pool.pod_samples(spec, now)
            ready, current = pool.size, pool.desired
            desired = self.controllers[name].step(now, current, pods)
            decision = self.controllers[name].last
            if desired != current:
                log.info("autoscaler %s: %d -> %d (%s)", name, current, desired, decision.reason if decision else "")
                pool.scale_to(desired, wait=False)   # like a ReplicaSet: new pods start in the background
            statuses.append(ScaleStatus(name, ready, desired, decision.reason if decision else "",
                                        metric_averages(pods), at=time.time(), current=current))
        self.history.extend(statuses)
        if self.publish is not None:
            self.publish(status_message({name: pool for name, (pool, _) in self.pools.items()}, statuses))
        return statuses

    def _loop(self) -> None:
        """Reconcile on a fixed grid: first at the HPAs' first_reconcile_s, then every sync
        period (the controller requeues each HPA one period after its reconcile)."""
        specs = [spec for _, spec in self.pools.values()]
        period = min((spec.sync_period_s for spec in specs), default=15.0)
        next_sync = self.started_at + min((spec.first_reconcile_s for spec in specs), default=period)
        while not self._stop.wait(max(0.0, next_sync - time.monotonic())):
            try:
                self.sync(time.monotonic())
            except Exception:  # a failed scale-up must not end autoscaling for the rest of the run
                log.exception("autoscaler sync failed")
            while next_sync <= time.monotonic():
                next_sync += period


__all__ = ["LocalAutoscaler", "LocalReplica", "ReplicaPool", "restart_delay", "RESTART_BACKOFF_S", "ScaleStatus",
           "status_message", "check_servable",
           "scrape_in_flight", "process_tree", "process_tree_cpu_seconds", "process_tree_rss_bytes", "peak_tree_rss",
           "IN_FLIGHT_METRIC"]
