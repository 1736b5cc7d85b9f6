"""The shared WAN uplink: one FIFO serialiser at the (possibly time-varying) bandwidth,
followed by a propagation delay of half the round trip in each direction."""
from __future__ import annotations

import bisect
import math

from edgeoffload.sim.scenario import WanSpec


class WanLink:
    """Frames leave in send order; a frame's last bit leaves once every earlier frame has
    left and its own bits have been serialised. With a trace, bandwidth and RTT are
    piecewise constant and serialisation is integrated exactly across changes."""

    __slots__ = ("free_at", "_times", "_bandwidth", "_rtt_s", "_constant")

    def __init__(self, spec: WanSpec) -> None:
        self.free_at = 0.0
        self._times = [-math.inf] + [t for t, _, _ in spec.trace]
        self._bandwidth = [spec.bandwidth_bps] + [bw for _, bw, _ in spec.trace]
        self._rtt_s = [spec.rtt_ms / 1000] + [rtt / 1000 for _, _, rtt in spec.trace]
        self._constant = not spec.trace

    def _segment(self, t: float) -> int:
        return 0 if self._constant else bisect.bisect_right(self._times, t) - 1

    def one_way_s(self, t: float) -> float:
        """Propagation delay of a packet leaving at time t."""
        return self._rtt_s[self._segment(t)] / 2

    def bandwidth_bps(self, t: float) -> float:
        return self._bandwidth[self._segment(t)]

    def transmit(self, now: float, bits: float) -> float:
        """Queue `bits` at time `now`; returns when the last bit has left the sender."""
        start = now if now > self.free_at else self.free_at
        if self._constant:
            self.free_at = start + bits / self._bandwidth[0]
            return self.free_at
        index, t, remaining = self._segment(start), start, bits
        while True:
            bandwidth = self._bandwidth[index]
            change = self._times[index + 1] if index + 1 < len(self._times) else math.inf
            finish = t + remaining / bandwidth
            if finish <= change:
                self.free_at = finish
                return finish
            remaining -= (change - t) * bandwidth
            t, index = change, index + 1


__all__ = ["WanLink"]
