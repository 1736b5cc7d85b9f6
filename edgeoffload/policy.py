"""Offloading policies: pure decisions over a snapshot of system state.

The same policy object runs inside the EdgePreprocessorUnit and inside the simulator,
so a policy sees only an Observation and (optionally) learns from FrameRecords.

Seeds: a policy that draws random numbers takes a `seed` keyword at construction and seeds its
own generator with it. `load_policy(spec, seed=N)` passes N to such a class (the built-ins
`random` and `bandit`, and user classes whose constructor has a `seed` parameter); the simulator
derives N from the scenario's seed, the preprocessor takes PRE_SEED. Instances and functions are
used as they are.

Cascade policies decide twice: before inference (`estimate_to_cloud`, as every policy) and,
for a frame the edge has answered, whether to escalate it to the cloud's model as well
(`escalate_to_cloud(obs, edge_result) -> bool`, optional: see `escalation_hook`). A policy
without the second method keeps every edge answer, exactly as before.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import math
import random
import sys
import traceback
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

from edgeoffload.records import Detection, FrameRecord


@dataclass(frozen=True, slots=True)
class SiteState:
    """One inference site (edge or cloud) as the preprocessor sees it."""

    in_flight: int = 0            # frames sent and not yet answered
    replicas: int = 1             # ready replicas (known or estimated)
    service_s: float = 0.05       # EWMA inference time per frame
    rtt_s: float = 0.0            # network round trip (0 on edge)
    uplink_bps: float = math.inf  # estimated bandwidth (inf on edge)
    healthy: bool = True


@dataclass(frozen=True, slots=True)
class Observation:
    """Everything a policy may look at for one frame."""

    now: float
    camera: str
    frame_id: int
    frame_bytes: int              # encoded size that would be sent
    deadline_s: float | None
    edge: SiteState
    cloud: SiteState


@dataclass(frozen=True, slots=True)
class EdgeResult:
    """What the edge's model found for one frame: the input of a cascade's second decision.

    The testbed fills every field; the simulator draws `best_score` and `detections` from the
    picture's measured edge answers (scenario key `edge.answers`) and has no boxes, so there
    `boxes` is always empty: a policy that both worlds run must decide on the summary fields.
    """

    best_score: float | None      # highest detection score (the detector's own scale); None: nothing found
    detections: int               # number of objects found
    inference_s: float            # the edge model's time for this frame
    model: str = ""
    boxes: tuple[Detection, ...] = ()   # testbed only

    @staticmethod
    def of(detections: tuple[Detection, ...], inference_s: float, model: str) -> "EdgeResult":
        best = max((d.score for d in detections), default=None)
        return EdgeResult(best, len(detections), inference_s, model, detections)


@runtime_checkable
class Policy(Protocol):
    name: str

    def estimate_to_cloud(self, obs: Observation) -> bool:
        """True = offload this frame to the cloud."""
        ...

    def feedback(self, record: FrameRecord) -> None:
        """Called once with the outcome of every frame the policy decided."""
        ...


Escalate = Callable[[Observation, EdgeResult], bool]


def escalation_hook(policy: Any) -> Escalate | None:
    """The policy's `escalate_to_cloud(obs, edge_result)`, or None when it has none (then an
    edge answer is final and the engines skip the second decision entirely)."""
    hook = getattr(policy, "escalate_to_cloud", None)
    return hook if callable(hook) else None


def predicted_completion_s(site: SiteState, frame_bytes: int) -> float:
    """Expected time until a frame sent now is answered: wait + transfer + rtt + service.

    Work ahead of the frame is spread over the site's replicas; an unhealthy site never completes.
    """
    if not site.healthy or site.replicas <= 0:
        return math.inf
    wait = site.in_flight / site.replicas * site.service_s
    transfer = 0.0 if math.isinf(site.uplink_bps) else frame_bytes * 8 / max(site.uplink_bps, 1e-9)
    return wait + transfer + site.rtt_s + site.service_s


class _Stateless:
    """Base for policies that do not learn: feedback is accepted and ignored."""

    name = "base"

    def feedback(self, record: FrameRecord) -> None:
        return None


class EdgeOnly(_Stateless):
    name = "edge-only"

    def estimate_to_cloud(self, obs: Observation) -> bool:
        return False


class CloudOnly(_Stateless):
    name = "cloud-only"

    def estimate_to_cloud(self, obs: Observation) -> bool:
        return True


class Alternate(_Stateless):
    """The original demo: every other frame goes to the cloud (edge first)."""

    name = "alternate"

    def __init__(self) -> None:
        self._count = 0

    def estimate_to_cloud(self, obs: Observation) -> bool:
        self._count += 1
        return self._count % 2 == 0


class RandomSplit(_Stateless):
    """Offload each frame with probability p; seeded so runs repeat."""

    def __init__(self, p: float = 0.5, seed: int = 0) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"random:p needs 0 <= p <= 1, got {p}")
        self.p = p
        self.name = f"random:{p:g}"
        self._rng = random.Random(seed)

    def estimate_to_cloud(self, obs: Observation) -> bool:
        return self._rng.random() < self.p


class QueueThreshold(_Stateless):
    """Offload when the edge has k or more frames in flight per ready replica."""

    def __init__(self, k: float = 2) -> None:
        if k <= 0:
            raise ValueError(f"queue-threshold:k needs k > 0, got {k}")
        self.k = k
        self.name = f"queue-threshold:{k:g}"

    def estimate_to_cloud(self, obs: Observation) -> bool:
        if not obs.edge.healthy:
            return obs.cloud.healthy
        per_replica = obs.edge.in_flight / max(obs.edge.replicas, 1)
        return per_replica >= self.k and obs.cloud.healthy


class MinLatency(_Stateless):
    """Send to whichever site is predicted to answer first (ties stay on the edge)."""

    name = "min-latency"

    def estimate_to_cloud(self, obs: Observation) -> bool:
        edge = predicted_completion_s(obs.edge, obs.frame_bytes)
        cloud = predicted_completion_s(obs.cloud, obs.frame_bytes)
        return cloud < edge


class Deadline(_Stateless):
    """Prefer the edge (no egress); offload only when the edge would miss the deadline
    and the cloud is predicted to do better."""

    name = "deadline"

    def __init__(self, default_deadline_s: float = 0.2) -> None:
        self.default_deadline_s = default_deadline_s

    def estimate_to_cloud(self, obs: Observation) -> bool:
        deadline = obs.deadline_s if obs.deadline_s is not None else self.default_deadline_s
        edge = predicted_completion_s(obs.edge, obs.frame_bytes)
        if edge <= deadline:
            return False
        return predicted_completion_s(obs.cloud, obs.frame_bytes) < edge


class _EdgeFirst(_Stateless):
    """Base of the built-in cascades: every frame goes to the edge first (the cloud only while the
    edge is unhealthy); the second decision is theirs."""

    def estimate_to_cloud(self, obs: Observation) -> bool:
        return not obs.edge.healthy and obs.cloud.healthy


class Cascade(_EdgeFirst):
    """Edge first; escalate a frame to the cloud when the edge found nothing or its best score is
    below `threshold` (in the edge detector's own score scale: Haar's stage weights, HOG's SVM
    margin, a DNN's confidence)."""

    def __init__(self, threshold: float = 0.5) -> None:
        if not math.isfinite(threshold):
            raise ValueError(f"cascade:threshold must be a finite number, got {threshold}")
        self.threshold = threshold
        self.name = f"cascade:{threshold:g}"

    def escalate_to_cloud(self, obs: Observation, edge_result: EdgeResult) -> bool:
        if not obs.cloud.healthy:
            return False
        return edge_result.best_score is None or edge_result.best_score < self.threshold


class BudgetCascade(_EdgeFirst):
    """Edge first; escalate at most a `share` of the edge's answers, the least confident first.

    Online, "least confident first" means: escalate a frame when its confidence is at or below
    the `share`-quantile of the last `window` edge answers' confidences (this one included), so
    that over a window the escalated frames are the least confident `share` of them. A frame with
    nothing found has confidence -inf (escalated first). The budget holds at every answer, also
    while fewer than `window` have come and when many answers tie (e.g. many empty ones): a frame
    is escalated only if the escalations among the last `window` answers, this one included,
    stay within `share` of them."""

    def __init__(self, share: float = 0.2, window: int = 200) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"cascade-budget:share needs 0 <= share <= 1, got {share}")
        if window < 1:
            raise ValueError(f"cascade-budget window must be >= 1, got {window}")
        self.share = share
        self.window = window
        self.name = f"cascade-budget:{share:g}"
        self._scores: deque[float] = deque(maxlen=window)
        self._earlier: deque[bool] = deque(maxlen=window - 1)   # the decisions sharing a window with the next

    def escalate_to_cloud(self, obs: Observation, edge_result: EdgeResult) -> bool:
        score = -math.inf if edge_result.best_score is None else edge_result.best_score
        self._scores.append(score)
        within_budget = sum(self._earlier) + 1 <= self.share * (len(self._earlier) + 1)
        escalate = False
        if within_budget and obs.cloud.healthy:
            ordered = sorted(self._scores)
            escalate = score <= ordered[max(0, math.floor(self.share * len(ordered)) - 1)]
        self._earlier.append(escalate)
        return escalate


class EpsilonGreedy:
    """Learning policy: a contextual epsilon-greedy bandit.

    Context is the edge load (frames in flight per replica, capped); for each context and
    site it keeps a running mean of observed total latency (errors and drops count as a
    penalty) and picks the lower, exploring with probability epsilon.
    """

    def __init__(self, epsilon: float = 0.1, seed: int = 0, max_bucket: int = 8,
                 failure_penalty_ms: float = 2000.0, memory: int = 65536) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"bandit:epsilon needs 0 <= epsilon <= 1, got {epsilon}")
        self.epsilon = epsilon
        self.name = f"bandit:{epsilon:g}"
        self.max_bucket = max_bucket
        self.failure_penalty_ms = failure_penalty_ms
        self._rng = random.Random(seed)
        self._memory = memory
        self._pending: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._sum: dict[tuple[int, bool], float] = {}
        self._count: dict[tuple[int, bool], int] = {}

    def _context(self, obs: Observation) -> int:
        per_replica = obs.edge.in_flight / max(obs.edge.replicas, 1)
        return min(int(per_replica), self.max_bucket)

    def mean_ms(self, context: int, to_cloud: bool) -> float | None:
        count = self._count.get((context, to_cloud), 0)
        return self._sum[(context, to_cloud)] / count if count else None

    def estimate_to_cloud(self, obs: Observation) -> bool:
        context = self._context(obs)
        self._pending[(obs.camera, obs.frame_id)] = context
        if len(self._pending) > self._memory:
            self._pending.popitem(last=False)
        if not obs.cloud.healthy or not obs.edge.healthy:
            return not obs.edge.healthy and obs.cloud.healthy
        if self._rng.random() < self.epsilon:
            return self._rng.random() < 0.5
        edge, cloud = self.mean_ms(context, False), self.mean_ms(context, True)
        if edge is None or cloud is None:  # try the untried arm first
            return edge is not None
        return cloud < edge

    def feedback(self, record: FrameRecord) -> None:
        context = self._pending.pop((record.camera, record.frame_id), None)
        if context is None or record.site == "none":
            return
        latency = record.t_total_ms if record.status == "ok" else self.failure_penalty_ms
        key = (context, record.site == "cloud")
        self._sum[key] = self._sum.get(key, 0.0) + latency
        self._count[key] = self._count.get(key, 0) + 1


class FunctionPolicy:
    """Adapts a plain `estimate_to_cloud(obs) -> bool` function (or an object without feedback);
    an object's `escalate_to_cloud` is kept (as an attribute, so policies without one have none)."""

    def __init__(self, decide: Callable[[Observation], bool], name: str,
                 learn: Callable[[FrameRecord], None] | None = None, escalate: Escalate | None = None) -> None:
        self._decide = decide
        self._learn = learn
        self.name = name
        if escalate is not None:
            self.escalate_to_cloud = escalate

    def estimate_to_cloud(self, obs: Observation) -> bool:
        return bool(self._decide(obs))

    def feedback(self, record: FrameRecord) -> None:
        if self._learn is not None:
            self._learn(record)


def _float_arg(arg: str | None, default: float, name: str) -> float:
    if arg is None or arg == "":
        return default
    try:
        return float(arg)
    except ValueError:
        raise ValueError(f"policy {name!r} takes a number, got {arg!r}") from None


# name -> factory(arg, seed)
BUILTINS: dict[str, Callable[[str | None, int], Any]] = {
    "edge-only": lambda arg, seed: EdgeOnly(),
    "cloud-only": lambda arg, seed: CloudOnly(),
    "alternate": lambda arg, seed: Alternate(),
    "random": lambda arg, seed: RandomSplit(_float_arg(arg, 0.5, "random"), seed=seed),
    "queue-threshold": lambda arg, seed: QueueThreshold(_float_arg(arg, 2, "queue-threshold")),
    "min-latency": lambda arg, seed: MinLatency(),
    "deadline": lambda arg, seed: Deadline(_float_arg(arg, 0.2, "deadline")),
    "bandit": lambda arg, seed: EpsilonGreedy(_float_arg(arg, 0.1, "bandit"), seed=seed),
    "cascade": lambda arg, seed: Cascade(_float_arg(arg, 0.5, "cascade")),
    "cascade-budget": lambda arg, seed: BudgetCascade(_float_arg(arg, 0.2, "cascade-budget")),
}


def load_policy(spec: str, seed: int | None = None) -> Policy:
    """Build a policy from `name[:arg]` (a built-in), `module:attr` or `path/to/file.py:attr`.

    `attr` may be a Policy class (instantiated without arguments, or with `seed=seed` when a
    seed is given and its constructor takes one), a Policy instance, or a plain function
    `estimate_to_cloud(obs) -> bool`. Without a seed the built-ins draw from seed 0.
    """
    spec = spec.strip()
    if not spec:
        raise ValueError("empty policy spec; try one of: " + ", ".join(sorted(BUILTINS)))
    name, _, arg = spec.partition(":")
    if name in BUILTINS:
        return BUILTINS[name](arg or None, 0 if seed is None else seed)
    if not arg:
        close = difflib.get_close_matches(name, BUILTINS, n=1)
        raise ValueError(f"unknown policy {spec!r}{f' (did you mean {close[0]!r}?)' if close else ''}: use a "
                         f"built-in ({', '.join(sorted(BUILTINS))}), 'module:attr' or 'path/to/file.py:attr'")
    target, _, attr = spec.rpartition(":")
    module = _import_target(target)
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise ValueError(f"policy {spec!r}: {target!r} has no attribute {attr!r}") from None
    return as_policy(obj, name=attr, seed=seed)


def as_policy(obj: Any, name: str | None = None, seed: int | None = None) -> Policy:
    """Turn a class, instance or function into an object with the full Policy interface
    (a class is constructed, with `seed=seed` if a seed is given and it takes one)."""
    if inspect.isclass(obj):
        obj = obj(seed=seed) if seed is not None and _takes_seed(obj) else obj()
    decide = getattr(obj, "estimate_to_cloud", None)
    if callable(decide):
        if callable(getattr(obj, "feedback", None)) and isinstance(getattr(obj, "name", None), str):
            return obj
        return FunctionPolicy(decide, getattr(obj, "name", None) or name or type(obj).__name__,
                              getattr(obj, "feedback", None), escalation_hook(obj))
    if callable(obj):
        return FunctionPolicy(obj, name or getattr(obj, "__name__", "custom"))
    raise ValueError(f"{obj!r} is not a policy: it needs an estimate_to_cloud(obs) method or must be a function")


def is_policy_file(target: str) -> bool:
    """Whether the `target` of a `target:attr` spec names a file (else an importable module)."""
    return target.endswith(".py") or "/" in target or "\\" in target


def _takes_seed(cls: type) -> bool:
    try:
        parameter = inspect.signature(cls).parameters.get("seed")
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                        inspect.Parameter.KEYWORD_ONLY)


def _import_target(target: str) -> Any:
    """The module a `target:attr` spec names. A policy file may import modules beside it (its
    folder joins sys.path, as `python file.py` would have it); any error while importing
    becomes one ValueError line naming the file and line, not a traceback."""
    if is_policy_file(target):
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"policy file not found: {target}")
        module_name = f"edgeoffload_user_policy_{abs(hash(str(path)))}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ValueError(f"cannot load policy file {target}")
        module = importlib.util.module_from_spec(spec)
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[module_name]
            raise ValueError(f"policy file {_where(exc, str(path))}") from None
        return module
    try:
        return importlib.import_module(target)
    except Exception as exc:
        raise ValueError(f"cannot import policy module {target!r}: {_where(exc)}") from None


def _where(exc: BaseException, path: str | None = None) -> str:
    """`file:line: Kind: message` of an import failure: the syntax error's own place, else the
    deepest line of `path` (or of any file) in the traceback."""
    if isinstance(exc, SyntaxError):
        return f"{exc.filename or path}:{exc.lineno}: SyntaxError: {exc.msg}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if (f.filename == path if path else not f.filename.startswith("<") and "importlib" not in f.filename)]
    place = f"{frames[-1].filename}:{frames[-1].lineno}: " if frames else (f"{path}: " if path else "")
    return f"{place}{type(exc).__name__}: {' '.join(str(exc).split())}"