"""One analysis pipeline for simulated and real runs: metrics, comparison tables, Pareto fronts, plots.

A run, simulated (`Summary`) or replayed on the testbed (FrameRecords), becomes a
`RunMetrics` row with the same definitions on both sides:

- `cloud_share` = frames whose record names the cloud / frames that reached a site;
- `drop_rate` = dropped / frames; `deadline_miss_rate` = missed / frames with a deadline;
- latency percentiles over answered (`ok`) frames' `t_total_ms`;
- `uplink_bytes` = bytes sent to the cloud; `pod_seconds` = replica-seconds of both pools
  (simulator only: the testbed's replica timeline is sampled instead);
- `escalation_share` = frames a cascade policy escalated to the cloud after the edge answered /
  frames; `agreement` = answered frames whose answer agrees with the cloud model's answer on the
  same frame (edgeoffload.agreement) / answered frames, when the answers are known.

Tables are written as CSV and markdown (the experiment pages of the web server render
CSV); plots are PNGs drawn with matplotlib, imported only when a plot is asked for (it is
an optional dependency of the experiments).
"""
from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from edgeoffload.load.summary import percentiles
from edgeoffload.records import FrameRecord
from edgeoffload.sim.stats import Summary


@dataclass(frozen=True, slots=True)
class RunMetrics:
    """The comparable outcome of one run (one row of a comparison table)."""

    label: str
    frames: int
    ok: int
    dropped: int
    errors: int
    edge_frames: int
    cloud_frames: int
    cloud_share: float | None
    uplink_bytes: int
    mean_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    deadline_frames: int
    deadline_miss_rate: float | None
    drop_rate: float | None
    pod_seconds: float | None = None
    escalated_frames: int = 0
    escalation_share: float | None = None
    agreement: float | None = None

    @property
    def edge_share(self) -> float | None:
        return None if self.cloud_share is None else 1.0 - self.cloud_share

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["edge_share"] = self.edge_share
        return row


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def from_summary(summary: Summary, label: str | None = None) -> RunMetrics:
    """Metrics of a simulation run (its counted, post-warm-up frames)."""
    replica_seconds = sum(site.pod_seconds for site in summary.sites.values())
    return RunMetrics(label=label or summary.policy, frames=summary.frames, ok=summary.ok, dropped=summary.dropped,
                      errors=summary.errors, edge_frames=summary.edge_frames, cloud_frames=summary.cloud_frames,
                      cloud_share=summary.cloud_share, uplink_bytes=summary.egress_bytes, mean_ms=summary.mean_ms,
                      p50_ms=summary.p50_ms, p95_ms=summary.p95_ms, p99_ms=summary.p99_ms,
                      deadline_frames=summary.deadline_frames, deadline_miss_rate=summary.deadline_miss_rate,
                      drop_rate=summary.drop_rate, pod_seconds=replica_seconds, escalated_frames=summary.escalated,
                      escalation_share=summary.escalation_share, agreement=summary.agreement)


def relative_times(records: Sequence[FrameRecord]) -> list[float]:
    """Capture instants relative to the first frame (testbed records carry wall-clock time)."""
    if not records:
        return []
    start = min(record.captured_at for record in records)
    return [record.captured_at - start for record in records]


def after_warmup(records: Iterable[FrameRecord], warmup_s: float) -> list[FrameRecord]:
    """The records captured at least `warmup_s` after the first one (as the simulator counts)."""
    records = list(records)
    return [r for r, t in zip(records, relative_times(records)) if t >= warmup_s]


def from_records(records: Iterable[FrameRecord], label: str, pod_seconds: float | None = None,
                 agreement: float | None = None) -> RunMetrics:
    """Metrics of a set of FrameRecords (testbed or simulator), same definitions as from_summary;
    records do not say whether an answer agrees with the cloud's, so `agreement` is given
    (edgeoffload.agreement.agreement_share)."""
    records = list(records)
    escalated = sum(1 for r in records if r.escalated)
    at_site = [r for r in records if r.site != "none"]
    cloud = [r for r in at_site if r.site == "cloud"]
    ok_latency = [r.t_total_ms for r in records if r.status == "ok"]
    with_deadline = [r for r in records if r.deadline_met is not None]
    dropped = sum(1 for r in records if r.status == "dropped")
    quantiles = percentiles(ok_latency)
    return RunMetrics(
        label=label, frames=len(records), ok=len(ok_latency), dropped=dropped,
        errors=sum(1 for r in records if r.status == "error"),
        edge_frames=len(at_site) - len(cloud), cloud_frames=len(cloud), cloud_share=_ratio(len(cloud), len(at_site)),
        uplink_bytes=sum(r.bytes_sent for r in cloud),
        mean_ms=sum(ok_latency) / len(ok_latency) if ok_latency else None,
        p50_ms=quantiles.get(50), p95_ms=quantiles.get(95), p99_ms=quantiles.get(99),
        deadline_frames=len(with_deadline),
        deadline_miss_rate=_ratio(sum(1 for r in with_deadline if not r.deadline_met), len(with_deadline)),
        drop_rate=_ratio(dropped, len(records)), pod_seconds=pod_seconds, escalated_frames=escalated,
        escalation_share=_ratio(escalated, len(records)), agreement=agreement)


def from_runs(runs: Sequence[Sequence[FrameRecord]], label: str, pod_seconds: float | None = None) -> RunMetrics:
    """Several runs of one setup (e.g. simulator seeds) as one row: rates and percentiles over
    the pooled records, counts and bytes as the mean per run."""
    if not runs:
        raise ValueError("from_runs needs at least one run")
    pooled = from_records([record for run in runs for record in run], label, pod_seconds)
    def mean(name: str) -> int:
        return round(sum(getattr(from_records(run, label), name) for run in runs) / len(runs))
    counts = ("frames", "ok", "dropped", "errors", "edge_frames", "cloud_frames", "uplink_bytes", "deadline_frames",
              "escalated_frames")
    return dataclasses.replace(pooled, **{name: mean(name) for name in counts})


def simulate_policies(scenario: Any, policies: Sequence[str], label: Callable[[str], str] = str) -> list[RunMetrics]:
    """One simulation per policy spec on the same scenario (same seed, so the same arrivals)."""
    from edgeoffload.sim import run_scenario

    return [from_summary(run_scenario(scenario, spec).summary, label(spec)) for spec in policies]


# --- tables -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Column:
    """A table column: the row key, its header, and how a value is shown in markdown."""

    key: str
    header: str
    kind: str = "text"          # text | int | ms | pct | mb | float

    def show(self, value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if self.kind == "int":
            return f"{int(value):,}"
        if self.kind == "ms":
            return f"{value:.1f}"
        if self.kind == "pct":
            return f"{100 * value:.1f}"
        if self.kind == "mb":
            return f"{value / 1e6:,.1f}"
        if self.kind == "float":
            return f"{value:,.1f}"
        return str(value)


POLICY_COLUMNS: tuple[Column, ...] = (
    Column("label", "policy"), Column("frames", "frames", "int"),
    Column("edge_share", "edge %", "pct"), Column("cloud_share", "cloud %", "pct"),
    Column("uplink_bytes", "uplink MB", "mb"), Column("p50_ms", "p50 ms", "ms"), Column("p95_ms", "p95 ms", "ms"),
    Column("p99_ms", "p99 ms", "ms"), Column("deadline_miss_rate", "deadline miss %", "pct"),
    Column("drop_rate", "drop %", "pct"), Column("pod_seconds", "pod-s", "float"))
CASCADE_COLUMNS: tuple[Column, ...] = (Column("escalation_share", "escalated %", "pct"),
                                       Column("agreement", "agrees with cloud %", "pct"))


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    lines = ["| " + " | ".join(c.header for c in columns) + " |",
             "|" + "|".join("---" if c.kind == "text" else "---:" for c in columns) + "|"]
    lines += ["| " + " | ".join(c.show(row.get(c.key)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]], keys: Sequence[str] | None = None) -> Path:
    """Rows as CSV (floats rounded to 4 significant decimals, None as empty)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(keys or (rows[0].keys() if rows else []))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in keys})
    return path


def write_table(path: str | Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """Write the rows' column values as CSV (raw numbers) and return the markdown rendering."""
    write_csv(path, rows, [c.key for c in columns])
    return markdown_table(rows, columns)


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else round(value, 4)
    return value


METRIC_KEYS: tuple[str, ...] = tuple(f.name for f in fields(RunMetrics)) + ("edge_share",)


# --- Pareto fronts ----------------------------------------------------------------------

def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (both minimised),
    ordered by the first coordinate."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front: list[int] = []
    best_y = math.inf
    for index in order:
        x, y = points[index]
        if math.isnan(x) or math.isnan(y):
            continue
        if y < best_y:
            front.append(index)
            best_y = y
    return front


# --- simulation vs testbed --------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Deviation:
    """One compared quantity: real, simulated, error, and whether it is within tolerance."""

    metric: str
    real: float | None
    simulated: float | None
    error: float | None           # relative (latency) or absolute in points (shares)
    unit: str                     # "%" relative error, or "pts"
    tolerance: float
    within: bool


def relative_error(real: float | None, simulated: float | None) -> float | None:
    if real is None or simulated is None or real == 0:
        return None
    return (simulated - real) / real


def compare(real: RunMetrics, simulated: RunMetrics, latency_tolerance: float = 0.15,
            share_tolerance_pts: float = 5.0) -> list[Deviation]:
    """Simulation against the testbed: p50/p95 latency within a relative tolerance, cloud share
    (and drop rate) within an absolute number of percentage points; with a cascade policy
    (escalations on either side) also the escalation share and, where known, the agreement."""
    deviations = []
    for metric in ("p50_ms", "p95_ms"):
        error = relative_error(getattr(real, metric), getattr(simulated, metric))
        deviations.append(Deviation(metric, getattr(real, metric), getattr(simulated, metric),
                                    None if error is None else 100 * error, "%", 100 * latency_tolerance,
                                    error is not None and abs(error) <= latency_tolerance))
    shares = ["cloud_share", "drop_rate"]
    if real.escalated_frames or simulated.escalated_frames:
        shares.append("escalation_share")
    if real.agreement is not None and simulated.agreement is not None:
        shares.append("agreement")
    for metric in shares:
        r, s = getattr(real, metric), getattr(simulated, metric)
        points = None if r is None or s is None else 100 * (s - r)
        deviations.append(Deviation(metric, r, s, points, "pts", share_tolerance_pts,
                                    points is not None and abs(points) <= share_tolerance_pts))
    return deviations


# --- replica timelines ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ReplicaPoint:
    t: float
    edge: int
    cloud: int


def timeline_from_summary(summary: Summary) -> list[ReplicaPoint]:
    """The simulator's sampled replica counts (ready replicas, as traffic sees them)."""
    return [ReplicaPoint(p.t, p.edge_ready, p.cloud_ready) for p in summary.timeline]


def step_at(timeline: Sequence[ReplicaPoint], t: float, site: str) -> int | None:
    """The replica count of `site` in force at time t (last sample at or before t)."""
    value = None
    for point in timeline:
        if point.t > t:
            break
        value = getattr(point, site)
    return value


def pod_seconds(timeline: Sequence[ReplicaPoint], end_s: float) -> float:
    """Replica-seconds of both pools from a sampled timeline (each sample holds until the next)."""
    total = 0.0
    for point, following in zip(timeline, list(timeline[1:]) + [None]):
        until = end_s if following is None else min(following.t, end_s)
        if until > point.t:
            total += (point.edge + point.cloud) * (until - point.t)
    return total


# --- HPA syncs and scale events ---------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SyncPoint:
    """One reconcile of a pool's HPA on the trace's clock: the replicas it read and set."""

    t: float
    pool: str
    current: int
    desired: int
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)   # each metric's mean over the pods


@dataclass(frozen=True, slots=True)
class ScaleEvent:
    t: float
    pool: str
    before: int
    after: int

    @property
    def direction(self) -> str:
        return "up" if self.after > self.before else "down"


def scale_events(syncs: Iterable[SyncPoint]) -> list[ScaleEvent]:
    """The syncs that changed a pool's replicas."""
    return [ScaleEvent(s.t, s.pool, s.current, s.desired) for s in syncs if s.desired != s.current]


@dataclass(frozen=True, slots=True)
class SyncComparison:
    """Replicas the simulator set at each of the testbed's syncs, and the scale events of both."""

    syncs: int                                   # testbed syncs compared
    within_one: int                              # ... where the simulator's count is within +-1
    largest_gap: int
    worst: SyncPoint | None                      # the testbed sync with the largest gap
    matched: list[tuple[ScaleEvent, ScaleEvent]]  # (testbed, simulator) events within the tolerance
    missed: list[ScaleEvent]                     # testbed events the simulator did not make in time
    extra: list[ScaleEvent]                      # simulator events the testbed did not make

    @property
    def replicas_within_one(self) -> bool:
        return self.within_one == self.syncs

    @property
    def events_within_a_period(self) -> bool:
        return not self.missed and not self.extra


def compare_syncs(real: Sequence[SyncPoint], simulated: Sequence[SyncPoint], period_s: float) -> SyncComparison:
    """Each testbed sync against the simulator's sync nearest in time (same pool; its
    `desired`, or the replicas then in force when none is within half a period), and each
    testbed scale event against a simulated one of the same pool and direction at most one
    sync away (matched one to one, in time order). Both run on a grid of `period_s`, the
    testbed's off by milliseconds, so "one sync away" is |dt| <= 1.5 periods."""
    within, largest, worst = 0, 0, None
    for point in real:
        gap = abs(point.desired - _replicas_at(simulated, point.pool, point.t, period_s))
        within += gap <= 1
        if gap > largest:
            largest, worst = gap, point
    sim_events = scale_events(simulated)
    matched, missed = [], []
    for event in scale_events(real):
        candidates = [e for e in sim_events if e.pool == event.pool and e.direction == event.direction
                      and abs(e.t - event.t) <= 1.5 * period_s]
        if candidates:
            chosen = min(candidates, key=lambda e: abs(e.t - event.t))
            sim_events.remove(chosen)
            matched.append((event, chosen))
        else:
            missed.append(event)
    return SyncComparison(len(real), within, largest, worst, matched, missed, sim_events)


def _replicas_at(syncs: Sequence[SyncPoint], pool: str, t: float, period_s: float) -> int:
    mine = [s for s in syncs if s.pool == pool]
    nearest = min(mine, key=lambda s: abs(s.t - t), default=None)
    if nearest is not None and abs(nearest.t - t) <= period_s / 2:
        return nearest.desired
    before = [s for s in mine if s.t <= t]
    return before[-1].desired if before else (mine[0].current if mine else 0)


def in_phase(records: Sequence[FrameRecord], start_s: float, end_s: float) -> list[FrameRecord]:
    """The records captured in [start_s, end_s) after the first one (the trace's clock)."""
    return [r for r, t in zip(records, relative_times(records)) if start_s <= t < end_s]


# --- plots ------------------------------------------------------------------------------

def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("plots need matplotlib: pip install 'edgeoffload[experiments]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_pareto(path: str | Path, series: Mapping[str, Sequence[tuple[float, float, str]]], xlabel: str,
                ylabel: str, title: str, references: Sequence[tuple[float, float, str]] = ()) -> Path:
    """One line per swept policy family (points labelled by their parameter), its Pareto
    front outlined, plus fixed policies as reference markers."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for name, points in series.items():
        valid = [(x, y, label) for x, y, label in points if x is not None and y is not None]
        if not valid:
            continue
        line, = ax.plot([p[0] for p in valid], [p[1] for p in valid], marker="o", linestyle="-", alpha=0.7, label=name)
        for x, y, label in valid:
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=line.get_color())
        front = [valid[i] for i in pareto_front([(p[0], p[1]) for p in valid])]
        ax.plot([p[0] for p in front], [p[1] for p in front], marker="o", markersize=9, linestyle="none",
                markerfacecolor="none", color=line.get_color())
    for x, y, label in references:
        if x is not None and y is not None:
            ax.plot([x], [y], marker="*", markersize=11, linestyle="none", color="black")
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, -10), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, title="hollow rings: Pareto front", title_fontsize=7)
    return _save(fig, plt, path)


def plot_grouped_bars(path: str | Path, values: Mapping[str, Mapping[str, float | None]], ylabel: str,
                      title: str, log_scale: bool = False) -> Path:
    """values[group][bar] (e.g. scenario -> policy -> p95): grouped bars, one colour per bar name."""
    plt = _pyplot()
    groups = list(values)
    bars = list(dict.fromkeys(name for group in values.values() for name in group))
    width = 0.8 / max(1, len(bars))
    fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(groups) * max(1, len(bars)) * 0.35), 4.8))
    for offset, bar in enumerate(bars):
        xs = [g + offset * width - 0.4 + width / 2 for g in range(len(groups))]
        ys = [values[group].get(bar) for group in groups]
        ax.bar(xs, [y if y is not None else 0 for y in ys], width=width, label=bar)
    ax.set_xticks(range(len(groups)), groups, rotation=15)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log_scale:
        ax.set_yscale("log")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, plt, path)


def plot_latency_cdf(path: str | Path, samples: Mapping[str, Sequence[float]], title: str) -> Path:
    """Empirical CDFs of end-to-end latency, one curve per run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, values in samples.items():
        ordered = sorted(values)
        if ordered:
            ax.step(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], where="post", label=name)
    ax.set_xlabel("end-to-end latency (ms)")
    ax.set_ylabel("fraction of answered frames")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, plt, path)


def plot_timelines(path: str | Path, timelines: Mapping[str, Sequence[ReplicaPoint]], title: str) -> Path:
    """Replica counts over time per pool, one line style per run (e.g. testbed vs simulator)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, 1, figsize=(7.5, 5), sharex=True)
    styles = ("-", "--", ":", "-.")
    for index, (name, points) in enumerate(timelines.items()):
        for ax, site in zip(axes, ("edge", "cloud")):
            ax.step([p.t for p in points], [getattr(p, site) for p in points], where="post", label=name,
                    linestyle=styles[index % len(styles)], linewidth=2.2 - 0.4 * index)
    for ax, site in zip(axes, ("edge", "cloud")):
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.margins(y=0.15)
        ax.set_ylabel(f"{site} replicas")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    axes[-1].set_xlabel("time since first frame (s)")
    axes[0].set_title(title)
    return _save(fig, plt, path)


OUTCOME_COLORS = {"edge": "#0f9488", "cloud": "#5b5bd6", "dropped": "#dc4c3e", "error": "#9aa3b2"}


def decisions_per_bin(records: Sequence[FrameRecord], bin_s: float = 1.0) -> dict[str, list[int]]:
    """Frames per outcome (edge, cloud, dropped, error) in each `bin_s` of capture time since the first."""
    times = relative_times(records)
    bins = int(max(times, default=0.0) // bin_s) + 1 if records else 0
    counts = {outcome: [0] * bins for outcome in OUTCOME_COLORS}
    for record, t in zip(records, times):
        outcome = record.site if record.status == "ok" else record.status
        counts[outcome if outcome in counts else "error"][int(t // bin_s)] += 1
    return counts


def plot_decisions(path: str | Path, records: Sequence[FrameRecord], title: str, bin_s: float = 1.0) -> Path:
    """Where each second's frames went (edge, cloud) or that they were dropped, stacked over time."""
    plt = _pyplot()
    counts = decisions_per_bin(records, bin_s)
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    bottom = [0] * len(next(iter(counts.values())))
    starts = [i * bin_s for i in range(len(bottom))]
    for outcome, values in counts.items():
        ax.bar(starts, values, width=bin_s * 0.9, align="edge", bottom=bottom, color=OUTCOME_COLORS[outcome],
               label=outcome)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xlabel("capture time since the first frame (s)")
    ax.set_ylabel(f"frames per {bin_s:g} s")
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=4)
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["Column", "Deviation", "ScaleEvent", "SyncComparison", "SyncPoint", "compare_syncs", "in_phase",
           "scale_events", "CASCADE_COLUMNS", "METRIC_KEYS", "POLICY_COLUMNS", "ReplicaPoint", "RunMetrics", "after_warmup",
           "compare", "from_records", "from_runs", "from_summary", "markdown_table", "pareto_front", "plot_grouped_bars",
           "plot_latency_cdf", "plot_decisions", "decisions_per_bin", "plot_pareto", "pod_seconds", "simulate_policies", "plot_timelines", "relative_error", "relative_times", "step_at",
           "timeline_from_summary", "write_csv", "write_table"]
