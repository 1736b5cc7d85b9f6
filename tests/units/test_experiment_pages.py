"""Experiment result folders: tables from summary.json and CSV, listing, and path-safe file lookup."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edgeoffload.units.experiment_pages import (
    MAX_TABLE_ROWS,
    ExperimentResults,
    NotFound,
    csv_table,
    format_cell,
    is_plain_name,
    json_tables,
)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


def make_results(root: Path) -> Path:
    folder = root / "policies-2026"
    (folder / "plots").mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({
        "scenario": "two-sites", "seed": 7,
        "policies": {"edge-only": {"p95_ms": 120.123456, "drop_rate": 0.0},
                     "min-latency": {"p95_ms": 48.5, "drop_rate": 0.01}}}))
    (folder / "latency.csv").write_text("policy,p50_ms\nedge-only,80.123456\nmin-latency,30\n")
    (folder / "plots" / "latency.png").write_bytes(PNG)
    (folder / ".hidden.png").write_bytes(PNG)
    (folder / "notes.py").write_text("print('not served')")
    return folder


def test_json_shapes_become_tables() -> None:
    scalars = json_tables({"a": 1, "b": "x"}, "s.json")
    assert [(t.title, t.columns, t.rows) for t in scalars] == [("s.json", ["key", "value"], [["a", "1"], ["b", "x"]])]
    records = json_tables([{"p": "edge", "x": 1}, {"p": "cloud", "y": 2.5}], "r.json")
    assert records[0].columns == ["p", "x", "y"] and records[0].rows == [["edge", "1", ""], ["cloud", "", "2.5"]]
    named = json_tables({"edge-only": {"p95": 1.0}, "cloud-only": {"p95": 2.0}}, "n.json")
    assert named[0].columns == ["name", "p95"] and named[0].rows == [["edge-only", "1.0"], ["cloud-only", "2.0"]]
    mixed = json_tables({"seed": 7, "policies": {"a": {"x": 1}}}, "m.json")
    assert [t.title for t in mixed] == ["m.json", "m.json › policies"]


def test_cells_are_readable() -> None:
    assert format_cell(0.123456789) == "0.123"
    assert format_cell(1234567.891) == "1,234,567.891"
    assert format_cell(0.0000123) == "1.23e-05"
    assert format_cell(True) == "true" and format_cell(None) == ""
    assert format_cell({"k": [1, 2]}) == '{"k":[1,2]}'
    assert len(format_cell("x" * 1000)) == 200


def test_csv_tables_are_truncated(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    path.write_text("n,v\n" + "".join(f"{i},{i / 3}\n" for i in range(MAX_TABLE_ROWS + 10)))
    table = csv_table(path, "big.csv")
    assert table.truncated and len(table.rows) == MAX_TABLE_ROWS
    assert table.rows[1] == ["1", "0.333"]


def test_listing_and_page(tmp_path: Path) -> None:
    make_results(tmp_path)
    (tmp_path / "empty-run").mkdir()
    (tmp_path / ".git").mkdir()
    results = ExperimentResults(tmp_path)
    assert {e.name for e in results.entries()} == {"policies-2026", "empty-run"}
    page = results.page("policies-2026")
    assert page.plots == ["plots/latency.png"]
    assert page.downloads == ["latency.csv", "summary.json"]
    assert [t.title for t in page.tables] == ["summary.json", "summary.json › policies", "latency.csv"]
    assert page.tables[1].rows[0] == ["edge-only", "120.123", "0.0"]
    assert page.tables[1].numeric_columns == [False, True, True]
    assert page.tables[0].numeric_columns == [False, False]  # "two-sites" and "7" share a column
    assert ExperimentResults(tmp_path / "missing").entries() == []


def test_a_sweeps_cell_store_is_not_shown(tmp_path: Path) -> None:
    folder = make_results(tmp_path)
    (folder / "cells").mkdir()
    for index in range(300):   # more than MAX_FILES: they would crowd out the plots
        (folder / "cells" / f"{index:032x}.json").write_text('{"key": "x"}')
    page = ExperimentResults(tmp_path).page("policies-2026")
    assert page.plots == ["plots/latency.png"] and page.downloads == ["latency.csv", "summary.json"]
    assert [t.title for t in page.tables] == ["summary.json", "summary.json › policies", "latency.csv"]


def test_a_broken_summary_is_reported_not_fatal(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "summary.json").write_text("{not json")
    page = ExperimentResults(tmp_path).page("broken")
    assert page.tables == [] and page.notes and page.notes[0].startswith("summary.json:")


def test_files_resolve_only_inside_the_experiment(tmp_path: Path) -> None:
    root = tmp_path / "results"
    folder = make_results(root)
    secret = tmp_path / "secret.png"
    secret.write_bytes(PNG)
    os.symlink(secret, folder / "escape.png")
    os.symlink(tmp_path, folder / "outside")
    results = ExperimentResults(root)
    path, media_type = results.resolve_file("policies-2026", "plots/latency.png")
    assert path == (folder / "plots" / "latency.png").resolve() and media_type == "image/png"
    for name, relative in [("policies-2026", "../../secret.png"), ("policies-2026", "escape.png"),
                           ("policies-2026", "outside/secret.png"), ("policies-2026", ".hidden.png"),
                           ("policies-2026", "notes.py"), ("policies-2026", "/etc/passwd"),
                           ("policies-2026", "plots//latency.png"), ("..", "results/policies-2026/summary.json"),
                           ("policies-2026", "plots/../summary.json"), ("nope", "summary.json")]:
        with pytest.raises(NotFound):
            results.resolve_file(name, relative)


@pytest.mark.parametrize("name,plain", [("run-1.v2", True), ("..", False), (".env", False), ("a/b", False),
                                        ("", False), ("a b", False), ("x" * 129, False)])
def test_plain_names(name: str, plain: bool) -> None:
    assert is_plain_name(name) is plain


def test_timestamps_are_shown_as_times(tmp_path: Path) -> None:
    path = tmp_path / "records.csv"
    path.write_text("camera,frame_id,captured_at,t_total_ms\ncam0,1,1796283603.633,41.5\n")
    table = csv_table(path, "records.csv")
    assert table.rows == [["cam0", "1", "2026-12-03 07:40:03.633 UTC", "41.5"]]
    assert format_cell(1796283603.633, "generated_at") == "2026-12-03 07:40:03.633 UTC"
    assert format_cell(12.5, "started_at") == "12.5"           # seconds since a run's start, not a date
    assert format_cell(1796283603.633, "bytes") == "1,796,283,603.633"  # only *_at columns are instants
    (scalars,) = json_tables({"generated_at": 1796283603.633, "frames": 12}, "summary.json")
    assert scalars.rows == [["generated_at", "2026-12-03 07:40:03.633 UTC"], ["frames", "12"]]


def test_several_results_folders_are_listed_together_the_first_winning(tmp_path: Path) -> None:
    own, committed = tmp_path / "own", tmp_path / "committed"
    for root, name, note in ((own, "demo", "own"), (committed, "demo", "committed"), (committed, "sweep", "c")):
        (root / name).mkdir(parents=True)
        (root / name / "summary.json").write_text(json.dumps({"from": note}))
    results = ExperimentResults([own, tmp_path / "missing", committed])
    assert sorted(e.name for e in results.entries()) == ["demo", "sweep"]
    assert results.page("demo").tables[0].rows == [["from", "own"]]
    assert results.page("sweep").tables[0].rows == [["from", "c"]]
    assert results.resolve_file("sweep", "summary.json")[0] == (committed / "sweep" / "summary.json").resolve()
    with pytest.raises(NotFound):
        results.page("missing")
