"""A real Kubernetes control plane on loopback for the k8s tests (envtest-style).

etcd, kube-apiserver, kube-controller-manager and kwok are the upstream binaries built by
k8s/build.sh from pinned Go modules. Everything a cluster bootstraps by hand is made here, per
run, in one folder: a CA and the certificates signed by it (API serving, admin client,
controller-manager client), a front-proxy CA for the aggregation layer, the service-account
signing key, and kubeconfigs. Each process logs to a file in that folder; `logs()` returns the
tails for a failing test's report. Processes run in their own process group and `stop()` ends
each one (SIGTERM, then SIGKILL), so nothing is left behind.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import parse_qsl, urlsplit

import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgeoffload.serve import free_port, stop_process_group

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "k8s" / "build.sh"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kwok")
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/24"   # allocated, never routed: nothing sends to it
FRONT_PROXY_USER = "front-proxy-client"
ADMIN_USER = "edgeoffload-admin"
# The API server's audit log records each list and watch of EndpointSlices as it arrives, so
# that tests see which resourceVersion a watch asked for (and nothing else: the log stays small).
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["ResponseStarted", "ResponseComplete"],
    "rules": [{"level": "Metadata", "verbs": ["list", "watch"],
               "resources": [{"group": "discovery.k8s.io", "resources": ["endpointslices"]}]},
              {"level": "None"}],
}
# Not a whole second: HPA windows and periods are whole seconds, so sync ages (k x 1.4 s) stay
# clear of their boundaries, where the controller's own clock jitter would decide.
HPA_SYNC_PERIOD_S = 1.4
# The controllers the tests need, and nothing more: Deployments -> ReplicaSets -> Pods,
# EndpointSlices for Services, the HPA, default ServiceAccounts, and the garbage collector
# so that deleting a Deployment removes its ReplicaSets and pods.
CONTROLLERS = ("deployment-controller", "replicaset-controller", "endpointslice-controller",
               "horizontal-pod-autoscaler-controller", "serviceaccount-controller", "garbage-collector-controller")
# Seconds, short so that a test sees many HPA syncs (the differential HPA test feeds the same
# settings to edgeoffload.hpa).
DOWNSCALE_STABILIZATION_S = 5
HPA_FLAGS = (f"--horizontal-pod-autoscaler-sync-period={round(HPA_SYNC_PERIOD_S * 1000)}ms",
             f"--horizontal-pod-autoscaler-downscale-stabilization={DOWNSCALE_STABILIZATION_S}s")



# ------------------------------------------------------------------ binaries
def binary_dir() -> Path:
    """Where k8s/build.sh puts (and looks for) the binaries; one source of truth: the script."""
    out = subprocess.run(["bash", str(BUILD_SCRIPT), "--dir"], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def missing_binaries(folder: Path) -> list[str]:
    return [name for name in BINARIES if not os.access(folder / name, os.X_OK)]


# ------------------------------------------------------------------ certificates
def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


@dataclass
class CertificateAuthority:
    """A self-signed CA that issues serving and client certificates (ECDSA P-256, 1 day)."""

    name: str
    folder: Path
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    def __post_init__(self) -> None:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.name)])
        self.certificate = (self._builder(subject, self.key.public_key())
                            .issuer_name(subject)
                            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                           critical=True)
                            .sign(self.key, hashes.SHA256()))
        self.cert_path = self.folder / f"{self.name}.crt"
        self.cert_path.write_bytes(self.pem)

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @staticmethod
    def _builder(subject: x509.Name, public_key: Any) -> x509.CertificateBuilder:
        now = dt.datetime.now(dt.timezone.utc)
        return (x509.CertificateBuilder().subject_name(subject).public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1)))

    def issue(self, file_stem: str, common_name: str, organizations: Sequence[str] = (),
              hosts: Sequence[str] = ()) -> tuple[Path, Path]:
        """A certificate for `common_name` (+ groups as O=); with `hosts` a serving one. -> (cert, key)."""
        key = ec.generate_private_key(ec.SECP256R1())
        names = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        names += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if hosts else [ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = (self._builder(x509.Name(names), key.public_key())
                   .issuer_name(self.certificate.subject)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
        if hosts:
            sans: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    sans.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert_path, key_path = self.folder / f"{file_stem}.crt", self.folder / f"{file_stem}.key"
        cert_path.write_bytes(builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        _write_key(key_path, key)
        return cert_path, key_path


def write_kubeconfig(path: Path, server: str, ca: Path, user: str, credentials: Mapping[str, str]) -> Path:
    """A kubeconfig for `user`; `credentials` as kubeconfig names them: client-certificate and
    client-key, or token (a ServiceAccount's bearer token, as a pod has)."""
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": dict(credentials)}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": user}}],
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


# ------------------------------------------------------------------ processes
@dataclass
class Process:
    """One control-plane binary running in its own process group, logging to a file."""

    name: str
    popen: subprocess.Popen
    log_path: Path

    @classmethod
    def start(cls, name: str, command: Sequence[str], log_dir: Path) -> "Process":
        log_path = log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        return cls(name, popen, log_path)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        stop_process_group(self.popen, timeout)


def wait_for(condition: Callable[[], bool], timeout: float, what: str, processes: Sequence[Process] = (),
              interval: float = 0.1) -> None:
    """Poll `condition` until true; fail early (with the log) if one of `processes` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            if not process.alive():
                raise RuntimeError(f"{process.name} exited with {process.popen.returncode} while waiting for {what}:\n"
                                   f"{process.tail()}")
        try:
            if condition():
                return
        except (OSError, urllib.error.URLError, ssl.SSLError):
            pass
        time.sleep(interval)
    raise TimeoutError(f"{what}: not within {timeout:.0f}s\n" + "\n".join(f"--- {p.name}\n{p.tail()}" for p in processes))


# ------------------------------------------------------------------ the control plane
@dataclass
class ControlPlane:
    """etcd + kube-apiserver on loopback; controllers and kwok are added on demand.
    `apiserver_flags` are appended to kube-apiserver's command line."""

    binaries: Path
    folder: Path
    apiserver_flags: Sequence[str] = ()
    processes: dict[str, Process] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.pki = self.folder / "pki"
        self.pki.mkdir(exist_ok=True)
        self.ca = CertificateAuthority("ca", self.pki)
        self.front_proxy_ca = CertificateAuthority("front-proxy-ca", self.pki)
        self.sa_key, self.sa_public_key = self.pki / "service-account.key", self.pki / "service-account.pub"
        sa_key = ec.generate_private_key(ec.SECP256R1())
        _write_key(self.sa_key, sa_key)
        self.sa_public_key.write_bytes(sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        self.port = free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        self.etcd_url = ""
        self.audit_log = self.folder / "audit.log"
        self._apiserver_command: list[str] = []
        self.admin_kubeconfig = self._kubeconfig("admin", ADMIN_USER, ("system:masters",))

    def _kubeconfig(self, stem: str, user: str, groups: Sequence[str] = ()) -> Path:
        cert, key = self.ca.issue(stem, user, groups)
        return write_kubeconfig(self.folder / f"{stem}.kubeconfig", self.server, self.ca.cert_path, user,
                                {"client-certificate": str(cert), "client-key": str(key)})

    def _start(self, name: str, command: Sequence[str]) -> Process:
        process = Process.start(name, command, self.folder)
        self.processes[name] = process
        return process

    # -- etcd and kube-apiserver ------------------------------------------------------------
    def start(self, timeout: float = 180.0) -> "ControlPlane":
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        etcd = self._start("etcd", [
            str(self.binaries / "etcd"), "--name=test", f"--data-dir={self.folder / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{client}", f"--advertise-client-urls=http://127.0.0.1:{client}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}", f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=test=http://127.0.0.1:{peer}", "--unsafe-no-fsync", "--log-level=warn"])
        wait_for(lambda: _http_ok(f"{self.etcd_url}/health"), 60, "etcd health", [etcd])
        serving = self.ca.issue("apiserver", "kube-apiserver",
                                hosts=("127.0.0.1", "localhost", "kubernetes", "kubernetes.default.svc", "10.96.0.1"))
        proxy_cert, proxy_key = self.front_proxy_ca.issue("front-proxy-client", FRONT_PROXY_USER)
        audit_policy = self.folder / "audit-policy.yaml"
        audit_policy.write_text(yaml.safe_dump(AUDIT_POLICY), encoding="utf-8")
        self._apiserver_command = [
            str(self.binaries / "kube-apiserver"), f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={self.port}",
            f"--tls-cert-file={serving[0]}", f"--tls-private-key-file={serving[1]}",
            f"--client-ca-file={self.ca.cert_path}",
            "--service-account-issuer=https://kubernetes.default.svc", f"--service-account-key-file={self.sa_public_key}",
            f"--service-account-signing-key-file={self.sa_key}",
            "--authorization-mode=Node,RBAC", "--anonymous-auth=false",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            # The `kubernetes` Service's endpoints would be 127.0.0.1, which Endpoints may not hold.
            "--endpoint-reconciler-type=none",
            # The aggregation layer (the tests serve custom.metrics.k8s.io / metrics.k8s.io themselves).
            f"--requestheader-client-ca-file={self.front_proxy_ca.cert_path}",
            f"--requestheader-allowed-names={FRONT_PROXY_USER}", "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            "--requestheader-group-headers=X-Remote-Group", "--requestheader-username-headers=X-Remote-User",
            f"--proxy-client-cert-file={proxy_cert}", f"--proxy-client-key-file={proxy_key}",
            f"--audit-policy-file={audit_policy}", f"--audit-log-path={self.audit_log}", "--audit-log-mode=blocking",
            "--profiling=false", "--v=1", *self.apiserver_flags]
        self.start_apiserver(timeout)
        return self

    def start_apiserver(self, timeout: float = 180.0) -> None:
        """(Re)start kube-apiserver on the same port, with the same etcd and flags; until ready."""
        apiserver = self._start("kube-apiserver", self._apiserver_command)
        wait_for(self.ready, timeout, "kube-apiserver /readyz", [self.processes["etcd"], apiserver], interval=0.5)

    def stop_apiserver(self) -> None:
        """Stop kube-apiserver only (SIGTERM: it ends its watches); etcd keeps the data."""
        self.processes["kube-apiserver"].stop()

    def compact_etcd(self, revision: int) -> None:
        """Compact etcd's history up to `revision` (the API server's compactor does so every
        5 minutes), and wait until it is physically done: a watch from an older resourceVersion
        then gets 410 Gone."""
        with requests.Session() as session:
            session.trust_env = False
            response = session.post(f"{self.etcd_url}/v3/kv/compaction",
                                    json={"revision": str(revision), "physical": True}, timeout=30)
        response.raise_for_status()

    def endpointslice_requests(self) -> list[tuple[str, dict[str, str]]]:
        """(verb, query parameters) of every list and watch of EndpointSlices the API server has
        received, in order (from its audit log, written before each request is served)."""
        if not self.audit_log.exists():
            return []
        text = self.audit_log.read_text(encoding="utf-8")
        received = []
        for line in text[:text.rfind("\n") + 1].splitlines():   # not a line still being written
            event = json.loads(line)
            received.append((event["verb"], dict(parse_qsl(urlsplit(event["requestURI"]).query))))
        return received

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca.cert_path))
        context.load_cert_chain(self.pki / "admin.crt", self.pki / "admin.key")
        return context

    def ready(self) -> bool:
        return _http_ok(f"{self.server}/readyz", self._ssl_context())

    # -- kube-controller-manager --------------------------------------------------------------
    def start_controllers(self, controllers: Sequence[str], flags: Sequence[str] = ()) -> Process:
        """kube-controller-manager running `controllers`, each with its own ServiceAccount's
        credentials and RBAC role (as kubeadm runs it)."""
        kubeconfig = self._kubeconfig("controller-manager", "system:kube-controller-manager")
        return self._start("kube-controller-manager", [
            str(self.binaries / "kube-controller-manager"), f"--kubeconfig={kubeconfig}",
            f"--controllers={','.join(controllers)}", "--leader-elect=false", "--secure-port=0",
            "--use-service-account-credentials=true", f"--service-account-private-key-file={self.sa_key}",
            f"--root-ca-file={self.ca.cert_path}", "--kube-api-qps=100", "--kube-api-burst=200", "--v=2", *flags])

    # -- kwok -----------------------------------------------------------------------------
    def start_kwok(self, config: Path) -> Process:
        """kwok: makes the nodes annotated kwok.x-k8s.io/node=fake Ready, and their pods Running
        and Ready with an IP from the node's podCIDR, without a kubelet or a container."""
        kubeconfig = self._kubeconfig("kwok", "kwok", ("system:masters",))
        return self._start("kwok", [
            str(self.binaries / "kwok"), f"--kubeconfig={kubeconfig}", f"--config={config}",
            "--manage-all-nodes=false", "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--node-lease-duration-seconds=40", f"--server-address=127.0.0.1:{free_port()}", "-v=INFO"])

    def create_kwok_node(self, api: Any, name: str, pod_cidr: str, labels: Mapping[str, str] | None = None,
                         timeout: float = 60.0) -> str:
        """A node kwok manages (it makes it Ready); its pods get IPs from `pod_cidr`."""
        from kubernetes import client

        core = client.CoreV1Api(api)
        core.create_node({"apiVersion": "v1", "kind": "Node",
                          "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"},
                                       "labels": {"type": "kwok", "kubernetes.io/hostname": name, **(labels or {})}},
                          "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]}})

        def ready() -> bool:
            conditions = core.read_node_status(name).status.conditions or []
            return any(c.type == "Ready" and c.status == "True" for c in conditions)

        wait_for(ready, timeout, f"kwok: node {name} Ready", [self.processes["kwok"]], interval=0.2)
        return name

    # -- clients and teardown ---------------------------------------------------------------
    def session(self) -> requests.Session:
        """A requests session speaking to the API server as the admin (for raw REST calls)."""
        session = requests.Session()
        session.trust_env = False   # no proxy, and no REQUESTS_CA_BUNDLE overriding our CA
        session.cert = (str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        session.verify = str(self.ca.cert_path)
        return session

    def api_client(self, kubeconfig: Path | None = None) -> Any:
        from kubernetes import config

        return config.new_client_from_config(config_file=str(kubeconfig or self.admin_kubeconfig),
                                             persist_config=False)

    def logs(self, lines: int = 60) -> str:
        return "\n".join(f"----- {name} ({process.log_path})\n{process.tail(lines)}"
                         for name, process in self.processes.items())

    def dead(self) -> list[str]:
        return [name for name, process in self.processes.items() if not process.alive()]

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            process.stop()

    def remove_data(self) -> None:
        shutil.rmtree(self.folder / "etcd", ignore_errors=True)


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    with urllib.request.urlopen(url, timeout=5, context=context) as response:
        return response.status == 200
