"""Where cells run: this process, a real LocalCluster, and real `dask scheduler` + `dask worker`
processes on loopback. The same sweep gives the same bytes in all three; cells survive a kill."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import dask
import pytest

from edgeoffload.cli import main
from edgeoffload.serve import free_port
from edgeoffload.sweep import engine as sweep_engine
from edgeoffload.sweep.cells import CellStore
from edgeoffload.sweep.engine import Engine, check_versions, pending, run_cells
from edgeoffload.sweep.spec import expand, load_spec

DASK = Path(sys.executable).with_name("dask")


def sweep(spec: Path, out: Path, *options: str) -> int:
    return main(["sweep", str(spec), "--out", str(out), "--no-progress", *options])


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory) -> Iterator[str]:
    """A real scheduler and a real worker command (two worker processes) on loopback, free ports."""
    folder = tmp_path_factory.mktemp("dask")
    scheduler_file = folder / "scheduler.json"
    logs = (folder / "scheduler.log").open("w"), (folder / "worker.log").open("w")
    scheduler = subprocess.Popen([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                  "--dashboard-address", "127.0.0.1:0",
                                  "--scheduler-file", str(scheduler_file)], stdout=logs[0], stderr=subprocess.STDOUT)
    worker = None
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and scheduler.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert scheduler_file.exists(), (folder / "scheduler.log").read_text()
        address = json.loads(scheduler_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        worker = subprocess.Popen([str(DASK), "worker", address, "--nworkers", "2", "--nthreads", "1", "--host",
                                   "127.0.0.1", "--no-dashboard", "--local-directory", str(folder / "work")],
                                  stdout=logs[1], stderr=subprocess.STDOUT)
        yield address
    finally:
        for process in (worker, scheduler):
            if process is not None:
                stop(process)
        for log in logs:
            log.close()


@pytest.fixture(scope="module")
def in_process_outputs(tmp_path_factory, make_sweep) -> tuple[Path, dict[str, bytes]]:
    """The tiny sweep run in this process, one cell after another: the reference bytes."""
    folder = tmp_path_factory.mktemp("sequential")
    spec = make_sweep(folder / "sweep", None)
    assert sweep(spec, folder / "out", "--workers", "0") == 0
    return spec, folder_bytes(folder / "out")


def test_a_local_cluster_gives_the_same_bytes_as_one_process(in_process_outputs, tmp_path: Path, capsys) -> None:
    spec, expected = in_process_outputs
    assert sweep(spec, tmp_path / "out", "--workers", "2") == 0
    assert "on a local Dask cluster of 2 worker process(es))" in capsys.readouterr().err
    produced = folder_bytes(tmp_path / "out")
    assert sorted(produced) == sorted(expected)
    assert len([name for name in produced if name.startswith("cells/")]) == 36
    assert {name for name in produced if name.endswith(".png")} == {
        "pareto_calm_uplink.png", "pareto_calm_cloud_share.png", "pareto_busy_uplink.png",
        "pareto_busy_cloud_share.png", "p95_by_policy.png", "cloud_share_by_policy.png"}
    assert produced == expected   # cells, table, report and plots (drawn on the workers), byte for byte


def test_a_dask_cluster_by_address_gives_the_same_bytes(in_process_outputs, dask_cluster: str, tmp_path: Path,
                                                        capsys) -> None:
    spec, expected = in_process_outputs
    assert sweep(spec, tmp_path / "out", "--scheduler", dask_cluster) == 0
    assert folder_bytes(tmp_path / "out") == expected
    err = capsys.readouterr().err
    assert "36 run (" in err and f"on the Dask cluster at {dask_cluster})" in err


def test_a_cell_that_kills_its_worker_fails_alone(make_sweep, tiny_spec, tmp_path: Path) -> None:
    spec_file = make_sweep(tmp_path / "sweep", {**tiny_spec, "seeds": [1], "grids": [tiny_spec["grids"][0]]})
    (tmp_path / "sweep" / "my_policy.py").write_text("import os\n\n\ndef decide(obs):\n    os._exit(3)\n")
    cells = [cell for _, cell in expand(load_spec(spec_file))]
    store = CellStore(tmp_path / "cells")
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), Engine(workers=2) as engine:
        stats = run_cells(cells, store, engine)
    results = {cell.policy: store.load(cell.key) for cell in cells}
    assert stats.ran == 10 and stats.failed == 2
    assert {policy for policy, result in results.items() if result["status"] == "failed"} == {"my_policy.py:decide"}
    assert results["my_policy.py:decide"]["error"].startswith("KilledWorker")


def test_a_killed_sweep_resumes_where_it_stopped(make_sweep, tiny_spec, tmp_path: Path) -> None:
    slow = "import time\n\nSTARTED = []\n\n\ndef decide(obs):\n    if not STARTED:\n        STARTED.append(time.sleep(0.3))\n    return False\n"
    spec_file = make_sweep(tmp_path / "sweep", {**tiny_spec, "seeds": list(range(8)), "scenarios": ["scenarios/calm.yaml"],
                                                "grids": [{"name": "slow", "policies": ["my_policy.py:decide"]}],
                                                "report": {}})
    (tmp_path / "sweep" / "my_policy.py").write_text(slow)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "edgeoffload.cli", "sweep", str(spec_file), "--out", str(out), "--workers", "0",
               "--no-plots"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while len(list((out / "cells").glob("*.json"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        stop(process)
    kept = len(list((out / "cells").glob("*.json")))
    assert 2 <= kept < 8 and not (out / "results.csv").exists()
    finished = subprocess.run(command, stderr=subprocess.PIPE, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert f"{8 - kept} run (" in finished.stderr and f"{kept} already done" in finished.stderr
    assert sweep(spec_file, tmp_path / "fresh", "--workers", "0", "--no-plots") == 0
    assert folder_bytes(out) == folder_bytes(tmp_path / "fresh")


def test_a_grown_spec_runs_only_its_new_cells(make_sweep, tiny_spec, tmp_path: Path) -> None:
    spec_file = make_sweep(tmp_path / "sweep", {**tiny_spec, "seeds": [1]})
    store = CellStore(tmp_path / "cells")
    with Engine(workers=0) as engine:
        first = run_cells([c for _, c in expand(load_spec(spec_file))], store, engine)
        spec_file = make_sweep(tmp_path / "sweep", {**tiny_spec, "seeds": [1, 2]})
        grown = [c for _, c in expand(load_spec(spec_file))]
        second = run_cells(grown, store, engine)
    assert (first.ran, first.skipped) == (18, 0)
    assert (second.ran, second.skipped) == (18, 18) and pending(grown, store) == []
    with Engine(workers=2) as engine:       # nothing left to run: no cluster is started for it
        assert run_cells(grown, store, engine).ran == 0 and not engine.started


def test_cells_run_longest_first(sweep_file: Path, tmp_path: Path) -> None:
    order = [cell.scenario.name for cell in pending([c for _, c in expand(load_spec(sweep_file))],
                                                    CellStore(tmp_path / "cells"))]
    assert order == ["busy"] * 18 + ["calm"] * 18


def test_engine_arguments_and_cluster_checks(monkeypatch) -> None:
    with pytest.raises(ValueError, match="--workers must be >= 0"):
        Engine(workers=-1)
    with pytest.raises(ValueError, match="an existing cluster .--scheduler. has its own workers"):
        Engine(workers=2, scheduler="tcp://127.0.0.1:1")
    with pytest.raises(ValueError, match=r"worker tcp://w2 runs edgeoffload 0\.0\.1, this sweep"):
        check_versions({"tcp://w1": sweep_engine.package_version(), "tcp://w2": "0.0.1"})
    monkeypatch.setattr(sweep_engine, "CONNECT_TIMEOUT_S", 1.0)
    address = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(ValueError, match=f"cannot reach the Dask scheduler at {address}"):
        with Engine(scheduler=address) as engine:
            list(engine.map_unordered(len, ["x"], key=str))
