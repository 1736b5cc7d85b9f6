"""The Pods metric as deployed: scraped, averaged over prometheus-adapter's window."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from edgeoffload.podmetrics import AVERAGE_WINDOW_S, SCRAPE_INTERVAL_S, ScrapedSeries

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_the_average_covers_the_last_window_only() -> None:
    series = ScrapedSeries(window_s=60)
    assert series.average(0.0) is None                      # nothing scraped: no metric
    for t, value in ((0.0, 4.0), (15.0, 2.0), (30.0, 0.0), (45.0, 0.0)):
        series.add(t, value)
    assert series.average(45.0) == 1.5
    series.add(60.0, 0.0)
    assert series.average(60.0) == 0.5                      # the sample at 0 s is a minute old: out
    assert series.average(200.0) is None and len(series) == 0


def test_the_model_matches_the_deployed_prometheus_and_adapter() -> None:
    server = yaml.safe_load((DEPLOY / "prometheus-values.yml").read_text())["server"]["global"]
    assert float(server["scrape_interval"].rstrip("s")) == SCRAPE_INTERVAL_S
    rules = yaml.safe_load((DEPLOY / "prometheus-adapter-values.yml").read_text())["rules"]["custom"]
    windows = {re.search(r"avg_over_time\(.*\[(\d+)m\]\)", rule["metricsQuery"]).group(1) for rule in rules}
    assert windows == {str(int(AVERAGE_WINDOW_S // 60))}
