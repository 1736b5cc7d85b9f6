"""Running one cell and storing its result."""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from edgeoffload.sim import run_scenario
from edgeoffload.sweep.cells import CellStore, fresh_policy, result_json, run_cell
from edgeoffload.sweep.spec import expand, load_spec


def cell_of(sweep_file: Path, policy: str, seed: int = 1):
    return next(cell for grid, cell in expand(load_spec(sweep_file))
                if grid == "policies" and cell.policy == policy and cell.seed == seed)


def test_a_cell_is_the_simulation_of_its_inputs(sweep_file: Path) -> None:
    cell = cell_of(sweep_file, "bandit:0.2")
    result = run_cell(cell)
    direct = run_scenario(cell.scenario, "bandit:0.2").summary     # the spec: seeded from the scenario
    assert result["status"] == "ok" and result["error"] == ""
    assert result["summary"] == json.loads(json.dumps(direct.to_dict()))
    assert result["metrics"]["label"] == "bandit:0.2" and result["metrics"]["p95_ms"] == direct.p95_ms
    assert (result["key"], result["scenario"], result["seed"], result["overrides"]) == (cell.key, "calm", 1, {})
    assert result_json(run_cell(cell)) == result_json(result)   # the same bytes every time


def test_each_cell_gets_a_fresh_policy(sweep_file: Path, tmp_path: Path, monkeypatch) -> None:
    # a policy file keeps module-level state: a fresh module per cell
    cell = cell_of(sweep_file, "my_policy.py:decide")
    assert result_json(run_cell(cell)) == result_json(run_cell(cell))
    assert run_cell(cell)["metrics"]["cloud_share"] == pytest.approx(1 / 3, abs=0.02)
    # a module attribute that is an instance is copied, never used (or changed) itself
    (tmp_path / "shared_policy.py").write_text(
        "from edgeoffload.policy import EpsilonGreedy\nPOLICY = EpsilonGreedy(0.3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    shared = replace(cell, policy="shared_policy:POLICY", policy_source=None)
    first, second = run_cell(shared), run_cell(shared)
    assert first["status"] == "ok" and result_json(first) == result_json(second)
    assert sys.modules["shared_policy"].POLICY._count == {}
    assert fresh_policy(shared) is not fresh_policy(shared)


def test_a_failing_cell_is_a_result_not_an_exception(sweep_file: Path) -> None:
    cell = cell_of(sweep_file, "my_policy.py:decide")
    broken = replace(cell, policy_source=replace(cell.policy_source, text="def decide(obs):\n    return 1 / 0\n"))
    result = run_cell(broken)
    assert result["status"] == "failed" and result["error"] == "ZeroDivisionError: division by zero"
    assert result["metrics"] is None and result["summary"] is None and result["key"] == cell.key


def test_the_store_keeps_results_by_key(tmp_path: Path, sweep_file: Path) -> None:
    store = CellStore(tmp_path / "cells")
    cell = cell_of(sweep_file, "edge-only")
    assert store.load(cell.key) is None and not store.done(cell.key)
    path = store.save(run_cell(cell))
    assert path == tmp_path / "cells" / f"{cell.key}.json" and store.done(cell.key)
    assert path.read_text() == result_json(store.load(cell.key))
    assert [p.name for p in (tmp_path / "cells").iterdir()] == [path.name]   # no temporary file left
    path.write_text(path.read_text()[:50])                                   # torn: run again
    assert store.load(cell.key) is None and not store.done(cell.key)
    store.save({**json.loads(result_json(run_cell(cell))), "status": "failed"})
    assert store.load(cell.key) is not None and not store.done(cell.key)      # failed cells are tried again
    path.rename(store.path("0" * 32))
    assert store.load("0" * 32) is None                                      # a file must hold its own key
