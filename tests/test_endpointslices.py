"""The local testbed's EndpointSlice API: what it answers, in the API server's wire format."""
from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import requests
import yaml

from edgeoffload.endpointslices import Endpoint, EndpointSliceServer, EndpointSliceStore

PATH = "/apis/discovery.k8s.io/v1/namespaces/edgeoffload/endpointslices"
SELECTOR = {"labelSelector": "kubernetes.io/service-name=edge-inference"}


@pytest.fixture
def server():
    store = EndpointSliceStore("edgeoffload")
    store.set_endpoint("edge-inference", Endpoint("edge-1", "127.0.0.1", 9001))
    with EndpointSliceServer(store, bookmark_interval_s=0.05) as running:
        yield running


def get(server: EndpointSliceServer, path: str = PATH, token: str | None = None, **params: str) -> requests.Response:
    headers = {"Authorization": f"Bearer {server.token if token is None else token}"}
    return requests.get(server.url + path, params=params, headers=headers, timeout=5)


def watch_lines(server: EndpointSliceServer, **params: str) -> list[dict]:
    response = get(server, watch="true", timeoutSeconds="1", **SELECTOR, **params)
    assert response.status_code == 200
    return [json.loads(line) for line in response.text.splitlines() if line]


def test_a_list_is_an_endpointslicelist_with_a_resource_version(server) -> None:
    body = get(server, **SELECTOR).json()
    assert body["kind"] == "EndpointSliceList" and body["metadata"]["resourceVersion"] == "1"
    (item,) = body["items"]
    assert item["metadata"]["labels"]["kubernetes.io/service-name"] == "edge-inference"
    assert item["endpoints"][0]["conditions"] == {"ready": True, "serving": True, "terminating": False}
    assert item["endpoints"][0]["targetRef"]["name"] == "edge-1" and item["ports"][0]["port"] == 9001


def test_requests_without_the_token_or_outside_the_namespace_are_refused(server) -> None:
    assert get(server, token="guess", **SELECTOR).json()["code"] == 401
    assert get(server, "/apis/discovery.k8s.io/v1/namespaces/kube-system/endpointslices", **SELECTOR).status_code == 404
    assert get(server, labelSelector="app=x").json()["reason"] == "BadRequest"


def test_a_watch_from_zero_starts_with_what_exists_then_sends_changes_and_bookmarks(server) -> None:
    events = watch_lines(server, resourceVersion="0", allowWatchBookmarks="true")
    assert events[0]["type"] == "ADDED" and events[0]["object"]["metadata"]["name"] == "edge-inference-edge-1"
    assert {e["type"] for e in events[1:]} == {"BOOKMARK"}
    server.store.set_endpoint("edge-inference", Endpoint("edge-1", "127.0.0.1", 9001, ready=False, terminating=True))
    server.store.delete_endpoint("edge-inference", "edge-1")
    changes = [e for e in watch_lines(server, resourceVersion="1") if e["type"] != "BOOKMARK"]
    assert [(e["type"], e["object"]["metadata"]["resourceVersion"]) for e in changes] == [("MODIFIED", "2"),
                                                                                          ("DELETED", "3")]


def test_a_compacted_resource_version_gets_410_expired(server) -> None:
    server.store.set_endpoint("edge-inference", Endpoint("edge-2", "127.0.0.1", 9002))
    server.store.compact()
    (event,) = watch_lines(server, resourceVersion="1")
    assert event["type"] == "ERROR" and event["object"]["code"] == 410 and event["object"]["reason"] == "Expired"
    assert [e["type"] for e in watch_lines(server, resourceVersion="2")] == []   # current: nothing to send


def test_the_kubeconfig_names_the_server_and_is_private(server, tmp_path: Path) -> None:
    path = server.write_kubeconfig(tmp_path / "kubeconfig")
    config = yaml.safe_load(path.read_text())
    assert config["clusters"][0]["cluster"]["server"] == server.url
    assert config["users"][0]["user"]["token"] == server.token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
