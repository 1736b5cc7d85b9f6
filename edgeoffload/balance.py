"""Per-request balancing over a site's ready replicas: least outstanding requests first.

A Service balances per TCP connection; a keep-alive connection stays on its pod for good,
so pods the HPA adds would get nothing. The preprocessor instead keeps keep-alive
connections to each ready replica (from edgeoffload.discovery) and sends every request to
the replica with the fewest requests outstanding, up to `per_replica` at once (the unit's
admission bound): the site's concurrency is ready replicas x per_replica, and grows and
shrinks with the HPA.

A replica that leaves (scale-down, SIGTERM, crash) gets no new requests; its in-flight ones
finish or fail over, and its connections close once they are idle. A replica that refused
a connection is skipped for `eject_s` (the next EndpointSlice update will usually remove it).

A static source is one URL standing for `assumed` replicas behind a Service. Its
connections are renewed every `recycle_s`, so per-connection balancing still spreads them.
"""
from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import urllib3

from edgeoffload.discovery import Replica

DEFAULT_RECYCLE_S = 1.0
DEFAULT_EJECT_S = 1.0


@dataclass(eq=False)
class Backend:
    """One replica: its connection pool and the requests outstanding at it."""

    name: str
    url: str
    capacity: int
    recycle_s: float | None = None     # renew the connections this often (static: a Service)
    outstanding: int = 0
    served: int = 0
    failures: int = 0
    leaving: bool = False              # no longer ready: no new requests, close once idle
    ejected_until: float = 0.0
    last_pick: int = 0
    pool: Any = None
    pool_born: float = 0.0
    _retired: list[Any] = field(default_factory=list)

    def connections(self, now: float) -> Any:
        """The pool to send on; a recycled backend gets a fresh one every `recycle_s`."""
        if self.pool is None or (self.recycle_s is not None and now - self.pool_born >= self.recycle_s):
            if self.pool is not None:
                self._retired.append(self.pool)
            self.pool = urllib3.connection_from_url(self.url, maxsize=self.capacity, block=False, retries=False)
            self.pool_born = now
        return self.pool

    def close_idle(self) -> None:
        """Close retired pools (and the current one when leaving) once nothing uses them."""
        if self.outstanding:
            return
        for pool in self._retired:
            pool.close()
        self._retired.clear()
        if self.leaving and self.pool is not None:
            self.pool.close()
            self.pool = None


@dataclass(frozen=True, slots=True)
class Lease:
    """One request's claim on a backend; give it back with Balancer.release."""

    backend: Backend
    pool: Any


class Balancer:
    """The ready replicas of one site and the requests outstanding at each (thread-safe)."""

    def __init__(self, per_replica: int, assumed: int = 1, max_in_flight: int = 256,
                 recycle_s: float = DEFAULT_RECYCLE_S, eject_s: float = DEFAULT_EJECT_S) -> None:
        if per_replica < 1 or assumed < 1 or max_in_flight < 1:
            raise ValueError("per_replica, assumed and max_in_flight must be >= 1")
        self.per_replica = per_replica
        self.assumed = assumed
        self.max_in_flight = max_in_flight
        self.recycle_s = recycle_s
        self.eject_s = eject_s
        self.static = False
        self.synced = False                # the source has reported at least once
        self._backends: dict[str, Backend] = {}
        self._leaving: list[Backend] = []
        self._picks = itertools.count(1)
        self._cond = threading.Condition()

    # -- membership --------------------------------------------------------------------------
    def update(self, replicas: Sequence[Replica], static: bool = False) -> None:
        """The source's new ready set: add new replicas, let the ones gone drain."""
        with self._cond:
            self.static = static
            self.synced = True
            wanted = {replica.url: replica for replica in replicas}
            for url in list(self._backends):
                if url not in wanted:
                    backend = self._backends.pop(url)
                    backend.leaving = True
                    self._leaving.append(backend)
                    backend.close_idle()
            for url, replica in wanted.items():
                if url not in self._backends:
                    capacity = self.per_replica * (self.assumed if static else 1)
                    self._backends[url] = Backend(replica.name, url, capacity,
                                                  recycle_s=self.recycle_s if static else None)
            self._leaving = [b for b in self._leaving if b.outstanding]
            self._cond.notify_all()

    @property
    def ready(self) -> int:
        """Ready replicas as the policy sees them (a static URL counts as its assumed replicas)."""
        with self._cond:
            return self._ready_locked()

    def _ready_locked(self) -> int:
        if self.static:
            return self.assumed if self._backends else 0
        return len(self._backends)

    @property
    def capacity(self) -> int:
        with self._cond:
            return self._capacity_locked()

    def _capacity_locked(self) -> int:
        return min(self.max_in_flight, sum(b.capacity for b in self._backends.values()))

    # -- requests ----------------------------------------------------------------------------
    def acquire(self, stop: threading.Event, exclude: Backend | None = None,
                sync_timeout_s: float = 5.0) -> Lease | None:
        """Wait for a free slot and take the least-loaded ready replica; None when the site has
        no ready replica (after the source's first report, or `sync_timeout_s` without one)."""
        deadline = time.monotonic() + sync_timeout_s
        with self._cond:
            while not stop.is_set():
                if not self.synced and time.monotonic() >= deadline:
                    return None
                if self.synced and not self._backends:
                    return None
                backend = self._pick(exclude)
                if backend is not None:
                    backend.outstanding += 1
                    backend.last_pick = next(self._picks)
                    return Lease(backend, backend.connections(time.monotonic()))
                if exclude is not None and set(self._backends.values()) <= {exclude}:
                    return None
                self._cond.wait(0.1 if not self.synced else 1.0)
            return None

    def _pick(self, exclude: Backend | None) -> Backend | None:
        if sum(b.outstanding for b in self._backends.values()) >= self._capacity_locked():
            return None
        now = time.monotonic()
        free = [b for b in self._backends.values() if b.outstanding < b.capacity and b is not exclude]
        healthy = [b for b in free if b.ejected_until <= now] or free
        if not healthy:
            return None
        return min(healthy, key=lambda b: (b.outstanding / b.capacity, b.last_pick))

    def release(self, lease: Lease, ok: bool, refused: bool = False) -> None:
        """The request on `lease` is over; `refused` (no connection) ejects the replica a while."""
        backend = lease.backend
        with self._cond:
            backend.outstanding -= 1
            if ok:
                backend.served += 1
            else:
                backend.failures += 1
                if refused:
                    backend.ejected_until = time.monotonic() + self.eject_s
            backend.close_idle()
            if backend.leaving and not backend.outstanding:
                self._leaving = [b for b in self._leaving if b is not backend]
            self._cond.notify_all()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            for backend in [*self._backends.values(), *self._leaving]:
                backend.leaving = True
                backend.outstanding = 0
                backend.close_idle()
            self._cond.notify_all()

    def describe(self) -> list[dict[str, Any]]:
        with self._cond:
            return [{"name": b.name, "url": b.url, "outstanding": b.outstanding, "capacity": b.capacity,
                     "served": b.served, "failures": b.failures, "leaving": b.leaving}
                    for b in [*self._backends.values(), *self._leaving]]


__all__ = ["Backend", "Balancer", "Lease", "DEFAULT_RECYCLE_S"]
