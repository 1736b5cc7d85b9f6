"""The local testbed's EndpointSlice API: its pools' replicas, served as a Kubernetes API server would.

On Kubernetes the EndpointSlice controller publishes each Service's ready pods and the
preprocessor watches them (edgeoffload.discovery). The local testbed has no API server, so
its pools publish their replicas here and this small server answers the same two requests in
the same wire format (discovery.k8s.io/v1), for the `kubernetes` client the preprocessor uses:

  GET /apis/discovery.k8s.io/v1/namespaces/NS/endpointslices?labelSelector=kubernetes.io/service-name=S
      -> EndpointSliceList with metadata.resourceVersion
  ... &watch=true&resourceVersion=RV[&allowWatchBookmarks=true][&timeoutSeconds=T]
      -> a stream of {"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": ...} lines;
         a resourceVersion older than the retained history gets ERROR 410 (Expired), as after
         an etcd compaction, and the client lists again.

Each replica listens on a port of its own, and a slice's endpoints share one port list, so
every replica gets a slice of its own (as the EndpointSlice controller groups endpoints by
port). Removing a replica first marks it terminating (not ready) and then deletes its slice,
as a pod's deletion does. Requests need the bearer token written into the kubeconfig.
"""
from __future__ import annotations

import hmac
import json
import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import yaml

from edgeoffload.discovery import SERVICE_NAME_LABEL

API_PATH = re.compile(r"^/apis/discovery\.k8s\.io/v1/namespaces/([a-z0-9-]{1,63})/endpointslices$")
HISTORY = 1024   # watch events kept for resuming; older resourceVersions get 410 Gone


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One replica as a pool publishes it: its name and where it listens."""

    name: str
    host: str
    port: int
    ready: bool = True
    terminating: bool = False


def slice_object(namespace: str, service: str, endpoint: Endpoint, resource_version: int) -> dict[str, Any]:
    """The discovery.k8s.io/v1 EndpointSlice holding one replica."""
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{service}-{endpoint.name}", "namespace": namespace,
                     "resourceVersion": str(resource_version),
                     "labels": {SERVICE_NAME_LABEL: service,
                                "endpointslice.kubernetes.io/managed-by": "edgeoffload-local-testbed"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [endpoint.host],
                       "conditions": {"ready": endpoint.ready, "serving": endpoint.ready,
                                      "terminating": endpoint.terminating},
                       "targetRef": {"kind": "Pod", "namespace": namespace, "name": endpoint.name}}],
        "ports": [{"name": "http", "port": endpoint.port, "protocol": "TCP"}],
    }


def status_object(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


class EndpointSliceStore:
    """Slices by (service, replica) with a resourceVersion counter and a bounded event history."""

    def __init__(self, namespace: str = "edgeoffload", history: int = HISTORY) -> None:
        self.namespace = namespace
        self._version = 0
        self._slices: dict[tuple[str, str], dict[str, Any]] = {}
        self._events: deque[tuple[int, str, str, dict[str, Any]]] = deque(maxlen=history)  # (rv, service, type, obj)
        self._oldest = 1   # the oldest resourceVersion a watch can still resume after (minus one)
        self._changed = threading.Condition()

    def set_endpoint(self, service: str, endpoint: Endpoint) -> None:
        """Add or update one replica's slice (ADDED the first time, MODIFIED after)."""
        with self._changed:
            key = (service, endpoint.name)
            kind = "MODIFIED" if key in self._slices else "ADDED"
            self._version += 1
            obj = slice_object(self.namespace, service, endpoint, self._version)
            self._slices[key] = obj
            self._record(service, kind, obj)

    def delete_endpoint(self, service: str, name: str) -> None:
        with self._changed:
            obj = self._slices.pop((service, name), None)
            if obj is None:
                return
            self._version += 1
            obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self._version)}}
            self._record(service, "DELETED", obj)

    def _record(self, service: str, kind: str, obj: dict[str, Any]) -> None:
        if len(self._events) == self._events.maxlen:
            self._oldest = self._events[0][0] + 1
        self._events.append((self._version, service, kind, obj))
        self._changed.notify_all()

    def compact(self) -> None:
        """Forget the event history (as an etcd compaction does): older watches get 410."""
        with self._changed:
            self._events.clear()
            self._oldest = self._version + 1

    @property
    def resource_version(self) -> int:
        with self._changed:
            return self._version

    def list(self, service: str) -> tuple[int, list[dict[str, Any]]]:
        with self._changed:
            return self._version, [obj for (svc, _), obj in sorted(self._slices.items()) if svc == service]

    def events_after(self, service: str, version: int, timeout: float) -> tuple[int, list[tuple[str, dict[str, Any]]]] | None:
        """Events of `service` newer than `version`, waiting up to `timeout` for one; None when
        `version` is older than the history kept (410 Gone)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                if version + 1 < self._oldest:
                    return None
                found = [(kind, obj) for rv, svc, kind, obj in self._events if rv > version and svc == service]
                if found or self._version > version:
                    return self._version, found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return version, []
                self._changed.wait(remaining)


class EndpointSliceServer:
    """Serves an EndpointSliceStore over HTTP on loopback, for the `kubernetes` client."""

    def __init__(self, store: EndpointSliceStore, host: str = "127.0.0.1", port: int = 0,
                 token: str | None = None, bookmark_interval_s: float = 30.0) -> None:
        self.store = store
        self.token = token or secrets.token_urlsafe(24)
        self.bookmark_interval_s = bookmark_interval_s
        self.requests = 0
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="endpointslice-api")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "EndpointSliceServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "EndpointSliceServer":
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def write_kubeconfig(self, path: Path, namespace: str | None = None) -> Path:
        """A kubeconfig naming this server and its token (file mode 0600: it holds a credential)."""
        config = {"apiVersion": "v1", "kind": "Config", "current-context": "edgeoffload-local",
                  "clusters": [{"name": "edgeoffload-local", "cluster": {"server": self.url}}],
                  "users": [{"name": "preprocessor", "user": {"token": self.token}}],
                  "contexts": [{"name": "edgeoffload-local",
                                "context": {"cluster": "edgeoffload-local", "user": "preprocessor",
                                            "namespace": namespace or self.store.namespace}}]}
        path.touch(mode=0o600)
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        return path

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: Any) -> None:  # quiet: the testbed has its own logs
                return None

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.requests += 1
                parts = urlsplit(self.path)
                query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
                supplied = self.headers.get("Authorization", "")
                if not hmac.compare_digest(supplied.encode(), f"Bearer {server.token}".encode()):
                    return self._json(401, status_object(401, "Unauthorized", "Unauthorized"))
                match = API_PATH.match(parts.path)
                if not match or match.group(1) != server.store.namespace:
                    return self._json(404, status_object(404, "NotFound", f"the server could not find {parts.path}"))
                selector = query.get("labelSelector", "")
                prefix = f"{SERVICE_NAME_LABEL}="
                if not selector.startswith(prefix) or "," in selector:
                    return self._json(400, status_object(400, "BadRequest",
                                                         f"labelSelector must be {prefix}NAME, got {selector!r}"))
                service = selector[len(prefix):]
                if query.get("watch") in ("true", "1"):
                    return self._watch(service, query)
                version, items = server.store.list(service)
                return self._json(200, {"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1",
                                        "metadata": {"resourceVersion": str(version)}, "items": items})

            def _json(self, code: int, body: dict[str, Any]) -> None:
                payload = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _watch(self, service: str, query: dict[str, str]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Connection", "close")
                self.end_headers()
                try:
                    for event in server._watch_events(service, query):
                        line = json.dumps(event).encode() + b"\n"
                        self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:   # the client went away
                    pass
                self.close_connection = True

        return Handler

    def _watch_events(self, service: str, query: dict[str, str]) -> Iterator[dict[str, Any]]:
        """The events of one watch request, until its timeout or the server stops."""
        timeout_s = float(query.get("timeoutSeconds") or 1800)
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        end = time.monotonic() + timeout_s
        raw = query.get("resourceVersion", "")
        if raw in ("", "0"):   # "start at most recent": synthetic ADDED events for what exists
            version, items = self.store.list(service)
            yield from ({"type": "ADDED", "object": item} for item in items)
        elif raw.isdigit():
            version = int(raw)
        else:
            yield {"type": "ERROR", "object": status_object(400, "BadRequest", f"invalid resourceVersion {raw!r}")}
            return
        next_bookmark = time.monotonic() + self.bookmark_interval_s
        while not self._stopping.is_set() and (now := time.monotonic()) < end:
            wait = min(end, next_bookmark if bookmarks else end, now + 0.5) - now
            found = self.store.events_after(service, version, max(0.0, wait))
            if found is None:
                yield {"type": "ERROR", "object": status_object(
                    410, "Expired", f"too old resource version: {version} ({self.store.resource_version})")}
                return
            newest, events = found
            for kind, obj in events:
                yield {"type": kind, "object": obj}
            version = newest
            if bookmarks and time.monotonic() >= next_bookmark:
                yield {"type": "BOOKMARK", "object": {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                                                      "metadata": {"resourceVersion": str(version)}}}
                next_bookmark = time.monotonic() + self.bookmark_interval_s


__all__ = ["Endpoint", "EndpointSliceStore", "EndpointSliceServer", "slice_object", "status_object"]
