"""Soak: sustained load on the whole local testbed, with optional faults, for memory and loss trends.

20 cameras x 5 fps (periodic, 10% jitter) of 640x480 sample frames are replayed open-loop
for `--duration` seconds into `edgeoffload.local`'s testbed (Mosquitto, preprocessor,
edge and cloud Haar inference pools behind relays, the cloud one through the emulated
WAN, webserver), while every testbed process tree and this driver process (which hosts the
relays and the replay) are sampled for RSS every `--sample-every` seconds. Reported:

- RSS per process group at the end of warm-up and at the end of the load, and the growth
  between the two (target < 10%); the broker restart (if asked) resets the broker's RSS.
- Losses: frames sent vs frames with a FrameRecord (collected over MQTT as `monitor`);
  every dropped/error record carries its reason, so "unexplained" = sent without a record.
- Latency p95 of ok records per minute of the run (should be flat), with counts.
- Faults (optional): Mosquitto SIGKILLed and restarted (`--broker-kill-at`), and a WAN cut
  (`--wan-cut-at`, `--wan-cut-s`): the cloud relay refuses every new connection (the cloud
  inference units answer with Connection: close, so every request is a new connection);
  the records inside and after the cut show the failover to the edge and the cloud's return.

The testbed runs with fixed replica counts (no autoscaler) so process memory is comparable
over time; everything shares this machine's CPUs, so the latencies are for the whole
system under saturation, not for one unit.

    python benchmarks/soak.py [--duration 600] [--broker-kill-at 200] [--wan-cut-at 380 --wan-cut-s 30]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import markdown_table, write_section  # noqa: E402
from edgeoffload.load.replay import ReplayOptions, ReplayResult, format_report, replay  # noqa: E402
from edgeoffload.load.sample_video import sample_source  # noqa: E402
from edgeoffload.load.summary import percentiles  # noqa: E402
from edgeoffload.load.trace import TraceSpec, generate  # noqa: E402
from edgeoffload.local import SiteOptions, Testbed, TestbedOptions  # noqa: E402
from edgeoffload.records import FrameRecord, read_records  # noqa: E402

RSS_GROWTH_TARGET = 0.10
DRIVER = "driver (relays + replay)"


# -- process memory ---------------------------------------------------------------------------------

def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (gunicorn master + workers), from /proc."""
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        try:
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except OSError:
            continue
        found.append(current)
        for task in tasks:
            try:
                stack.extend(int(child) for child in (task / "children").read_text().split())
            except OSError:
                continue
    return found


def rss_kib(pid: int) -> int:
    """Resident set size of one process (VmRSS), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def testbed_groups(testbed: Testbed) -> dict[str, list[int]]:
    """The process groups worth watching, by role; `driver` holds the relays and the replay."""
    groups: dict[str, list[int]] = {DRIVER: [os.getpid()]}
    if testbed.broker is not None and testbed.broker.process is not None:
        groups["broker"] = [testbed.broker.process.pid]
    for name, unit in (("preprocessor", testbed.preprocessor), ("webserver", testbed.webserver)):
        if unit is not None:
            groups[name] = process_tree(unit.process.pid)
    for site, pool in testbed.pools.items():
        groups[f"{site} inference"] = [pid for leader in pool.pids() for pid in process_tree(leader)]
    return groups


@dataclass
class RssSample:
    at_s: float                 # seconds since the load started
    kib: dict[str, int]         # role -> summed RSS


class RssSampler:
    """Samples every role's RSS on a fixed period in a background thread."""

    def __init__(self, groups: Callable[[], dict[str, list[int]]], every_s: float) -> None:
        self._groups = groups
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self.samples: list[RssSample] = []
        self.started = 0.0

    def start(self, started: float) -> "RssSampler":
        self.started = started
        self._thread.start()
        return self

    def sample(self) -> RssSample:
        kib = {role: sum(rss_kib(pid) for pid in pids) for role, pids in self._groups().items()}
        taken = RssSample(time.monotonic() - self.started, kib)
        self.samples.append(taken)
        return taken

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self._every_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def rss_rows(samples: list[RssSample], warmup_s: float, load_end_s: float) -> tuple[list[list[object]], float]:
    """Per role: RSS after warm-up, at the end of the load, peak, growth; then the testbed's total
    (every role but the driver, whose replay keeps every record and send result by design)."""
    after_warmup = next((s for s in samples if s.at_s >= warmup_s), samples[0])
    loaded = [s for s in samples if s.at_s <= load_end_s + 1] or samples
    last = loaded[-1]
    rows, base_total, last_total = [], 0, 0
    for role in after_warmup.kib:
        base, end = after_warmup.kib[role], last.kib.get(role, 0)
        peak = max(s.kib.get(role, 0) for s in loaded)
        if role != DRIVER:
            base_total, last_total = base_total + base, last_total + end
        rows.append([role, f"{base / 1024:.1f}", f"{end / 1024:.1f}", f"{peak / 1024:.1f}", _growth(base, end)])
    rows.append(["**testbed (all but the driver)**", f"{base_total / 1024:.1f}", f"{last_total / 1024:.1f}", "",
                 f"**{_growth(base_total, last_total)}**"])
    return rows, (last_total - base_total) / base_total if base_total else 0.0


def rss_timeline(samples: list[RssSample], every_s: float = 60.0) -> tuple[list[str], list[list[object]]]:
    """RSS (MiB) per role at the last sample of each minute: shows whether growth levels off."""
    roles = list(samples[0].kib) if samples else []
    rows, next_mark = [], every_s
    for index, sample in enumerate(samples):
        following = samples[index + 1] if index + 1 < len(samples) else None
        if following is None or following.at_s >= next_mark:
            rows.append([f"{sample.at_s:.0f}", *(f"{sample.kib.get(role, 0) / 1024:.1f}" for role in roles)])
            while following is not None and following.at_s >= next_mark:
                next_mark += every_s
    return ["t (s)", *roles], rows


def write_samples(samples: list[RssSample], path: Path) -> None:
    roles = list(samples[0].kib) if samples else []
    lines = [",".join(["t_s", *(f'"{role}"' for role in roles)])]
    lines += [",".join([f"{s.at_s:.1f}", *(str(s.kib.get(role, 0)) for role in roles)]) for s in samples]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _growth(base: int, end: int) -> str:
    return f"{100.0 * (end - base) / base:+.1f}%" if base else "-"


# -- faults -------------------------------------------------------------------------------------------

@dataclass
class FaultLog:
    """Wall-clock instants (time.time(), the records' captured_at clock) of injected faults."""

    events: list[tuple[str, float, str]] = field(default_factory=list)

    def note(self, name: str, detail: str = "") -> float:
        now = time.time()
        self.events.append((name, now, detail))
        print(f"soak: {name} {detail}".rstrip(), file=sys.stderr, flush=True)
        return now

    def instant(self, name: str) -> float | None:
        return next((at for event, at, _ in self.events if event == name), None)


def kill_broker(testbed: Testbed, faults: FaultLog) -> None:
    """SIGKILL Mosquitto (no clean disconnects; its database is as of its last autosave) and start it
    again on its port: the publishers re-send what it acknowledged since (messaging.py)."""
    assert testbed.broker is not None
    faults.note("broker killed")
    started = time.monotonic()
    testbed.broker.restart(kill=True)
    faults.note("broker back", f"after {time.monotonic() - started:.2f}s")


def cut_wan(testbed: Testbed, seconds: float, faults: FaultLog, stop: threading.Event) -> None:
    """Make the cloud unreachable for `seconds`: its relay gets no backends (new connections are closed)."""
    relay = testbed.relays["cloud"]
    backends = relay.backends
    relay.set_backends([])
    faults.note("WAN cut")
    stop.wait(seconds)
    relay.set_backends(backends)
    faults.note("WAN restored")


def schedule(delay_s: float, action: Callable[[], None], stop: threading.Event) -> threading.Thread:
    def run() -> None:
        if not stop.wait(delay_s):
            action()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# -- records ------------------------------------------------------------------------------------------

def per_minute_rows(records: list[FrameRecord], t0: float, sent_per_minute: Counter[int]) -> list[list[object]]:
    """Per minute of capture time: frames sent, records by status, ok latency p50/p95, cloud share."""
    by_minute: dict[int, list[FrameRecord]] = defaultdict(list)
    for record in records:
        by_minute[max(0, int((record.captured_at - t0) // 60))].append(record)
    rows = []
    for minute in sorted(set(by_minute) | set(sent_per_minute)):
        batch = by_minute.get(minute, [])
        status = Counter(r.status for r in batch)
        ok = [r for r in batch if r.status == "ok"]
        latency = percentiles([r.t_total_ms for r in ok], (50, 95))
        cloud = sum(1 for r in ok if r.site == "cloud")
        rows.append([minute + 1, sent_per_minute.get(minute, 0), len(batch), status["ok"], status["dropped"],
                     status["error"], f"{latency[50]:.0f}" if latency else "-", f"{latency[95]:.0f}" if latency else "-",
                     f"{100.0 * cloud / len(ok):.0f}%" if ok else "-"])
    return rows


def window_counts(records: list[FrameRecord], start: float, end: float) -> Counter[str]:
    """Outcomes of frames captured in [start, end): site/status, and failovers by direction."""
    counts: Counter[str] = Counter()
    for record in records:
        if start <= record.captured_at < end:
            counts[f"{record.status} on {record.site}"] += 1
            if record.reason.startswith("failover:"):
                counts[record.reason.split(";", 1)[0]] += 1
    return counts


def first_cloud_ok_after(records: list[FrameRecord], instant: float) -> float | None:
    later = [r.captured_at for r in records if r.captured_at >= instant and r.site == "cloud" and r.status == "ok"
             and not r.reason]
    return min(later) - instant if later else None


def fault_rows(records: list[FrameRecord], faults: FaultLog, result: ReplayResult, cut_s: float,
               due_at: dict[tuple[str, int], float]) -> list[list[object]]:
    """`due_at`: wall-clock instant each frame was due to be sent (to place missing frames in time)."""
    rows: list[list[object]] = []
    killed, back = faults.instant("broker killed"), faults.instant("broker back")
    if killed is not None and back is not None:
        near = [key for key in result.missing if abs(due_at.get(key, math.inf) - killed) <= 5.0]
        rows.append(["broker SIGKILL + restart", f"down {back - killed:.2f}s; duplicate deliveries (whole run): "
                     f"{result.duplicates}",
                     f"missing records (whole run): {len(result.missing)}, of which {len(near)} due within 5 s of the kill"])
    cut, restored = faults.instant("WAN cut"), faults.instant("WAN restored")
    if cut is not None and restored is not None:
        inside = window_counts(records, cut, restored)
        resumed = first_cloud_ok_after(records, restored)
        described = ", ".join(f"{name}: {count}" for name, count in sorted(inside.items()))
        rows.append([f"WAN cut {cut_s:g}s", described or "no records",
                     f"first cloud ok (no failover) {resumed:.1f}s after restore" if resumed is not None
                     else "cloud never answered again"])
    return rows


def preprocessor_mqtt(testbed: Testbed) -> dict[str, object]:
    try:
        return requests.get(testbed.preprocessor_url + "/api/state", timeout=5).json().get("mqtt", {})
    except (requests.RequestException, ValueError):
        return {}


def _loadavg(values: tuple[float, float, float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


# -- main ---------------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--cameras", type=int, default=20)
    parser.add_argument("--fps", type=float, default=5.0, help="frames per second per camera")
    parser.add_argument("--warmup", type=float, default=60.0, help="RSS baseline is taken after this many seconds")
    parser.add_argument("--sample-every", type=float, default=10.0, help="RSS sampling period (s)")
    parser.add_argument("--max-side", type=int, default=320, help="preprocessor downscale (PRE_MAX_SIDE)")
    parser.add_argument("--policy", default="min-latency")
    parser.add_argument("--broker-kill-at", type=float, default=0.0, help="SIGKILL+restart Mosquitto at this second (0 = no)")
    parser.add_argument("--wan-cut-at", type=float, default=0.0, help="cut the WAN at this second (0 = no)")
    parser.add_argument("--wan-cut-s", type=float, default=30.0, help="length of the WAN cut")
    parser.add_argument("--concurrency", type=int, default=32, help="replay sender threads")
    parser.add_argument("--no-report", action="store_true", help="do not write BENCHMARKS.md")
    args = parser.parse_args()

    load_before = os.getloadavg()
    trace = generate(TraceSpec(kind="periodic", cameras=args.cameras, rate=args.fps, duration_s=args.duration,
                               seed=1, jitter=0.1))
    frames = sample_source()
    workdir = Path(tempfile.mkdtemp(prefix="edgeoffload-soak-"))
    options = TestbedOptions(edge=SiteOptions(replicas=1, max_replicas=1), cloud=SiteOptions(replicas=1, max_replicas=1),
                             policy=args.policy, max_side=args.max_side, autoscale=False, workdir=str(workdir))
    faults = FaultLog()
    stop = threading.Event()
    with Testbed(options) as testbed:
        sampler = RssSampler(lambda: testbed_groups(testbed), args.sample_every)
        head_start = ReplayOptions().start_delay_s  # the replay's first frame is due this long after it starts
        load_start_wall = time.time() + head_start
        sampler.start(time.monotonic() + head_start)
        injectors = []
        if args.broker_kill_at > 0:
            injectors.append(schedule(head_start + args.broker_kill_at, lambda: kill_broker(testbed, faults), stop))
        if args.wan_cut_at > 0:
            injectors.append(schedule(head_start + args.wan_cut_at,
                                      lambda: cut_wan(testbed, args.wan_cut_s, faults, stop), stop))
        records_path = workdir / "records.csv"
        try:
            result = replay(trace, testbed.preprocessor_url, frames, testbed.mqtt_settings("monitor"), records_path,
                            ReplayOptions(concurrency=args.concurrency, drain_timeout_s=60.0))
        finally:
            stop.set()
            for thread in injectors:
                thread.join(args.wan_cut_s + 15)
        sampler.sample()
        sampler.stop()
        mqtt_stats = preprocessor_mqtt(testbed)
    write_samples(sampler.samples, workdir / "rss.csv")
    load_after = os.getloadavg()
    print(format_report(result, "soak replay"))
    records = list(read_records(records_path))
    sent_per_minute = Counter(int(e.time_s // 60) for e in trace)
    load_end_s = args.duration
    rss_table, total_growth = rss_rows(sampler.samples, args.warmup, load_end_s)
    minute_rows = per_minute_rows(records, load_start_wall, sent_per_minute)
    status = Counter(r.status for r in records)
    reasons = Counter(f"{r.status}: {r.reason.split(':', 1)[0]}" for r in records if r.status != "ok")
    late = len(result.late)
    body = [
        f"{args.cameras} cameras x {args.fps:g} fps, periodic (10% jitter), {args.duration:g} s of load"
        f" ({len(trace)} frames), 640x480 sample frames downscaled to {args.max_side} px, policy {args.policy},"
        " 1 edge + 1 cloud Haar replica (no autoscaler), WAN 20 ms one-way / 20 Mbit/s up. Everything shares"
        " the machine's CPUs; the replay sends open loop, so an overloaded testbed drops frames (with a reason)"
        " instead of slowing the cameras down.",
        f"Load average (1/5/15 min) before: {_loadavg(load_before)}, after: {_loadavg(load_after)}"
        " (other work on the machine shows up here).",
        "",
        "### Accounting",
        "",
        markdown_table(["", "count"], [
            ["frames scheduled / sent / accepted (202)", f"{result.scheduled} / {result.sent} / {result.accepted}"],
            ["frames with exactly one record", f"{result.accounted}"],
            ["**unexplained losses** (sent, no record)", f"**{len(result.missing)}**"],
            ["records ok / dropped / error", f"{status['ok']} / {status['dropped']} / {status['error']}"],
            *[[f"  {reason}", count] for reason, count in sorted(reasons.items())],
            ["duplicate MQTT deliveries (QoS 1, dropped by the collector)", result.duplicates],
            ["late sends (> 50 ms behind the trace)", late],
            ["preprocessor MQTT published / acked / dropped (buffer full)",
             f"{mqtt_stats.get('published', '-')} / {mqtt_stats.get('acked', '-')} / {mqtt_stats.get('dropped', '-')}"],
        ]),
        "",
        f"### RSS (MiB): after {args.warmup:g} s warm-up vs end of load (target growth < {RSS_GROWTH_TARGET:.0%})",
        "",
        markdown_table(["process group", "after warm-up", "end", "peak", "growth"], rss_table),
        "",
        "RSS (MiB) over time:",
        "",
        markdown_table(*rss_timeline(sampler.samples)),
        *([""] + ["The broker was SIGKILLed and restarted mid-run: its figures are those of the new process."]
          if faults.instant("broker killed") is not None else []),
        "",
        "### Per minute (by capture time)",
        "",
        markdown_table(["minute", "sent", "records", "ok", "dropped", "error", "p50 ms", "p95 ms", "cloud share"],
                       minute_rows),
    ]
    due_at = {(e.camera, e.frame_index): load_start_wall + e.time_s for e in trace}
    faults_table = fault_rows(records, faults, result, args.wan_cut_s, due_at)
    if faults_table:
        body += ["", "### Faults during the soak", "",
                 markdown_table(["fault", "outcome", "recovery / losses"], faults_table)]
    if args.duration < 600:
        body += ["", f"Shortened run: {args.duration:g} s instead of the full 600 s."]
    text = "\n".join(body)
    print(text)
    if not args.no_report:
        command = "python benchmarks/soak.py " + " ".join(sys.argv[1:])
        write_section("soak", command.strip(), text)
    print(f"testbed RSS growth after warm-up: {100 * total_growth:+.1f}%; records: {records_path}; "
          f"RSS samples: {workdir / 'rss.csv'}", file=sys.stderr)
    return 0 if not result.missing else 1


if __name__ == "__main__":
    sys.exit(main())
