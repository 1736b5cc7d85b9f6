"""Running one cell (on whichever worker gets it) and keeping its result on disk.

A cell's result is a JSON object: its key, inputs, status (`ok` or `failed` with the
error), the comparable metrics and the simulator's whole summary. It holds nothing about
where or when it ran, so the same cell gives the same bytes sequentially, in parallel or
on a cluster. `CellStore` writes one file per cell as soon as it is finished (atomically,
flushed to disk), so a killed sweep loses only the cells that were running.
"""
from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from edgeoffload.analysis import from_summary
from edgeoffload.policy import Policy, load_policy
from edgeoffload.sim.engine import run_scenario
from edgeoffload.sweep.spec import Cell, package_version

OK, FAILED = "ok", "failed"


def fresh_policy(cell: Cell) -> Policy:
    """A policy object of the cell's own, seeded as run_scenario seeds a policy spec (from the
    scenario's seed): learning state never leaks from one cell into another that happens to
    run in the same worker process."""
    seed = cell.scenario.policy_seed
    source = cell.policy_source
    if source is None:
        # a module attribute may be a shared instance: copy it (built-ins are new anyway)
        return copy.deepcopy(load_policy(cell.policy, seed=seed))
    with tempfile.TemporaryDirectory(prefix="edgeoffload-policy-") as folder:
        path = Path(folder) / source.filename
        path.write_text(source.text, encoding="utf-8")
        return load_policy(f"{path}:{source.attr}", seed=seed)   # a policy file is executed anew on every load


def run_cell(cell: Cell) -> dict[str, Any]:
    """Simulate the cell; any exception is the cell's result (`failed`), never the sweep's."""
    try:
        summary = run_scenario(cell.scenario, fresh_policy(cell)).summary
        result = {**_head(cell), "status": OK, "error": "", "metrics": from_summary(summary, cell.policy).to_row(),
                  "summary": summary.to_dict()}
        result_json(result)   # refuses a non-finite number here, on the worker, as this cell's failure
    except Exception as exc:  # noqa: BLE001 - a broken policy or scenario fails its cell only
        return failed_result(cell, exc)
    return result


def failed_result(cell: Cell, exc: BaseException) -> dict[str, Any]:
    message = " ".join(str(exc).split())[:500]
    return {**_head(cell), "status": FAILED, "error": f"{type(exc).__name__}: {message}" if message
            else type(exc).__name__, "metrics": None, "summary": None}


def _head(cell: Cell) -> dict[str, Any]:
    return {"key": cell.key, "edgeoffload": package_version(), **cell.inputs()}


def result_json(result: dict[str, Any]) -> str:
    """The one text form of a result (sorted keys): what the store writes, byte for byte."""
    return json.dumps(result, indent=1, sort_keys=True, allow_nan=False) + "\n"


class CellStore:
    """`folder/<key>.json`, one finished cell each."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def load(self, key: str) -> dict[str, Any] | None:
        """The stored result of `key`, or None (absent, unreadable, or not that cell's)."""
        try:
            result = json.loads(self.path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return result if isinstance(result, dict) and result.get("key") == key else None

    def done(self, key: str) -> bool:
        """Finished successfully: a re-run skips it (failed cells are tried again)."""
        result = self.load(key)
        return result is not None and result.get("status") == OK

    def save(self, result: dict[str, Any]) -> Path:
        text = result_json(result)
        path = self.path(str(result["key"]))
        handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return path


__all__ = ["CellStore", "FAILED", "OK", "failed_result", "fresh_policy", "result_json", "run_cell"]
