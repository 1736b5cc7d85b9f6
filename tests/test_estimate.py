"""The per-site estimator that both the preprocessor and the simulator use."""
from __future__ import annotations

import math
import random

import pytest

from edgeoffload.estimate import MIN_FIT_SAMPLES, SiteEstimator


def test_edge_tracks_service_and_network_ewma() -> None:
    site = SiteEstimator(remote=False, service_s=0.1, alpha=0.5)
    site.answered(inference_s=0.3, network_s=0.01, bytes_sent=1000)
    assert site.service_s == pytest.approx(0.2)
    assert site.rtt_s == pytest.approx(0.005)
    assert math.isinf(site.uplink_bps)


def test_wan_keeps_the_initial_bandwidth_until_sizes_vary() -> None:
    site = SiteEstimator(remote=True, rtt_s=0.05, uplink_bps=10e6)
    for _ in range(40):
        site.answered(0.01, 0.020 + 50_000 * 8 / 20e6, 50_000)  # same size every time: slope unknowable
    assert site.uplink_bps == 10e6
    assert site.rtt_s == pytest.approx(0.020 + 0.020 - 0.040)  # floor minus transfer at the assumed 10 Mbit/s


def test_wan_fits_bandwidth_and_rtt_despite_queueing_noise() -> None:
    rng = random.Random(3)
    true_rtt, true_bps = 0.040, 25e6
    site = SiteEstimator(remote=True, uplink_bps=math.inf, window=64)
    for _ in range(400):
        size = rng.randint(20_000, 120_000)
        jitter = rng.expovariate(1 / 0.002)  # positive-only delays, as queueing adds
        site.answered(0.01, true_rtt + size * 8 / true_bps + jitter, size)
    assert site.uplink_bps == pytest.approx(true_bps, rel=0.1)
    assert site.rtt_s == pytest.approx(true_rtt, abs=0.003)


def test_bandwidth_is_not_fitted_from_too_few_answers() -> None:
    site = SiteEstimator(remote=True, uplink_bps=5e6)
    for index in range(MIN_FIT_SAMPLES - 1):
        size = 10_000 * (index + 1)
        site.answered(0.01, 0.02 + size * 8 / 50e6, size)
    assert site.uplink_bps == 5e6


def test_health_from_failures_and_probes() -> None:
    site = SiteEstimator(remote=False, failure_threshold=2)
    site.failed()
    assert site.healthy
    site.failed()
    assert not site.healthy
    site.probed(True)
    assert site.healthy
    site.probed(False)
    assert not site.healthy and site.state(3).replicas == 3 and not site.state(3).healthy


def test_alpha_is_validated() -> None:
    with pytest.raises(ValueError, match="alpha"):
        SiteEstimator(remote=False, alpha=0)
