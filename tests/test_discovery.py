"""Replica discovery: the EndpointSlice rules, and the real `kubernetes` client's list + watch.

The watch tests here run the real `kubernetes` Python client against edgeoffload.endpointslices,
the local testbed's server speaking the API's list/watch wire format (ADDED/MODIFIED/DELETED,
BOOKMARK, 410 Gone), so that `make test` exercises the client where no Go toolchain builds a
control plane. The same behaviours are tested against the real kube-apiserver 1.37.2 in
tests/k8s/test_discovery_api.py (`make k8s-test`): those are authoritative; when the two
disagree, the stand-in is what must change.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from edgeoffload.discovery import (EndpointSliceWatch, Replica, StaticReplicas, kubernetes_api_client, ready_replicas,
                                   service_of)
from edgeoffload.endpointslices import Endpoint, EndpointSliceServer, EndpointSliceStore

SERVICE = "edge-inference"


def endpoint_slice(name: str, endpoints: list[dict[str, Any]], ports: list[dict[str, Any]] | None = None,
                   address_type: str = "IPv4") -> dict[str, Any]:
    return {"metadata": {"name": name}, "addressType": address_type,
            "ports": ports if ports is not None else [{"name": "http", "port": 8080}], "endpoints": endpoints}


def pod(ip: str, name: str, **conditions: Any) -> dict[str, Any]:
    return {"addresses": [ip], "conditions": conditions, "targetRef": {"kind": "Pod", "name": name}}


def test_only_ready_endpoints_count_and_terminating_ones_drain() -> None:
    slices = [endpoint_slice("a", [pod("10.0.0.1", "p1", ready=True), pod("10.0.0.2", "p2", ready=False),
                                   pod("10.0.0.3", "p3", ready=False, serving=True, terminating=True),
                                   pod("10.0.0.4", "p4")]),   # ready unset means ready (API semantics)
              endpoint_slice("b", [pod("10.0.0.1", "p1", ready=True)])]   # listed twice during a change
    assert ready_replicas(slices) == (Replica("p1", "http://10.0.0.1:8080"), Replica("p4", "http://10.0.0.4:8080"))


def test_the_port_is_the_named_one_or_the_only_one() -> None:
    named = endpoint_slice("a", [pod("10.0.0.1", "p1")], ports=[{"name": "metrics", "port": 9090},
                                                               {"name": "http", "port": 8080}])
    only = endpoint_slice("b", [pod("10.0.0.2", "p2")], ports=[{"name": "web", "port": 80}])
    ambiguous = endpoint_slice("c", [pod("10.0.0.3", "p3")], ports=[{"name": "a", "port": 1}, {"name": "b", "port": 2}])
    ipv6 = endpoint_slice("d", [pod("fd00::5", "p5")], address_type="IPv6")
    assert ready_replicas([named, only, ambiguous, ipv6], scheme="https") == (
        Replica("p1", "https://10.0.0.1:8080"), Replica("p2", "https://10.0.0.2:80"),
        Replica("p5", "https://[fd00::5]:8080"))


def test_service_names_come_from_cluster_urls() -> None:
    assert service_of("http://edge-inference:8080") == "edge-inference"
    assert service_of("http://cloud-inference.edgeoffload.svc.cluster.local:8080/") == "cloud-inference"


def test_a_static_url_is_one_entry_standing_for_the_assumed_replicas() -> None:
    seen: list[tuple[Replica, ...]] = []
    source = StaticReplicas("http://edge-inference:8080", assumed_replicas=3)
    source.start(seen.append)
    assert seen == [(Replica("", "http://edge-inference:8080"),)]
    assert source.status()["assumed_replicas"] == 3
    with pytest.raises(ValueError):
        StaticReplicas("http://x", 0)


class RecordingServer(EndpointSliceServer):
    """The local API server, recording each watch request and able to hold new watches back."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.watch_versions: list[str] = []
        self.gate = threading.Event()
        self.gate.set()

    def _watch_events(self, service: str, query: dict[str, str]) -> Iterator[dict[str, Any]]:
        self.watch_versions.append(query.get("resourceVersion", ""))
        self.gate.wait(20)
        yield from super()._watch_events(service, query)


class Watcher:
    """An EndpointSliceWatch through the real kubernetes client, with the replica sets it reported."""

    def __init__(self, kubeconfig: Path, namespace: str, service: str = SERVICE, watch_timeout_s: int = 30) -> None:
        self.reports: list[tuple[Replica, ...]] = []
        self.changed = threading.Condition()
        self.source = EndpointSliceWatch(kubernetes_api_client(str(kubeconfig)), namespace, service,
                                         watch_timeout_s=watch_timeout_s, max_backoff_s=0.5)
        self.source.start(self._report)

    def _report(self, replicas: tuple[Replica, ...]) -> None:
        with self.changed:
            self.reports.append(replicas)
            self.changed.notify_all()

    def names(self) -> list[str]:
        with self.changed:
            return [r.name for r in self.reports[-1]] if self.reports else []

    def wait_for(self, names: list[str], timeout: float = 10.0) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: bool(self.reports) and [r.name for r in self.reports[-1]] == names,
                                         timeout), f"replicas {self.names()} != {names}; {self.source.status()}"


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[RecordingServer, Path]]:
    server = RecordingServer(EndpointSliceStore("edgeoffload"), bookmark_interval_s=0.1).start()
    try:
        yield server, server.write_kubeconfig(tmp_path / "kubeconfig")
    finally:
        server.gate.set()
        server.stop()


def test_list_then_watch_follows_added_modified_and_deleted_slices(api) -> None:
    server, kubeconfig = api
    store = server.store
    store.set_endpoint(SERVICE, Endpoint("edge-1", "127.0.0.1", 9001))
    store.set_endpoint("cloud-inference", Endpoint("cloud-1", "127.0.0.1", 9101))   # another Service
    watcher = Watcher(kubeconfig, server.store.namespace)
    try:
        watcher.wait_for(["edge-1"])
        assert watcher.reports[-1] == (Replica("edge-1", "http://127.0.0.1:9001"),)
        store.set_endpoint(SERVICE, Endpoint("edge-2", "127.0.0.1", 9002))                       # ADDED
        watcher.wait_for(["edge-1", "edge-2"])
        store.set_endpoint(SERVICE, Endpoint("edge-1", "127.0.0.1", 9001, ready=False, terminating=True))  # MODIFIED
        watcher.wait_for(["edge-2"])
        store.delete_endpoint(SERVICE, "edge-1")                                                  # DELETED
        store.delete_endpoint(SERVICE, "edge-2")
        watcher.wait_for([])
        status = watcher.source.status()
        assert status["lists"] == 1 and status["events"] == 4 and status["last_error"] == ""
        assert status["resource_version"] == str(store.resource_version)
    finally:
        watcher.source.stop()


@pytest.fixture
def short_watch(api) -> Iterator[tuple[RecordingServer, Watcher]]:
    """One replica listed, watched in 1 s watches (so they end and resume often)."""
    server, kubeconfig = api
    server.store.set_endpoint(SERVICE, Endpoint("edge-1", "127.0.0.1", 9001))
    watcher = Watcher(kubeconfig, server.store.namespace, watch_timeout_s=1)
    try:
        watcher.wait_for(["edge-1"])
        yield server, watcher
    finally:
        watcher.source.stop()


def test_bookmarks_move_the_resume_point_forward(short_watch) -> None:
    """Other Services' changes advance the resourceVersion; bookmarks carry it to this watch,
    so when the watch times out it resumes from the newest version, not its last event's."""
    server, watcher = short_watch
    store = server.store
    own_version = store.resource_version
    for index in range(5):
        store.set_endpoint("cloud-inference", Endpoint(f"cloud-{index}", "127.0.0.1", 9100 + index))
    newest = store.resource_version
    wait_until(lambda: str(newest) in server.watch_versions)
    assert server.watch_versions[0] == str(own_version) and newest > own_version
    assert watcher.source.status()["lists"] == 1   # resumed, never listed again


def test_an_expired_resource_version_makes_the_watch_list_again(short_watch) -> None:
    server, watcher = short_watch
    store = server.store
    server.gate.clear()                        # the next watch request waits here...
    requested = len(server.watch_versions)
    wait_until(lambda: len(server.watch_versions) > requested)
    store.set_endpoint(SERVICE, Endpoint("edge-2", "127.0.0.1", 9002))
    store.compact()                            # ...while its resourceVersion is compacted away
    server.gate.set()
    watcher.wait_for(["edge-1", "edge-2"])     # learnt from the new list after 410 Gone
    assert watcher.source.status()["lists"] == 2


def test_an_unreachable_api_keeps_the_last_replicas_and_recovers(tmp_path: Path) -> None:
    store = EndpointSliceStore("edgeoffload")
    store.set_endpoint(SERVICE, Endpoint("edge-1", "127.0.0.1", 9001))
    first = EndpointSliceServer(store).start()
    kubeconfig = first.write_kubeconfig(tmp_path / "kubeconfig")
    watcher = Watcher(kubeconfig, store.namespace)
    try:
        watcher.wait_for(["edge-1"])
        first.stop()
        wait_until(lambda: watcher.source.status()["last_error"] != "")
        assert watcher.names() == ["edge-1"]       # kept while the API is away
        store.set_endpoint(SERVICE, Endpoint("edge-2", "127.0.0.1", 9002))
        with EndpointSliceServer(store, port=first.port, token=first.token):
            watcher.wait_for(["edge-1", "edge-2"])
    finally:
        watcher.source.stop()


def test_a_wrong_token_is_refused_and_reported(api) -> None:
    server, kubeconfig = api
    kubeconfig.write_text(kubeconfig.read_text().replace(server.token, "not-the-token"))
    watcher = Watcher(kubeconfig, server.store.namespace)
    try:
        wait_until(lambda: "401" in watcher.source.status()["last_error"])
        assert watcher.reports == [] and not watcher.source.synced.is_set()
    finally:
        watcher.source.stop()
