"""The simulator's site estimator must agree with the testbed's SiteMonitor event for event."""
from __future__ import annotations

import random

import pytest

from edgeoffload.offload import SiteConfig, SiteMonitor
from edgeoffload.policy import SiteState
from edgeoffload.sim.observer import SiteEstimator


@pytest.mark.parametrize("remote", [False, True])
def test_estimates_match_site_monitor(remote: bool) -> None:
    rng = random.Random(7)
    config = SiteConfig("cloud" if remote else "edge", "http://site", estimate_uplink=remote)
    monitor, estimator = SiteMonitor(config), SiteEstimator(remote=remote)
    for step in range(500):
        event = rng.random()
        if event < 0.4:
            monitor.reserve()
            estimator.in_flight += 1
        elif event < 0.85:
            inference = rng.uniform(0.005, 0.05)
            round_trip = inference + rng.uniform(0.0, 0.2) + (0.02 if remote else 0.0)
            size = rng.randint(10_000, 80_000)
            monitor.record_answer(inference, round_trip, size)
            estimator.answered(inference, round_trip, size)
            monitor.release()
            estimator.in_flight -= 1
        elif event < 0.95:
            monitor.record_failure("http_503")
            estimator.failed()
        else:
            ready = rng.random() < 0.7
            monitor.set_ready(ready)
            estimator.probed(ready)
        expected = monitor.snapshot()
        got = estimator.state(config.replicas)
        assert _same(got, expected), (step, got, expected)


def _same(a: SiteState, b: SiteState) -> bool:
    return (a.in_flight, a.replicas, a.healthy) == (b.in_flight, b.replicas, b.healthy) and all(
        getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-12)
        for name in ("service_s", "rtt_s", "uplink_bps"))
