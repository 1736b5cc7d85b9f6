"""Sweep specs: validation with errors naming the field, overrides, cells and their keys."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgeoffload.sweep import spec as sweep_spec
from edgeoffload.sweep.spec import SpecError, apply_override, expand, load_spec


def test_grids_expand_in_spec_order_with_the_top_level_as_defaults(sweep_file: Path) -> None:
    spec = load_spec(sweep_file)
    assert [grid.name for grid in spec.grids] == ["policies", "queue-threshold:k"]
    assert spec.grids[1].seeds == (1, 2) and spec.grids[1].scenarios == spec.grids[0].scenarios
    assert spec.override_keys == ("edge.workers",) and spec.compare == "policies"
    cells = expand(spec)
    assert len(cells) == 2 * 5 * 2 + 2 * 2 * 2 * 2
    first = [(grid, c.scenario.name, c.overrides, c.policy, c.seed) for grid, c in cells[:3]]
    assert first == [("policies", "calm", (), "edge-only", 1), ("policies", "calm", (), "edge-only", 2),
                     ("policies", "calm", (), "min-latency", 1)]
    qt = [c for grid, c in cells if grid == "queue-threshold:k"]
    assert {c.scenario.edge.workers for c in qt} == {1, 2}
    assert all(c.scenario.seed == c.seed for _, c in cells)
    assert len({c.key for _, c in cells}) == len(cells)


def test_a_cell_in_two_grids_is_one_cell(spec_with, tiny_spec) -> None:
    grids = tiny_spec["grids"]
    grids[1] = {"name": "again", "policies": ["min-latency"]}
    cells = expand(load_spec(spec_with(grids=grids)))
    keys = {grid: {c.key for g, c in cells if g == grid and c.policy == "min-latency"} for grid in ("policies", "again")}
    assert keys["policies"] == keys["again"] and len(keys["again"]) == 4


def keys_of(path: Path) -> list[str]:
    return [cell.key for _, cell in expand(load_spec(path))]


def test_the_key_covers_every_input(sweep_file: Path, monkeypatch) -> None:
    base = keys_of(sweep_file)
    assert keys_of(sweep_file) == base
    scenario = sweep_file.parent / "scenarios" / "calm.yaml"
    raw = yaml.safe_load(scenario.read_text())
    raw["cloud"]["workers"] = 3
    scenario.write_text(yaml.safe_dump(raw))
    changed = keys_of(sweep_file)
    assert changed[:10] != base[:10] and changed[10:20] == base[10:20]   # calm's cells only
    policy = sweep_file.parent / "my_policy.py"
    policy.write_text(policy.read_text() + "\n# edited\n")
    edited = keys_of(sweep_file)
    assert [k for k, c in zip(edited, changed) if k != c] == [edited[i] for i in (8, 9, 18, 19)]
    monkeypatch.setattr(sweep_spec, "package_version", lambda: "99.0")
    assert not set(keys_of(sweep_file)) & set(edited)


def test_the_key_covers_files_the_scenario_references(tmp_path: Path, make_sweep, tiny_spec) -> None:
    path = make_sweep(tmp_path, tiny_spec)
    trace = tmp_path / "scenarios" / "trace.csv"
    trace.write_text("time_s,camera,bytes\n0.5,a,20000\n1.0,a,30000\n")
    raw = yaml.safe_load((tmp_path / "scenarios" / "calm.yaml").read_text())
    raw["cameras"] = [{"name": "replayed", "trace": "trace.csv"}]
    (tmp_path / "scenarios" / "calm.yaml").write_text(yaml.safe_dump(raw))
    before = keys_of(path)
    trace.write_text("time_s,camera,bytes\n0.5,a,20000\n1.0,a,30001\n")
    after = keys_of(path)
    assert after[:10] != before[:10] and after[10:20] == before[10:20]


def test_keys_are_the_same_in_another_interpreter(sweep_file: Path) -> None:
    """No per-process hash randomisation reaches a key: a cluster's client and workers agree."""
    code = ("import json, sys; from edgeoffload.sweep.spec import expand, load_spec; "
            "print(json.dumps([c.key for _, c in expand(load_spec(sys.argv[1]))]))")
    runs = [subprocess.run([sys.executable, "-c", code, str(sweep_file)], check=True, capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")]
    assert json.loads(runs[0]) == json.loads(runs[1]) == keys_of(sweep_file)


def test_overrides_set_dotted_keys() -> None:
    raw = {"edge": {"workers": 1}, "cameras": [{"fps": 10}, {"fps": 5}]}
    assert apply_override(raw, "edge.workers", 4)["edge"] == {"workers": 4}
    assert apply_override(raw, "cameras.1.fps", 2)["cameras"] == [{"fps": 10}, {"fps": 2}]
    assert apply_override(raw, "cameras.*.deadline_ms", None)["cameras"] == [
        {"fps": 10, "deadline_ms": None}, {"fps": 5, "deadline_ms": None}]
    assert apply_override(raw, "observer.ewma_alpha", 0.5)["observer"] == {"ewma_alpha": 0.5}
    assert raw == {"edge": {"workers": 1}, "cameras": [{"fps": 10}, {"fps": 5}]}   # not changed in place
    with pytest.raises(ValueError, match="cameras is a list of 2 item"):
        apply_override(raw, "cameras.fps", 2)
    with pytest.raises(ValueError, match=r"index it with 0 to 1 or \*, not .2."):
        apply_override(raw, "cameras.2.fps", 2)


@pytest.mark.parametrize("changes, message", [
    ({"seeds": None}, r"^grids\[0\]\.seeds: is required"),
    ({"seeds": [1, True]}, r"^grids\[0\]\.seeds\[1\]: must be an integer >= 0"),
    ({"seeds": [3, 3]}, r"^grids\[0\]\.seeds\[1\]: 3 is listed twice"),
    ({"scenarios": ["scenarios/calm.yaml", "scenarios/nope.yaml"]}, r"^grids\[0\]\.scenarios\[1\]: no such scenario file"),
    ({"colour": "blue"}, r"^colour: unknown key"),
    ({"grids": []}, r"^grids: must be a non-empty list"),
    ({"grids": [{"policies": ["edge-only"]}]}, r"^grids\[0\]\.name: is required"),
    ({"grids": [{"name": "a", "policies": ["nonsense"]}], "report": None}, r"^grids\[0\]\.policies\[0\]: unknown policy"),
    ({"grids": [{"name": "a", "policies": ["nope.py:decide"]}], "report": None},
     r"^grids\[0\]\.policies\[0\]: policy file not found"),
    ({"grids": [{"name": "a", "policies": ["edge-only"]}, {"name": "a", "policies": ["cloud-only"]}], "report": None},
     r"^grids\[1\]\.name: 'a' is used twice"),
    ({"grids": [{"name": "a", "policies": ["edge-only"], "overrides": {"edge.workers": 2}}]},
     r"^grids\[0\]\.overrides\.edge\.workers: must be a non-empty list"),
    ({"grids": [{"name": "a", "policies": ["edge-only"], "overrides": {"seed": [1]}}]},
     r"^grids\[0\]\.overrides\.seed: a cell's seed comes from `seeds`"),
    ({"report": {"compare": "nope"}}, r"^report\.compare: must name a grid \(policies, queue-threshold:k\)"),
    ({"report": {"references": ["cloud-only"]}}, r"^report\.references\[0\]: 'cloud-only' is not a policy of grid"),
])
def test_bad_specs_name_the_field(spec_with, changes, message) -> None:
    with pytest.raises(SpecError, match=message):
        load_spec(spec_with(**changes))


@pytest.mark.parametrize("grid, message", [
    ({"name": "a", "policies": ["edge-only"], "overrides": {"edge.workers": [1, 0]}},
     r"^grids\[0\]\.scenarios\[0\]: calm\.yaml with edge\.workers=0: edge\.workers: must be >= 1$"),
    ({"name": "a", "policies": ["edge-only"], "overrides": {"edge.wrokers": [1]}},
     r"^grids\[0\]\.scenarios\[0\]: calm\.yaml with edge\.wrokers=1: edge\.wrokers: unknown key"),
    ({"name": "a", "policies": ["edge-only"], "overrides": {"cameras.3.fps": [1]}},
     r"^grids\[0\]\.scenarios\[0\]: calm\.yaml with cameras\.3\.fps=1: cameras is a list of 1 item"),
    ({"name": "a", "policies": ["edge-only"], "overrides": {"name": ["same"]}},
     r"^grids\[0\]\.scenarios\[1\]: scenarios/busy\.yaml and scenarios/calm\.yaml are both named 'same'"),
])
def test_overrides_that_break_a_scenario_name_the_grid_file_and_field(spec_with, grid, message) -> None:
    with pytest.raises(SpecError, match=message):
        expand(load_spec(spec_with(grids=[grid], report={})))


def test_a_spec_without_grids_is_one_grid_named_after_it(spec_with) -> None:
    path = spec_with(grids=None, report=None, policies=["edge-only", "cloud-only"], overrides={"wan.rtt_ms": [10, 90]})
    spec = load_spec(path)
    assert [grid.name for grid in spec.grids] == ["tiny"] and spec.references == ()
    assert len(expand(spec)) == 2 * 2 * 2 * 2
    with pytest.raises(SpecError, match=r"^policies: is required: a non-empty list$"):
        load_spec(spec_with(grids=None, report=None, policies=None))
    with pytest.raises(SpecError, match=r"^scenarios\[0\]: calm\.yaml with wan\.rtt_ms=-1: wan\.rtt_ms: must be >= 0"):
        expand(load_spec(spec_with(grids=None, report=None, policies=["edge-only"], overrides={"wan.rtt_ms": [-1]})))


def test_unreadable_specs_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read sweep spec"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("grids: [\n")
    with pytest.raises(SpecError, match=r"bad\.yaml is not valid YAML") as error:
        load_spec(bad)
    assert "\n" not in str(error.value)


def test_a_policy_file_that_fails_to_load_is_a_one_line_error(spec_with) -> None:
    path = spec_with(grids=[{"name": "a", "policies": ["broken.py:decide"]}], report=None)
    (path.parent / "broken.py").write_text("import no_such_module_here\n")
    broken = re.escape(str((path.parent / "broken.py").resolve()))
    with pytest.raises(SpecError, match=rf"^grids\[0\]\.policies\[0\]: policy file {broken}:1: ModuleNotFoundError: "
                                        r"No module named 'no_such_module_here'$"):
        load_spec(path)
