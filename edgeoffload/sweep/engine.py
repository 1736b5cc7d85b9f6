"""Where a sweep's work runs: Dask distributed (an embedded LocalCluster, or an existing
cluster by address), or this process one item after another (for debugging).

The cells go to the workers longest first, so the last ones to finish are short; each result
is stored as it arrives. Cells whose result is already stored are not run again: a sweep
that was stopped continues, and a spec that grew runs only its new cells. The plots are
drawn on the same workers afterwards.
"""
from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from edgeoffload.progress import ProgressBar
from edgeoffload.sweep.cells import FAILED, CellStore, failed_result, run_cell
from edgeoffload.sweep.spec import Cell, package_version

CONNECT_TIMEOUT_S = 20.0
WORKERS_TIMEOUT_S = 60.0
Item = TypeVar("Item")


class Engine:
    """`map_unordered(function, items, key)` on Dask or in this process. The Dask client (and the
    embedded cluster) starts at the first map, so a sweep with nothing left to run starts none."""

    def __init__(self, workers: int | None = None, scheduler: str | None = None) -> None:
        if workers is not None and workers < 0:
            raise ValueError("--workers must be >= 0")
        if scheduler is not None and workers is not None:
            raise ValueError("--workers sizes the embedded cluster; an existing cluster (--scheduler) has its own workers")
        self.workers = _cores() if workers is None and scheduler is None else (workers or 0)
        self.scheduler = scheduler
        self._stack = ExitStack()
        self._client: Any = None

    @property
    def started(self) -> bool:
        """Whether a Dask client (and the embedded cluster) was started."""
        return self._client is not None

    @property
    def in_process(self) -> bool:
        return self.scheduler is None and self.workers == 0

    @property
    def description(self) -> str:
        if self.scheduler is not None:
            return f"the Dask cluster at {self.scheduler}"
        return "this process" if self.in_process else f"a local Dask cluster of {self.workers} worker process(es)"

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stack.close()

    def map_unordered(self, function: Callable[[Item], Any], items: Sequence[Item],
                      key: Callable[[Item], str]) -> Iterator[tuple[Item, Any]]:
        """(item, function(item)) as each finishes; an exception raised by the call (or the loss
        of its worker) takes the place of its result. On Dask the calls are submitted at once, so
        the workers start while the caller does something else before reading the results."""
        if not items:
            return iter(())
        if self.in_process:
            return _call_each(function, items)
        client = self._connect()
        futures = {client.submit(function, item, key=key(item), retries=0): item for item in items}
        return _as_completed(futures)

    def _connect(self) -> Any:
        if self._client is None:
            client = self._local_client() if self.scheduler is None else self._remote_client(self.scheduler)
            self._client = self._stack.enter_context(client)
        return self._client

    def _local_client(self) -> Any:
        """An embedded LocalCluster: worker processes of one thread each (a simulation is pure
        Python, threads would share one GIL), on loopback ports the system picks. Each worker holds
        one task at a time, so the queue stays longest-first, and a worker that dies takes down
        only the cell it was running."""
        import dask
        from distributed import Client, LocalCluster

        with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
            cluster = self._stack.enter_context(LocalCluster(
                n_workers=self.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR))
        return Client(cluster)

    def _remote_client(self, address: str) -> Any:
        from distributed import Client

        try:
            client = Client(address, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ValueError(f"cannot reach the Dask scheduler at {address}: {' '.join(str(exc).split())}") from None
        try:
            client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
            check_versions(client.run(package_version))
        except TimeoutError:
            client.close()
            raise ValueError(f"no Dask worker joined {address} within {WORKERS_TIMEOUT_S:g} s") from None
        except BaseException:
            client.close()
            raise
        return client


def _call_each(function: Callable[[Item], Any], items: Sequence[Item]) -> Iterator[tuple[Item, Any]]:
    for item in items:
        try:
            yield item, function(item)
        except Exception as exc:  # noqa: BLE001 - handed to the caller like a lost worker's error
            yield item, exc


def _as_completed(futures: dict[Any, Item]) -> Iterator[tuple[Item, Any]]:
    from distributed import as_completed

    for future in as_completed(futures):
        try:
            yield futures[future], future.result()
        except Exception as exc:  # noqa: BLE001 - the task raised, or its worker died (KilledWorker)
            yield futures[future], exc
        finally:
            future.release()


def _cores() -> int:
    """The cores this process may use (CPU affinity and container limits, as Dask counts them)."""
    from dask.system import cpu_count

    return max(1, cpu_count())


def check_versions(worker_versions: dict[str, str]) -> None:
    """Results are keyed by the package version: every worker must run this one."""
    mine = package_version()
    for worker, version in sorted(worker_versions.items()):
        if version != mine:
            raise ValueError(f"Dask worker {worker} runs edgeoffload {version}, this sweep {mine}: "
                             "install the same version on every worker")


@dataclass(frozen=True, slots=True)
class RunStats:
    ran: int
    skipped: int
    failed: int
    wall_s: float


def pending(cells: Iterable[Cell], store: CellStore) -> list[Cell]:
    """The distinct cells without a stored successful result, longest first."""
    distinct = {cell.key: cell for cell in cells}
    todo = [cell for key, cell in distinct.items() if not store.done(key)]
    return sorted(todo, key=lambda cell: -cell.expected_frames)


def run_cells(cells: Sequence[Cell], store: CellStore, engine: Engine, progress: ProgressBar | None = None) -> RunStats:
    """Run every cell not yet in `store` on `engine`, storing each result as it arrives."""
    distinct = len({cell.key for cell in cells})
    todo = pending(cells, store)
    started = time.perf_counter()
    failed = 0
    results = engine.map_unordered(run_cell, todo, key=lambda cell: f"edgeoffload-cell-{cell.key}")
    for done, (cell, result) in enumerate(results, start=1):
        if isinstance(result, BaseException):
            result = failed_result(cell, result)
        store.save(result)
        failed += result["status"] == FAILED
        if progress is not None:
            progress.update(done, len(todo), f"{done}/{len(todo)} cells" + (f", {failed} failed" if failed else ""))
    return RunStats(ran=len(todo), skipped=distinct - len(todo), failed=failed, wall_s=time.perf_counter() - started)


__all__ = ["Engine", "RunStats", "check_versions", "pending", "run_cells"]
