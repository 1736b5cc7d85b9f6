"""The simulation: cameras -> policy -> edge pool, or WAN uplink -> cloud pool -> answer.

Time runs on a simpy Environment for everything that happens at the scale of seconds
(HPA syncs, pod cold starts, timeline samples, progress). The per-frame events (captures,
arrivals at the cloud, service completions, answers) live in one binary heap merged with
simpy's queue by time, because a simpy event per frame costs more than all the
model's arithmetic. The two queues are merged exactly: at equal times simpy goes first.

Per frame the policy gets the Observation the real preprocessor would build (see
edgeoffload/estimate.py, shared with it) and afterwards the FrameRecord the testbed would publish.

With `edge.answers` in the scenario, each frame the edge answers gets an answer drawn for its
picture (edgeoffload.sim.answers): a cascade policy's `escalate_to_cloud` decides on it, and an
escalated frame then takes the cloud path like an offloaded one (WAN, dispatch, cloud pods; if
that fails it keeps the edge's answer, as on the testbed). Without the key, and for policies
without the hook, the edge's completions take the plain path.
"""
from __future__ import annotations

import heapq
import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import simpy

from edgeoffload.hpa import HPAController, metric_averages
from edgeoffload.policy import EdgeResult, Observation, Policy, SiteState, escalation_hook, load_policy
from edgeoffload.records import FrameRecord, RecordWriter
from edgeoffload.sim.answers import AnswerDraws
from edgeoffload.sim.dispatch import Dispatcher
from edgeoffload.sim.distributions import stream
from edgeoffload.sim.fastinit import direct_constructor
from edgeoffload.sim.network import WanLink
from edgeoffload.estimate import SiteEstimator
from edgeoffload.sim.pools import Frame, Pod, Pool, SharedCpu, make_pool
from edgeoffload.sim.scenario import CameraGroup, Scenario, load_scenario
from edgeoffload.sim.stats import SiteAccumulator, SiteSummary, Summary, TimelinePoint

Progress = Callable[[float, float], None]   # (simulated seconds done, total)

_site_state = direct_constructor(SiteState)
_observation = direct_constructor(Observation)
_frame_record = direct_constructor(FrameRecord)


@dataclass(frozen=True, slots=True)
class HpaSync:
    """One reconcile of a pool's HPA: the replicas it read and the ones it set."""

    t: float
    pool: str
    current: int        # the Deployment's replicas (ready or starting)
    desired: int
    ready: int
    metrics: dict[str, float] = field(default_factory=dict)   # each metric's mean over the pods reporting it


@dataclass(frozen=True, slots=True)
class SimResult:
    summary: Summary
    wall_s: float
    frames_simulated: int          # every frame, warm-up included
    records_path: Path | None = None
    hpa_syncs: tuple[HpaSync, ...] = ()

    @property
    def frames_per_wall_s(self) -> float:
        return self.frames_simulated / self.wall_s if self.wall_s > 0 else math.inf


class _Camera:
    """One camera's capture clock: a jittered periodic grid or a Poisson process."""

    __slots__ = ("name", "deadline_s", "next_id", "period", "phase", "k", "jitter_s", "poisson", "_uniform",
                 "_expovariate", "fps", "size", "start", "stop")

    def __init__(self, name: str, group: CameraGroup, seed: int, end: float) -> None:
        timing = stream(seed, f"camera/{name}/timing")
        self.name = name
        self.deadline_s = None if group.deadline_ms is None else group.deadline_ms / 1000
        self.next_id = 0
        self.fps = group.fps
        self.start = group.start_s
        self.stop = end if group.stop_s is None else min(end, group.stop_s)
        self.period = 1.0 / group.fps
        self.phase = group.start_s + timing.uniform(0.0, self.period)   # cameras are not in lock-step
        self.k = 0
        self.jitter_s = group.jitter_ms / 1000
        self.poisson = group.arrival == "poisson"
        self._uniform = timing.uniform
        self._expovariate = timing.expovariate
        self.size = group.frame_bytes.sampler(stream(seed, f"camera/{name}/size"))

    def first(self) -> float:
        if self.poisson:
            return self.start + self._expovariate(self.fps)
        return self._grid()

    def _grid(self) -> float:
        t = self.phase + self.k * self.period
        return t + self._uniform(-self.jitter_s, self.jitter_s) if self.jitter_s else t


class _Site:
    """Everything the answer path needs about one site, in one place."""

    __slots__ = ("name", "remote", "view", "acc", "model")

    def __init__(self, name: str, remote: bool, view: SiteEstimator, acc: SiteAccumulator, model: str) -> None:
        self.name, self.remote, self.view, self.acc, self.model = name, remote, view, acc, model


class Simulation:
    def __init__(self, scenario: Scenario, policy: Policy, writer: RecordWriter | None = None,
                 progress: Progress | None = None) -> None:
        self.scenario = scenario
        self.policy = policy
        self.writer = writer
        self.progress = progress
        self.env = simpy.Environment()
        self.now = 0.0
        self.end = scenario.duration_s
        self._heap: list = []
        self._seq = itertools.count()
        seed = scenario.seed
        shared = scenario.shared_cpu
        self.shared_cpu = None if shared is None else SharedCpu(shared.cores, self._heap, self._seq)
        on_machine = {name: self.shared_cpu for name in (shared.pools if shared else ())}
        self._escalate = escalation_hook(policy)
        if self._escalate is not None and not scenario.edge.answers:
            raise ValueError(f"policy {policy.name} decides on the edge's answers (escalate_to_cloud): the scenario "
                             "needs edge.answers (each picture's measured edge answers, from `edgeoffload profile`)")
        self._answers = AnswerDraws(scenario.edge.answers, stream(seed, "edge/answers")) if scenario.edge.answers else None
        self._escalated = self._agreed = 0   # counted frames the policy escalated / whose answer agrees
        self.edge = make_pool(scenario.edge, self._heap, self._seq,
                              scenario.edge.service_ms.sampler(stream(seed, "edge/service")),
                              self._edge_done if self._answers is None else self._edge_answered,
                              on_machine.get("edge"))
        self.cloud = make_pool(scenario.cloud, self._heap, self._seq,
                               scenario.cloud.service_ms.sampler(stream(seed, "cloud/service")), self._cloud_done,
                               on_machine.get("cloud"))
        self._cold_start = {pool.spec.name: pool.spec.cold_start_s.sampler(stream(seed, f"{pool.spec.name}/cold-start"))
                            for pool in (self.edge, self.cloud)}
        self.link = WanLink(scenario.wan)
        observer = scenario.observer
        self.edge_view = SiteEstimator(remote=False, service_s=observer.edge_service_ms / 1000, alpha=observer.ewma_alpha)
        self.cloud_view = SiteEstimator(remote=True, service_s=observer.cloud_service_ms / 1000,
                                        rtt_s=observer.cloud_rtt_ms / 1000, alpha=observer.ewma_alpha,
                                        uplink_bps=math.inf if observer.cloud_uplink_mbps is None
                                        else observer.cloud_uplink_mbps * 1e6)
        self.sites = {"edge": SiteAccumulator(), "cloud": SiteAccumulator()}
        self._edge_site = _Site("edge", False, self.edge_view, self.sites["edge"], scenario.edge.model)
        self._cloud_site = _Site("cloud", True, self.cloud_view, self.sites["cloud"], scenario.cloud.model)
        self._warmup = scenario.warmup_s
        self.frames_simulated = 0
        self.timeline: list[TimelinePoint] = []
        self._final: dict[str, tuple[float, float]] = {}   # pool -> (pod-seconds, busy worker-seconds) at the end
        self._decide = policy.estimate_to_cloud
        self._learn = policy.feedback
        self._policy_name = policy.name
        self.dispatchers: dict[str, Dispatcher] = {}
        self.hpa_syncs: list[HpaSync] = []
        if scenario.dispatch is not None:
            spec = scenario.dispatch
            for site, pool, send in (("edge", self.edge, self._send_edge), ("cloud", self.cloud, self._send_cloud)):
                refuse = (lambda frame, now, reason, s=site: self._refused(frame, s, now, reason))
                self.dispatchers[site] = Dispatcher(pool, spec.per_replica[site], spec.queue_size,
                                                    spec.max_in_flight, send, refuse)

    # ------------------------------------------------------------------ set-up
    def _start(self) -> None:
        for pool in (self.edge, self.cloud):
            for _ in range(pool.spec.replicas):
                pool.make_ready(pool.add_pod(0.0), 0.0)   # initial replicas start warm
            if pool.spec.hpa is not None:
                self.env.process(self._autoscale(pool, HPAController(pool.spec.hpa)))
        for group in self.scenario.cameras:
            if group.trace:
                if group.trace[0][0] < self.end:
                    self._push(group.trace[0][0], self._trace_capture, (group, 0, {}))
                continue
            for name in group.camera_names():
                camera = _Camera(name, group, self.scenario.seed, self.end)
                first = camera.first()
                if first < camera.stop:
                    self._push(first, self._capture, camera)
        self.env.process(self._probe_sites())
        self.env.process(self._sample_timeline())
        self.env.process(self._finish_window())
        if self.progress is not None:
            self.env.process(self._report_progress())

    def _push(self, t: float, handler: Callable, arg: object) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), handler, arg))

    # ------------------------------------------------------------------ main loop
    def run(self) -> None:
        self._start()
        heap, env, pop = self._heap, self.env, heapq.heappop
        slow_at = env.peek()
        while True:
            if heap and heap[0][0] < slow_at:
                at, _, handler, arg = pop(heap)
                self.now = at
                handler(arg)
            elif slow_at <= self.end:
                env.step()
                self.now = env.now
                slow_at = env.peek()
            elif heap:
                slow_at = math.inf   # after the window only in-flight frames finish
            else:
                break

    # ------------------------------------------------------------------ per frame
    def _capture(self, camera: _Camera) -> None:
        now = self.now
        # the camera's next capture, inlined (_Camera.first has the same grid): this runs per frame
        if camera.poisson:
            following = now + camera._expovariate(camera.fps)
        else:
            camera.k += 1
            following = camera.phase + camera.k * camera.period
            if camera.jitter_s:
                following += camera._uniform(-camera.jitter_s, camera.jitter_s)
        if following < camera.stop:
            heapq.heappush(self._heap, (following, next(self._seq), self._capture, camera))
        frame_id = camera.next_id
        camera.next_id = frame_id + 1
        self._emit(Frame(camera.name, frame_id, now, int(camera.size()), camera.deadline_s))

    def _trace_capture(self, state: tuple[CameraGroup, int, dict[str, int]]) -> None:
        group, index, counters = state
        _, name, size, content = group.trace[index]
        if index + 1 < len(group.trace) and group.trace[index + 1][0] < self.end:
            self._push(group.trace[index + 1][0], self._trace_capture, (group, index + 1, counters))
        frame_id = counters.get(name, 0)
        counters[name] = frame_id + 1
        deadline = None if group.deadline_ms is None else group.deadline_ms / 1000
        self._emit(Frame(name, frame_id, self.now, size, deadline, content))

    def _observe(self, frame: Frame, now: float) -> Observation:
        """The Observation the preprocessor would build for `frame` now."""
        edge_view, cloud_view = self.edge_view, self.cloud_view
        return _observation(
            now, frame.camera, frame.frame_id, frame.size, frame.deadline_s,
            _site_state(edge_view.in_flight, len(self.edge.endpoints), edge_view.service_s, edge_view.rtt_s,
                        edge_view.uplink_bps, edge_view.ready and edge_view.failures < edge_view.failure_threshold),
            _site_state(cloud_view.in_flight, len(self.cloud.endpoints), cloud_view.service_s, cloud_view.rtt_s,
                        cloud_view.uplink_bps, cloud_view.ready and cloud_view.failures < cloud_view.failure_threshold))

    def _emit(self, frame: Frame) -> None:
        """Ask the policy with the preprocessor's current view, then send the frame."""
        now = self.now
        self.frames_simulated += 1
        if self._decide(self._observe(frame, now)):
            self._to_cloud(frame, now)
            return
        edge_view = self.edge_view
        edge_view.in_flight += 1
        if self.dispatchers:
            self.dispatchers["edge"].submit(frame, now)
            return
        reason = self.edge.arrive(frame, now)
        if reason is not None:
            frame.arrived = now
            self._failed(frame, self._edge_site, now, reason)

    def _to_cloud(self, frame: Frame, now: float) -> None:
        """The preprocessor commits `frame` to the cloud: its queue (dispatch model) or the WAN at once."""
        self.cloud_view.in_flight += 1
        if self.dispatchers:
            self.dispatchers["cloud"].submit(frame, now)
            return
        link = self.link
        left = link.transmit(now, frame.size * 8)
        frame.uplink_s = left - now
        frame.up_s = link.one_way_s(left)
        heapq.heappush(self._heap, (left + frame.up_s, next(self._seq), self._cloud_arrive, frame))

    def _send_edge(self, frame: Frame, pod: Pod, now: float) -> None:
        """Dispatch model: the preprocessor sends `frame` to edge replica `pod`."""
        reason = self.edge.arrive_at(pod, frame, now)
        if reason is not None:
            frame.arrived = now
            self._failed(frame, self._edge_site, now, reason)

    def _send_cloud(self, frame: Frame, pod: Pod, now: float) -> None:
        """Dispatch model: `frame` leaves for cloud replica `pod` over the WAN."""
        link = self.link
        left = link.transmit(now, frame.size * 8)
        frame.uplink_s = left - now
        frame.up_s = link.one_way_s(left)
        heapq.heappush(self._heap, (left + frame.up_s, next(self._seq), self._cloud_arrive, frame))

    def _refused(self, frame: Frame, site_name: str, now: float, reason: str) -> None:
        """Dispatch model: a frame the preprocessor did not send (queue full, no ready replica)."""
        site = self._edge_site if site_name == "edge" else self._cloud_site
        frame.arrived = now
        if reason == "no_ready_pods":
            self._failed(frame, site, now, reason)
            return
        site.view.in_flight -= 1   # an eviction from our own queue says nothing about the site's health
        self._account_failure(frame, site, now, "dropped", reason, sent=0, network_ms=0.0)

    def _cloud_arrive(self, frame: Frame) -> None:
        target = frame.target
        reason = self.cloud.arrive(frame, self.now) if target is None else self.cloud.arrive_at(target, frame, self.now)
        if reason is not None:   # the 503 / connection refusal travels back
            frame.arrived, frame.reason = self.now, reason
            frame.down_s = self.link.one_way_s(self.now)
            heapq.heappush(self._heap, (self.now + frame.down_s, next(self._seq), self._cloud_failed, frame))

    def _cloud_failed(self, frame: Frame) -> None:
        self._failed(frame, self._cloud_site, self.now, frame.reason)

    def _edge_done(self, frame: Frame, end: float) -> None:
        self._answered(frame, self._edge_site, end)

    def _cloud_done(self, frame: Frame, end: float) -> None:
        frame.down_s = self.link.one_way_s(end)
        heapq.heappush(self._heap, (end + frame.down_s, next(self._seq), self._cloud_answered, frame))

    def _cloud_answered(self, frame: Frame) -> None:
        self._answered(frame, self._cloud_site, self.now)

    def _answered(self, frame: Frame, site: _Site, now: float) -> None:
        """An answer reached the preprocessor: estimates, statistics, record, policy feedback."""
        view = site.view
        view.in_flight -= 1
        network_s = frame.uplink_s + frame.up_s + frame.down_s
        view.answered(frame.service, network_s, frame.size)
        self._settle(frame, site, now, network_s, "", frame.size if site.remote else 0)
        if self.dispatchers:
            self.dispatchers[site.name].done(frame, now)

    def _edge_answered(self, frame: Frame, end: float) -> None:
        """The edge answered, in a scenario with `edge.answers`: draw the answer for the frame's
        picture; a cascade policy may then escalate the frame to the cloud (estimates are updated
        first, as the preprocessor records the edge's answer before it asks the policy)."""
        answer = frame.edge_answer = self._answers.draw(frame.content)  # type: ignore[union-attr]
        site = self._edge_site
        view = site.view
        view.in_flight -= 1
        view.answered(frame.service, 0.0, frame.size)
        escalate = self._escalate
        if escalate is None or not escalate(
                self._observe(frame, end), EdgeResult(answer.score, answer.detections, frame.service, site.model)):
            self._settle(frame, site, end, 0.0, "", 0)
            if self.dispatchers:
                self.dispatchers["edge"].done(frame, end)
            return
        frame.edge_done = end
        if self.dispatchers:
            self.dispatchers["edge"].done(frame, end)
        frame.pod = None
        frame.uplink_s = frame.up_s = frame.down_s = 0.0
        self._to_cloud(frame, end)

    def _kept_edge(self, frame: Frame, now: float, reason: str, sent: int) -> None:
        """An escalated frame whose cloud stage failed keeps the edge's answer, as on the testbed.
        A simulated cloud fails a frame only before serving it, so `frame.service` is still the edge's."""
        frame.pod = None
        self._settle(frame, self._edge_site, now, 0.0, f"escalation_failed: {reason}", sent)

    def _settle(self, frame: Frame, site: _Site, now: float, network_s: float, reason: str, sent: int) -> None:
        """Statistics, record and policy feedback of a frame with an answer (estimates already
        updated; the caller frees its slot at the preprocessor)."""
        total_ms = (now - frame.captured) * 1000.0
        inference_ms = frame.service * 1000.0
        network_ms = network_s * 1000.0
        escalated = frame.edge_done >= 0
        if escalated:   # the edge stage (and a failed cloud stage) waited too, as the testbed counts it
            queue_ms = total_ms - network_ms - inference_ms
        else:           # waiting at the pod, plus (dispatch model) in the preprocessor's queue
            queue_ms = (frame.started - frame.arrived + frame.dispatched - frame.captured) * 1000.0
        deadline = frame.deadline_s
        met = None if deadline is None else total_ms <= deadline * 1000.0
        if frame.captured >= self._warmup:
            acc = site.acc
            acc.frames += 1
            acc.ok += 1
            acc.bytes_sent += sent
            acc.queue_ms += queue_ms
            acc.network_ms += network_ms
            acc.inference_ms += inference_ms
            acc.total_ms += total_ms
            acc.latency.add(total_ms)
            if met is not None:
                if met:
                    acc.deadline_met += 1
                else:
                    acc.deadline_missed += 1
            if self._answers is not None:   # the cloud's answer is the reference
                self._escalated += escalated
                self._agreed += site.remote or bool(frame.edge_answer.agrees)  # type: ignore[union-attr]
        pod = frame.pod
        if escalated:
            answer = frame.edge_answer
            record = _frame_record(frame.camera, frame.frame_id, frame.captured, site.name, "ok", reason,
                                   self._policy_name, site.model, (), sent, queue_ms, network_ms, inference_ms,
                                   total_ms, met, pod.name if pod is not None else "", True,
                                   answer.score, answer.detections,  # type: ignore[union-attr]
                                   (frame.edge_done - frame.captured) * 1000.0)
        else:
            record = _frame_record(frame.camera, frame.frame_id, frame.captured, site.name, "ok", reason,
                                   self._policy_name, site.model, (), sent, queue_ms, network_ms, inference_ms,
                                   total_ms, met, pod.name if pod is not None else "")
        self._learn(record)
        if self.writer is not None:
            self.writer.write(record)

    def _failed(self, frame: Frame, site: _Site, now: float, reason: str) -> None:
        """A 503 (queue full: status dropped) or no endpoint (status error) reached the preprocessor."""
        site.view.in_flight -= 1
        site.view.failed()
        status = "dropped" if reason == "queue_full" else "error"
        self._account_failure(frame, site, now, status, reason, frame.size if site.remote else 0,
                              (frame.uplink_s + frame.up_s + frame.down_s) * 1000.0)
        if self.dispatchers:
            self.dispatchers[site.name].done(frame, now)

    def _account_failure(self, frame: Frame, site: _Site, now: float, status: str, reason: str, sent: int,
                         network_ms: float) -> None:
        """Statistics, record and policy feedback of a frame that got no answer."""
        if frame.edge_done >= 0:
            self._kept_edge(frame, now, reason, sent)
            return
        total_ms = (now - frame.captured) * 1000.0
        met = None if frame.deadline_s is None else False
        if frame.captured >= self._warmup:
            acc = site.acc
            acc.frames += 1
            acc.bytes_sent += sent
            if status == "dropped":
                acc.dropped += 1
            else:
                acc.errors += 1
            if met is not None:
                acc.deadline_missed += 1
        record = _frame_record(frame.camera, frame.frame_id, frame.captured, site.name, status, reason,
                               self._policy_name, site.model, (), sent, 0.0, network_ms, 0.0, total_ms, met, "")
        self._learn(record)
        if self.writer is not None:
            self.writer.write(record)

    # ------------------------------------------------------------------ slow processes
    def _autoscale(self, pool: Pool, controller: HPAController) -> Iterator[simpy.Event]:
        custom = [m.name for m in controller.spec.metrics if m.kind == "Pods"]
        yield self.env.timeout(controller.spec.first_reconcile_s)
        while True:
            now = self.env.now
            current = pool.replicas
            pods = pool.pod_samples(now, custom)
            desired = controller.step(now, current, pods)
            self.hpa_syncs.append(HpaSync(round(now, 6), pool.spec.name, current, desired, pool.ready,
                                          metric_averages(pods)))
            if desired > current:
                for _ in range(desired - current):
                    pod = pool.add_pod(now)
                    boot = self.env.timeout(self._cold_start[pool.spec.name]())
                    boot.callbacks.append(lambda _event, pod=pod: self._ready(pool, pod))
            elif desired < current:
                pool.scale_down(current - desired, now)
            yield self.env.timeout(controller.spec.sync_period_s)

    def _ready(self, pool: Pool, pod: Pod) -> None:
        """A pod passed its ready probe: it serves, and the preprocessor may send it frames."""
        pool.make_ready(pod, self.env.now)
        if self.dispatchers:
            self.dispatchers[pool.spec.name].pump(self.env.now)

    def _probe_sites(self) -> Iterator[simpy.Event]:
        """The preprocessor's periodic ready probes: a site is ready while it has a ready pod."""
        while True:
            self.edge_view.probed(self.edge.ready > 0)
            self.cloud_view.probed(self.cloud.ready > 0)
            yield self.env.timeout(self.scenario.observer.probe_interval_s)

    def _sample_timeline(self) -> Iterator[simpy.Event]:
        while True:
            self.timeline.append(TimelinePoint(
                t=round(self.env.now, 6), edge_replicas=self.edge.replicas, edge_ready=self.edge.ready,
                cloud_replicas=self.cloud.replicas, cloud_ready=self.cloud.ready,
                edge_in_flight=self.edge_view.in_flight, cloud_in_flight=self.cloud_view.in_flight))
            if self.env.now + self.scenario.timeline_interval_s > self.end:
                return
            yield self.env.timeout(self.scenario.timeline_interval_s)

    def _finish_window(self) -> Iterator[simpy.Event]:
        """At the end of the scenario: pod-seconds and busy time for cost and energy."""
        yield self.env.timeout(self.end)
        for pool in (self.edge, self.cloud):
            self._final[pool.spec.name] = (sum(pod.alive_seconds(self.end) for pod in pool.pods),
                                           sum(pod.busy_seconds(self.end) for pod in pool.pods))

    def _report_progress(self) -> Iterator[simpy.Event]:
        step = self.end / 200
        while True:
            assert self.progress is not None
            self.progress(self.env.now, self.end)
            if self.env.now >= self.end:
                return
            yield self.env.timeout(min(step, self.end - self.env.now))

    # ------------------------------------------------------------------ results
    def summary(self) -> Summary:
        scenario = self.scenario
        sites: dict[str, SiteSummary] = {}
        energy_total = pod_cost = 0.0
        for name, pool in (("edge", self.edge), ("cloud", self.cloud)):
            pod_seconds, busy_seconds = self._final.get(name, (0.0, 0.0))
            spec = pool.spec
            energy = spec.idle_w * pod_seconds + (spec.busy_w - spec.idle_w) * busy_seconds / spec.workers
            cost = pod_seconds / 3600 * spec.price_per_pod_hour
            energy_total += energy
            pod_cost += cost
            sites[name] = SiteSummary.build(self.sites[name], pod_seconds, busy_seconds, pool.peak_replicas, energy, cost)
        edge, cloud = self.sites["edge"], self.sites["cloud"]
        frames = edge.frames + cloud.frames
        ok = edge.ok + cloud.ok
        latency = edge.latency.merge(cloud.latency)
        with_deadline = edge.deadline_met + edge.deadline_missed + cloud.deadline_met + cloud.deadline_missed
        missed = edge.deadline_missed + cloud.deadline_missed
        egress = cloud.bytes_sent

        def ratio(part: float, whole: float) -> float | None:
            return round(part / whole, 6) if whole else None

        def q(value: float | None) -> float | None:
            return None if value is None else round(value, 3)
        return Summary(
            scenario=scenario.name, policy=self._policy_name, seed=scenario.seed, duration_s=scenario.duration_s,
            warmup_s=scenario.warmup_s, frames=frames, ok=ok, dropped=edge.dropped + cloud.dropped,
            errors=edge.errors + cloud.errors, edge_frames=edge.frames, cloud_frames=cloud.frames,
            cloud_share=ratio(cloud.frames, frames), drop_rate=ratio(edge.dropped + cloud.dropped, frames),
            mean_ms=q((edge.total_ms + cloud.total_ms) / ok) if ok else None,
            p50_ms=q(latency.quantile(0.5)), p95_ms=q(latency.quantile(0.95)), p99_ms=q(latency.quantile(0.99)),
            deadline_frames=with_deadline, deadline_miss_rate=ratio(missed, with_deadline),
            egress_bytes=egress, egress_cost=round(egress / 1e9 * scenario.wan.egress_price_per_gb, 6),
            pod_cost=round(pod_cost, 6), energy_j=round(energy_total, 3), sites=sites, timeline=tuple(self.timeline),
            escalated=self._escalated, escalation_share=ratio(self._escalated, frames),
            agreement=ratio(self._agreed, ok) if self._answers is not None and self._answers.agreement_known else None)


def run_scenario(scenario: Scenario | str | Path | Mapping[str, Any], policy: Policy | str,
                 out: str | Path | None = None, progress: Progress | None = None) -> SimResult:
    """Simulate `scenario` (a Scenario, a YAML path or a parsed mapping) under `policy` (a Policy
    or a spec for load_policy). `out` is an optional record file (.csv or .parquet) receiving one
    FrameRecord per frame; statistics are streamed either way."""
    if not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario)
    if isinstance(policy, str):
        policy = load_policy(policy, seed=scenario.policy_seed)
    writer = RecordWriter(out) if out is not None else None
    started = time.perf_counter()
    simulation = Simulation(scenario, policy, writer, progress)
    try:
        simulation.run()
    finally:
        if writer is not None:
            writer.close()
    wall = time.perf_counter() - started
    return SimResult(simulation.summary(), wall, simulation.frames_simulated,
                     None if out is None else Path(out), tuple(simulation.hpa_syncs))


__all__ = ["HpaSync", "SimResult", "Simulation", "run_scenario"]
