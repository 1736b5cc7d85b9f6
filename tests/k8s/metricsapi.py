"""The metrics APIs the HPA controller reads, served by the test: custom.metrics.k8s.io/v1beta2
(Pods metrics) and metrics.k8s.io/v1beta1 (pod CPU), with values a script decides per request.

kube-apiserver's aggregation layer proxies both groups to this HTTPS server (APIServices backed
by an ExternalName Service that names 127.0.0.1: Endpoints and EndpointSlices may not hold
loopback addresses, an ExternalName may). The proxy authenticates with the front-proxy client
certificate and names the caller in X-Remote-User; every answer is recorded with the caller and
what it served, so the test can replay exactly what the controller saw.
"""
from __future__ import annotations

import datetime as dt
import http.server
import json
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import parse_qs, unquote, urlsplit

CUSTOM = ("custom.metrics.k8s.io", "v1beta2")
RESOURCE = ("metrics.k8s.io", "v1beta1")
METRICS_SERVICE = "edgeoffload-test-metrics"
CPU = "cpu"
# How long a CPU sample is said to cover. Short, so a pod Ready before the sample is never
# within "one window after its readiness changed" (groupPods), as with a long-running pod.
CPU_WINDOW = "1ms"

_CUSTOM_PATH = re.compile(r"^/apis/custom\.metrics\.k8s\.io/v1beta2/namespaces/([^/]+)/pods/\*/([^/]+)$")
_RESOURCE_PATH = re.compile(r"^/apis/metrics\.k8s\.io/v1beta1/namespaces/([^/]+)/pods$")


@dataclass(frozen=True)
class Served:
    """One answer: which metric, for which pods, at what time (time.monotonic), to whom."""

    at: float
    namespace: str
    metric: str                     # "cpu" for metrics.k8s.io, else the custom metric's name
    selector: str
    values: Mapping[str, int]       # pod name -> milli-units served (cpu: millicores)
    context: Any                    # what the script's callback returned alongside the values
    user: str


# A script: (namespace, metric, labelSelector) -> (pod name -> milli value, context to record).
Script = Callable[[str, str, str], tuple[Mapping[str, int], Any]]


def _now() -> str:
    """Sample time with microseconds: a pod's Ready transition is stored in whole seconds, and a
    CPU sample not after it (plus the window) is distrusted by the controller (groupPods)."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _resource_list(group: str, version: str) -> dict[str, Any]:
    if (group, version) == CUSTOM:
        resources = [{"name": "pods/*", "singularName": "", "namespaced": True, "kind": "MetricValueList",
                      "verbs": ["get"]}]
    else:
        resources = [{"name": "pods", "singularName": "", "namespaced": True, "kind": "PodMetrics",
                      "verbs": ["get", "list"]}]
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{version}",
            "resources": resources}


@dataclass
class MetricsServer:
    """Serve until stop(); `script` decides the values, `served` records every answer."""

    script: Script
    certfile: str
    keyfile: str
    client_ca: str
    served: list[Served] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: Any) -> None:
                return None

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                try:
                    status, body = owner.answer(self.path, self.headers.get("X-Remote-User", ""))
                except Exception as exc:  # recorded: the test fails on any, with the reason
                    owner.errors.append(f"{self.path}: {type(exc).__name__}: {exc}")
                    status, body = 500, {"kind": "Status", "status": "Failure", "message": str(exc), "code": 500}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.certfile, self.keyfile)
        context.load_verify_locations(self.client_ca)
        context.verify_mode = ssl.CERT_REQUIRED   # only the aggregator's front-proxy client gets in
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="metrics-api")

    def start(self) -> "MetricsServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)

    def answer(self, raw_path: str, user: str) -> tuple[int, dict[str, Any]]:
        url = urlsplit(raw_path)
        path = unquote(url.path)   # the client sends pods/%2A/<metric>
        selector = parse_qs(url.query).get("labelSelector", [""])[0]
        for group_version in (CUSTOM, RESOURCE):
            if path.rstrip("/") == "/apis/{}/{}".format(*group_version):
                return 200, _resource_list(*group_version)
        if match := _CUSTOM_PATH.match(path):
            namespace, metric = match.groups()
            values = self._serve(namespace, metric, selector, user)
            return 200, {"kind": "MetricValueList", "apiVersion": "/".join(CUSTOM), "metadata": {},
                         "items": [{"describedObject": {"kind": "Pod", "namespace": namespace, "name": pod,
                                                        "apiVersion": "/v1"},
                                    "metric": {"name": metric}, "timestamp": _now(), "value": f"{milli}m"}
                                   for pod, milli in values.items()]}
        if match := _RESOURCE_PATH.match(path):
            namespace = match.group(1)
            values = self._serve(namespace, CPU, selector, user)
            return 200, {"kind": "PodMetricsList", "apiVersion": "/".join(RESOURCE), "metadata": {},
                         "items": [{"metadata": {"name": pod, "namespace": namespace}, "timestamp": _now(),
                                    "window": CPU_WINDOW,
                                    "containers": [{"name": "main", "usage": {"cpu": f"{milli}m", "memory": "64Mi"}}]}
                                   for pod, milli in values.items()]}
        return 404, {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404,
                     "message": f"{path} is not served here"}

    def _serve(self, namespace: str, metric: str, selector: str, user: str) -> Mapping[str, int]:
        values, context = self.script(namespace, metric, selector)
        self.served.append(Served(time.monotonic(), namespace, metric, selector, dict(values), context, user))
        return values


def api_service_objects(namespace: str, port: int, ca_bundle_pem: bytes) -> list[dict[str, Any]]:
    """The Service and the two APIServices that route both metrics groups to the test's server."""
    import base64

    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": METRICS_SERVICE, "namespace": namespace},
               "spec": {"type": "ExternalName", "externalName": "127.0.0.1",
                        "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}}
    services = [{"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                 "metadata": {"name": f"{version}.{group}"},
                 "spec": {"group": group, "version": version, "groupPriorityMinimum": 100, "versionPriority": 100,
                          "service": {"namespace": namespace, "name": METRICS_SERVICE, "port": port},
                          "caBundle": base64.b64encode(ca_bundle_pem).decode()}}
                for group, version in (CUSTOM, RESOURCE)]
    return [service, *services]


def serving_hosts(namespace: str) -> tuple[str, ...]:
    """The names the aggregator checks the serving certificate against (<service>.<namespace>.svc)."""
    return (f"{METRICS_SERVICE}.{namespace}.svc", "127.0.0.1")
