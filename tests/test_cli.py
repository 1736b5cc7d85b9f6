"""The `edgeoffload` command line: version, help, and one-line errors for user mistakes."""
from __future__ import annotations

import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest


def edgeoffload(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeoffload.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_version() -> None:
    done = edgeoffload("--version")
    assert done.returncode == 0 and done.stdout == f"edgeoffload {metadata.version('edgeoffload')}\n"


def test_serve_help_states_the_default_workers_of_each_unit() -> None:
    text = " ".join(edgeoffload("serve", "--help").stdout.split())
    assert "else 1 for preprocessor and webserver" in text and "for inference the CPUs available, at most 4" in text


@pytest.mark.parametrize("command", ["demo", "up"])
def test_a_misspelt_policy_is_one_line_before_anything_starts(command: str, tmp_path: Path) -> None:
    began = time.monotonic()
    done = edgeoffload(command, "--policy", "min-latancy", "--workdir", str(tmp_path), "--port", "0",
                       "--web-port", "0")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"edgeoffload {command}: error: unknown policy 'min-latancy' (did you mean "
                                        "'min-latency'?): use a built-in (alternate, bandit, cascade, cascade-budget, "
                                        "cloud-only, deadline, edge-only, min-latency, queue-threshold, random), "
                                        "'module:attr' or "
                                        "'path/to/file.py:attr'"]
    assert not (tmp_path / "pids").exists()  # no process was started
    assert time.monotonic() - began < 30


def test_a_broken_policy_file_is_one_line_naming_file_and_line(tmp_path: Path) -> None:
    policy_file = tmp_path / "mine.py"
    policy_file.write_text("def estimate_to_cloud(obs)\n    return True\n")
    done = edgeoffload("demo", "--policy", f"{policy_file}:estimate_to_cloud", "--workdir", str(tmp_path / "w"))
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"edgeoffload demo: error: policy file {policy_file}:1: SyntaxError: ")
    assert not (tmp_path / "w" / "pids").exists()
