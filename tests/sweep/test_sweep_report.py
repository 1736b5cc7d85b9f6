"""A sweep's table, report.md, summary.json and plots."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from edgeoffload.sweep.cells import run_cell
from edgeoffload.sweep.report import (family, pareto_series, plot_jobs, render_png, report_markdown, seed_means,
                                      summary_json, table_rows, write_table)
from edgeoffload.sweep.spec import expand, load_spec


@pytest.fixture
def swept(sweep_file: Path):
    spec = load_spec(sweep_file)
    cells = expand(spec)
    results = {cell.key: run_cell(cell) for _, cell in cells}
    return spec, cells, results, table_rows(spec, cells, results)


def test_the_table_has_a_typed_row_per_cell(swept, tmp_path: Path) -> None:
    spec, cells, results, rows = swept
    parquet, csv_path = write_table(spec, rows, tmp_path)
    table = pq.read_table(parquet)
    assert table.num_rows == 36
    types = dict(zip(table.schema.names, table.schema.types))
    assert (types["seed"], types["edge.workers"], types["frames"], types["uplink_bytes"]) == (pa.int64(),) * 4
    assert (types["p95_ms"], types["cloud_share"], types["energy_j"], types["grid"]) == (pa.float64(),) * 3 + (pa.string(),)
    first = table.slice(0, 1).to_pylist()[0]
    assert first | {"p95_ms": None} == {**rows[0], "p95_ms": None}
    assert first["p95_ms"] == results[cells[0][1].key]["metrics"]["p95_ms"] and first["edge.workers"] is None
    written = list(csv.DictReader(csv_path.open()))
    assert len(written) == 36 and written[0]["grid"] == "policies" and written[0]["edge.workers"] == ""
    assert written[-1]["edge.workers"] == "2" and written[-1]["policy"] == "queue-threshold:3"


def test_override_values_that_are_not_numbers_are_json_text(tmp_path: Path, make_sweep, tiny_spec) -> None:
    grid = {"name": "shared", "policies": ["min-latency"],
            "overrides": {"shared_cpu": [None, {"cores": 1.5}], "edge.queue": ["shared", "per-pod"]}}
    spec = load_spec(make_sweep(tmp_path, {**tiny_spec, "seeds": [1], "grids": [grid], "report": {}}))
    cells = expand(spec)
    rows = table_rows(spec, cells, {cell.key: run_cell(cell) for _, cell in cells})
    table = pq.read_table(write_table(spec, rows, tmp_path)[0])
    assert table.schema.field("shared_cpu").type == pa.string() and table.schema.field("edge.queue").type == pa.string()
    assert table.column("shared_cpu").to_pylist()[:2] == [None, None] and table.column("shared_cpu")[2].as_py() == '{"cores": 1.5}'


def test_points_average_the_seeds(swept) -> None:
    spec, _, _, rows = swept
    points = seed_means(rows, spec)
    assert len(points) == 36 // 2
    pair = [row for row in rows if row["grid"] == "policies" and row["scenario"] == "busy" and row["policy"] == "random:0.3"]
    point = next(p for p in points if p["grid"] == "policies" and p["scenario"] == "busy" and p["policy"] == "random:0.3")
    assert point["p95_ms"] == pytest.approx((pair[0]["p95_ms"] + pair[1]["p95_ms"]) / 2)
    assert pair[0]["p95_ms"] != pair[1]["p95_ms"]


def test_pareto_lines_are_swept_families_labelled_by_what_varies(swept) -> None:
    spec, _, _, rows = swept
    assert family("queue-threshold:4") == ("queue-threshold", "4") and family("my_policy.py:decide") == ("my_policy.py:decide", "")
    series = pareto_series(seed_means(rows, spec), spec, "busy", "cloud_share", 100.0)
    assert list(series) == ["queue-threshold:k"]     # the policies grid has one point per family
    assert [label for _, _, label in series["queue-threshold:k"]] == [
        "1, edge.workers=1", "3, edge.workers=1", "1, edge.workers=2", "3, edge.workers=2"]
    assert all(0 <= x <= 100 and y > 0 for x, y, _ in series["queue-threshold:k"])


def test_plots_are_drawn_from_jobs(swept) -> None:
    spec, _, _, rows = swept
    jobs = plot_jobs(spec, rows)
    assert [job.file for job in jobs] == ["pareto_calm_uplink.png", "pareto_calm_cloud_share.png",
                                          "pareto_busy_uplink.png", "pareto_busy_cloud_share.png",
                                          "p95_by_policy.png", "cloud_share_by_policy.png"]
    assert jobs[1].args[-1][0][2] == "min-latency"      # the reference marker
    bars = jobs[4].args[0]
    assert list(bars) == ["calm", "busy"] and list(bars["calm"]) == list(spec.grids[0].policies)
    png = render_png(jobs[0])
    assert png.startswith(b"\x89PNG\r\n") and render_png(jobs[0]) == png


def test_report_and_summary_name_every_grid_and_failure(swept) -> None:
    spec, cells, results, _ = swept
    broken = cells[0][1].key
    results = {**results, broken: {**results[broken], "status": "failed", "error": "ValueError: boom",
                                   "metrics": None, "summary": None}}
    rows = table_rows(spec, cells, results)
    report = report_markdown(spec, rows, 36)
    assert report.startswith("# Sweep: tiny\n\n`edgeoffload sweep sweep.yaml`")
    assert "## policies\n\n| scenario | policy | seed | frames |" in report
    assert "## queue-threshold:k\n\n| scenario | edge.workers | policy | seed | frames |" in report
    assert "| calm | edge-only | 1 | - | - |" in report
    assert report.endswith("## Failed cells\n\n| grid | scenario | policy | seed | error |\n|---|---|---|---|---|\n"
                           "| policies | calm | edge-only | 1 | ValueError: boom |\n")
    summary = summary_json(spec, rows, 36)
    assert (summary["cells"], summary["ok"], summary["failed"]) == (36, 35, 1)
    assert summary["grids"]["queue-threshold:k"] == {"cells": 16, "scenarios": list(spec.grids[1].scenarios),
                                                     "policies": ["queue-threshold:1", "queue-threshold:3"],
                                                     "seeds": [1, 2], "overrides": {"edge.workers": [1, 2]}}
    json.dumps(summary)
