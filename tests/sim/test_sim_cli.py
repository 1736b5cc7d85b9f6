"""`edgeoffload sim`: arguments, outputs, progress bar."""
from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest
import yaml

from edgeoffload.progress import ProgressBar
from edgeoffload.records import read_records
from edgeoffload.sim import cli

from conftest import SMALL


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="edgeoffload sim")
    cli.register(parser)
    return cli.run(parser.parse_args(argv))


@pytest.fixture
def scenario_file(tmp_path: Path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    return path


def test_writes_summary_and_records(scenario_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert run_cli([str(scenario_file), "--policy", "alternate", "--seed", "9", "--out", str(out),
                    "--records", "csv", "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["policy"], summary["seed"], summary["frames"]) == ("alternate", 9, 800)
    assert sum(1 for _ in read_records(out / "records.csv")) == 800
    printed = capsys.readouterr()
    assert "cloud 50.00 %" in printed.out and "frames/s" in printed.err


def test_seed_override_changes_the_run(scenario_file: Path, tmp_path: Path) -> None:
    for seed in ("1", "2"):
        run_cli([str(scenario_file), "--seed", seed, "--out", str(tmp_path / seed), "--no-progress"])
    first, second = (json.loads((tmp_path / s / "summary.json").read_text()) for s in ("1", "2"))
    assert first["mean_ms"] != second["mean_ms"]
    assert not (tmp_path / "1" / "records.csv").exists()   # records only when asked


def test_bad_input_is_a_value_error(scenario_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs --out"):
        run_cli([str(scenario_file), "--records", "csv"])
    with pytest.raises(ValueError, match="unknown policy"):
        run_cli([str(scenario_file), "--policy", "nonsense"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**SMALL, "duration_s": 0}))
    with pytest.raises(ValueError, match="duration_s: must be > 0"):
        run_cli([str(bad)])


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_draws_on_a_terminal_only() -> None:
    terminal = FakeTerminal()
    bar = cli.simulated_time_progress(ProgressBar(terminal, width=10))
    bar(0.0, 100.0)
    bar(50.0, 100.0)     # within 0.1 s of the last draw: skipped
    bar(100.0, 100.0)    # the final state is always drawn
    text = terminal.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n")
    assert "[##########] 100.0 % 100/100 s simulated" in text
    log = io.StringIO()
    cli.simulated_time_progress(ProgressBar(log))(100.0, 100.0)
    assert log.getvalue() == ""
