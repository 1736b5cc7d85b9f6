"""Live per-site estimates (the SiteState a policy sees), shared by the testbed and the simulator.

The EdgePreprocessorUnit (offload.SiteMonitor, which adds a lock) and the simulator feed
this one lock-free estimator the same events, so a policy sees state built by the same
rules in both worlds:

  service_s   EWMA of the inference time the unit reports
  network     round trip - inference - server-side queueing (transfer + propagation)
  rtt_s       edge: EWMA of network; WAN site: network floor minus the transfer of that frame
  uplink_bps  WAN site: 1 / slope of a least-squares fit of network time over bits sent,
              over the last `window` answers, once frame sizes vary enough to fit a slope;
              until then the configured initial estimate
  healthy     last ready probe succeeded and fewer than `failure_threshold` failures in a row
"""
from __future__ import annotations

import math
from collections import deque

from edgeoffload.policy import SiteState

DEFAULT_ALPHA = 0.2             # EWMA weight of the newest measurement
DEFAULT_PROBE_INTERVAL_S = 2.0  # ready-probe period per site
MIN_SIZE_SPREAD = 0.05    # fit a bandwidth only when bits sent vary by more than 5% (coefficient of variation)
MIN_FIT_SAMPLES = 8
BANDWIDTH_BOUNDS_BPS = (1e5, 1e12)


class SiteEstimator:
    """What the preprocessor knows about one site. Not thread-safe: callers serialise."""

    __slots__ = ("alpha", "remote", "in_flight", "service_s", "network_s", "rtt_s", "uplink_bps", "ready",
                 "failures", "failure_threshold", "_window", "_sx", "_sy", "_sxx", "_sxy")

    def __init__(self, remote: bool, service_s: float = 0.08, rtt_s: float = 0.0,
                 uplink_bps: float = math.inf, alpha: float = DEFAULT_ALPHA, failure_threshold: int = 3,
                 window: int = 32) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"EWMA alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.remote = remote
        self.in_flight = 0
        self.service_s = service_s
        self.network_s = rtt_s
        self.rtt_s = rtt_s
        self.uplink_bps = uplink_bps
        self.ready = True  # optimistic until the first probe says otherwise
        self.failures = 0
        self.failure_threshold = failure_threshold
        self._window: deque[tuple[float, float]] = deque(maxlen=window)  # (network_s, bits)
        self._sx = self._sy = self._sxx = self._sxy = 0.0

    def answered(self, inference_s: float, network_s: float, bytes_sent: int) -> None:
        """A frame was answered: `network_s` is its round trip minus server-side time."""
        alpha = self.alpha
        network = network_s if network_s > 0.0 else 0.0
        self.failures = 0
        self.service_s += alpha * (inference_s - self.service_s)
        self.network_s += alpha * (network - self.network_s)
        if not self.remote:
            self.rtt_s = self.network_s
            return
        bits = bytes_sent * 8.0
        window = self._window
        if len(window) == window.maxlen:
            old_y, old_x = window[0]
            self._sx -= old_x
            self._sy -= old_y
            self._sxx -= old_x * old_x
            self._sxy -= old_x * old_y
        window.append((network, bits))
        self._sx += bits
        self._sy += network
        self._sxx += bits * bits
        self._sxy += bits * network
        self._fit_uplink()
        floor, floor_bits = min(window)
        transfer = 0.0 if math.isinf(self.uplink_bps) else floor_bits / self.uplink_bps
        self.rtt_s = floor - transfer if floor > transfer else 0.0

    def _fit_uplink(self) -> None:
        count = len(self._window)
        if count < MIN_FIT_SAMPLES:
            return
        mean_x = self._sx / count
        var_x = self._sxx / count - mean_x * mean_x
        if mean_x <= 0.0 or var_x <= (MIN_SIZE_SPREAD * mean_x) ** 2:
            return
        slope = (self._sxy / count - mean_x * self._sy / count) / var_x  # seconds per bit
        if slope > 0.0:
            low, high = BANDWIDTH_BOUNDS_BPS
            self.uplink_bps = min(max(1.0 / slope, low), high)

    def failed(self) -> None:
        self.failures += 1

    def probed(self, ready: bool) -> None:
        """The result of a ready probe: a site answering it gets another chance."""
        self.ready = ready
        if ready:
            self.failures = 0

    @property
    def healthy(self) -> bool:
        return self.ready and self.failures < self.failure_threshold

    def state(self, replicas: int) -> SiteState:
        return SiteState(self.in_flight if self.in_flight > 0 else 0, replicas, self.service_s, self.rtt_s,
                         self.uplink_bps, self.healthy)
