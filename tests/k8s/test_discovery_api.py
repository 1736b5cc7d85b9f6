"""Test group 2b: the discovery client (edgeoffload.discovery.EndpointSliceWatch) against the
real kube-apiserver, through the real `kubernetes` client.

The behaviours tests/test_discovery.py checks against the local testbed's stand-in server
(edgeoffload.endpointslices), here as kube-apiserver v1.37.2 answers them; these are the
authoritative ones. The tests write EndpointSlices themselves, labelled with a managed-by of
their own so that the EndpointSlice controller leaves them alone, with 10.244.x addresses (the
API refuses loopback ones; nothing is ever sent to them).

On the session's control plane, watching with a token of the preprocessor's own ServiceAccount:
- a list, then ADDED / MODIFIED / DELETED events; only ready endpoints count, terminating ones
  drain, and another Service's slices never reach the watcher;
- bookmarks: the watch cache sends one 2 s before a watch's timeoutSeconds deadline
  (apiserver/pkg/storage/cacher/cache_watcher.go, nextBookmarkTime) carrying the latest
  resourceVersion of all EndpointSlices, so other Services' changes move the resume point
  forward and the next watch starts there, without a list (the API server's audit log shows
  which resourceVersion each watch asked for);
- a wrong bearer token: 401, reported, nothing published.
On a control plane of this module's own, whose API server watches EndpointSlices straight from
etcd (no watch cache): after an etcd compaction past the watcher's resourceVersion its next
watch gets 410 Gone and it lists again; while kube-apiserver is stopped the last replicas stay
in use, and the watcher recovers when it is back on the same port.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
from controlplane import ControlPlane, wait_for, write_kubeconfig
from test_deploy import NAMESPACE
from test_discovery import Watcher

from edgeoffload.discovery import SERVICE_NAME_LABEL, Replica

SERVICE, OTHER = "watched-inference", "other-inference"   # no Service of the manifests has these names
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "edgeoffload-discovery-tests"
UNCACHED_NAMESPACE = "default"   # the uncached control plane has no edgeoffload namespace
BOOKMARKED_WATCH_S = 3           # > 2 s: the watch cache sends no pre-timeout bookmark to shorter watches


def pod(number: int, ready: bool = True, terminating: bool = False) -> dict[str, Any]:
    """An endpoint as the EndpointSlice controller writes it for pod `pod-<number>`."""
    return {"addresses": [f"10.244.9.{number}"],
            "conditions": {"ready": ready, "serving": ready or terminating, "terminating": terminating},
            "targetRef": {"kind": "Pod", "name": f"pod-{number}"}}


class Slices:
    """EndpointSlices the test writes itself, with raw REST calls as the admin."""

    def __init__(self, plane: ControlPlane, namespace: str) -> None:
        self.session = plane.session()
        self.url = f"{plane.server}/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"

    def create(self, name: str, service: str, endpoints: list[dict[str, Any]]) -> int:
        """-> the new resourceVersion (an etcd revision: this server's, so comparable here)."""
        body = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": name, "labels": {SERVICE_NAME_LABEL: service, MANAGED_BY_LABEL: MANAGED_BY}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": endpoints}
        return self._version(self.session.post(self.url, json=body, timeout=30))

    def update(self, name: str, endpoints: list[dict[str, Any]]) -> int:
        return self._version(self.session.patch(f"{self.url}/{name}", data=json.dumps({"endpoints": endpoints}),
                                                headers={"Content-Type": "application/merge-patch+json"}, timeout=30))

    def delete(self, name: str) -> None:
        self._checked(self.session.delete(f"{self.url}/{name}", timeout=30))

    def delete_all(self) -> None:
        self._checked(self.session.delete(self.url, params={"labelSelector": f"{MANAGED_BY_LABEL}={MANAGED_BY}"},
                                          timeout=30))
        self.session.close()

    @staticmethod
    def _checked(response: requests.Response) -> dict[str, Any]:
        assert response.ok, f"{response.request.method} {response.url}: {response.status_code} {response.text[:300]}"
        return response.json()

    def _version(self, response: requests.Response) -> int:
        return int(self._checked(response)["metadata"]["resourceVersion"])


def version(watcher: Watcher) -> int:
    """The resourceVersion the watcher's next watch starts from (0 while it must list)."""
    return int(watcher.source.status()["resource_version"] or 0)


@pytest.fixture
def slices(control_plane: ControlPlane, namespace: str) -> Iterator[Slices]:
    written = Slices(control_plane, namespace)
    yield written
    written.delete_all()


@pytest.fixture
def uncached_slices(uncached_control_plane: ControlPlane) -> Iterator[Slices]:
    written = Slices(uncached_control_plane, UNCACHED_NAMESPACE)
    yield written
    written.delete_all()


@pytest.fixture
def watchers() -> Iterator[list[Watcher]]:
    """Watchers to stop after the test, whatever happened."""
    started: list[Watcher] = []
    yield started
    for watcher in started:
        watcher.source.stop()


def start_watcher(watchers: list[Watcher], kubeconfig: Path, namespace: str = NAMESPACE, service: str = SERVICE,
                  **options: Any) -> Watcher:
    watcher = Watcher(kubeconfig, namespace, service, **options)
    watchers.append(watcher)
    return watcher


def test_list_then_watch_follows_added_modified_and_deleted_slices(slices: Slices, preprocessor_kubeconfig: Path,
                                                                   watchers: list[Watcher]) -> None:
    slices.create("watched-a", SERVICE, [pod(1), pod(9, ready=False)])
    slices.create("other-a", OTHER, [pod(101)])
    watcher = start_watcher(watchers, preprocessor_kubeconfig)
    watcher.wait_for(["pod-1"])
    assert watcher.reports[-1] == (Replica("pod-1", "http://10.244.9.1:8080"),)
    slices.create("watched-b", SERVICE, [pod(2)])                                            # ADDED
    watcher.wait_for(["pod-1", "pod-2"])
    slices.update("watched-a", [pod(1, ready=False, terminating=True), pod(9, ready=False)])  # MODIFIED
    watcher.wait_for(["pod-2"])
    slices.update("other-a", [pod(101), pod(102)])   # another Service's: no event reaches this watch
    slices.delete("watched-a")                                                               # DELETED
    slices.delete("watched-b")
    watcher.wait_for([])
    status = watcher.source.status()
    assert status["lists"] == 1 and status["events"] == 4 and status["last_error"] == "", status


def test_bookmarks_move_the_resume_point_forward(control_plane: ControlPlane, slices: Slices,
                                                 preprocessor_kubeconfig: Path, watchers: list[Watcher]) -> None:
    """Other Services' changes advance the resourceVersion; the watch cache's bookmarks carry it
    to this watch (no event does), and the next watch asks for it, without a list: as the API
    server's audit log shows."""
    service = "bookmarked-inference"
    slices.create("bookmarked-a", service, [pod(1)])
    before = len(control_plane.endpointslice_requests())
    watcher = start_watcher(watchers, preprocessor_kubeconfig, service=service, watch_timeout_s=BOOKMARKED_WATCH_S)
    watcher.wait_for(["pod-1"])
    listed = version(watcher)
    newest = max(slices.create(f"other-{index}", OTHER, [pod(100 + index)]) for index in range(5))

    def received(verb: str) -> list[dict[str, str]]:
        selector = f"{SERVICE_NAME_LABEL}={service}"
        return [query for request_verb, query in control_plane.endpointslice_requests()[before:]
                if request_verb == verb and query.get("labelSelector") == selector]

    def watched_from() -> list[int]:
        return [int(query["resourceVersion"]) for query in received("watch")]

    wait_for(lambda: max(watched_from(), default=0) >= newest, 4 * BOOKMARKED_WATCH_S,
             "a watch from the other Service's newest resourceVersion")
    status = watcher.source.status()
    assert status["events"] == 0 and status["lists"] == 1, status   # so bookmarks carried it
    assert len(received("list")) == 1 and watched_from()[0] == listed < newest, watched_from()
    slices.create("bookmarked-b", service, [pod(2)])   # seen by the resumed watch
    watcher.wait_for(["pod-1", "pod-2"])
    status = watcher.source.status()
    assert status["lists"] == 1 and status["events"] == 1 and status["last_error"] == "", status


def test_a_wrong_token_is_refused_and_reported(control_plane: ControlPlane, slices: Slices, tmp_path: Path,
                                               watchers: list[Watcher]) -> None:
    slices.create("watched-a", SERVICE, [pod(1)])
    kubeconfig = write_kubeconfig(tmp_path / "wrong-token.kubeconfig", control_plane.server,
                                  control_plane.ca.cert_path, "preprocessor", {"token": "not-the-token"})
    watcher = start_watcher(watchers, kubeconfig)
    wait_for(lambda: "401" in watcher.source.status()["last_error"], 10, "the 401 reported")
    assert watcher.reports == [] and not watcher.source.synced.is_set()
    assert watcher.source.status()["last_error"] == "API error 401: Unauthorized"


def test_an_expired_resource_version_makes_the_watch_list_again(uncached_control_plane: ControlPlane,
                                                                uncached_slices: Slices, watchers: list[Watcher],
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edgeoffload.discovery")
    slices = uncached_slices
    slices.create("watched-a", SERVICE, [pod(1)])
    watcher = start_watcher(watchers, uncached_control_plane.admin_kubeconfig, UNCACHED_NAMESPACE, watch_timeout_s=1)
    watcher.wait_for(["pod-1"])
    slices.create("watched-b", SERVICE, [pod(2)])   # the watch may see this one, or not
    newest = max(slices.create(f"other-{index}", OTHER, [pod(100 + index)]) for index in range(3))
    # Either way the watcher's resourceVersion (the list's, or watched-b's) is now at least two
    # revisions behind `newest`: its next watch (from version + 1) starts below the compaction.
    uncached_control_plane.compact_etcd(newest)
    wait_for(lambda: watcher.source.status()["lists"] == 2, 15, "a list after 410 Gone")
    watcher.wait_for(["pod-1", "pod-2"])
    slices.update("watched-a", [pod(1, ready=False, terminating=True)])   # and it watches on from the new list
    watcher.wait_for(["pod-2"])
    status = watcher.source.status()
    assert status["lists"] == 2 and status["last_error"] == "", status
    logged = [r for r in caplog.records if r.name == "edgeoffload.discovery"]
    expired = [r for r in logged if "expired (410)" in r.getMessage()]
    failed = [r.getMessage() for r in logged if r.levelno >= logging.WARNING]
    assert len(expired) == 1 and not failed, (len(expired), failed)   # listed again for the 410, not an error


def test_an_unreachable_api_keeps_the_last_replicas_and_recovers(uncached_control_plane: ControlPlane,
                                                                 uncached_slices: Slices,
                                                                 watchers: list[Watcher]) -> None:
    plane = uncached_control_plane
    uncached_slices.create("watched-a", SERVICE, [pod(1)])
    watcher = start_watcher(watchers, plane.admin_kubeconfig, UNCACHED_NAMESPACE)
    watcher.wait_for(["pod-1"])
    plane.stop_apiserver()
    try:
        wait_for(lambda: watcher.source.status()["last_error"] != "", 15, "the watcher to notice the API is away")
        assert watcher.names() == ["pod-1"]   # kept while the API is away
    finally:
        plane.start_apiserver()
    uncached_slices.create("watched-b", SERVICE, [pod(2)])
    watcher.wait_for(["pod-1", "pod-2"], timeout=30)
    status = watcher.source.status()
    assert status["lists"] >= 2 and status["last_error"] == "", status
