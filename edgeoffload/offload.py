"""The offloading engine of the EdgePreprocessorUnit.

For every frame: build an Observation from live measurements of both sites, ask the policy,
put the frame on the chosen site's bounded queue (the oldest frame is dropped when it is
full), send it to the least-loaded ready replica of that site (edgeoffload.balance, fed by
edgeoffload.discovery) over a keep-alive connection to that replica, try another replica of
the site once if that one refuses or is gone, fail over to the other site once if the site
errors or times out, and emit exactly one FrameRecord.

Cascade policies (`Policy.escalate_to_cloud`) decide a second time on a frame the edge has
answered (its first edge answer, not a failover one): an escalated frame goes on to the cloud
through the cloud's queue, balancer and same-site retry like any cloud frame, but never fails
over back to the edge, since it already has the edge's answer. Its one record is the cloud's
answer (`escalated`, the edge answer's summary and `t_edge_ms` say what came first); if the
cloud stage fails in any way (queue eviction, no replica, error, timeout, shutdown) the record
is the edge's answer instead, status ok, reason `escalation_failed: <what the cloud did>`.
An escalated frame's `bytes_sent` counts what was sent to the cloud (its egress, as the
simulator counts it), not the edge's copy on the local network.

A site's concurrency is its ready replicas x `per_replica` (the inference unit's admission
bound), so it follows the HPA; the policy sees the ready count as `SiteState.replicas`.

Every time is taken from one monotonic clock in this process: t_total_ms runs from the
frame's arrival to its answer; t_inference_ms is what the inference unit reports;
t_network_ms is the answering request's round trip minus the unit's own time (its reported
queue_ms + inference_ms), i.e. transfer + propagation; t_queue_ms is the rest (preprocessing,
waiting in the site queue and inside the unit, a failed first attempt) — the same split the
simulator reports. For an escalated frame the answering request is the cloud's, so its
t_queue_ms includes the edge stage (`t_edge_ms`, arrival to the edge's answer).
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import deque
import queue as queue_module
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Mapping, Protocol
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from edgeoffload.balance import DEFAULT_RECYCLE_S, Balancer, Lease
from edgeoffload.discovery import Replica, ReplicaSource, StaticReplicas
from edgeoffload.estimate import DEFAULT_ALPHA, DEFAULT_PROBE_INTERVAL_S, SiteEstimator
from edgeoffload.openinference import HEADER_LENGTH, DetectionMapping
from edgeoffload.policy import EdgeResult, Observation, Policy, SiteState, escalation_hook
from edgeoffload.records import Detection, FrameRecord

log = logging.getLogger(__name__)

EDGE, CLOUD = "edge", "cloud"
OTHER_SITE = {EDGE: CLOUD, CLOUD: EDGE}
Box = tuple[float, float, float, float]


def identity_box(box: Box) -> Box:
    """Box mapping for frames sent at their captured size."""
    return box


@dataclass(frozen=True, slots=True)
class SiteConfig:
    """One inference site and the initial estimates used until it has answered."""

    name: str
    url: str
    replicas: int = 1                  # replicas assumed behind a static URL (discovery counts them)
    queue_size: int = 8
    per_replica: int = 4               # requests at once per ready replica (the unit's admission bound)
    max_in_flight: int = 256           # requests at once per site, whatever the replicas
    recycle_s: float = DEFAULT_RECYCLE_S   # static URL: renew connections this often (spreads them over a Service)
    timeout_s: float = 5.0
    service_s: float = 0.08
    rtt_s: float = 0.0
    uplink_bps: float = math.inf
    estimate_uplink: bool = False   # learn bandwidth from transfer times (the WAN site)
    protocol: "SiteProtocol" = field(default_factory=lambda: NATIVE)   # how to ask its replicas

    def __post_init__(self) -> None:
        if self.name not in (EDGE, CLOUD):
            raise ValueError(f"site name must be edge or cloud, got {self.name!r}")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"{self.name} url must start with http:// or https://, got {self.url!r}")
        for name in ("replicas", "queue_size", "per_replica", "max_in_flight"):
            if getattr(self, name) < 1:
                raise ValueError(f"{self.name} {name} must be >= 1")
        if not self.timeout_s > 0 or not self.recycle_s > 0:
            raise ValueError(f"{self.name} timeout_s and recycle_s must be > 0")


class SiteMonitor:
    """Thread-safe live estimate of one site, as a policy sees it (SiteState).

    in_flight counts frames committed to the site and not answered yet: those waiting in our
    queue for it plus those being served. The estimation rules live in
    `edgeoffload.estimate.SiteEstimator`, which the simulator uses too.
    """

    def __init__(self, config: SiteConfig, alpha: float = DEFAULT_ALPHA, failure_threshold: int = 3,
                 window: int = 32) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._estimate = SiteEstimator(remote=config.estimate_uplink, service_s=config.service_s,
                                       rtt_s=config.rtt_s, uplink_bps=config.uplink_bps, alpha=alpha,
                                       failure_threshold=failure_threshold, window=window)
        self.answered = 0
        self.failed = 0
        self.last_error = ""
        self.replicas = config.replicas

    def set_replicas(self, ready: int) -> None:
        with self._lock:
            self.replicas = ready

    def reserve(self) -> None:
        with self._lock:
            self._estimate.in_flight += 1

    def release(self) -> None:
        with self._lock:
            self._estimate.in_flight -= 1

    def record_answer(self, inference_s: float, network_s: float, bytes_sent: int) -> None:
        with self._lock:
            self.answered += 1
            self._estimate.answered(inference_s, network_s, bytes_sent)

    def record_failure(self, reason: str) -> None:
        with self._lock:
            self.failed += 1
            self._estimate.failed()
            self.last_error = reason

    def set_ready(self, ready: bool, reason: str = "") -> None:
        """Result of a ready probe: a site answering it gets another chance."""
        with self._lock:
            self._estimate.probed(ready)
            if not ready:
                self.last_error = reason or "not ready"

    def snapshot(self) -> SiteState:
        with self._lock:
            return self._estimate.state(self.replicas)

    def describe(self) -> dict[str, Any]:
        state = asdict(self.snapshot())
        if math.isinf(state["uplink_bps"]):
            state["uplink_bps"] = None  # JSON has no infinity
        with self._lock:
            state.update(url=self.config.url, ready=self._estimate.ready, answered=self.answered,
                         failed=self.failed, consecutive_failures=self._estimate.failures,
                         last_error=self.last_error)
        return state


@dataclass(frozen=True, slots=True)
class InferenceAnswer:
    model: str
    detections: tuple[Detection, ...]
    inference_s: float | None   # the unit's own inference time; None when the server does not say
    queue_s: float = 0.0   # time the request waited inside the unit before inference started
    replica: str = ""      # the replica that answered, as it names itself


class InferenceFailure(Exception):
    """A request to a site failed; `retryable` says whether the other site may succeed."""

    def __init__(self, kind: str, detail: str, retryable: bool) -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.retryable = retryable


def new_session(pool_size: int = 1) -> requests.Session:
    """A keep-alive session; each dispatcher thread owns one (a Session is not thread-safe)."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class SiteProtocol(Protocol):
    """How one frame is asked of a site's replica and its answer read; discovery, balancing,
    retries, failover and records are the same whatever the protocol."""

    name: str
    infer_path: str      # under the replica's base URL
    ready_path: str      # what the health loop probes on a static site

    def request(self, payload: bytes, content_type: str) -> tuple[bytes, dict[str, str]]: ...

    def answer(self, body: bytes, headers: Mapping[str, str]) -> InferenceAnswer: ...


def _answer(model: Any, detections: tuple[Detection, ...], timings: Mapping[str, Any],
            timed: bool) -> InferenceAnswer:
    """The answer of a unit's fields; without `timed`, inference_ms may be missing (v2 servers)."""
    inference_ms = timings["inference_ms"] if timed or "inference_ms" in timings else None
    return InferenceAnswer(model=str(model), detections=detections,
                           inference_s=None if inference_ms is None else max(0.0, float(inference_ms)) / 1000.0,
                           queue_s=max(0.0, float(timings.get("queue_ms", 0.0))) / 1000.0,
                           replica=str(timings.get("replica", ""))[:253])


class NativeProtocol:
    """edgeoffload's own: `POST /infer` with the image as the body, the answer in JSON."""

    name = "edgeoffload"
    infer_path = "/infer"
    ready_path = "/v2/health/ready"

    def request(self, payload: bytes, content_type: str) -> tuple[bytes, dict[str, str]]:
        return payload, {"Content-Type": content_type}

    def answer(self, body: bytes, headers: Mapping[str, str]) -> InferenceAnswer:
        document = json.loads(body)
        detections = tuple(Detection.from_dict(d) for d in document.get("detections", []))
        return _answer(document.get("model", ""), detections, document, timed=True)


class V2Protocol:
    """The Open Inference Protocol (KServe v2): Triton, OVMS, KServe, MLServer or a unit's /v2 routes.
    Their answers need not carry the unit's timings or replica (edgeoffload.openinference)."""

    name = "v2"

    def __init__(self, mapping: DetectionMapping) -> None:
        self.mapping = mapping
        self.infer_path = mapping.infer_path
        self.ready_path = mapping.ready_path

    def request(self, payload: bytes, content_type: str) -> tuple[bytes, dict[str, str]]:
        return self.mapping.request(payload)

    def answer(self, body: bytes, headers: Mapping[str, str]) -> InferenceAnswer:
        model, detections, parameters = self.mapping.answer(body, headers.get(HEADER_LENGTH))
        return _answer(model, detections, parameters, timed=False)


NATIVE = NativeProtocol()


def post_frame(pool: urllib3.HTTPConnectionPool, base_path: str, payload: bytes, timeout_s: float,
               content_type: str = "image/jpeg", protocol: SiteProtocol = NATIVE) -> InferenceAnswer:
    """Ask a replica (`pool`, under `base_path`) about one encoded frame; boxes are in sent pixels."""
    body, headers = protocol.request(payload, content_type)
    return send_request(pool, base_path, body, headers, timeout_s, protocol)


def send_request(pool: urllib3.HTTPConnectionPool, base_path: str, body: bytes, headers: Mapping[str, str],
                 timeout_s: float, protocol: SiteProtocol) -> InferenceAnswer:
    """POST a request `protocol` built; InferenceFailure says whether another replica or site may succeed."""
    try:
        response = pool.urlopen("POST", base_path.rstrip("/") + protocol.infer_path, body=body, headers=headers,
                                timeout=urllib3.Timeout(total=timeout_s), retries=False, redirect=False)
    except urllib3.exceptions.NewConnectionError:   # a ConnectTimeoutError subclass: test it first
        raise InferenceFailure("connection", "connection refused", retryable=True) from None
    except urllib3.exceptions.TimeoutError:
        raise InferenceFailure("timeout", f"no answer within {timeout_s:g}s", retryable=True) from None
    except urllib3.exceptions.HTTPError as exc:
        raise InferenceFailure("connection", type(exc).__name__, retryable=True) from None
    if response.status != 200:
        # 503 (overloaded/not ready) and other 5xx are the site's problem; 4xx is the frame's.
        raise InferenceFailure(f"http_{response.status}", _error_detail(response.data),
                               retryable=response.status >= 500)
    try:
        return protocol.answer(response.data, response.headers)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:   # ProtocolError is a ValueError
        raise InferenceFailure("bad_response", str(exc)[:200], retryable=True) from None


def base_path(url: str) -> str:
    """The path prefix of a base URL (e.g. behind an ingress), without its trailing slash."""
    return urlsplit(url).path.rstrip("/")


def _error_detail(data: bytes) -> str:
    try:
        body = json.loads(data)
        if isinstance(body, dict) and "error" in body:
            return str(body["error"])[:200]
    except ValueError:
        pass
    return data[:200].decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class EdgeStage:
    """The edge's answer to a frame the cascade escalated: kept in case the cloud fails."""

    answer: InferenceAnswer
    network_s: float
    replica: str
    done_at: float                     # monotonic instant of the edge's answer


@dataclass(eq=False)
class FrameJob:
    """One accepted frame on its way through the engine; `wait()` returns its record."""

    camera: str
    frame_id: int
    captured_at: float                 # wall clock, for humans; latency uses `arrived`
    arrived: float                     # monotonic instant the frame reached the preprocessor
    payload: bytes
    deadline_s: float | None = None
    to_original: Callable[[Box], Box] = identity_box
    content_type: str = "image/jpeg"
    site: str = ""                     # the site whose queue/worker holds it
    failover_from: str = ""
    replica_retried: bool = False      # already re-sent to another replica of the same site
    bytes_sent: int = 0
    edge_stage: EdgeStage | None = None   # set once the cascade escalated it after the edge's answer
    record: FrameRecord | None = None
    receipt: Any = None                # what the record sink returned (the preprocessor: the MQTT message id)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)
    _claim: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def wait(self, timeout: float | None = None) -> FrameRecord | None:
        self._done.wait(timeout)
        return self.record

    @property
    def done(self) -> bool:
        return self._done.is_set()


class SiteQueue:
    """Bounded FIFO; putting into a full queue evicts (and returns) the oldest frame."""

    def __init__(self, size: int) -> None:
        self._items: deque[FrameJob] = deque()
        self._size = size
        self._cond = threading.Condition()
        self._closed = False

    def put(self, job: FrameJob) -> FrameJob | None:
        with self._cond:
            evicted = self._items.popleft() if len(self._items) >= self._size else None
            self._items.append(job)
            self._cond.notify()
            return evicted

    def get(self) -> FrameJob | None:
        """The next frame; None once the queue is closed and empty."""
        with self._cond:
            while not self._items and not self._closed:
                self._cond.wait()
            return self._items.popleft() if self._items else None

    def drain(self) -> list[FrameJob]:
        with self._cond:
            items = list(self._items)
            self._items.clear()
            return items

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class Senders:
    """Daemon threads that send requests, one more started whenever every one is busy (the
    dispatcher admits at most the site's concurrency, so that bounds the threads too).

    Not a ThreadPoolExecutor: the preprocessor drains its frames in an atexit handler, and
    Python shuts executors down (refusing new work) before atexit handlers run.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: queue_module.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]] | None] = \
            queue_module.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._threads: list[threading.Thread] = []

    def submit(self, task: Callable[..., None], *args: Any) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
            else:
                thread = threading.Thread(target=self._run, daemon=True, name=f"{self.name}-{len(self._threads)}")
                self._threads.append(thread)
                thread.start()
        self._tasks.put((task, args))

    def _run(self) -> None:
        while (item := self._tasks.get()) is not None:
            task, args = item
            try:
                task(*args)
            except Exception:  # a bug in one send must not take the thread (and its slot) down
                log.exception("%s: send failed", self.name)
            with self._lock:
                self._idle += 1

    def close(self, timeout_s: float) -> None:
        """Let queued sends finish, then end every thread (waiting at most `timeout_s`)."""
        with self._lock:
            threads = list(self._threads)
        for _ in threads:
            self._tasks.put(None)
        deadline = time.monotonic() + timeout_s
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


RecordSink = Callable[[FrameRecord], Any]
SAME_SITE_RETRY = ("connection", "http_503")   # this replica cannot take the frame; another may


class Offloader:
    """Decides, queues, dispatches and accounts for frames; `sink` gets every record once.

    Policy calls (decision and feedback) are serialised by one lock, so policies need not be
    thread-safe; the decision and the in-flight reservation happen together, so the next
    decision already sees this frame.
    """

    def __init__(self, policy: Policy, edge: SiteConfig, cloud: SiteConfig, sink: RecordSink,
                 ewma_alpha: float = DEFAULT_ALPHA, health_interval_s: float = DEFAULT_PROBE_INTERVAL_S, drop_expired: bool = False,
                 on_decision: Callable[[str], None] | None = None,
                 sources: Mapping[str, ReplicaSource] | None = None) -> None:
        self.policy = policy
        self._escalate = escalation_hook(policy)
        self.configs = {EDGE: edge, CLOUD: cloud}
        self.monitors = {name: SiteMonitor(cfg, ewma_alpha) for name, cfg in self.configs.items()}
        self.queues = {name: SiteQueue(cfg.queue_size) for name, cfg in self.configs.items()}
        self.sources: dict[str, ReplicaSource] = {name: StaticReplicas(cfg.url, cfg.replicas)
                                                  for name, cfg in self.configs.items()}
        self.sources.update(sources or {})
        for name, source in self.sources.items():
            if source.kind != "static":
                self.monitors[name].set_replicas(0)   # none known until the source reports
        self.balancers = {name: Balancer(cfg.per_replica, assumed=cfg.replicas, max_in_flight=cfg.max_in_flight,
                                 recycle_s=cfg.recycle_s)
                          for name, cfg in self.configs.items()}
        self._senders = {name: Senders(f"send-{name}") for name, cfg in self.configs.items()}
        self._sink = sink
        self._on_decision = on_decision
        self._policy_lock = threading.Lock()
        self._health_interval_s = health_interval_s
        self._drop_expired = drop_expired
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._open_jobs = 0
        self._open_cond = threading.Condition()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "Offloader":
        for name, source in self.sources.items():
            source.start(lambda replicas, site=name: self._replicas_changed(site, replicas))
            self._spawn(f"dispatch-{name}", self._dispatch_loop, name)
        if self._health_interval_s > 0:
            self._spawn("site-health", self._health_loop)
        return self

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def close(self, drain_timeout_s: float = 10.0) -> None:
        """Let queued frames finish (up to the timeout), then record the rest as dropped."""
        self.wait_idle(drain_timeout_s)
        self._stopping.set()
        for name, queue in self.queues.items():
            for job in queue.drain():
                self.monitors[name].release()
                self._finish(job, "dropped", name, "shutdown")
            queue.close()
            self.balancers[name].wake()
        for thread in self._threads:
            thread.join(timeout=max(cfg.timeout_s for cfg in self.configs.values()) + 1)
        for name in self.configs:
            self._senders[name].close(timeout_s=2 * self.configs[name].timeout_s + 1)  # requests in flight end
            self.sources[name].stop()
            self.balancers[name].close()

    def _replicas_changed(self, site: str, replicas: tuple[Replica, ...]) -> None:
        """The site's source reported its ready replicas: balance over them, tell the policy."""
        source, balancer, monitor = self.sources[site], self.balancers[site], self.monitors[site]
        static = source.kind == "static"
        balancer.update(replicas, static=static)
        monitor.set_replicas(balancer.ready)
        if not static:
            monitor.set_ready(bool(replicas), "no ready replicas")
        log.info("%s: %d ready replica(s)%s", site, balancer.ready,
                 "" if static else ": " + ", ".join(r.name for r in replicas))

    def wait_idle(self, timeout: float) -> bool:
        """True once every submitted frame has its record."""
        deadline = time.monotonic() + timeout
        with self._open_cond:
            while self._open_jobs:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._open_cond.wait(remaining)
        return True

    # -- frames in -------------------------------------------------------------------------
    def observe(self, camera: str, frame_id: int, frame_bytes: int, deadline_s: float | None) -> Observation:
        return Observation(now=time.monotonic(), camera=camera, frame_id=frame_id, frame_bytes=frame_bytes,
                           deadline_s=deadline_s, edge=self.monitors[EDGE].snapshot(),
                           cloud=self.monitors[CLOUD].snapshot())

    def submit(self, job: FrameJob) -> FrameJob:
        """Decide where `job` goes and queue it; returns at once (the record comes later)."""
        with self._open_cond:
            self._open_jobs += 1
        if self._stopping.is_set():
            self._finish(job, "dropped", "none", "shutdown")
            return job
        try:
            with self._policy_lock:
                observation = self.observe(job.camera, job.frame_id, len(job.payload), job.deadline_s)
                site = CLOUD if self.policy.estimate_to_cloud(observation) else EDGE
                self.monitors[site].reserve()
        except Exception as exc:  # a broken user policy fails the frame, not the service
            log.exception("policy %s failed", getattr(self.policy, "name", "?"))
            self._finish(job, "error", "none", f"policy_error: {type(exc).__name__}: {exc}"[:300])
            return job
        if self._on_decision:
            self._on_decision(site)
        self._enqueue(job, site)
        return job

    def reject(self, job: FrameJob, reason: str) -> FrameRecord:
        """Account for a frame refused before any decision (e.g. it does not decode)."""
        with self._open_cond:
            self._open_jobs += 1
        self._finish(job, "error", "none", reason)
        assert job.record is not None
        return job.record

    def _enqueue(self, job: FrameJob, site: str) -> None:
        """Queue on `site` (already reserved there); a full queue drops its oldest frame."""
        job.site = site
        evicted = self.queues[site].put(job)
        if evicted is not None:
            self.monitors[site].release()
            self._finish(evicted, "dropped", site, "queue_full")

    # -- dispatch --------------------------------------------------------------------------
    def _dispatch_loop(self, site: str) -> None:
        """Take the site's frames in order; each waits for a free slot at a ready replica."""
        monitor, queue, balancer = self.monitors[site], self.queues[site], self.balancers[site]
        while (job := queue.get()) is not None:
            if self._drop_expired and job.deadline_s is not None and time.monotonic() - job.arrived > job.deadline_s:
                monitor.release()
                self._finish(job, "dropped", site, "deadline_expired")
                continue
            lease = balancer.acquire(self._stopping)
            if lease is None:
                monitor.release()
                if self._stopping.is_set():
                    self._finish(job, "dropped", site, "shutdown")
                else:
                    self._on_failure(job, site, InferenceFailure("no_ready_replicas", "", retryable=True))
                continue
            self._senders[site].submit(self._serve, job, site, lease)

    def _serve(self, job: FrameJob, site: str, lease: Lease) -> None:
        """Send on `lease`; a refusal or 503 tries one other replica of the site before failing over."""
        config, monitor, balancer = self.configs[site], self.monitors[site], self.balancers[site]
        body, headers = config.protocol.request(job.payload, job.content_type)
        sent_at = time.monotonic()
        job.bytes_sent += len(body)
        try:
            answer = send_request(lease.pool, base_path(lease.backend.url), body, headers, config.timeout_s,
                                  config.protocol)
        except InferenceFailure as failure:
            balancer.release(lease, ok=False, refused=failure.kind == "connection")
            if failure.kind in SAME_SITE_RETRY and not job.replica_retried and not self._stopping.is_set():
                other = balancer.acquire(self._stopping, exclude=lease.backend)
                if other is not None:
                    job.replica_retried = True
                    log.info("frame %s/%d: %s replica %s failed (%s), trying %s", job.camera, job.frame_id, site,
                             lease.backend.name or lease.backend.url, failure, other.backend.name or other.backend.url)
                    self._serve(job, site, other)
                    return
            monitor.release()
            if failure.retryable:
                monitor.record_failure(str(failure))
            self._on_failure(job, site, failure)
            return
        balancer.release(lease, ok=True)
        round_trip = time.monotonic() - sent_at
        if answer.inference_s is None:   # a server that does not time itself: its whole round trip
            answer = replace(answer, inference_s=round_trip)
        network = max(0.0, round_trip - answer.inference_s - answer.queue_s)
        monitor.release()
        monitor.record_answer(answer.inference_s, network, len(body))
        replica = answer.replica or lease.backend.name
        reason = f"failover:{job.failover_from}->{site}" if job.failover_from else ""
        if site == EDGE and not reason and self._escalate is not None:
            reason = self._second_decision(job, answer, network, replica)
            if job.edge_stage is not None:
                return   # on its way to the cloud
        self._finish(job, "ok", site, reason, answer, network, replica=replica)

    def _second_decision(self, job: FrameJob, answer: InferenceAnswer, network_s: float, replica: str) -> str:
        """Ask the cascade whether to escalate the edge's answer; if so queue the frame for the
        cloud (job.edge_stage set). Returns the reason the edge record gets otherwise."""
        if self._stopping.is_set():
            return ""
        result = EdgeResult.of(self._original(job, answer.detections), answer.inference_s, answer.model)
        try:
            with self._policy_lock:
                observation = self.observe(job.camera, job.frame_id, len(job.payload), job.deadline_s)
                escalate = bool(self._escalate(observation, result))  # type: ignore[misc]
                if escalate:
                    self.monitors[CLOUD].reserve()
        except Exception as exc:  # a broken hook keeps the edge's answer
            log.exception("policy %s failed to decide an escalation", getattr(self.policy, "name", "?"))
            return f"escalation_error: {type(exc).__name__}: {exc}"[:300]
        if escalate:
            job.edge_stage = EdgeStage(answer, network_s, replica, time.monotonic())
            job.replica_retried = False   # the cloud stage may try another cloud replica too
            job.bytes_sent = 0            # its record counts what went to the cloud: the egress
            self._enqueue(job, CLOUD)
        return ""

    @staticmethod
    def _original(job: FrameJob, detections: tuple[Detection, ...]) -> tuple[Detection, ...]:
        """Detections with boxes in the captured frame's pixels."""
        return tuple(Detection(d.label, d.score, job.to_original(d.box)) for d in detections)

    def _on_failure(self, job: FrameJob, site: str, failure: InferenceFailure) -> None:
        prefix = f"failover:{job.failover_from}->{site}; " if job.failover_from else ""
        if failure.retryable and not job.failover_from and job.edge_stage is None and not self._stopping.is_set():
            other = OTHER_SITE[site]
            log.info("frame %s/%d: %s failed (%s), failing over to %s", job.camera, job.frame_id, site, failure, other)
            job.failover_from = site
            self.monitors[other].reserve()
            self._enqueue(job, other)
            return
        self._finish(job, "error", site, f"{prefix}{site}: {failure}"[:300])

    def _health_loop(self) -> None:
        """Ready-probe sites behind a static URL; discovered sites are ready while a replica is."""
        session = new_session()
        try:
            while not self._stopping.wait(self._health_interval_s):
                for name, config in self.configs.items():
                    if self.sources[name].kind == "static":
                        self.monitors[name].set_ready(*probe_ready(session, config.url, config.protocol.ready_path))
        finally:
            session.close()

    # -- records out -----------------------------------------------------------------------
    def _finish(self, job: FrameJob, status: str, site: str, reason: str,
                answer: InferenceAnswer | None = None, network_s: float = 0.0, replica: str = "") -> None:
        """Build the frame's one record, feed it to the policy and the sink (first call wins).

        An escalated frame whose cloud stage did not answer keeps the edge's answer."""
        if not job._claim.acquire(blocking=False):
            log.error("frame %s/%d finished twice (%s); second outcome ignored", job.camera, job.frame_id, status)
            return
        stage = job.edge_stage
        if stage is not None and status != "ok":
            status, site, reason = "ok", EDGE, f"escalation_failed: {reason}"[:300]
            answer, network_s, replica = stage.answer, stage.network_s, stage.replica
        total_ms = (time.monotonic() - job.arrived) * 1000.0
        inference_ms = answer.inference_s * 1000.0 if answer else 0.0
        network_ms = network_s * 1000.0
        deadline_met = None if job.deadline_s is None else (status == "ok" and total_ms <= job.deadline_s * 1000.0)
        record = FrameRecord(
            camera=job.camera, frame_id=job.frame_id, captured_at=job.captured_at, site=site,  # type: ignore[arg-type]
            status=status, reason=reason, policy=getattr(self.policy, "name", ""),  # type: ignore[arg-type]
            model=answer.model if answer else "",
            detections=self._original(job, answer.detections) if answer else (),
            bytes_sent=job.bytes_sent, t_queue_ms=max(0.0, total_ms - network_ms - inference_ms),
            t_network_ms=network_ms, t_inference_ms=inference_ms, t_total_ms=total_ms, deadline_met=deadline_met,
            replica=replica, **_escalation_fields(job))
        job.record = record
        try:
            with self._policy_lock:
                self.policy.feedback(record)
        except Exception:
            log.exception("policy feedback failed for frame %s/%d", job.camera, job.frame_id)
        try:
            job.receipt = self._sink(record)
        except Exception:
            log.exception("record sink failed for frame %s/%d", job.camera, job.frame_id)
        job._done.set()
        with self._open_cond:
            self._open_jobs -= 1
            if not self._open_jobs:
                self._open_cond.notify_all()

    def discovery_pending(self) -> list[str]:
        """Sites whose replica source has not reported yet (e.g. the API server is unreachable)."""
        return [name for name, balancer in self.balancers.items() if not balancer.synced]

    @property
    def open_frames(self) -> int:
        """Frames accepted and without a record yet."""
        with self._open_cond:
            return self._open_jobs

    def state(self) -> dict[str, Any]:
        """JSON-friendly snapshot of both sites (what /api/state serves)."""
        sites = {}
        for name, monitor in self.monitors.items():
            balancer = self.balancers[name]
            sites[name] = {**monitor.describe(), "queued": len(self.queues[name]),
                           "queue_size": self.configs[name].queue_size, "concurrency": balancer.capacity,
                           "protocol": self.configs[name].protocol.name, "discovery": self.sources[name].status(),
                           "backends": balancer.describe()}
        with self._open_cond:
            open_jobs = self._open_jobs
        return {"policy": getattr(self.policy, "name", ""), "open_frames": open_jobs, **sites}


def _escalation_fields(job: FrameJob) -> dict[str, Any]:
    """The record's cascade fields: the edge answer's summary, if the frame was escalated."""
    stage = job.edge_stage
    if stage is None:
        return {}
    found = stage.answer.detections
    return {"escalated": True, "edge_score": max((d.score for d in found), default=None),
            "edge_detections": len(found), "t_edge_ms": (stage.done_at - job.arrived) * 1000.0}


def probe_ready(session: requests.Session, base_url: str, path: str = NATIVE.ready_path,
                timeout_s: float = 1.0) -> tuple[bool, str]:
    """(ready, reason) from a site's KServe-v2 ready endpoint (the server's, or its model's)."""
    try:
        response = session.get(base_url.rstrip("/") + path, timeout=timeout_s)
    except requests.RequestException as exc:
        return False, f"ready probe: {type(exc).__name__}"
    return (True, "") if response.status_code == 200 else (False, f"ready probe: HTTP {response.status_code}")


__all__ = ["EDGE", "CLOUD", "identity_box", "EdgeStage", "SiteConfig", "SiteMonitor", "InferenceAnswer", "InferenceFailure", "FrameJob",
           "SiteQueue", "Offloader", "SiteProtocol", "NativeProtocol", "V2Protocol", "NATIVE", "post_frame",
           "send_request", "base_path", "probe_ready", "new_session"]
