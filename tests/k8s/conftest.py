"""Fixtures for the tests against a real Kubernetes control plane (marker `k8s`, `make k8s-test`).

One control plane per session: etcd + kube-apiserver first; kube-controller-manager and kwok
join when a test asks for them. A test module that needs the API server configured otherwise,
or stopped and restarted, gets a control plane of its own (`uncached_control_plane`). Without
the binaries (k8s/build.sh builds them) every test here is skipped with the reason, never
passed. A failing test's report carries the control planes' log tails. At the end every process
is stopped and checked gone.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import pytest

from controlplane import (CONTROLLERS, HPA_FLAGS, ControlPlane, binary_dir, missing_binaries, wait_for,
                          write_kubeconfig)
from serverside import Server
from test_deploy import NAMESPACE, objects

HERE = Path(__file__).resolve().parent
KWOK_NODE = "kwok-node"
_running: list[ControlPlane] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.k8s)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and _running:
        report.sections.append(("control plane logs (tails)", "\n".join(plane.logs() for plane in _running)))


@pytest.fixture(scope="session")
def k8s_binaries() -> Path:
    folder = binary_dir()
    missing = missing_binaries(folder)
    if missing:
        pytest.skip(f"Kubernetes binaries missing in {folder}: {', '.join(missing)}; "
                    "build them with `make k8s-test` (k8s/build.sh; Go and the Go module proxy needed)")
    return folder


@pytest.fixture(scope="session")
def control_plane(k8s_binaries: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    yield from _running_plane(ControlPlane(k8s_binaries, tmp_path_factory.mktemp("k8s")))


# Watches of EndpointSlices go to etcd, not to the watch cache: an etcd compaction then expires
# a watch's resourceVersion at once (the watch cache would go on serving it from the events it
# keeps in memory, for at least 75 s).
UNCACHED_ENDPOINTSLICES = ("--watch-cache-sizes=endpointslices.discovery.k8s.io#0",)


@pytest.fixture(scope="module")
def uncached_control_plane(k8s_binaries: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A control plane of the test module's own (etcd + kube-apiserver), free to be compacted or
    restarted, its API server without a watch cache for EndpointSlices."""
    yield from _running_plane(ControlPlane(k8s_binaries, tmp_path_factory.mktemp("k8s-uncached"),
                                           apiserver_flags=UNCACHED_ENDPOINTSLICES))


def _running_plane(plane: ControlPlane) -> Iterator[ControlPlane]:
    _running.append(plane)
    try:
        plane.start()
        yield plane
    finally:
        plane.stop()
        _running.remove(plane)
        left = [f"{name} (pid {p.popen.pid})" for name, p in plane.processes.items() if _pid_alive(p.popen.pid)]
        plane.remove_data()
        assert not left, f"control plane processes left behind: {left}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="session")
def api(control_plane: ControlPlane) -> Any:
    """An ApiClient with the admin's credentials (system:masters)."""
    client = control_plane.api_client()
    yield client
    client.close()


@pytest.fixture(scope="session")
def server(control_plane: ControlPlane, api: Any) -> Server:
    """Server-side apply / create with status, message and warnings."""
    return Server(control_plane, api)


@pytest.fixture(scope="session")
def namespace(server: Server) -> str:
    """The namespace as `kubectl apply -f namespace.yml` makes it, and the ServiceAccounts the
    pods run as (the ServiceAccount admission plugin refuses pods whose account is missing;
    `default` is what the serviceaccount controller would create)."""
    (namespace_object,) = [o for o in objects() if o["kind"] == "Namespace"]
    answer = server.apply(namespace_object, dry_run=False)
    assert answer.accepted, answer
    accounts = [o for o in objects() if o["kind"] == "ServiceAccount"]
    accounts.append({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": NAMESPACE}})
    for account in accounts:
        answer = server.apply(account, dry_run=False)
        assert answer.accepted, answer
    return NAMESPACE


@pytest.fixture(scope="session")
def preprocessor_rbac(server: Server, namespace: str) -> None:
    for obj in objects():
        if obj["kind"] in ("ServiceAccount", "Role", "RoleBinding"):
            answer = server.apply(obj, dry_run=False)
            assert answer.accepted, answer


@pytest.fixture(scope="session")
def preprocessor_kubeconfig(control_plane: ControlPlane, api: Any, preprocessor_rbac: None,
                            tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig holding a token of the preprocessor's ServiceAccount (TokenRequest), as its pod has."""
    from kubernetes import client

    request = client.CoreV1Api(api).create_namespaced_service_account_token(
        "preprocessor", NAMESPACE, {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                    "spec": {"expirationSeconds": 3600}})
    path = tmp_path_factory.mktemp("preprocessor") / "preprocessor.kubeconfig"
    return write_kubeconfig(path, control_plane.server, control_plane.ca.cert_path, "preprocessor",
                            {"token": request.status.token})


@pytest.fixture(scope="session")
def controllers(control_plane: ControlPlane, api: Any) -> ControlPlane:
    """kube-controller-manager with CONTROLLERS; ready once it made the default ServiceAccount."""
    from kubernetes import client

    process = control_plane.start_controllers(CONTROLLERS, HPA_FLAGS)
    core = client.CoreV1Api(api)
    wait_for(lambda: bool(core.list_namespaced_service_account("default", field_selector="metadata.name=default").items),
             120, "kube-controller-manager: the default ServiceAccount", [process], interval=0.5)
    return control_plane


@pytest.fixture(scope="session")
def kwok(controllers: ControlPlane) -> ControlPlane:
    """kwok running (tests/k8s/kwok-stages.yaml): it manages the nodes the tests create."""
    controllers.start_kwok(HERE / "kwok-stages.yaml")
    return controllers


@pytest.fixture(scope="session")
def kwok_node(kwok: ControlPlane, api: Any) -> str:
    """A kwok node for workloads nobody sends traffic to (the HPA test): pods bound to it
    (spec.nodeName; no scheduler runs) become Running and Ready without containers."""
    return kwok.create_kwok_node(api, KWOK_NODE, "10.244.1.0/24")
