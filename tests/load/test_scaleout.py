"""The elastic data path with real processes: replicas the autoscaler adds get frames at once,
replicas that go away lose none, and capacity grows with replicas (edgeoffload.load.scaleout)."""
from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from edgeoffload.load.scaleout import ElasticSetup, ElasticSite, new_replica_share, throughput


@pytest.mark.parametrize("discovery", ["kubernetes", "static"])
def test_a_replica_added_mid_run_takes_its_share_within_seconds(tmp_path: Path, discovery: str) -> None:
    """kubernetes: it appears in the EndpointSlices and gets requests at once; static: through the
    per-connection Service relay, because the preprocessor renews its connections every second."""
    with ElasticSite(ElasticSetup(discovery=discovery), tmp_path).start(replicas=1) as site:
        result = new_replica_share(site, rate_fps=12)
    assert result.share_5s >= 0.4, result
    assert result.first_frame_s is not None and result.first_frame_s < 2.0, result


def run_with_interruption(site: ElasticSite, interrupt, rate_fps: float = 15, duration_s: float = 4.0) -> int:
    stop = threading.Event()
    sent: list[int] = []
    feeder = threading.Thread(target=lambda: sent.append(site.feed(rate_fps, duration_s, stop)))
    feeder.start()
    time.sleep(duration_s / 3)
    interrupt()
    feeder.join()
    assert site.wait_idle(30)
    return sent[0]


def assert_every_frame_answered_once(site: ElasticSite, sent: int) -> Counter:
    ids = Counter(d.record.frame_id for d in site.done)
    assert sorted(ids) == list(range(sent)) and set(ids.values()) == {1}, "a frame has no record, or two"
    failed = [d.record for d in site.done if d.record.status != "ok"]
    assert not failed, [(r.status, r.reason) for r in failed]
    return Counter(d.record.replica for d in site.done)


def test_a_replica_sigtermed_mid_run_loses_no_frame(tmp_path: Path) -> None:
    with ElasticSite(ElasticSetup(), tmp_path).start(replicas=2) as site:
        victim, survivor = site.pool.replicas
        sent = run_with_interruption(site, lambda: os.killpg(victim.pid, signal.SIGTERM))
        served = assert_every_frame_answered_once(site, sent)
        assert victim.unit.process.wait(15) == 0     # gunicorn finished its requests and exited cleanly
    assert served[victim.name] > 0 and served[survivor.name] > served[victim.name]


def test_a_replica_scaled_down_mid_run_drains_and_loses_no_frame(tmp_path: Path) -> None:
    with ElasticSite(ElasticSetup(), tmp_path).start(replicas=2) as site:
        site.pool.pre_stop_s = 1.0
        staying, leaving = site.pool.replicas
        sent = run_with_interruption(site, lambda: site.pool.scale_to(1))
        served = assert_every_frame_answered_once(site, sent)
        assert leaving.unit.process.wait(15) == 0
    assert served[leaving.name] > 0 and set(served) == {leaving.name, staying.name}


def test_throughput_rises_with_replicas_that_are_not_cpu_bound(tmp_path: Path) -> None:
    """INFER_SLEEP_PAD_MS: 100 ms per frame spent waiting, one at a time per replica, so one
    replica answers at most 10 frames/s; the offered 40 frames/s need four."""
    with ElasticSite(ElasticSetup(sleep_pad_ms=100, instances=1, per_replica=2), tmp_path).start() as site:
        one = throughput(site, 1, offered_fps=40, duration_s=3)
        three = throughput(site, 3, offered_fps=40, duration_s=3)
    assert one.answered_fps <= 11
    assert three.answered_fps >= 2.4 * one.answered_fps, (one, three)
