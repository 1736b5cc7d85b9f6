"""Replica discovery: the ready replicas of an inference site, so the preprocessor can use each one.

A Kubernetes Service balances per TCP connection, and a keep-alive connection never moves to a
pod the HPA adds. The preprocessor therefore learns the replicas themselves and balances per
request (edgeoffload.balance). Two sources implement one small interface:

  StaticReplicas      one URL (a Service, a single unit, a server outside the cluster): the
                      replica count behind it is an assumption (PRE_EDGE_REPLICAS, ...)
  EndpointSliceWatch  the ready endpoints of a Service, from its EndpointSlices
                      (discovery.k8s.io/v1), listed and watched with the `kubernetes` client:
                      in a pod through its ServiceAccount, elsewhere through a kubeconfig. The
                      local testbed serves its pools' replicas in the same wire format
                      (edgeoffload.endpointslices), so it runs this very code.

Watch semantics (as client-go's reflector): list, then watch from the list's resourceVersion
with bookmarks; a watch that ends is resumed from the last resourceVersion seen; 410 Gone
(the version was compacted away) means list again. While the API server is unreachable the
last known replicas stay in use, as kube-proxy keeps its rules.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
POD_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
GONE = 410


@dataclass(frozen=True, slots=True, order=True)
class Replica:
    """One place to send requests: `name` is the pod (or local replica) name, "" when unknown."""

    name: str
    url: str


OnChange = Callable[[tuple[Replica, ...]], None]


class ReplicaSource(Protocol):
    """Reports the full set of ready replicas to `on_change` whenever it changes."""

    kind: str

    def start(self, on_change: OnChange) -> None: ...

    def stop(self) -> None: ...

    def status(self) -> dict[str, Any]: ...


class StaticReplicas:
    """A plain URL: one entry that stands for `assumed_replicas` replicas behind a Service."""

    kind = "static"

    def __init__(self, url: str, assumed_replicas: int = 1) -> None:
        if assumed_replicas < 1:
            raise ValueError(f"assumed replicas must be >= 1, got {assumed_replicas}")
        self.url = url
        self.assumed_replicas = assumed_replicas

    def start(self, on_change: OnChange) -> None:
        on_change((Replica("", self.url),))

    def stop(self) -> None:
        return None

    def status(self) -> dict[str, Any]:
        return {"source": self.kind, "url": self.url, "assumed_replicas": self.assumed_replicas}


def ready_replicas(slices: Iterable[Mapping[str, Any]], port_name: str = "http",
                   scheme: str = "http") -> tuple[Replica, ...]:
    """The ready endpoints of a Service's EndpointSlices (raw API objects), one Replica each.

    `conditions.ready` unset means ready (API semantics); terminating endpoints are never
    ready, so they drain: no new requests, their in-flight ones finish. The port is the one
    named `port_name` (the Service port's name), or the slice's only port. An endpoint listed
    in two slices during a change counts once.
    """
    found: dict[str, Replica] = {}
    for piece in slices:
        ports = piece.get("ports") or []
        port = next((p.get("port") for p in ports if p.get("name") == port_name), None)
        if port is None and len(ports) == 1:
            port = ports[0].get("port")
        if not isinstance(port, int):
            continue
        ipv6 = piece.get("addressType") == "IPv6"
        for endpoint in piece.get("endpoints") or []:
            conditions = endpoint.get("conditions") or {}
            addresses = endpoint.get("addresses") or []
            if conditions.get("ready") is False or conditions.get("terminating") or not addresses:
                continue
            host = f"[{addresses[0]}]" if ipv6 else addresses[0]
            url = f"{scheme}://{host}:{port}"
            target = endpoint.get("targetRef") or {}
            found[url] = Replica(str(target.get("name") or endpoint.get("hostname") or addresses[0]), url)
    return tuple(sorted(found.values()))


def pod_namespace(default: str = "default") -> str:
    """The namespace this pod runs in (from its ServiceAccount mount), else `default`."""
    try:
        return POD_NAMESPACE_FILE.read_text(encoding="utf-8").strip() or default
    except OSError:
        return default


def kubernetes_api_client(kubeconfig: str | None = None) -> Any:
    """An ApiClient: from `kubeconfig` if given, else the pod's ServiceAccount (in-cluster)."""
    from kubernetes import client, config

    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig, persist_config=False)
    configuration = client.Configuration()
    config.load_incluster_config(client_configuration=configuration)
    return client.ApiClient(configuration)


class EndpointSliceWatch:
    """The ready replicas of Service `service`, kept current by list + watch of its EndpointSlices."""

    kind = "kubernetes"

    def __init__(self, api_client: Any, namespace: str, service: str, port_name: str = "http",
                 scheme: str = "http", watch_timeout_s: int = 300, max_backoff_s: float = 10.0) -> None:
        self.namespace, self.service, self.port_name, self.scheme = namespace, service, port_name, scheme
        self.watch_timeout_s = watch_timeout_s
        self.max_backoff_s = max_backoff_s
        self._api_client = api_client
        self._selector = f"{SERVICE_NAME_LABEL}={service}"
        self._slices: dict[str, Mapping[str, Any]] = {}
        self._published: tuple[Replica, ...] | None = None
        self._on_change: OnChange = lambda _replicas: None
        self._stopping = threading.Event()
        self._watch: Any = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.synced = threading.Event()   # set once the first list has been applied
        self.lists = 0                    # full lists (the first, and one after each 410 or error)
        self.events = 0                   # watch events applied (bookmarks not counted)
        self.resource_version = ""        # where the next watch starts ("": list first)
        self.last_error = ""

    def start(self, on_change: OnChange) -> None:
        self._on_change = on_change
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"endpointslices-{self.service}")
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            watch = self._watch
        if watch is not None:
            watch.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"source": self.kind, "namespace": self.namespace, "service": self.service,
                    "synced": self.synced.is_set(), "lists": self.lists, "events": self.events,
                    "resource_version": self.resource_version, "last_error": self.last_error}

    # -- the reflector loop ----------------------------------------------------------------
    def _run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        backoff = 0.2
        while not self._stopping.is_set():
            try:
                if not self.resource_version:
                    self._list()
                self._watch_once()
                backoff = 0.2
            except ApiException as exc:
                if exc.status == GONE:
                    log.info("endpointslices of %s: resourceVersion expired (410), listing again", self.service)
                    with self._lock:
                        self.resource_version = ""
                    continue
                self._failed(f"API error {exc.status}: {exc.reason}", backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
            except Exception as exc:  # network errors, bad answers: retry, keep the last replicas
                self._failed(f"{type(exc).__name__}: {str(exc)[:200]}", backoff)
                backoff = min(backoff * 2, self.max_backoff_s)

    def _failed(self, message: str, backoff: float) -> None:
        """After an error: list again (as client-go's reflector does), keeping the last replicas."""
        with self._lock:
            self.resource_version = ""
            if self._stopping.is_set():
                return
            self.last_error = message
        log.warning("endpointslices of %s: %s; retrying in %.1fs", self.service, message, backoff)
        self._stopping.wait(backoff)

    def _api(self) -> Any:
        from kubernetes import client

        return client.DiscoveryV1Api(self._api_client)

    def _list(self) -> None:
        response = self._api().list_namespaced_endpoint_slice(self.namespace, label_selector=self._selector,
                                                             _preload_content=False, _request_timeout=30)
        body = json.loads(response.data)
        items = body.get("items") or []
        with self._lock:
            self._slices = {item["metadata"]["name"]: item for item in items}
            self.lists += 1
            self.resource_version = str(body["metadata"]["resourceVersion"])
            self.last_error = ""
        self._publish()
        self.synced.set()

    def _watch_once(self) -> None:
        """Apply watch events from `resource_version` until the server ends the watch."""
        from kubernetes import watch

        stream = watch.Watch()
        with self._lock:
            if self._stopping.is_set():
                return
            self._watch = stream
            resource_version = self.resource_version
        try:
            for event in stream.stream(self._api().list_namespaced_endpoint_slice, self.namespace,
                                       label_selector=self._selector, resource_version=resource_version,
                                       allow_watch_bookmarks=True, timeout_seconds=self.watch_timeout_s,
                                       _request_timeout=self.watch_timeout_s + 30):
                self._apply(event["type"], event["raw_object"])
        finally:
            with self._lock:
                self._watch = None

    def _apply(self, kind: str, obj: Mapping[str, Any]) -> None:
        """One watch event; a BOOKMARK only moves the resume point (it carries nothing else)."""
        with self._lock:
            self.resource_version = str(obj["metadata"]["resourceVersion"])
            if kind == "BOOKMARK":
                return
            name = obj["metadata"]["name"]
            if kind == "DELETED":
                self._slices.pop(name, None)
            else:
                self._slices[name] = obj
            self.events += 1
        self._publish()

    def _publish(self) -> None:
        with self._lock:
            replicas = ready_replicas(self._slices.values(), self.port_name, self.scheme)
            changed = replicas != self._published
            self._published = replicas
        if changed:
            self._on_change(replicas)


def service_of(url: str) -> str:
    """The Service name in a cluster URL: http://edge-inference:8080 and
    http://edge-inference.ns.svc.cluster.local:8080 both name `edge-inference`."""
    host = urlsplit(url).hostname or ""
    return host.split(".", 1)[0]


__all__ = ["Replica", "ReplicaSource", "StaticReplicas", "EndpointSliceWatch", "ready_replicas", "pod_namespace",
           "kubernetes_api_client", "service_of", "SERVICE_NAME_LABEL"]
