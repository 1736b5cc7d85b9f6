"""Scale-out of one inference site, measured: throughput against replicas, and how fast a new
replica takes its share of the frames.

An ElasticSite is the elastic data path in miniature, all real: a pool of gunicorn inference
replicas (edgeoffload.localscale), their EndpointSlices served by the local API
(edgeoffload.endpointslices), the preprocessor's engine (edgeoffload.offload.Offloader) watching
them through the `kubernetes` client (or, `discovery="static"`, sending to the pool's Service
relay instead), and an open-loop frame feeder. On a 2-core machine replicas that compute
would only share the same cores; `sleep_pad_ms` (INFER_SLEEP_PAD_MS) makes each inference
wait instead, so replicas add capacity as machines of their own would.
"""
from __future__ import annotations

import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from edgeoffload.discovery import EndpointSliceWatch, ReplicaSource, StaticReplicas, kubernetes_api_client
from edgeoffload.endpointslices import EndpointSliceServer, EndpointSliceStore
from edgeoffload.load.sample_video import SampleVideoSpec, sample_jpegs
from edgeoffload.local import SiteOptions
from edgeoffload.localscale import ReplicaPool
from edgeoffload.offload import CLOUD, EDGE, FrameJob, Offloader, SiteConfig
from edgeoffload.policy import load_policy
from edgeoffload.records import FrameRecord
from edgeoffload.relay import TcpRelay

SERVICE = "edge-inference"
NAMESPACE = "edgeoffload"


@dataclass(frozen=True, slots=True)
class Done:
    """A frame's record and when it came back (monotonic seconds)."""

    at: float
    record: FrameRecord


@dataclass(frozen=True, slots=True)
class ElasticSetup:
    sleep_pad_ms: float = 100.0    # each inference lasts at least this long, waiting (not computing)
    instances: int = 1             # detector instances per replica: concurrent inferences
    per_replica: int = 2           # requests the preprocessor sends one replica at once
    queue_size: int = 16           # frames waiting at the preprocessor (the oldest dropped beyond)
    discovery: str = "kubernetes"  # or "static": one Service URL (the pool's relay), connections recycled
    assumed_replicas: int = 1      # static only: what the preprocessor assumes behind the URL
    recycle_s: float = 1.0         # static only: how often the preprocessor renews its connections
    frame_side: int = 160          # small frames: the detector's own work stays small


class ElasticSite:
    """A running site (see the module docstring); use as a context manager."""

    def __init__(self, setup: ElasticSetup = ElasticSetup(), workdir: Path | None = None) -> None:
        self.setup = setup
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="edgeoffload-scaleout-"))
        self.api = EndpointSliceServer(EndpointSliceStore(NAMESPACE)).start()
        self.relay = TcpRelay(name="edge-service").start()
        env = SiteOptions(instances=setup.instances, sleep_pad_ms=setup.sleep_pad_ms).inference_env(EDGE)
        env["INFER_QUEUE_BOUND"] = str(setup.per_replica)
        self.pool = ReplicaPool(EDGE, env, self.relay, self.workdir / "logs", service=SERVICE,
                                endpoints=self.api.store)
        self.done: list[Done] = []
        self._lock = threading.Lock()
        self._ids = iter(range(1 << 62))
        self.frames = sample_jpegs(SampleVideoSpec(width=setup.frame_side, height=setup.frame_side * 3 // 4,
                                                   frames_per_scene=2))
        self.offloader: Offloader | None = None

    def start(self, replicas: int = 1) -> "ElasticSite":
        self.pool.scale_to(replicas)
        setup = self.setup
        source: ReplicaSource
        if setup.discovery == "static":
            source = StaticReplicas(self.relay.url, setup.assumed_replicas)
        else:
            kubeconfig = self.api.write_kubeconfig(self.workdir / "kubeconfig")
            source = EndpointSliceWatch(kubernetes_api_client(str(kubeconfig)), NAMESPACE, SERVICE)
        edge = SiteConfig(EDGE, self.relay.url, replicas=setup.assumed_replicas, queue_size=setup.queue_size,
                          per_replica=setup.per_replica, service_s=setup.sleep_pad_ms / 1000,
                          recycle_s=setup.recycle_s)
        unused = SiteConfig(CLOUD, "http://127.0.0.1:9")
        self.offloader = Offloader(load_policy("edge-only"), edge, unused, self._record, health_interval_s=0,
                                   sources={EDGE: source}).start()
        return self

    def __enter__(self) -> "ElasticSite":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.offloader is not None:
            self.offloader.close(drain_timeout_s=10)
        self.pool.stop()
        self.relay.stop()
        self.api.stop()

    def _record(self, record: FrameRecord) -> None:
        with self._lock:
            self.done.append(Done(time.monotonic(), record))

    def submit(self, camera: str = "scaleout") -> FrameJob:
        assert self.offloader is not None, "start() the site first"
        frame_id = next(self._ids)
        job = FrameJob(camera=camera, frame_id=frame_id, captured_at=time.time(), arrived=time.monotonic(),
                       payload=self.frames[frame_id % len(self.frames)])
        return self.offloader.submit(job)

    def feed(self, rate_fps: float, duration_s: float, stop: threading.Event | None = None) -> int:
        """Submit frames open-loop at `rate_fps` for `duration_s`; returns how many."""
        period, start, sent = 1.0 / rate_fps, time.monotonic(), 0
        while (now := time.monotonic()) < start + duration_s and not (stop and stop.is_set()):
            due = start + sent * period
            if due > now:
                time.sleep(due - now)
            self.submit()
            sent += 1
        return sent

    def answered_between(self, start: float, end: float) -> list[FrameRecord]:
        with self._lock:
            return [d.record for d in self.done if start <= d.at < end and d.record.status == "ok"]

    def wait_idle(self, timeout_s: float = 30.0) -> bool:
        assert self.offloader is not None
        return self.offloader.wait_idle(timeout_s)


@dataclass(frozen=True, slots=True)
class Throughput:
    replicas: int
    offered_fps: float
    answered_fps: float
    dropped: int


def throughput(site: ElasticSite, replicas: int, offered_fps: float, duration_s: float = 4.0,
               warmup_s: float = 1.0) -> Throughput:
    """Frames answered per second by `replicas` replicas under an offered load above their capacity."""
    site.pool.scale_to(replicas)
    time.sleep(0.5)   # the EndpointSlice change reaches the preprocessor
    begin = time.monotonic()
    site.feed(offered_fps, warmup_s + duration_s)
    window_end = time.monotonic()
    answered = site.answered_between(begin + warmup_s, window_end)
    site.wait_idle()
    dropped = sum(1 for d in site.done if d.record.status == "dropped" and d.at >= begin)
    return Throughput(replicas, offered_fps, len(answered) / duration_s, dropped)


@dataclass(frozen=True, slots=True)
class ShareResult:
    new_replica: str
    ready_at: float                 # monotonic: the new replica passed its ready probe
    first_frame_s: float | None     # from ready to its first answered frame
    share_5s: float                 # its share of the site's frames answered in the 5 s after ready
    time_to_share_s: float | None   # from ready until it answered 40 % of the site's last 10 frames


def new_replica_share(site: ElasticSite, rate_fps: float, before_s: float = 2.0, after_s: float = 6.0,
                      share: float = 0.4) -> ShareResult:
    """Steady load on one replica, a second added mid-run: how soon it serves its part."""
    stop = threading.Event()
    feeder = threading.Thread(target=site.feed, args=(rate_fps, before_s + after_s + 5, stop), daemon=True)
    feeder.start()
    try:
        time.sleep(before_s)
        site.pool.scale_to(site.pool.size + 1)   # returns once the replica is ready and published
        ready = time.monotonic()
        name = site.pool.replicas[-1].name
        time.sleep(after_s)
    finally:
        stop.set()
        feeder.join()
    site.wait_idle()
    window = site.answered_between(ready, ready + 5.0)
    mine = [r for r in window if r.replica == name]
    with site._lock:
        times = [d.at for d in site.done if d.record.replica == name and d.record.status == "ok"]
    return ShareResult(name, ready, (min(times) - ready) if times else None,
                       len(mine) / len(window) if window else 0.0,
                       _time_to_share(site, name, ready, share))


def _time_to_share(site: ElasticSite, name: str, ready: float, share: float, last: int = 10) -> float | None:
    """Seconds from `ready` until `name` answered at least `share` of the site's last `last` frames."""
    with site._lock:
        answered = sorted((d.at, d.record.replica) for d in site.done if d.at >= ready and d.record.status == "ok")
    recent: deque[bool] = deque(maxlen=last)
    for at, replica in answered:
        recent.append(replica == name)
        if len(recent) == last and sum(recent) / last >= share:
            return at - ready
    return None


__all__ = ["ElasticSetup", "ElasticSite", "Throughput", "ShareResult", "throughput", "new_replica_share"]
