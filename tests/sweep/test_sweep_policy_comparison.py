"""The committed policy comparison is what its sweep spec gives (experiments/README.md)."""
from __future__ import annotations

import csv
from pathlib import Path

from edgeoffload.sweep.cells import run_cell
from edgeoffload.sweep.report import table_rows, write_table
from edgeoffload.sweep.spec import expand, load_spec

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "experiments" / "sweeps" / "policy_comparison.yaml"
RESULTS = ROOT / "experiments" / "results" / "policy_comparison"


def test_the_committed_table_comes_from_this_spec_and_reproduces(tmp_path: Path) -> None:
    spec = load_spec(SPEC)
    cells = expand(spec)
    committed = (RESULTS / "results.csv").read_text(encoding="utf-8").splitlines()
    rows = list(csv.DictReader(committed))
    # every committed row is the cell this spec, its scenario files and this version key
    assert [(row["grid"], row["scenario"], row["policy"], row["cell"]) for row in rows] == [
        (grid, cell.scenario.name, cell.policy, cell.key) for grid, cell in cells]
    assert all(row["status"] == "ok" for row in rows)
    # and a few of them, simulated again, give their committed lines byte for byte
    picked = [index for index, (grid, cell) in enumerate(cells) if cell.scenario.name == "low-load" and
              (grid, cell.policy) in {("policies", "random:0.5"), ("policies", "bandit:0.1"),
                                      ("queue-threshold:k", "queue-threshold:4"), ("deadline:s", "deadline:0.12"),
                                      ("cascades", "cascade:3.5"), ("cascades", "cascade-budget:0.2")}]
    assert len(picked) == 6
    subset = [cells[index] for index in picked]
    fresh = table_rows(spec, subset, {cell.key: run_cell(cell) for _, cell in subset})
    _, csv_path = write_table(spec, fresh, tmp_path)   # as the sweep writes it (overrides as JSON)
    lines = csv_path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == committed[0]
    assert lines[1:] == [committed[index + 1] for index in picked]
