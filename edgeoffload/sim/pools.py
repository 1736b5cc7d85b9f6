"""Inference pools: a Deployment of pods, each with `workers` FIFO servers, behind either a
round-robin Service (one queue per pod, like kube-proxy in IPVS round-robin mode) or one
shared queue (like a work queue all pods pull from).

Queues are plain deques and servers are counters; a service completion is one entry in
the simulation's event heap. This is an exact FIFO multi-server model, an order of
magnitude cheaper than a simpy Resource per request, and it stays exact when pods come
and go: a new pod takes waiting work the moment it is ready, a terminating pod stops
receiving work and finishes what it already holds (graceful shutdown).

Pools whose pods share one machine (scenario key `shared_cpu`) hand their services to a
SharedCpu instead: egalitarian processor sharing, so a frame is slow exactly while the other
pools on that machine are busy too. Pools without it keep the plain path, untouched.
"""
from __future__ import annotations

import heapq
import itertools
from collections import deque
from typing import Callable, Iterable, Iterator

from edgeoffload.hpa import PodSample
from edgeoffload.podmetrics import ScrapedSeries
from edgeoffload.sim.distributions import Sampler
from edgeoffload.sim.scenario import PoolSpec

Schedule = list  # the simulation's heap of (time, seq, handler, argument)
METRICS_WINDOW_S = 15.0  # metrics-server resolution: a CPU sample covers this much time


class Frame:
    """One frame on its way through the model (times in simulated seconds)."""

    __slots__ = ("camera", "frame_id", "captured", "size", "deadline_s", "arrived", "started", "service",
                 "uplink_s", "up_s", "down_s", "pod", "reason", "content", "target", "dispatched", "edge_answer",
                 "edge_done")

    def __init__(self, camera: str, frame_id: int, captured: float, size: int, deadline_s: float | None,
                 content: str = "") -> None:
        self.camera = camera
        self.frame_id = frame_id
        self.captured = captured
        self.size = size
        self.deadline_s = deadline_s
        self.arrived = self.started = self.service = 0.0
        self.uplink_s = self.up_s = self.down_s = 0.0   # uplink wait + serialisation, propagation up/down
        self.pod: Pod | None = None
        self.reason = ""
        self.content = content           # which picture (trace `content`): scales the service draw
        self.target: Pod | None = None   # the replica the preprocessor sent it to (dispatch model)
        self.dispatched = captured       # when it left the preprocessor's queue
        self.edge_answer = None          # cascade: the edge's drawn answer (scenario edge.answers)
        self.edge_done = -1.0            # cascade: when the edge answered an escalated frame (-1: not escalated)


class Pod:
    """One replica. Busy time is integrated exactly (worker-seconds) for CPU metrics and energy."""

    __slots__ = ("pid", "name", "workers", "created", "ready_at", "ready", "terminating", "gone_at", "idle", "busy",
                 "queue", "in_system", "_busy_acc", "_busy_mark", "scrape_busy", "scrape_at", "sent", "last_pick",
                 "in_flight_series")

    def __init__(self, pid: int, workers: int, created: float, name: str = "") -> None:
        self.pid = pid
        self.name = name                 # as records name the replica
        self.sent = 0                    # requests the preprocessor has outstanding here (dispatch model)
        self.last_pick = 0
        self.in_flight_series = ScrapedSeries()   # its in-flight gauge as Prometheus scraped it
        self.workers = workers
        self.created = created
        self.ready_at: float | None = None
        self.ready = False
        self.terminating = False
        self.gone_at: float | None = None
        self.idle = workers
        self.busy = 0
        self.queue: deque[Frame] = deque()
        self.in_system = 0               # frames routed here and not finished (per-pod mode)
        self._busy_acc = 0.0
        self._busy_mark = created
        self.scrape_busy = 0.0
        self.scrape_at = created

    def busy_seconds(self, now: float) -> float:
        return self._busy_acc + self.busy * (now - self._busy_mark)

    def _change_busy(self, now: float, delta: int) -> None:
        self._busy_acc += self.busy * (now - self._busy_mark)
        self._busy_mark = now
        self.busy += delta

    def alive_seconds(self, until: float) -> float:
        end = until if self.gone_at is None else min(self.gone_at, until)
        return max(0.0, end - self.created)


class SharedCpu:
    """One machine whose cores the busy workers of several pools share (egalitarian processor sharing).

    A frame's service draw is its work at full speed. A busy worker demands its pool's
    `cpu_per_worker` cores; while the total demand D of all busy workers exceeds `cores`,
    every one of them progresses at speed cores/D, otherwise at full speed.

    Since all running frames progress at the same speed, the machine keeps one virtual clock
    (work done per running frame since the start) and a heap of the virtual times at which each
    frame's work is done: the next completion is always the heap's minimum, and the event heap
    holds a single entry for this machine. A start or completion changes the speed, so it
    advances the virtual clock, and re-schedules that entry; superseded entries carry an old
    generation number and are ignored when they come up.

    Busy-time accounting (the HPA's CPU metric, energy) stays per busy worker, as without
    sharing: a worker slowed by sharing counts as fully busy for its whole, longer service, so
    the pools' busy worker-seconds may exceed what the machine's cores could deliver.
    """

    def __init__(self, cores: float, heap: Schedule, sequence: Iterator[int]) -> None:
        if not cores > 0:
            raise ValueError(f"cores must be > 0, got {cores!r}")
        self.cores = cores
        self._heap = heap
        self._seq = sequence
        self._running: list[tuple[float, int, Frame, float, Callable[[Frame], None]]] = []
        self._order = itertools.count()   # FIFO among frames finishing at the same virtual time
        self._demand_by_worker: dict[float, int] = {}   # cpu_per_worker -> busy workers with it
        self._virtual = 0.0               # work (s at full speed) each running frame has done since t=0
        self._mark = 0.0                  # when _virtual was last brought up to date
        self._speed = 1.0
        self._generation = 0              # only the newest completion entry is live
        self._due = 0.0

    @property
    def speed(self) -> float:
        """Current progress rate of every running frame (1 = full speed)."""
        return self._speed

    @property
    def running(self) -> int:
        return len(self._running)

    def start(self, frame: Frame, work_s: float, cpu_per_worker: float, now: float,
              on_finish: Callable[[Frame], None]) -> None:
        """Run `work_s` seconds of full-speed work for `frame`; when it is done, `frame.service`
        is set to the elapsed time and `on_finish(frame)` is called."""
        self._advance(now)
        heapq.heappush(self._running, (self._virtual + work_s, next(self._order), frame, cpu_per_worker, on_finish))
        self._demand_by_worker[cpu_per_worker] = self._demand_by_worker.get(cpu_per_worker, 0) + 1
        self._reschedule(now)

    def _advance(self, now: float) -> None:
        if now > self._mark:
            self._virtual += (now - self._mark) * self._speed
            self._mark = now

    def _reschedule(self, now: float) -> None:
        demand = sum(per_worker * busy for per_worker, busy in self._demand_by_worker.items())
        self._speed = self.cores / demand if demand > self.cores else 1.0
        self._generation += 1
        if self._running:
            left = max(0.0, self._running[0][0] - self._virtual)
            self._due = now + left / self._speed
            heapq.heappush(self._heap, (self._due, next(self._seq), self._finish_next, self._generation))

    def _finish_next(self, generation: int) -> None:
        if generation != self._generation:
            return                        # superseded by a later start or completion
        now = self._due
        self._advance(now)
        done_at, _, frame, per_worker, on_finish = heapq.heappop(self._running)
        self._virtual = max(self._virtual, done_at)   # no rounding drift between completions
        self._demand_by_worker[per_worker] -= 1
        self._reschedule(now)
        frame.service = now - frame.started
        on_finish(frame)


class Pool:
    """Common lifecycle and accounting; subclasses decide where an arriving frame waits."""

    def __init__(self, spec: PoolSpec, heap: Schedule, sequence: Iterator[int], service_ms: Sampler,
                 on_done: Callable[[Frame, float], None], shared_cpu: SharedCpu | None = None) -> None:
        self.spec = spec
        self.pods: list[Pod] = []        # every pod ever created (for pod-seconds)
        self.endpoints: list[Pod] = []   # ready and not terminating: the Service's endpoints
        self._heap = heap
        self._seq = sequence
        self._service_ms = service_ms
        self._on_done = on_done
        self._pid = itertools.count()
        self.peak_replicas = 0
        self.shared_cpu = shared_cpu
        self._content_factor = spec.content_factor   # empty: every frame costs the same on average
        if shared_cpu is not None:   # chosen once here so the plain path pays nothing per frame
            self._start = self._start_on_shared_cpu  # type: ignore[method-assign]

    # -- lifecycle
    @property
    def replicas(self) -> int:
        """Pods the Deployment wants (created, not terminating): the HPA's currentReplicas."""
        return sum(1 for pod in self.pods if not pod.terminating)

    @property
    def ready(self) -> int:
        return len(self.endpoints)

    def add_pod(self, now: float) -> Pod:
        pid = next(self._pid)
        pod = Pod(pid, self.spec.workers, now, f"{self.spec.name}-{pid}")
        self.pods.append(pod)
        self.peak_replicas = max(self.peak_replicas, self.replicas)
        return pod

    def make_ready(self, pod: Pod, now: float) -> None:
        if pod.terminating:
            return
        pod.ready, pod.ready_at = True, now
        pod.scrape_at, pod.scrape_busy = now, pod.busy_seconds(now)
        self.endpoints.append(pod)

    def scale_down(self, count: int, now: float) -> None:
        """Remove pods like a ReplicaSet: not-ready ones first, then the most recently ready
        (newest first on ties)."""
        candidates = [pod for pod in self.pods if not pod.terminating]
        candidates.sort(key=lambda pod: (pod.ready, pod.ready_at or 0.0, pod.pid), reverse=True)
        candidates.sort(key=lambda pod: pod.ready)   # stable: not-ready first, each group newest first
        for pod in candidates[:count]:
            self.terminate(pod, now)

    def terminate(self, pod: Pod, now: float) -> None:
        pod.terminating = True
        if pod in self.endpoints:
            self.endpoints.remove(pod)
        self._release(pod, now)

    def _release(self, pod: Pod, now: float) -> None:
        if pod.busy == 0 and not pod.queue and pod.gone_at is None:
            pod.gone_at = now

    def live_pods(self) -> list[Pod]:
        return [pod for pod in self.pods if pod.gone_at is None]

    # -- service
    def _start(self, pod: Pod, frame: Frame, now: float) -> None:
        pod.idle -= 1
        pod._change_busy(now, 1)
        service = self._work_s(frame)
        frame.pod, frame.started, frame.service = pod, now, service
        heapq.heappush(self._heap, (now + service, next(self._seq), self._complete, frame))

    def _start_on_shared_cpu(self, pod: Pod, frame: Frame, now: float) -> None:
        """_start for pods on a SharedCpu: the draw is the work, the machine decides the end."""
        pod.idle -= 1
        pod._change_busy(now, 1)
        frame.pod, frame.started = pod, now
        assert self.shared_cpu is not None
        self.shared_cpu.start(frame, self._work_s(frame), self.spec.cpu_per_worker, now, self._complete)

    def _work_s(self, frame: Frame) -> float:
        """A service draw for `frame` (seconds at full speed), scaled by its picture's factor."""
        work = self._service_ms() / 1000.0
        return work * self._content_factor.get(frame.content, 1.0) if self._content_factor else work

    def _complete(self, frame: Frame) -> None:
        raise NotImplementedError

    def arrive(self, frame: Frame, now: float) -> str | None:
        """Hand a frame to the Service; returns a failure reason, or None when accepted."""
        raise NotImplementedError

    def in_flight(self, pod: Pod) -> float:
        raise NotImplementedError

    # -- metrics for the HPA
    def pod_samples(self, now: float, custom_metrics: Iterable[str]) -> list[PodSample]:
        """What metrics-server and the custom-metrics adapter report for each live pod:
        cpu = busy worker-seconds per second since the previous scrape (x cores per worker);
        every Pods metric = frames in flight at the pod (queued + in service), scraped now and
        averaged over the adapter's window (edgeoffload.podmetrics).

        Each sample carries the pod's start (creation), its readiness change and the start of a
        metrics-server window (METRICS_WINDOW_S before now), from which the HPA decides whether
        it trusts a CPU sample (groupPods: not from a pod ready for less than one window)."""
        samples = []
        names = tuple(custom_metrics)
        for pod in self.live_pods():
            values: dict[str, float] = {}
            if pod.ready and now > pod.scrape_at:
                busy = pod.busy_seconds(now)
                values["cpu"] = (busy - pod.scrape_busy) / (now - pod.scrape_at) * self.spec.cpu_per_worker
                pod.scrape_busy, pod.scrape_at = busy, now
                if names:
                    pod.in_flight_series.add(now, self.in_flight(pod))
                    average = pod.in_flight_series.average(now)
                    for name in names:
                        values[name] = average
            samples.append(PodSample(name=pod.name, ready=pod.ready,
                                     phase="Running" if pod.ready else "Pending", deleting=pod.terminating,
                                     values=values, requests={"cpu": self.spec.cpu_request},
                                     started_at=pod.created, ready_changed_at=pod.ready_at,
                                     window_start=now - METRICS_WINDOW_S))
        return samples


class PerPodPool(Pool):
    """A round-robin Service in front of pods that each queue their own work."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._next = 0

    def arrive(self, frame: Frame, now: float) -> str | None:
        endpoints = self.endpoints
        if not endpoints:
            return "no_ready_pods"
        index = self._next % len(endpoints)
        self._next = index + 1
        return self.arrive_at(endpoints[index], frame, now)

    def arrive_at(self, pod: Pod, frame: Frame, now: float) -> str | None:
        """A frame reaches `pod` itself (the preprocessor chose it); a terminating pod still
        serves what reaches it, as during its preStop. One already gone refuses the connection,
        and the preprocessor tries another replica of the site."""
        if pod.gone_at is not None:
            return self.arrive(frame, now)
        frame.arrived = now
        if pod.idle:
            self._start(pod, frame, now)
        elif self.spec.queue_capacity is not None and len(pod.queue) >= self.spec.queue_capacity:
            return "queue_full"
        else:
            pod.queue.append(frame)
        pod.in_system += 1
        return None

    def _complete(self, frame: Frame) -> None:
        pod = frame.pod
        assert pod is not None
        end = frame.started + frame.service
        pod._change_busy(end, -1)
        pod.in_system -= 1
        pod.idle += 1
        if pod.queue:
            self._start(pod, pod.queue.popleft(), end)
        elif pod.terminating:
            self._release(pod, end)
        self._on_done(frame, end)

    def in_flight(self, pod: Pod) -> float:
        return float(pod.in_system)


class SharedQueuePool(Pool):
    """One FIFO queue served by every worker of every ready pod (an M/M/c queue for c workers)."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.queue: deque[Frame] = deque()
        self._idle: list[Pod] = []       # one entry per idle worker

    def arrive(self, frame: Frame, now: float) -> str | None:
        if not self.endpoints:
            return "no_ready_pods"
        frame.arrived = now
        if self._idle:
            self._start(self._idle.pop(), frame, now)
        elif self.spec.queue_capacity is not None and len(self.queue) >= self.spec.queue_capacity:
            return "queue_full"
        else:
            self.queue.append(frame)
        return None

    def _complete(self, frame: Frame) -> None:
        pod = frame.pod
        assert pod is not None
        end = frame.started + frame.service
        pod._change_busy(end, -1)
        pod.idle += 1
        if pod.terminating:
            self._release(pod, end)
        elif self.queue:
            self._start(pod, self.queue.popleft(), end)
        else:
            self._idle.append(pod)
        self._on_done(frame, end)

    def make_ready(self, pod: Pod, now: float) -> None:
        super().make_ready(pod, now)
        if pod.terminating:
            return
        for _ in range(pod.idle):
            if self.queue:
                self._start(pod, self.queue.popleft(), now)
            else:
                self._idle.append(pod)

    def terminate(self, pod: Pod, now: float) -> None:
        self._idle = [other for other in self._idle if other is not pod]
        super().terminate(pod, now)  # waiting frames stay queued for the remaining or next pods

    def in_flight(self, pod: Pod) -> float:
        return pod.busy + len(self.queue) / max(1, len(self.endpoints))


def make_pool(spec: PoolSpec, heap: Schedule, sequence: Iterator[int], service_ms: Sampler,
              on_done: Callable[[Frame, float], None], shared_cpu: SharedCpu | None = None) -> Pool:
    """The pool `spec` describes; with `shared_cpu` its pods compute on that machine."""
    cls = SharedQueuePool if spec.queue == "shared" else PerPodPool
    return cls(spec, heap, sequence, service_ms, on_done, shared_cpu)


__all__ = ["Frame", "PerPodPool", "Pod", "Pool", "SharedCpu", "SharedQueuePool", "make_pool"]
