"""`edgeoffload sweep`: outputs, failed cells, one-line errors."""
from __future__ import annotations

import csv
from pathlib import Path

from edgeoffload.cli import main


def test_failed_cells_are_recorded_and_the_sweep_goes_on(sweep_file: Path, tmp_path: Path, capsys) -> None:
    (sweep_file.parent / "my_policy.py").write_text("def decide(obs):\n    raise RuntimeError('no decision')\n")
    out = tmp_path / "out"
    assert main(["sweep", str(sweep_file), "--out", str(out), "--workers", "0", "--no-progress", "--no-plots"]) == 1
    rows = list(csv.DictReader((out / "results.csv").open()))
    failed = [row for row in rows if row["status"] == "failed"]
    assert len(rows) == 36 and len(failed) == 4 and {row["policy"] for row in failed} == {"my_policy.py:decide"}
    assert all(row["error"] == "RuntimeError: no decision" and row["p95_ms"] == "" for row in failed)
    assert all(row["p95_ms"] != "" for row in rows if row["status"] == "ok")
    assert "## Failed cells" in (out / "report.md").read_text() and not list(out.glob("*.png"))
    assert "36 cells, 36 distinct: 36 run" in capsys.readouterr().err
    # fixed: the failed cells (and only they) run again
    (sweep_file.parent / "my_policy.py").write_text("def decide(obs):\n    return obs.frame_id % 2 == 0\n")
    assert main(["sweep", str(sweep_file), "--out", str(out), "--workers", "0", "--no-progress", "--no-plots"]) == 0
    assert "4 run (" in capsys.readouterr().err   # the edited file changed those cells' keys: 4 new cells
    assert all(row["status"] == "ok" for row in csv.DictReader((out / "results.csv").open()))


def test_user_mistakes_are_one_line_errors(sweep_file: Path, tmp_path: Path, capsys) -> None:
    for argv, message in (
            (["sweep", str(tmp_path / "nope.yaml"), "--out", str(tmp_path)], "cannot read sweep spec"),
            (["sweep", str(sweep_file), "--out", str(tmp_path), "--workers", "-1"], "--workers must be >= 0"),
            (["sweep", str(sweep_file), "--out", str(tmp_path), "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"],
             "has its own workers")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("edgeoffload sweep: error: ") and message in err and err.count("\n") == 1
