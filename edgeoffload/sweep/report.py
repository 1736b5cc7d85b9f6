"""A sweep's outputs: one table (Parquet and CSV), report.md, summary.json and plots.

The table has a row per cell of every grid (a cell shared by two grids appears in both):
its parameters (grid, scenario, each overridden key, policy, seed), its status and error,
and its metrics (edgeoffload.analysis.RunMetrics plus energy and cost). The plots are the
analysis module's: per scenario, p95 latency against uplink bytes and against cloud share
with one line per swept policy family (its parameter, or the overrides that vary, label the
points) and the `report.references` policies as markers; per-policy bars of p95 and cloud
share for the `report.compare` grid. Plots average a point over the spec's seeds. Nothing
here depends on where or when the cells ran, so the outputs are byte-identical re-runs.
"""
from __future__ import annotations

import json
import re
import sys
import tempfile
import uuid
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from edgeoffload.analysis import (CASCADE_COLUMNS, METRIC_KEYS, POLICY_COLUMNS, Column, RunMetrics, markdown_table, plot_grouped_bars,
                                  plot_pareto, write_csv)
from edgeoffload.policy import BUILTINS
from edgeoffload.sweep.cells import FAILED, OK
from edgeoffload.sweep.engine import Engine
from edgeoffload.sweep.spec import Cell, SweepSpec, package_version

SUMMARY_METRICS = ("energy_j", "egress_cost", "pod_cost")
METRIC_COLUMNS = tuple(key for key in METRIC_KEYS if key != "label") + SUMMARY_METRICS
PARETO_AXES = (   # (metric, scale, file suffix, x label, title)
    ("uplink_bytes", 1e-6, "uplink", "uplink (MB, after warm-up)", "p95 latency vs uplink bytes"),
    ("cloud_share", 100.0, "cloud_share", "cloud share (%)", "p95 latency vs cloud share"),
)
BAR_PLOTS = (("p95_ms", "p95 latency (ms)", "p95_by_policy.png"), ("cloud_share", "cloud share", "cloud_share_by_policy.png"))
Row = dict[str, Any]


# ------------------------------------------------------------------ the table
def table_columns(spec: SweepSpec) -> list[str]:
    return ["grid", "scenario", "scenario_file", *spec.override_keys, "policy", "seed", "status", "error", "cell",
            *METRIC_COLUMNS]


def table_rows(spec: SweepSpec, cells: Sequence[tuple[str, Cell]], results: dict[str, Row]) -> list[Row]:
    rows = []
    for grid, cell in cells:
        result = results[cell.key]
        metrics, summary = result.get("metrics") or {}, result.get("summary") or {}
        rows.append({"grid": grid, "scenario": cell.scenario.name, "scenario_file": cell.scenario_file,
                     **{key: None for key in spec.override_keys}, **dict(cell.overrides),
                     "policy": cell.policy, "seed": cell.seed, "status": result["status"], "error": result["error"],
                     "cell": cell.key, **{key: metrics.get(key) for key in METRIC_KEYS if key != "label"},
                     **{key: summary.get(key) for key in SUMMARY_METRICS}})
    return rows


def write_table(spec: SweepSpec, rows: Sequence[Row], out: Path) -> tuple[Path, Path]:
    """results.parquet (typed columns) and results.csv (the same, floats to 4 decimals)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = table_columns(spec)
    types = {name: _column_type(name, [row[name] for row in rows]) for name in columns}
    plain = [{name: _plain(row[name], types[name]) for name in columns} for row in rows]
    schema = pa.schema([(name, types[name]) for name in columns])
    parquet = out / "results.parquet"
    pq.write_table(pa.Table.from_pylist(plain, schema=schema), parquet)
    return parquet, write_csv(out / "results.csv", plain, columns)


def _column_type(name: str, values: list[Any]) -> Any:
    import pyarrow as pa

    if name in ("grid", "scenario", "scenario_file", "policy", "status", "error", "cell"):
        return pa.string()
    if name == "seed":
        return pa.int64()
    if name in METRIC_COLUMNS:
        annotation = {f.name: str(f.type) for f in fields(RunMetrics)}.get(name, "float")
        return pa.int64() if annotation.startswith("int") else pa.float64()
    present = [value for value in values if value is not None]   # an overridden key: typed by its values
    if present and all(isinstance(value, bool) for value in present):
        return pa.bool_()
    if present and all(isinstance(value, int) and not isinstance(value, bool) for value in present):
        return pa.int64()
    if present and all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in present):
        return pa.float64()
    return pa.string()


def _plain(value: Any, arrow_type: Any) -> Any:
    """A value as its column holds it: non-text values of a text column become JSON."""
    import pyarrow as pa

    if value is None or arrow_type != pa.string() or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


# ------------------------------------------------------------------ report.md and summary.json
def report_markdown(spec: SweepSpec, rows: Sequence[Row], distinct: int) -> str:
    failed = [row for row in rows if row["status"] == FAILED]
    lines = [f"# Sweep: {spec.name}",
             f"`edgeoffload sweep {spec.path.name}` (edgeoffload {package_version()}): {len(rows)} cells, "
             f"{distinct} distinct simulations, {len(failed)} failed. Metrics count the frames captured after each "
             "scenario's warm-up; the full table is results.csv / results.parquet."]
    for grid in spec.grids:
        grid_rows = [row for row in rows if row["grid"] == grid.name]
        # escalations and answer agreement only where some cell has them (cascades, edge.answers)
        cascade = [column for column in CASCADE_COLUMNS if any(row.get(column.key) for row in grid_rows)]
        columns = [Column("scenario", "scenario"), *(Column(key, key) for key, _ in grid.overrides),
                   Column("policy", "policy"), *([Column("seed", "seed")] if len(grid.seeds) > 1 else []),
                   *POLICY_COLUMNS[1:], *cascade]
        lines += [f"## {grid.name}", markdown_table(grid_rows, columns)]
    if failed:
        lines += ["## Failed cells", markdown_table(failed, [Column(key, key) for key in
                                                             ("grid", "scenario", "policy", "seed", "error")])]
    return "\n\n".join(lines) + "\n"


def summary_json(spec: SweepSpec, rows: Sequence[Row], distinct: int) -> dict[str, Any]:
    return {"name": spec.name, "spec": spec.path.name, "edgeoffload": package_version(), "cells": len(rows),
            "distinct_cells": distinct, "ok": sum(row["status"] == OK for row in rows),
            "failed": sum(row["status"] == FAILED for row in rows),
            "grids": {grid.name: {"cells": sum(row["grid"] == grid.name for row in rows),
                                  "scenarios": list(grid.scenarios), "policies": list(grid.policies),
                                  "seeds": list(grid.seeds),
                                  "overrides": {key: list(values) for key, values in grid.overrides}}
                      for grid in spec.grids}}


# ------------------------------------------------------------------ plots
def seed_means(rows: Sequence[Row], spec: SweepSpec) -> list[Row]:
    """One point per (grid, scenario, overrides, policy): each metric's mean over the seeds
    that gave a value (None where none did), in first-appearance order."""
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for row in rows:
        if row["status"] == OK:
            variant = tuple(json.dumps(row[key], sort_keys=True) for key in spec.override_keys)
            groups.setdefault((row["grid"], row["scenario"], variant, row["policy"]), []).append(row)
    points = []
    for members in groups.values():
        point = {key: members[0][key] for key in ("grid", "scenario", "policy", *spec.override_keys)}
        for key in METRIC_COLUMNS:
            values = [row[key] for row in members if row[key] is not None]
            point[key] = sum(values) / len(values) if values else None
        points.append(point)
    return points


def family(policy: str) -> tuple[str, str]:
    """(family, parameter) of a policy spec: `queue-threshold:4` -> ("queue-threshold", "4")."""
    name, _, parameter = policy.partition(":")
    return (name, parameter) if name in BUILTINS else (policy, "")


def pareto_series(points: Sequence[Row], spec: SweepSpec, scenario: str, x_key: str,
                  scale: float) -> dict[str, list[tuple[float, float, str]]]:
    """Per grid, a line for each policy family with two or more points in `scenario`."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for point in points:
        if point["scenario"] == scenario:
            groups.setdefault((point["grid"], family(point["policy"])[0]), []).append(point)
    lines = {key: members for key, members in groups.items() if len(members) > 1}
    per_grid = Counter(grid for grid, _ in lines)
    series = {}
    for (grid, name), members in lines.items():
        label = grid if per_grid[grid] == 1 else f"{grid}: {name}"
        series[label] = [(point[x_key] * scale, point["p95_ms"], _varying(point, members, spec))
                         for point in members if point[x_key] is not None]
    return series


def _varying(point: Row, members: Sequence[Row], spec: SweepSpec) -> str:
    """What tells this point from the others of its line: the policy parameter, overrides."""
    parts = []
    if len({family(member["policy"])[1] for member in members}) > 1:
        parts.append(family(point["policy"])[1])
    for key in spec.override_keys:
        if len({json.dumps(member[key], sort_keys=True) for member in members}) > 1:
            parts.append(f"{key}={json.dumps(point[key])}")
    return ", ".join(parts)


def _with_overrides(name: str, point: Row, spec: SweepSpec) -> str:
    """`name`, followed by the point's values of the keys its grid sweeps (if any)."""
    grid = next(grid for grid in spec.grids if grid.name == point["grid"])
    shown = ", ".join(f"{key}={json.dumps(point[key])}" for key, values in grid.overrides if len(values) > 1)
    return f"{name} ({shown})" if shown else name


@dataclass(frozen=True, slots=True)
class PlotJob:
    """One plot to draw: `draw(path, *args, **kwargs)` is one of the analysis module's plot functions."""

    file: str
    draw: Callable[..., Path]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def render_png(job: PlotJob) -> bytes:
    """Draw `job` into a scratch file and return its bytes (on whichever worker runs it)."""
    with tempfile.TemporaryDirectory(prefix="edgeoffload-plot-") as folder:
        return job.draw(Path(folder) / job.file, *job.args, **job.kwargs).read_bytes()


def plot_jobs(spec: SweepSpec, rows: Sequence[Row]) -> list[PlotJob]:
    """Per scenario the two Pareto plots (when it has a swept family or a reference), and the
    per-policy bars of the compared grid."""
    points = seed_means(rows, spec)
    compared = [point for point in points if point["grid"] == spec.compare]
    jobs = []
    for scenario in dict.fromkeys(point["scenario"] for point in points):
        for x_key, scale, suffix, xlabel, title in PARETO_AXES:
            series = pareto_series(points, spec, scenario, x_key, scale)
            references = [(None if p[x_key] is None else p[x_key] * scale, p["p95_ms"],
                           _with_overrides(p["policy"], p, spec))
                          for p in compared if p["scenario"] == scenario and p["policy"] in spec.references]
            if series or references:
                jobs.append(PlotJob(f"pareto_{_file_name(scenario)}_{suffix}.png", plot_pareto,
                                    (series, xlabel, "p95 latency (ms)", f"{scenario}: {title}", references), {}))
    for key, label, file in BAR_PLOTS:
        values: dict[str, dict[str, float | None]] = {}
        for point in compared:
            values.setdefault(_with_overrides(point["scenario"], point, spec), {})[point["policy"]] = point[key]
        if values:
            jobs.append(PlotJob(file, plot_grouped_bars, (values, label, f"{label} per scenario and policy"),
                                {"log_scale": key == "p95_ms"}))
    return jobs


def start_plots(spec: SweepSpec, rows: Sequence[Row], engine: Engine) -> Iterator[tuple[PlotJob, Any]]:
    """Hand the plots to `engine`'s workers; they draw while the caller writes the table."""
    return engine.map_unordered(render_png, plot_jobs(spec, rows), key=lambda job: f"edgeoffload-plot-{uuid.uuid4().hex}")


def save_plots(drawn: Iterator[tuple[PlotJob, Any]], out: Path) -> list[Path]:
    """Write the plots into `out` as they are drawn. A plot that cannot be drawn (matplotlib
    missing) is reported on stderr; the sweep's other outputs stand."""
    written: list[Path] = []
    errors: Counter[str] = Counter()
    for job, png in drawn:
        if isinstance(png, BaseException):
            errors[f"{type(png).__name__}: {png}"] += 1
            continue
        path = out / job.file
        path.write_bytes(png)
        written.append(path)
    for error, count in errors.items():
        print(f"edgeoffload sweep: {count} plot(s) not drawn: {error}", file=sys.stderr)
    return sorted(written)


def _file_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "scenario"


# ------------------------------------------------------------------ everything
def write_outputs(spec: SweepSpec, cells: Sequence[tuple[str, Cell]], results: dict[str, Row], out: Path,
                  engine: Engine | None = None) -> list[Path]:
    """Every output file of the sweep into `out` (plots drawn on `engine`, none without one)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = table_rows(spec, cells, results)
    drawn = start_plots(spec, rows, engine) if engine is not None else None
    distinct = len({cell.key for _, cell in cells})
    written = list(write_table(spec, rows, out))
    report = out / "report.md"
    report.write_text(report_markdown(spec, rows, distinct), encoding="utf-8")
    summary = out / "summary.json"
    summary.write_text(json.dumps(summary_json(spec, rows, distinct), indent=2) + "\n", encoding="utf-8")
    written += [report, summary]
    if drawn is not None:
        written += save_plots(drawn, out)
    return written


__all__ = ["METRIC_COLUMNS", "PlotJob", "family", "pareto_series", "plot_jobs", "render_png", "report_markdown",
           "seed_means", "summary_json", "save_plots", "start_plots", "table_columns", "table_rows", "write_outputs", "write_table"]
