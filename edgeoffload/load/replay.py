"""Open-loop replay of a frame trace against a running testbed, with exact accounting.

A scheduler thread hands each trace event to a bounded pool of sender threads at its
trace instant, whether or not earlier frames were answered (open loop: a slow system
does not slow the offered load down, as it would with real cameras). A send that starts
more than `late_after_s` after its instant is counted late: then the pool, not the
system under test, limited the load and the run should be repeated with more senders.

The FrameRecords the preprocessor publishes are collected from MQTT
(`edgeoffload/results/#`), deduplicated on (camera, frame_id) because QoS 1 is
at-least-once, and written with RecordWriter. At the end every sent frame is accounted
for by exactly one record, or reported missing.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import queue
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import requests

from edgeoffload.broker import RESULTS_TOPIC
from edgeoffload.load.sample_video import FrameSource, open_source
from edgeoffload.load.summary import RecordSummary, summarize, summary_numbers, summary_rows, text_table
from edgeoffload.load.trace import Trace, TraceEvent, read_trace
from edgeoffload.messaging import MQTTSettings, Subscriber, default_client_id
from edgeoffload.records import FrameRecord, RecordWriter

FrameKey = tuple[str, int]


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """How to replay; `speed` > 1 compresses trace time (2.0 = twice as fast)."""

    concurrency: int = 16
    speed: float = 1.0
    late_after_s: float = 0.05
    request_timeout_s: float = 30.0
    drain_timeout_s: float = 30.0
    subscribe_timeout_s: float = 10.0
    start_delay_s: float = 0.5      # head start so the first events are not late by construction
    progress: bool = True

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if not self.speed > 0:
            raise ValueError(f"speed must be > 0, got {self.speed}")


@dataclass(frozen=True, slots=True)
class SendResult:
    """One HTTP submission: `status` is the HTTP code (0 when no response arrived)."""

    camera: str
    frame_index: int
    frame_id: int
    lateness_s: float
    status: int
    error: str = ""
    elapsed_s: float = 0.0

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class ReplayResult:
    """Everything a replay learned; `missing` maps frames without a record to the send outcome."""

    scheduled: int
    sends: list[SendResult]
    summary: RecordSummary
    duplicates: int
    foreign: int
    malformed: int
    missing: dict[FrameKey, str]
    wall_s: float
    late: list[SendResult] = field(default_factory=list)
    out: Path | None = None

    @property
    def sent(self) -> int:
        return len(self.sends)

    @property
    def accepted(self) -> int:
        return sum(1 for s in self.sends if s.accepted)

    @property
    def accounted(self) -> int:
        return self.sent - len(self.missing)

    @property
    def complete(self) -> bool:
        return not self.missing and self.sent == self.scheduled


class RecordCollector:
    """Receives records from the MQTT thread: keeps the first per frame, counts the rest."""

    def __init__(self, cameras: set[str], writer: RecordWriter | None) -> None:
        self._cameras = cameras
        self._writer = writer
        self._records: dict[FrameKey, FrameRecord] = {}
        self._changed = threading.Condition()
        self.duplicates = 0
        self.foreign = 0
        self.malformed = 0

    def on_record(self, _topic: str, record: FrameRecord) -> None:
        if record.camera not in self._cameras:
            with self._changed:
                self.foreign += 1
            return
        key = (record.camera, record.frame_id)
        with self._changed:
            if key in self._records:
                self.duplicates += 1
                return
            self._records[key] = record
            if self._writer is not None:
                self._writer.write(record)
            self._changed.notify_all()

    def on_malformed(self, _topic: str, _payload: bytes, _error: str) -> None:
        with self._changed:
            self.malformed += 1

    def count(self) -> int:
        with self._changed:
            return len(self._records)

    def records(self) -> list[FrameRecord]:
        with self._changed:
            return list(self._records.values())

    def has(self, key: FrameKey) -> bool:
        with self._changed:
            return key in self._records

    def wait_for(self, keys: set[FrameKey], timeout: float, on_tick: Callable[[], None] | None = None) -> set[FrameKey]:
        """Wait until every key has a record or `timeout` passes; returns the keys still missing."""
        deadline = time.monotonic() + timeout
        missing = set(keys)
        while True:
            with self._changed:
                missing = {key for key in missing if key not in self._records}
                remaining = deadline - time.monotonic()
                if not missing or remaining <= 0:
                    return missing
                self._changed.wait(min(remaining, 0.25))
            if on_tick is not None:
                on_tick()


class Progress:
    """A one-line progress display on stderr (a line every few seconds when not a terminal)."""

    def __init__(self, total: int, enabled: bool, stream=sys.stderr) -> None:
        self.total = total
        self.enabled = enabled
        self.stream = stream
        self._tty = enabled and hasattr(stream, "isatty") and stream.isatty()
        self._last = 0.0

    def update(self, sent: int, records: int, late: int, phase: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < (0.2 if self._tty else 5.0):
            return
        self._last = now
        width = 30
        filled = int(width * sent / self.total) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        line = f"[{bar}] {phase}: {sent}/{self.total} sent, {records} records, {late} late"
        if self._tty:
            self.stream.write("\r" + line.ljust(100))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled and self._tty:
            self.stream.write("\n")
            self.stream.flush()


class OpenLoopSender:
    """Sends every trace event at its instant through `concurrency` threads (one HTTP session each)."""

    def __init__(self, target_url: str, frames: FrameSource, options: ReplayOptions) -> None:
        self.url = target_url.rstrip("/") + "/process"
        self.frames = frames
        self.options = options
        self.results: list[SendResult] = []
        self._lock = threading.Lock()
        self._jobs: queue.Queue[tuple[TraceEvent, float] | None] = queue.Queue()
        self._local = threading.local()
        self._threads = [threading.Thread(target=self._worker, name=f"replay-sender-{i}", daemon=True)
                         for i in range(options.concurrency)]
        self.late = 0

    def run(self, trace: Trace, on_tick: Callable[[], None] | None = None,
            stop: threading.Event | None = None) -> list[SendResult]:
        """Schedule all events (blocking), then wait for the senders to finish."""
        for thread in self._threads:
            thread.start()
        start = time.monotonic() + self.options.start_delay_s
        try:
            for event in trace:
                due = start + event.time_s / self.options.speed
                while (wait := due - time.monotonic()) > 0:
                    if stop is not None and stop.is_set():
                        return self.results
                    time.sleep(min(wait, 0.1))
                    if on_tick is not None and wait > 0.05:
                        on_tick()
                self._jobs.put((event, due))
        finally:
            for _ in self._threads:
                self._jobs.put(None)
            for thread in self._threads:
                while thread.is_alive():
                    thread.join(0.2)
                    if on_tick is not None:
                        on_tick()
        return self.results

    def sent_count(self) -> int:
        with self._lock:
            return len(self.results)

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _worker(self) -> None:
        while (job := self._jobs.get()) is not None:
            event, due = job
            result = self._send(event, due)
            with self._lock:
                self.results.append(result)
                if result.lateness_s > self.options.late_after_s:
                    self.late += 1
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()

    def _send(self, event: TraceEvent, due: float) -> SendResult:
        body = self.frames.frame(event.camera, event.frame_index)
        started = time.monotonic()
        lateness = max(0.0, started - due)
        params = {"camera": event.camera, "frame_id": str(event.frame_index)}
        try:
            response = self._session().post(self.url, params=params, data=body,
                                            headers={"Content-Type": "image/jpeg"},
                                            timeout=self.options.request_timeout_s)
        except requests.RequestException as exc:
            return SendResult(event.camera, event.frame_index, event.frame_index, lateness, 0,
                              f"{type(exc).__name__}: {exc}", time.monotonic() - started)
        error = "" if response.ok else f"HTTP {response.status_code}: {response.text[:200]}"
        return SendResult(event.camera, event.frame_index, _frame_id_of(response, event.frame_index), lateness,
                          response.status_code, error, time.monotonic() - started)


def _frame_id_of(response: requests.Response, default: int) -> int:
    """The frame id the preprocessor assigned, if its answer names one (else the trace index)."""
    if "json" not in response.headers.get("Content-Type", ""):
        return default
    try:
        body = response.json()
        return int(body.get("frame_id", default)) if isinstance(body, dict) else default
    except (ValueError, TypeError):
        return default


def replay(trace: Trace, target_url: str, frames: FrameSource, mqtt: MQTTSettings,
           out: str | Path | None = None, options: ReplayOptions = ReplayOptions(),
           stop: threading.Event | None = None) -> ReplayResult:
    """Replay `trace` open-loop against the preprocessor at `target_url`, collecting its records.

    `mqtt` needs read access to `edgeoffload/results/#` (the monitor or webserver account).
    """
    began = time.monotonic()
    check_reachable(*target_address(target_url), f"the target {target_url}")
    check_reachable(mqtt.host, mqtt.port, "the MQTT broker")
    # A fresh session per replay: a reused client id would resume an old session and be handed
    # the records queued for it since, which belong to another run.
    mqtt = dataclasses.replace(mqtt, client_id=mqtt.client_id or default_client_id(mqtt.username or "replay"),
                               session_expiry_s=min(mqtt.session_expiry_s, 60))
    writer = RecordWriter(out) if out else None
    collector = RecordCollector(set(trace.cameras), writer)
    # dedupe_window=0: the collector sees every delivery, so it can count duplicates itself.
    subscriber = Subscriber(mqtt, topics=(f"{RESULTS_TOPIC}/#",), on_record=collector.on_record,
                            on_malformed=collector.on_malformed, role="replay", dedupe_window=0)
    sender = OpenLoopSender(target_url, frames, options)
    progress = Progress(len(trace), options.progress)

    def tick(phase: str) -> Callable[[], None]:
        return lambda: progress.update(sender.sent_count(), collector.count(), sender.late, phase)

    try:
        subscriber.start()
        if not _wait_subscribed(subscriber, options.subscribe_timeout_s):
            refused = subscriber.stats().refused_subscriptions
            raise ConnectionError(f"MQTT {mqtt.host}:{mqtt.port} as {mqtt.username!r}: "
                                  + (f"subscription to {refused} refused by the ACL" if refused
                                     else subscriber.last_error or "no connection"))
        sends = sender.run(trace, tick("sending"), stop)
        expected = {(s.camera, s.frame_id) for s in sends if s.accepted}
        collector.wait_for(expected, 0.0 if stop is not None and stop.is_set() else options.drain_timeout_s,
                           tick("draining"))
        progress.update(sender.sent_count(), collector.count(), sender.late, "done", force=True)
        progress.finish()
    finally:
        subscriber.close()
        if writer is not None:
            writer.close()
    missing = {(s.camera, s.frame_id): (s.error or "no record within the drain timeout")
               for s in sends if not collector.has((s.camera, s.frame_id))}
    return ReplayResult(len(trace), sends, summarize(collector.records()), collector.duplicates,
                        collector.foreign, collector.malformed, missing, time.monotonic() - began,
                        [s for s in sends if s.lateness_s > options.late_after_s], Path(out) if out else None)


def _wait_subscribed(subscriber: Subscriber, timeout_s: float) -> bool:
    """Until subscribed; False at once when the broker refuses the login, else after the timeout."""
    deadline = time.monotonic() + timeout_s
    while not subscriber.wait_subscribed(0.1):
        if subscriber.last_error or time.monotonic() > deadline:
            return False
    return True


def target_address(url: str) -> tuple[str, int]:
    """(host, port) of a preprocessor base URL; ValueError for anything but http(s)://HOST[:PORT]."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"target {url!r} is not a URL: expected e.g. http://127.0.0.1:8080")
    try:
        return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # a port that is not a number
        raise ValueError(f"target {url!r} has an invalid port") from None


def check_reachable(host: str, port: int, what: str, timeout_s: float = 3.0) -> None:
    """ConnectionError (one line) unless something accepts TCP connections at host:port:
    found before the trace starts rather than as hundreds of failed sends."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except OSError as exc:
        raise ConnectionError(f"{what} at {host}:{port} is unreachable: {exc.strerror or exc}") from None


def report_rows(result: ReplayResult) -> list[tuple[str, str]]:
    """The replay's own accounting, followed by the records' summary."""
    lateness = sorted(s.lateness_s for s in result.sends)
    send_errors = sum(1 for s in result.sends if not s.accepted)
    rows = [
        ("frames scheduled", str(result.scheduled)),
        ("frames sent", f"{result.sent} ({result.accepted} accepted, {send_errors} refused/failed)"),
        ("late sends", f"{len(result.late)} (max lateness {1000 * lateness[-1]:.1f} ms)" if lateness else "0"),
        ("accounted (1 record each)", f"{result.accounted}/{result.sent}"),
        ("missing records", str(len(result.missing))),
        ("duplicate deliveries", str(result.duplicates)),
        ("records of other cameras", str(result.foreign)),
        ("wall time", f"{result.wall_s:.1f} s"),
    ]
    return rows + summary_rows(result.summary)


def report_numbers(result: ReplayResult) -> dict[str, Any]:
    """report_rows as numbers (for summary.json): the accounting, then the records' summary."""
    return {"frames_scheduled": result.scheduled, "frames_sent": result.sent, "frames_accepted": result.accepted,
            "late_sends": len(result.late),
            "max_lateness_ms": round(1000 * max((s.lateness_s for s in result.sends), default=0.0), 3),
            "accounted": result.accounted, "missing_records": len(result.missing),
            "duplicate_deliveries": result.duplicates, "records_of_other_cameras": result.foreign,
            "wall_time_s": round(result.wall_s, 3), **summary_numbers(result.summary)}


def format_report(result: ReplayResult, title: str = "replay summary") -> str:
    text = text_table(report_rows(result), title)
    if result.accepted and not result.summary.records:
        text += ("\nno records at all: is the preprocessor connected to this broker, and may the MQTT account "
                 f"read {RESULTS_TOPIC}/# (the monitor or webserver account)?")
    if result.missing:
        shown = sorted(result.missing.items())[:10]
        text += "\nmissing (first 10): " + "; ".join(f"{cam}#{fid}: {why}" for (cam, fid), why in shown)
    if result.out:
        text += f"\nrecords written to {result.out}"
    return text


# --- command line: `edgeoffload replay TRACE --target URL ...` --------------------------

def add_mqtt_arguments(parser: argparse.ArgumentParser, default_user: str = "monitor") -> None:
    """Broker flags shared by replay and demo; passwords may come from $EDGEOFFLOAD_MQTT_PASSWORD."""
    parser.add_argument("--mqtt-host", default="127.0.0.1")
    parser.add_argument("--mqtt-port", type=int, default=1883)
    parser.add_argument("--mqtt-user", default=default_user, help="an account that may read results (monitor/webserver)")
    parser.add_argument("--mqtt-password", default=None,
                        help="visible to other users in the process list: prefer --mqtt-password-file or "
                             "$EDGEOFFLOAD_MQTT_PASSWORD (the default)")
    parser.add_argument("--mqtt-password-file", default=None, help="read the password from this file")
    parser.add_argument("--mqtt-cafile", default=None, help="CA certificate: connect with TLS")


def mqtt_settings_from(args: argparse.Namespace) -> MQTTSettings:
    password = args.mqtt_password if args.mqtt_password is not None else os.environ.get("EDGEOFFLOAD_MQTT_PASSWORD")
    if args.mqtt_password_file:
        if args.mqtt_password is not None:
            raise ValueError("give --mqtt-password or --mqtt-password-file, not both")
        password = Path(args.mqtt_password_file).read_text(encoding="utf-8").strip()
    return MQTTSettings(host=args.mqtt_host, port=args.mqtt_port, username=args.mqtt_user or None,
                        password=password, cafile=args.mqtt_cafile)


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trace", help="trace CSV (edgeoffload trace gen)")
    parser.add_argument("--target", required=True, help="preprocessor base URL, e.g. http://127.0.0.1:8080")
    add_mqtt_arguments(parser)
    parser.add_argument("--frames", default="faces",
                        help="'faces' or 'sample' (made of shipped images), an image folder or a video file")
    parser.add_argument("--out", default=None, help="records file (.csv or .parquet)")
    defaults = ReplayOptions()
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency, help="sender threads")
    parser.add_argument("--speed", type=float, default=1.0, help="time compression factor")
    parser.add_argument("--drain-timeout", type=float, default=defaults.drain_timeout_s,
                        help="seconds to wait for outstanding records after the last send")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    target_address(args.target)  # a malformed URL fails before the trace and frames are read
    trace = read_trace(args.trace)
    options = ReplayOptions(concurrency=args.concurrency, speed=args.speed, drain_timeout_s=args.drain_timeout,
                            progress=not args.no_progress)
    result = replay(trace, args.target, open_source(args.frames), mqtt_settings_from(args), args.out, options)
    print(format_report(result))
    return 0 if result.complete else 1


__all__ = ["ReplayOptions", "ReplayResult", "SendResult", "RecordCollector", "OpenLoopSender", "replay",
           "format_report", "report_rows", "report_numbers", "add_mqtt_arguments", "mqtt_settings_from", "check_reachable", "target_address"]
