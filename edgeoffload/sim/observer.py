"""What the preprocessor knows about a site, estimated by the testbed's own rules.

The EdgePreprocessorUnit estimates each site with `edgeoffload.offload.SiteMonitor`. That
class is thread-safe and builds a SiteState per call (~4 us), too slow for the
simulator's per-frame budget, so this lock-free estimator applies the same rules and the
same defaults (read from SiteMonitor / SiteConfig, not repeated here);
tests/sim/test_sim_observer.py feeds both the same event sequence and requires identical
snapshots, so the two cannot drift apart:

  service_s   EWMA of the reported inference time, starting at SiteConfig.service_s
  network     round trip - inference time (server-side queueing included, as measured)
  rtt_s       edge: EWMA of network; WAN site: minimum of the last `floor_window` networks
  uplink_bps  WAN site: EWMA of bytes*8 / (network - rtt) when the excess exceeds 0.5 ms
  healthy     last ready probe succeeded and fewer than `failure_threshold` failures in a row
  replicas    the simulator reports the site's *ready* replicas (SiteMonitor: configured count)
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from collections import deque

from edgeoffload.offload import Offloader, SiteConfig, SiteMonitor
from edgeoffload.policy import SiteState

_MONITOR_DEFAULTS = {name: p.default for name, p in inspect.signature(SiteMonitor.__init__).parameters.items()
                     if p.default is not inspect.Parameter.empty}
_CONFIG_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SiteConfig)
                    if f.default is not dataclasses.MISSING}
DEFAULT_ALPHA: float = _MONITOR_DEFAULTS["alpha"]
DEFAULT_PROBE_INTERVAL_S: float = inspect.signature(Offloader.__init__).parameters["health_interval_s"].default
_UPLINK_NOISE_S = 0.0005   # SiteMonitor ignores excess delay below this (timer noise)


class SiteEstimator:
    __slots__ = ("alpha", "in_flight", "service_s", "network_s", "rtt_s", "uplink_bps", "remote", "ready",
                 "failures", "failure_threshold", "_recent")

    def __init__(self, remote: bool, alpha: float = DEFAULT_ALPHA,
                 failure_threshold: int = _MONITOR_DEFAULTS["failure_threshold"],
                 floor_window: int = _MONITOR_DEFAULTS["floor_window"]) -> None:
        self.alpha = alpha
        self.remote = remote                      # SiteConfig.estimate_uplink
        self.in_flight = 0
        self.service_s: float = _CONFIG_DEFAULTS["service_s"]
        self.network_s: float = _CONFIG_DEFAULTS["rtt_s"]
        self.rtt_s: float = _CONFIG_DEFAULTS["rtt_s"]
        self.uplink_bps: float = _CONFIG_DEFAULTS["uplink_bps"]
        self.ready = True
        self.failures = 0
        self.failure_threshold = failure_threshold
        self._recent: deque[float] = deque(maxlen=floor_window)

    def answered(self, inference_s: float, round_trip_s: float, bytes_sent: int) -> None:
        """SiteMonitor.record_answer (in_flight is released by the caller)."""
        alpha = self.alpha
        network = round_trip_s - inference_s
        if network < 0.0:
            network = 0.0
        self.failures = 0
        self.service_s += alpha * (inference_s - self.service_s)
        self.network_s += alpha * (network - self.network_s)
        self._recent.append(network)
        if not self.remote:
            self.rtt_s = self.network_s
            return
        self.rtt_s = min(self._recent)
        excess = network - self.rtt_s
        if excess > _UPLINK_NOISE_S and bytes_sent > 0:
            sample = bytes_sent * 8 / excess
            self.uplink_bps = sample if math.isinf(self.uplink_bps) else self.uplink_bps + alpha * (sample - self.uplink_bps)

    def failed(self) -> None:
        """SiteMonitor.record_failure."""
        self.failures += 1

    def probed(self, ready: bool) -> None:
        """SiteMonitor.set_ready: the result of a ready probe."""
        self.ready = ready
        if ready:
            self.failures = 0

    @property
    def healthy(self) -> bool:
        return self.ready and self.failures < self.failure_threshold

    def state(self, ready_replicas: int) -> SiteState:
        return SiteState(max(0, self.in_flight), ready_replicas, self.service_s, self.rtt_s, self.uplink_bps,
                         self.healthy)


__all__ = ["DEFAULT_ALPHA", "DEFAULT_PROBE_INTERVAL_S", "SiteEstimator"]
