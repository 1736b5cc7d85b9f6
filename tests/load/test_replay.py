"""Open-loop replay: every frame accounted for exactly once, duplicates and gaps detected, on time."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from edgeoffload.broker import BrokerProcess
from edgeoffload.load.replay import ReplayOptions, RecordCollector, format_report, replay
from edgeoffload.load.sample_video import CyclicFrames, SampleVideoSpec, sample_source
from edgeoffload.load.trace import Trace, TraceEvent, TraceSpec, generate, read_trace, write_trace
from edgeoffload.local import Testbed
from edgeoffload.messaging import MQTTSettings, Publisher
from edgeoffload.records import FrameRecord, RecordWriter, read_records
from edgeoffload.serve import free_port

QUIET = ReplayOptions(progress=False, drain_timeout_s=20.0)


@pytest.fixture(scope="module")
def frames() -> CyclicFrames:
    return sample_source(SampleVideoSpec(frames_per_scene=3))


def _monitor(broker: BrokerProcess) -> MQTTSettings:
    return MQTTSettings(host=broker.host, port=broker.port, username="monitor", password=broker.users["monitor"])


def test_every_replayed_frame_is_accounted_for_exactly_once(testbed: Testbed, frames: CyclicFrames,
                                                            tmp_path: Path) -> None:
    trace = generate(TraceSpec(kind="poisson", cameras=2, rate=3.0, duration_s=4.0, seed=9, camera_prefix="acct"))
    out = tmp_path / "records.parquet"
    result = replay(trace, testbed.preprocessor_url, frames, testbed.mqtt_settings("monitor"), out, QUIET)
    assert result.complete, format_report(result)
    assert result.sent == result.accepted == len(trace) > 0
    assert result.missing == {}
    records = list(read_records(out))
    assert sorted((r.camera, r.frame_id) for r in records) == sorted((e.camera, e.frame_index) for e in trace)
    assert {r.site for r in records} <= {"edge", "cloud", "none"}
    assert result.summary.records == len(trace)
    assert sum(result.summary.by_status.values()) == len(trace)
    assert all(r.bytes_sent > 0 for r in records if r.status == "ok")


def test_a_second_run_does_not_see_the_first_runs_records(testbed: Testbed, frames: CyclicFrames) -> None:
    trace = generate(TraceSpec(kind="periodic", cameras=1, rate=4.0, duration_s=2.0, camera_prefix="again"))
    first = replay(trace, testbed.preprocessor_url, frames, testbed.mqtt_settings("monitor"), None, QUIET)
    second = replay(trace, testbed.preprocessor_url, frames, testbed.mqtt_settings("webserver"), None, QUIET)
    assert first.complete and second.complete
    assert first.duplicates == second.duplicates == 0


def test_an_account_that_may_not_read_results_sees_every_frame_missing(testbed: Testbed,
                                                                       frames: CyclicFrames) -> None:
    # Mosquitto acknowledges the subscription and silently filters by the ACL.
    trace = generate(TraceSpec(kind="periodic", cameras=1, rate=2.0, duration_s=1.0, camera_prefix="acl"))
    result = replay(trace, testbed.preprocessor_url, frames, testbed.mqtt_settings("autoscaler"), None,
                    ReplayOptions(progress=False, drain_timeout_s=2.0))
    assert result.accepted == 2 and len(result.missing) == 2
    assert "may the MQTT account read edgeoffload/results/#" in format_report(result)


def test_wrong_password_is_reported(testbed: Testbed, frames: CyclicFrames) -> None:
    wrong = MQTTSettings(host=testbed.broker.host, port=testbed.broker.port, username="monitor", password="nope")
    trace = generate(TraceSpec(kind="periodic", cameras=1, rate=1.0, duration_s=1.0))
    with pytest.raises(ConnectionError, match="monitor"):
        replay(trace, testbed.preprocessor_url, frames, wrong, None,
               ReplayOptions(progress=False, subscribe_timeout_s=2.0))


class _SlowPublishingTarget:
    """A stand-in preprocessor: answers 202 after `delay_s` and publishes each record twice
    (QoS 1 redelivery), except for the frames listed in `skip` (which are lost)."""

    def __init__(self, broker: BrokerProcess, delay_s: float, skip: set[tuple[str, int]]) -> None:
        self.publisher = Publisher(MQTTSettings(host=broker.host, port=broker.port, username="preprocessor",
                                                password=broker.users["preprocessor"]), unit="preprocessor").start()
        assert self.publisher.wait_connected(10)
        target = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                query = parse_qs(urlparse(self.path).query)
                camera, frame_id = query["camera"][0], int(query["frame_id"][0])
                self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(delay_s)
                if (camera, frame_id) not in skip:
                    record = FrameRecord(camera, frame_id, time.time(), "edge", "ok", t_total_ms=delay_s * 1000)
                    target.publisher.publish_record(record)
                    target.publisher.publish_record(record)
                body = json.dumps({"camera": camera, "frame_id": frame_id}).encode()
                self.send_response(202)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.publisher.close()


@pytest.fixture
def slow_target(broker: BrokerProcess):
    target = _SlowPublishingTarget(broker, delay_s=0.3, skip={("cam0", 3)})
    yield target
    target.close()


def test_open_loop_sends_on_time_and_counts_duplicates_and_gaps(broker: BrokerProcess, slow_target,
                                                                tmp_path: Path) -> None:
    trace = generate(TraceSpec(kind="periodic", cameras=2, rate=10.0, duration_s=1.5))  # 30 frames, 0.3 s each
    out = tmp_path / "records.csv"
    result = replay(trace, slow_target.url, CyclicFrames((b"\xff\xd8fake",)), _monitor(broker), out,
                    ReplayOptions(concurrency=16, progress=False, drain_timeout_s=2.0))
    # Open loop: 3 frames are in flight at any time, well under 16 senders, so none waits for
    # a sender (the bound only allows for scheduler jitter on a busy machine).
    assert max(s.lateness_s for s in result.sends) < 0.25
    assert result.sent == 30
    assert result.missing == {("cam0", 3): "no record within the drain timeout"}
    assert not result.complete
    assert result.duplicates == 29
    assert len(list(read_records(out))) == 29
    assert "missing (first 10): cam0#3" in format_report(result)


def test_too_few_senders_shows_up_as_late_sends(broker: BrokerProcess, slow_target) -> None:
    trace = generate(TraceSpec(kind="periodic", cameras=1, rate=10.0, duration_s=1.0))
    result = replay(trace, slow_target.url, CyclicFrames((b"\xff\xd8fake",)), _monitor(broker), None,
                    ReplayOptions(concurrency=1, progress=False, drain_timeout_s=2.0))
    assert result.sent == 10
    assert len(result.late) >= 5  # one sender needs 3 s for what the trace offers in 1 s
    assert max(s.lateness_s for s in result.sends) > 1.0


def test_collector_keeps_the_first_record_per_frame(tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    with RecordWriter(out) as writer:
        collector = RecordCollector({"a"}, writer)
        first = FrameRecord("a", 1, 0.0, "edge", "ok", t_total_ms=10)
        collector.on_record("t", first)
        collector.on_record("t", FrameRecord("a", 1, 0.0, "cloud", "ok", t_total_ms=99))
        collector.on_record("t", FrameRecord("b", 1, 0.0, "edge", "ok"))
        assert collector.wait_for({("a", 1)}, timeout=0.1) == set()
        assert collector.wait_for({("a", 1), ("a", 2)}, timeout=0.1) == {("a", 2)}
    assert (collector.duplicates, collector.foreign, collector.count()) == (1, 1, 1)
    assert list(read_records(out)) == [first]


def test_stop_event_ends_a_replay_early(testbed: Testbed, frames: CyclicFrames) -> None:
    trace = Trace(tuple(TraceEvent(t, "stopper", i) for i, t in enumerate([0.0, 0.1, 30.0, 31.0])))
    stop = threading.Event()
    threading.Timer(1.5, stop.set).start()
    began = time.monotonic()
    result = replay(trace, testbed.preprocessor_url, frames, testbed.mqtt_settings("monitor"), None, QUIET, stop=stop)
    assert time.monotonic() - began < 10
    assert result.sent == 2 and result.scheduled == 4
    assert not result.complete


def test_command_line_replays_a_generated_trace(testbed: Testbed, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from edgeoffload.load import replay as replay_command
    from edgeoffload.load import trace as trace_command

    def run(module, argv: list[str]) -> int:
        parser = argparse.ArgumentParser()
        module.register(parser)
        return module.run(parser.parse_args(argv))

    trace_path, out = tmp_path / "trace.csv", tmp_path / "records.parquet"
    assert run(trace_command, ["gen", "--kind", "poisson", "--cameras", "2", "--rate", "3", "--duration", "2",
                               "--seed", "4", "--camera-prefix", "cli", "-o", str(trace_path)]) == 0
    # The command `edgeoffload up` prints, whose password is in a file of the testbed's, not on the line.
    printed_command = next(line for line in testbed.describe().splitlines() if line.startswith("replay into it:"))
    password = testbed.broker.users["monitor"]
    assert password not in printed_command and "--mqtt-password " not in printed_command
    password_file = testbed.monitor_password_file
    assert f"--mqtt-password-file {password_file} " in printed_command
    assert password_file.read_text() == password + "\n" and password_file.stat().st_mode & 0o777 == 0o600
    assert run(replay_command, [str(trace_path), "--target", testbed.preprocessor_url, "--mqtt-port",
                                str(testbed.broker.port), "--mqtt-user", "monitor", "--mqtt-password-file",
                                str(password_file), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    count = len(read_trace(trace_path))
    assert f"accounted (1 record each)  {count}/{count}" in printed
    assert len(list(read_records(out))) == count


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], float]:
    """`edgeoffload ARGV` in this process: exit status, stderr lines, seconds taken."""
    from edgeoffload.cli import main

    began = time.monotonic()
    status = main(argv)
    return status, capsys.readouterr().err.splitlines(), time.monotonic() - began


@pytest.fixture
def long_trace(tmp_path: Path) -> Path:
    """30 s of frames: a check that waits for the trace would show in the time taken."""
    return write_trace(generate(TraceSpec(kind="periodic", cameras=1, rate=1.0, duration_s=30.0)), tmp_path / "t.csv")


def test_a_target_that_is_not_a_url_is_one_line(long_trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, err, _ = _cli(["replay", str(long_trace), "--target", "127.0.0.1:8080"], capsys)
    assert status == 2 and err == ["edgeoffload replay: error: target '127.0.0.1:8080' is not a URL: "
                                   "expected e.g. http://127.0.0.1:8080"]


def test_a_target_where_nothing_listens_is_found_before_the_trace_starts(
        broker: BrokerProcess, long_trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    status, err, took = _cli(["replay", str(long_trace), "--target", f"http://127.0.0.1:{port}",
                              "--mqtt-port", str(broker.port), "--no-progress"], capsys)
    assert status == 2 and took < 10
    assert err == [f"edgeoffload replay: error: the target http://127.0.0.1:{port} at 127.0.0.1:{port} is "
                   "unreachable: Connection refused"]


def test_an_unreachable_broker_is_one_line(testbed: Testbed, long_trace: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    status, err, took = _cli(["replay", str(long_trace), "--target", testbed.preprocessor_url,
                              "--mqtt-port", str(port), "--no-progress"], capsys)
    assert status == 2 and took < 10
    assert err == [f"edgeoffload replay: error: the MQTT broker at 127.0.0.1:{port} is unreachable: Connection refused"]


def test_a_refused_login_is_one_line_at_once(testbed: Testbed, long_trace: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEOFFLOAD_MQTT_PASSWORD", "not-the-password")
    status, err, took = _cli(["replay", str(long_trace), "--target", testbed.preprocessor_url,
                              "--mqtt-port", str(testbed.broker.port), "--no-progress"], capsys)
    assert status == 2 and took < 5
    assert err == [f"edgeoffload replay: error: MQTT 127.0.0.1:{testbed.broker.port} as 'monitor': "
                   "connection refused: Not authorized"]
