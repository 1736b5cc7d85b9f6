"""How a Pods metric reaches the HPA, as deployed: scraped, then averaged over a minute.

Prometheus scrapes each pod's in-flight gauge (deploy/prometheus-values.yml: every 15 s, the
HPA's sync period) and prometheus-adapter serves the HPA `avg_over_time(...[1m])` of those
samples (deploy/prometheus-adapter-values.yml). The simulator and the local autoscaler model
exactly that: each pod's gauge is sampled at every HPA sync, and the metric is the mean of the
samples taken in the last AVERAGE_WINDOW_S, so a load step reaches the HPA over about a minute,
as on a cluster.
"""
from __future__ import annotations

from collections import deque

SCRAPE_INTERVAL_S = 15.0    # Prometheus scrape_interval
AVERAGE_WINDOW_S = 60.0     # prometheus-adapter: avg_over_time(...[1m])


class ScrapedSeries:
    """The samples of one pod's gauge; `average` is avg_over_time over the window ending now."""

    __slots__ = ("window_s", "_samples")

    def __init__(self, window_s: float = AVERAGE_WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, t: float, value: float) -> None:
        self._samples.append((t, value))

    def average(self, now: float) -> float | None:
        """Mean of the samples in (now - window, now]; None when there is none (no metric)."""
        samples = self._samples
        while samples and samples[0][0] <= now - self.window_s:
            samples.popleft()
        return sum(value for _, value in samples) / len(samples) if samples else None

    def __len__(self) -> int:
        return len(self._samples)


__all__ = ["ScrapedSeries", "SCRAPE_INTERVAL_S", "AVERAGE_WINDOW_S"]
