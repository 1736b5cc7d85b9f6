"""Inference pools: a Deployment of pods, each with `workers` FIFO servers, behind either a
round-robin Service (one queue per pod, like kube-proxy in IPVS round-robin mode) or one
shared queue (like a work queue all pods pull from).

Queues are plain deques and servers are counters; a service completion is one entry in
the simulation's event heap. This is an exact FIFO multi-server model, an order of
magnitude cheaper than a simpy Resource per request, and it stays exact when pods come
and go: a new pod takes waiting work the moment it is ready, a terminating pod stops
receiving work and finishes what it already holds (graceful shutdown).
"""
from __future__ import annotations

import heapq
import itertools
from collections import deque
from typing import Callable, Iterable, Iterator

from edgeoffload.hpa import PodSample
from edgeoffload.sim.distributions import Sampler
from edgeoffload.sim.scenario import PoolSpec

Schedule = list  # the simulation's heap of (time, seq, handler, argument)
METRICS_WINDOW_S = 15.0  # metrics-server resolution: a CPU sample covers this much time


class Frame:
    """One frame on its way through the model (times in simulated seconds)."""

    __slots__ = ("camera", "frame_id", "captured", "size", "deadline_s", "arrived", "started", "service",
                 "uplink_s", "up_s", "down_s", "pod", "reason")

    def __init__(self, camera: str, frame_id: int, captured: float, size: int, deadline_s: float | None) -> None:
        self.camera = camera
        self.frame_id = frame_id
        self.captured = captured
        self.size = size
        self.deadline_s = deadline_s
        self.arrived = self.started = self.service = 0.0
        self.uplink_s = self.up_s = self.down_s = 0.0   # uplink wait + serialisation, propagation up/down
        self.pod: Pod | None = None
        self.reason = ""


class Pod:
    """One replica. Busy time is integrated exactly (worker-seconds) for CPU metrics and energy."""

    __slots__ = ("pid", "workers", "created", "ready_at", "ready", "terminating", "gone_at", "idle", "busy",
                 "queue", "in_system", "_busy_acc", "_busy_mark", "scrape_busy", "scrape_at")

    def __init__(self, pid: int, workers: int, created: float) -> None:
        self.pid = pid
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


class Pool:
    """Common lifecycle and accounting; subclasses decide where an arriving frame waits."""

    def __init__(self, spec: PoolSpec, heap: Schedule, sequence: Iterator[int], service_ms: Sampler,
                 on_done: Callable[[Frame, float], None]) -> None:
        self.spec = spec
        self.pods: list[Pod] = []        # every pod ever created (for pod-seconds)
        self.endpoints: list[Pod] = []   # ready and not terminating: the Service's endpoints
        self._heap = heap
        self._seq = sequence
        self._service_ms = service_ms
        self._on_done = on_done
        self._pid = itertools.count()
        self.peak_replicas = 0

    # -- lifecycle
    @property
    def replicas(self) -> int:
        """Pods the Deployment wants (created, not terminating): the HPA's currentReplicas."""
        return sum(1 for pod in self.pods if not pod.terminating)

    @property
    def ready(self) -> int:
        return len(self.endpoints)

    def add_pod(self, now: float) -> Pod:
        pod = Pod(next(self._pid), self.spec.workers, now)
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
        service = self._service_ms() / 1000.0
        frame.pod, frame.started, frame.service = pod, now, service
        heapq.heappush(self._heap, (now + service, next(self._seq), self._complete, frame))

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
        every Pods metric = frames in flight at the pod (queued + in service).

        Like the HPA controller, a pod whose CPU sample does not yet cover a full metrics
        window since it became ready counts as not ready (its CPU is not trusted)."""
        samples = []
        names = tuple(custom_metrics)
        for pod in self.live_pods():
            values: dict[str, float] = {}
            if pod.ready and now > pod.scrape_at:
                busy = pod.busy_seconds(now)
                values["cpu"] = (busy - pod.scrape_busy) / (now - pod.scrape_at) * self.spec.cpu_per_worker
                pod.scrape_busy, pod.scrape_at = busy, now
                for name in names:
                    values[name] = self.in_flight(pod)
            settled = pod.ready_at is not None and now - pod.ready_at >= METRICS_WINDOW_S
            samples.append(PodSample(name=f"{self.spec.name}-{pod.pid}", ready=pod.ready and settled,
                                     phase="Running" if pod.ready else "Pending", deleting=pod.terminating,
                                     values=values, requests={"cpu": self.spec.cpu_request}))
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
        pod = endpoints[index]
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
              on_done: Callable[[Frame, float], None]) -> Pool:
    cls = SharedQueuePool if spec.queue == "shared" else PerPodPool
    return cls(spec, heap, sequence, service_ms, on_done)


__all__ = ["Frame", "PerPodPool", "Pod", "Pool", "SharedQueuePool", "make_pool"]
