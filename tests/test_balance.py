"""Least-outstanding balancing over a site's ready replicas (no network: pools open lazily)."""
from __future__ import annotations

import threading
import time

from edgeoffload.balance import Balancer
from edgeoffload.discovery import Replica

A, B, C = (Replica(name, f"http://127.0.0.1:{port}") for name, port in (("a", 9001), ("b", 9002), ("c", 9003)))
RUNNING = threading.Event()


def names(leases) -> list[str]:
    return [lease.backend.name for lease in leases]


def test_requests_go_to_the_least_loaded_replica_up_to_its_bound() -> None:
    balancer = Balancer(per_replica=2)
    balancer.update([A, B])
    leases = [balancer.acquire(RUNNING) for _ in range(4)]
    assert sorted(names(leases)) == ["a", "a", "b", "b"] and balancer.capacity == 4 and balancer.ready == 2
    taken: list = []
    waiter = threading.Thread(target=lambda: taken.append(balancer.acquire(RUNNING)))
    waiter.start()
    time.sleep(0.2)
    assert not taken                             # every replica is at its bound: the request waits
    balancer.release(next(lease for lease in leases if lease.backend.name == "b"), ok=True)
    waiter.join(2)
    assert names(taken) == ["b"]


def test_a_replica_that_becomes_ready_takes_the_next_requests() -> None:
    balancer = Balancer(per_replica=4)
    balancer.update([A])
    first = [balancer.acquire(RUNNING) for _ in range(3)]
    balancer.update([A, C])
    assert names(balancer.acquire(RUNNING) for _ in range(3)) == ["c", "c", "c"]   # evens out 3 / 3
    assert {d["name"]: d["outstanding"] for d in balancer.describe()} == {"a": 3, "c": 3}
    assert names(first) == ["a", "a", "a"]


def test_a_replica_that_leaves_gets_nothing_new_and_drains() -> None:
    balancer = Balancer(per_replica=2)
    balancer.update([A, B])
    lease_a = balancer.acquire(RUNNING)
    assert lease_a.backend.name == "a"
    balancer.update([B])
    assert names(balancer.acquire(RUNNING) for _ in range(2)) == ["b", "b"]
    assert {d["name"]: (d["outstanding"], d["leaving"]) for d in balancer.describe()} == {"b": (2, False),
                                                                                        "a": (1, True)}
    balancer.release(lease_a, ok=True)           # its request finished: it is gone, connections closed
    assert [d["name"] for d in balancer.describe()] == ["b"] and lease_a.backend.pool is None


def test_no_ready_replica_answers_at_once_but_waits_for_the_first_report() -> None:
    balancer = Balancer(per_replica=1)
    started = time.monotonic()
    assert balancer.acquire(RUNNING, sync_timeout_s=0.3) is None       # never reported: gave up after the wait
    assert time.monotonic() - started >= 0.3
    balancer.update([])
    started = time.monotonic()
    assert balancer.acquire(RUNNING) is None and time.monotonic() - started < 0.1
    fresh = Balancer(per_replica=1)
    late = threading.Timer(0.2, fresh.update, args=([A],))
    late.start()
    assert fresh.acquire(RUNNING).backend.name == "a"                    # waited for the source's first report


def test_a_refusing_replica_is_skipped_for_a_while() -> None:
    balancer = Balancer(per_replica=4, eject_s=0.3)
    balancer.update([A, B])
    lease = balancer.acquire(RUNNING)
    busy = balancer.acquire(RUNNING)
    assert {lease.backend.name, busy.backend.name} == {"a", "b"}
    balancer.release(lease, ok=False, refused=True)
    assert balancer.acquire(RUNNING).backend is busy.backend          # despite having more outstanding
    time.sleep(0.35)
    assert balancer.acquire(RUNNING).backend is lease.backend


def test_excluding_the_only_replica_gives_none() -> None:
    balancer = Balancer(per_replica=2)
    balancer.update([A])
    lease = balancer.acquire(RUNNING)
    assert balancer.acquire(RUNNING, exclude=lease.backend) is None
    balancer.update([A, B])
    assert balancer.acquire(RUNNING, exclude=lease.backend).backend.name == "b"


def test_a_static_url_stands_for_its_assumed_replicas_and_renews_its_connections() -> None:
    balancer = Balancer(per_replica=3, assumed=2, recycle_s=0.2)
    balancer.update([Replica("", "http://edge-inference:8080")], static=True)
    assert (balancer.ready, balancer.capacity) == (2, 6)
    first = balancer.acquire(RUNNING)
    assert balancer.acquire(RUNNING).pool is first.pool
    time.sleep(0.25)
    renewed = balancer.acquire(RUNNING)
    assert renewed.pool is not first.pool        # new connections: the Service may pick other pods


def test_the_site_bound_caps_concurrency_whatever_the_replicas() -> None:
    balancer = Balancer(per_replica=4, max_in_flight=3)
    balancer.update([A, B, C])
    assert balancer.capacity == 3
    [balancer.acquire(RUNNING) for _ in range(3)]
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    assert balancer.acquire(stop) is None        # waited for a slot until stopped
