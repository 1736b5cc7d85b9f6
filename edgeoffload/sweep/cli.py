"""`edgeoffload sweep SPEC.yaml --out DIR`: run a sweep's cells on Dask and write its outputs."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from edgeoffload.progress import ProgressBar
from edgeoffload.sweep import CELLS_FOLDER
from edgeoffload.sweep.cells import FAILED, CellStore
from edgeoffload.sweep.engine import Engine, run_cells
from edgeoffload.sweep.report import write_outputs
from edgeoffload.sweep.spec import Cell, expand, load_spec

LOG_EVERY_S = 30.0   # progress lines in a log (not a terminal): at most one per this many seconds


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", type=Path, help="sweep spec YAML (see experiments/sweeps/policy_comparison.yaml)")
    parser.add_argument("--out", type=Path, required=True,
                        help=f"output folder: results.parquet/.csv, report.md, plots; finished cells in OUT/{CELLS_FOLDER}/")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes of the embedded Dask cluster (default: one per core); "
                             "0 runs everything in this process, one cell after another")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="run on an existing Dask cluster, e.g. tcp://scheduler-host:8786 (its workers need "
                             "this edgeoffload version installed)")
    parser.add_argument("--no-plots", action="store_true", help="write the table, report.md and summary.json only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def read_results(store: CellStore, cells: Sequence[Cell]) -> dict[str, dict[str, Any]]:
    results = {}
    for cell in cells:
        result = store.load(cell.key)
        if result is None:
            raise ValueError(f"the result of cell {cell.key} could not be read back from {store.folder}")
        results[cell.key] = result
    return results


def run(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    cells = expand(spec)
    store = CellStore(args.out / CELLS_FOLDER)
    progress = None if args.no_progress else ProgressBar(sys.stderr, log_every_s=LOG_EVERY_S)
    with Engine(args.workers, args.scheduler) as engine:
        stats = run_cells([cell for _, cell in cells], store, engine, progress)
        results = read_results(store, [cell for _, cell in cells])
        write_outputs(spec, cells, results, args.out, None if args.no_plots else engine)
    failed = sum(result["status"] == FAILED for result in results.values())
    print(f"sweep {spec.name}: {len(cells)} cells, {len(results)} distinct: {stats.ran} run ({stats.wall_s:.1f} s on "
          f"{engine.description}), {stats.skipped} already done, {failed} failed -> {args.out}", file=sys.stderr)
    return 1 if failed else 0


__all__ = ["read_results", "register", "run"]
