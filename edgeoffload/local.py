"""`edgeoffload up`: the whole testbed as local processes, wired like the Kubernetes deployment.

    broker (Mosquitto, same password file + ACL as EdgeBrokerProvider)
    edge pool:  TcpRelay (the Service) -> N inference unit processes (INFER_SITE=edge)
    cloud pool: TcpRelay with an emulated WAN (delay, bandwidth) -> M inference processes
    preprocessor -> edge / cloud relay URLs, publishes FrameRecords to the broker
    webserver    -> reads results and status from the broker
    autoscaler   -> edgeoffload.hpa over each pool, replica counts retained on MQTT

Every child is started in its own process group and stopped (group-wide) by Testbed.stop(),
which also runs at interpreter exit and on SIGINT/SIGTERM/SIGHUP, so no process outlives
the command. Until then the testbed is supervised as Kubernetes would: a broker, preprocessor
or webserver that dies is restarted with the same address and settings (the kubelet restarting
a container), an inference replica that dies is replaced (edgeoffload.localscale), both with
CrashLoopBackOff's delays; every restart is logged, counted in the summary and published in
the retained autoscaler status (`restarts`).
"""
from __future__ import annotations

import argparse
import atexit
import dataclasses
import logging
import math
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgeoffload.broker import BrokerProcess, TLSFiles, add_tls_arguments, find_mosquitto, start_broker, tls_from
from edgeoffload.hpa import DEFAULT_RELEASE, RELEASES, HPAError, HPASpec, load_hpa_manifests
from edgeoffload.endpointslices import EndpointSliceServer, EndpointSliceStore
from edgeoffload.localscale import (RESTART_BACKOFF_MAX_S, LocalAutoscaler, ReplicaPool, ScaleStatus, restart_delay,
                                    status_message)
from edgeoffload.messaging import MQTTSettings, Publisher
from edgeoffload.policy import load_policy
from edgeoffload.relay import LinkProfile, TcpRelay, Wan
from edgeoffload.serve import UnitProcess, free_port, start_unit
from edgeoffload.stopsignals import StopOnSignals
from edgeoffload.config import load_config
from edgeoffload.units.inference import InferenceConfig
from edgeoffload.unitfolders import autoscale_file, unit_settings, units_root

log = logging.getLogger(__name__)
SITES = ("edge", "cloud")
NAMESPACE = "edgeoffload"
SUPERVISED = ("broker", "preprocessor", "webserver")
SUPERVISE_INTERVAL_S = 0.5


@dataclass(frozen=True, slots=True)
class SiteOptions:
    """One inference pool: which detector, how many replicas to start with and at most.

    Everything else a replica runs with is what the unit's ConfigMap ships (unitfolders);
    `instances` and `sleep_pad_ms` override it for experiments, when set."""

    kind: str = "haar-face"                # haar-face | hog-people | darknet | openvino
    model_path: str | None = None
    config_path: str | None = None         # darknet .cfg
    labels_path: str | None = None
    replicas: int = 1
    max_replicas: int = 2
    instances: int | None = None           # detector instances per replica (None: as the ConfigMap ships)
    sleep_pad_ms: float = 0.0              # capacity experiments only: INFER_SLEEP_PAD_MS

    def inference_env(self, site: str) -> dict[str, str]:
        env = {**unit_settings(f"{site}-inference").env, "INFER_SITE": site, "INFER_KIND": self.kind}
        for name, value in (("MODEL_PATH", self.model_path), ("CONFIG_PATH", self.config_path),
                            ("LABELS_PATH", self.labels_path)):
            if value:
                env[f"INFER_{name}"] = str(Path(value).resolve())
        if self.instances is not None:
            env["INFER_INSTANCES"] = str(self.instances)
        if self.sleep_pad_ms:
            env["INFER_SLEEP_PAD_MS"] = f"{self.sleep_pad_ms:g}"
        return env

    def unit_config(self, site: str) -> tuple[InferenceConfig, dict[str, str]]:
        """The replicas' settings as the unit will read them, and their environment."""
        env = self.inference_env(site)
        return load_config(InferenceConfig, "INFER_", env=env), env

    def detectors_per_replica(self, site: str) -> int:
        config, env = self.unit_config(site)
        return config.pool_size(int(env.get("THREADS", "1"))) * int(env.get("WORKERS", "1"))

    def replica_concurrency(self, site: str) -> int:
        """Requests a replica admits at once: its admission bound x its workers."""
        config, env = self.unit_config(site)
        return config.queue_bound * int(env.get("WORKERS", "1"))


@dataclass(frozen=True, slots=True)
class TestbedOptions:
    """Everything `edgeoffload up` can be told; ports 0 mean "any free port"."""

    __test__ = False  # not a pytest test class
    host: str = "127.0.0.1"
    edge: SiteOptions = field(default_factory=SiteOptions)
    cloud: SiteOptions = field(default_factory=SiteOptions)
    wan: LinkProfile = field(default_factory=lambda: LinkProfile(delay_s=0.02, uplink_bps=20e6, downlink_bps=100e6))
    policy: str = "min-latency"
    max_side: int | None = None            # preprocessor downscale (PRE_MAX_SIDE); None = the unit's default
    autoscale: bool = True
    hpa_file: str | None = None            # default: the project's autoscale.yml, as on Kubernetes
    sync_period_s: float = 15.0
    kubernetes_version: str = DEFAULT_RELEASE  # whose HPA controller the autoscaler reproduces
    discovery: str = "kubernetes"          # as shipped: EndpointSlices; "static": through the Service relays
    broker_port: int = 0
    broker_tls: TLSFiles | None = None     # the broker serves MQTT over TLS only; every client verifies its CA
    preprocessor_port: int = 0
    web_port: int = 0
    workdir: str | None = None


def hpa_for(options: TestbedOptions, site: str) -> HPASpec:
    """The pool's HPA: from `hpa_file`, by default the project's autoscale.yml (as on Kubernetes).

    In a manifest the HPA of a pool is the one whose name or scaleTargetRef mentions both the
    site and "inference" (e.g. edge-inference, CloudInferenceUnit). Its replica bounds are
    capped by the pool's --SITE-max-replicas, since every local replica shares this
    machine's CPUs.
    """
    site_options = options.edge if site == "edge" else options.cloud
    path = options.hpa_file or str(autoscale_file())
    spec = _hpa_of_site(load_hpa_manifests(path, kubernetes_version=options.kubernetes_version), site, path)
    cap = max(1, site_options.max_replicas)
    return dataclasses.replace(spec, min_replicas=min(spec.min_replicas, cap), max_replicas=min(spec.max_replicas, cap),
                               sync_period_s=options.sync_period_s)


def starting_replicas(options: TestbedOptions, site: str) -> int:
    """A pool starts with --SITE-replicas, but never below its HPA's minReplicas."""
    site_options = options.edge if site == "edge" else options.cloud
    floor = hpa_for(options, site).min_replicas if options.autoscale else 1
    return max(1, site_options.replicas, floor)


def _hpa_of_site(specs: list[HPASpec], site: str, path: str) -> HPASpec:
    matches = [spec for spec in specs
               if any(site in name.lower() and "inference" in name.lower() for name in (spec.name, spec.target))]
    if len(matches) != 1:
        found = ", ".join(f"{s.name} -> {s.target}" for s in specs) or "none"
        raise HPAError(f"{path}: expected one HPA for the {site} inference unit, found {len(matches)} (HPAs: {found})")
    return matches[0]


class Testbed:
    """The running local testbed; start() brings it up, stop() takes every process down."""

    __test__ = False  # not a pytest test class

    def __init__(self, options: TestbedOptions = TestbedOptions()) -> None:
        self.options = options
        self.workdir = Path(options.workdir or tempfile.mkdtemp(prefix="edgeoffload-testbed-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_dir = self.workdir / "logs"
        self.broker: BrokerProcess | None = None
        self.relays: dict[str, TcpRelay] = {}
        self.pools: dict[str, ReplicaPool] = {}
        self.preprocessor: UnitProcess | None = None
        self.webserver: UnitProcess | None = None
        self.autoscaler: LocalAutoscaler | None = None
        self.endpoint_api: EndpointSliceServer | None = None
        self._status_publisher: Publisher | None = None
        self._status: dict = {}
        self.restarts: Counter[str] = Counter()
        self._started_at: dict[str, float] = {}
        self._crash_streaks: Counter[str] = Counter()
        self._unit_envs: dict[str, dict[str, str]] = {}
        self._supervising = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._stop_lock = threading.Lock()
        self._pid_lock = threading.Lock()
        self._stopped = False

    # -- addresses ---------------------------------------------------------------------------
    @property
    def preprocessor_url(self) -> str:
        assert self.preprocessor is not None, "testbed not started"
        return self.preprocessor.url

    @property
    def web_url(self) -> str:
        assert self.webserver is not None, "testbed not started"
        return self.webserver.url

    def mqtt_settings(self, role: str) -> MQTTSettings:
        assert self.broker is not None, "testbed not started"
        return MQTTSettings(host=self.broker.host, port=self.broker.port, username=role,
                            password=self.broker.users[role], cafile=self._mqtt_cafile or None)

    @property
    def _mqtt_cafile(self) -> str:
        return str(Path(self.options.broker_tls.cafile).resolve()) if self.options.broker_tls else ""

    @property
    def pid_file(self) -> Path:
        return self.workdir / "pids"

    def child_pids(self) -> list[int]:
        """Process-group leaders of every child (each child runs in a group of its own)."""
        pids = [pid for pool in self.pools.values() for pid in pool.pids()]
        pids += [unit.process.pid for unit in (self.preprocessor, self.webserver) if unit is not None]
        if self.broker is not None and self.broker.process is not None:
            pids.append(self.broker.process.pid)
        return pids

    def _write_pid_file(self) -> None:
        """Every process group ever started, so a run killed with SIGKILL can still be cleaned up
        (`xargs -n1 -I{} kill -- -{} < pids`) and tests can prove nothing outlived stop()."""
        with self._pid_lock:
            known = set(self.pid_file.read_text().split()) if self.pid_file.exists() else set()
            known.update(str(pid) for pid in self.child_pids())
            self.pid_file.write_text("\n".join(sorted(known, key=int)) + "\n")

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, progress: Callable[[str], None] = lambda _m: None) -> "Testbed":
        atexit.register(self.stop)
        try:
            self._start(progress)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, progress: Callable[[str], None]) -> None:
        opts = self.options
        load_policy(opts.policy)  # a typo or a broken policy file fails here, before any process starts
        if find_mosquitto() is None:
            raise FileNotFoundError("mosquitto is not installed (make system-deps, or apt-get install mosquitto)")
        progress("starting broker")
        # Mosquitto started as root drops to user `mosquitto`, which cannot traverse private
        # (0700) parents such as pytest's or mkdtemp's: the broker gets a top-level temp dir.
        # Persistence as in EdgeBrokerProvider (autosave every 5 s): a killed broker comes back
        # with its subscribers' sessions, and the publishers re-send what it had not saved.
        self.broker = start_broker(opts.broker_port or None, opts.host, tls=opts.broker_tls)
        self._write_pid_file()
        # For the replay command describe() prints: a file, so the password stays out of argv.
        self.monitor_password_file.touch(mode=0o600)
        self.monitor_password_file.chmod(0o600)
        self.monitor_password_file.write_text(self.broker.users["monitor"] + "\n", encoding="utf-8")
        # The API server's part in discovery: the pools' replicas as EndpointSlices, which the
        # preprocessor watches through a kubeconfig, as it watches a cluster's in a pod.
        self.endpoint_api = EndpointSliceServer(EndpointSliceStore(NAMESPACE), host=opts.host).start()
        self.endpoint_api.write_kubeconfig(self.kubeconfig)
        progress("starting edge and cloud inference replicas")
        site_options = {"edge": opts.edge, "cloud": opts.cloud}
        starting = {}
        for site in SITES:
            wan = Wan(opts.wan) if site == "cloud" and opts.wan.shaped else None
            self.relays[site] = TcpRelay(host=opts.host, link=wan, name=f"{site}-relay").start()
            deployed = unit_settings(f"{site}-inference")
            self.pools[site] = ReplicaPool(site, site_options[site].inference_env(site), self.relays[site],
                                           self.log_dir, service=f"{site}-inference",
                                           endpoints=self.endpoint_api.store, wan=wan,
                                           pre_stop_s=deployed.pre_stop_s, cpu_request=deployed.cpu_request,
                                           on_change=self._pool_changed)
            starting[site] = starting_replicas(opts, site)
        with ThreadPoolExecutor(len(SITES)) as starter:  # model loading overlaps
            for future in [starter.submit(self.pools[s].scale_to, starting[s]) for s in SITES]:
                future.result()
        progress("starting preprocessor and webserver")
        self._unit_envs = {"preprocessor": self._preprocessor_env(), "webserver": self._webserver_env()}
        with ThreadPoolExecutor(2) as starter:
            started = {name: starter.submit(self._start_unit, name, port_or_free(opts.host, port))
                       for name, port in (("preprocessor", opts.preprocessor_port), ("webserver", opts.web_port))}
        failures = []
        for name, future in started.items():  # keep whichever started, so stop() ends it
            try:
                setattr(self, name, future.result())
            except Exception as exc:
                failures.append(exc)
        if failures:
            raise failures[0]
        self._write_pid_file()
        self._status_publisher = Publisher(self.mqtt_settings("autoscaler"), unit="autoscaler").start()
        if opts.autoscale:
            self.autoscaler = self._new_autoscaler().start()
        self._publish_status(status_message(self.pools, [
            ScaleStatus(site, pool.size, pool.size, "initial", {}) for site, pool in self.pools.items()]))
        now = time.monotonic()
        self._started_at = {name: now for name in SUPERVISED}
        self._supervisor = threading.Thread(target=self._supervise, daemon=True, name="testbed-supervisor")
        self._supervisor.start()

    def _start_unit(self, name: str, port: int, probe_port: int | None = None) -> UnitProcess:
        env = self._unit_envs[name]
        return start_unit(name, env=env, host=self.options.host, log_dir=self.log_dir, port=port,
                          probe_port=probe_port, workers=int(env.get("WORKERS", "1")),
                          threads=int(env.get("THREADS", "8")))

    def _new_autoscaler(self, first_sync_s: float | None = None) -> LocalAutoscaler:
        pools = {site: (self.pools[site], dataclasses.replace(hpa_for(self.options, site), first_sync_s=first_sync_s))
                 for site in SITES}
        return LocalAutoscaler(pools, publish=self._publish_status)

    def _pool_changed(self) -> None:
        self._write_pid_file()
        self._publish_status()

    def _publish_status(self, status: dict | None = None) -> None:
        """The autoscaler's retained status, plus every restart so far."""
        if status is not None:
            self._status = status
        if self._status_publisher is not None:
            self._status_publisher.publish_status({**self._status, "restarts": self.restart_counts()})

    def restart_counts(self) -> dict[str, int]:
        """Restarts per component: broker, preprocessor, webserver and each inference Deployment."""
        return {**{name: self.restarts[name] for name in SUPERVISED},
                **{pool.service: pool.restarts for pool in self.pools.values()}}

    # -- supervision ---------------------------------------------------------------------------
    def _process_of(self, name: str):
        if name == "broker":
            return self.broker.process if self.broker is not None else None
        unit = getattr(self, name)
        return unit.process if unit is not None else None

    def _supervise(self) -> None:
        """Restart a broker, preprocessor or webserver that exited, as the kubelet restarts a
        container: same address and settings, immediately the first time, then with back-off."""
        due: dict[str, float] = {}
        while not self._supervising.wait(SUPERVISE_INTERVAL_S):
            for name in SUPERVISED:
                process = self._process_of(name)
                if process is None or process.poll() is None or self._supervising.is_set():
                    continue
                if name not in due:
                    lived_s = time.monotonic() - self._started_at[name]
                    self._crash_streaks[name] = self._crash_streaks[name] + 1 if lived_s < RESTART_BACKOFF_MAX_S else 0
                    delay = restart_delay(self._crash_streaks[name])
                    due[name] = time.monotonic() + delay
                    log.warning("%s exited with %s after %.0fs; restarting it in %.0fs", name, process.returncode,
                                lived_s, delay)
                if time.monotonic() >= due[name]:
                    del due[name]
                    self._restart(name)

    def _restart(self, name: str) -> None:
        try:
            if name == "broker":
                assert self.broker is not None
                self.broker.start()
            else:
                old = getattr(self, name)
                setattr(self, name, self._start_unit(name, old.port, old.probe_port))
        except Exception:  # counted as another early exit: the next attempt backs off further
            log.exception("restarting %s failed", name)
            return
        self._started_at[name] = time.monotonic()
        self.restarts[name] += 1
        log.warning("%s restarted (restart %d)", name, self.restarts[name])
        self._write_pid_file()
        self._publish_status()

    def restart_autoscaler(self, first_sync_s: float | None = None) -> LocalAutoscaler:
        """A fresh start for an experiment: stop the autoscaler, bring each pool back to its
        starting replicas (waiting until they are ready), forget the metrics measured so far, and
        start a new autoscaler whose HPA controllers remember nothing, as HPAs created now would.
        It first reconciles after `first_sync_s` (None: as the release does)."""
        if self.autoscaler is not None:
            self.autoscaler.stop()
        for site, pool in self.pools.items():
            pool.scale_to(starting_replicas(self.options, site))
            pool.reset_windows()
        self.autoscaler = self._new_autoscaler(first_sync_s).start()
        return self.autoscaler

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def monitor_password_file(self) -> Path:
        return self.workdir / "monitor.password"

    def _preprocessor_env(self) -> dict[str, str]:
        """The ConfigMap's settings, wired to this machine's broker, Services and EndpointSlice API."""
        assert self.broker is not None
        discovery = {f"PRE_{site.upper()}_DISCOVERY": self.options.discovery for site in SITES}
        return {
            **unit_settings("preprocessor").env,
            **discovery,
            "PRE_EDGE_URL": self.relays["edge"].url,
            "PRE_CLOUD_URL": self.relays["cloud"].url,
            "PRE_EDGE_SERVICE": "edge-inference",
            "PRE_CLOUD_SERVICE": "cloud-inference",
            "PRE_NAMESPACE": NAMESPACE,
            "PRE_KUBECONFIG": str(self.kubeconfig),
            "PRE_POLICY": self.options.policy,
            **({"PRE_MAX_SIDE": str(self.options.max_side)} if self.options.max_side is not None else {}),
            # The policy's starting estimates of the emulated WAN (measurements replace them).
            "PRE_CLOUD_RTT_MS": f"{2000 * self.options.wan.delay_s:g}",
            "PRE_CLOUD_UPLINK_MBPS": f"{min(self.options.wan.uplink_bps, 1e12) / 1e6:g}",
            "PRE_EDGE_REPLICAS": str(self.pools["edge"].size),
            "PRE_CLOUD_REPLICAS": str(self.pools["cloud"].size),
            "PRE_MQTT_HOST": self.broker.host,
            "PRE_MQTT_PORT": str(self.broker.port),
            "PRE_MQTT_USERNAME": "preprocessor",
            "PRE_MQTT_PASSWORD": self.broker.users["preprocessor"],
            "PRE_MQTT_CAFILE": self._mqtt_cafile,
        }

    def _webserver_env(self) -> dict[str, str]:
        assert self.broker is not None
        return {
            **unit_settings("webserver").env,
            "WEB_MQTT_HOST": self.broker.host,
            "WEB_MQTT_PORT": str(self.broker.port),
            "WEB_MQTT_USERNAME": "webserver",
            "WEB_MQTT_PASSWORD": self.broker.users["webserver"],
            "WEB_MQTT_CAFILE": self._mqtt_cafile,
            # This testbed's runs first, then the experiments committed beside the unit folders.
            "WEB_RESULTS_DIR": os.pathsep.join(str(d) for d in (self.workdir / "results", committed_results())
                                               if d is not None),
        }

    def stop(self) -> None:
        """Stop everything, in reverse order; safe to call twice and from a signal handler."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        self._supervising.set()  # nothing is restarted from here on; a restart under way ends first
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(120)
        steps: list[tuple[str, Callable[[], object]]] = []
        if self.autoscaler is not None:
            steps.append(("autoscaler", self.autoscaler.stop))
        if self._status_publisher is not None:
            steps.append(("status publisher", lambda: self._status_publisher.close(2.0, offline_status={})))
        # The preprocessor drains its queues into the inference pools and flushes its records to
        # the broker, so it stops before them, and the broker stops last.
        steps += [(unit.unit, unit.stop) for unit in (self.webserver, self.preprocessor) if unit is not None]
        steps += [(f"{name} pool", pool.stop) for name, pool in self.pools.items()]
        steps += [(f"{name} relay", relay.stop) for name, relay in self.relays.items()]
        if self.endpoint_api is not None:
            steps.append(("EndpointSlice API", self.endpoint_api.stop))
        if self.broker is not None:
            broker = self.broker
            steps += [("broker", broker.stop), ("broker files", lambda: shutil.rmtree(broker.workdir, True))]
        for name, step in steps:
            try:
                step()
            except Exception:  # keep going: every other process must still be stopped
                log.exception("stopping %s failed", name)
        atexit.unregister(self.stop)

    def __enter__(self) -> "Testbed":
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def scaling_numbers(self) -> dict[str, dict[str, int]]:
        """Replica counts per pool (rescales include the initial start, so they are not changes)."""
        return {site: {"now": pool.size, "peak": pool.peak, "autoscaler_changes": max(0, pool.rescales - 1)}
                for site, pool in self.pools.items()}

    def scaling_rows(self) -> list[tuple[str, str]]:
        """scaling_numbers for a summary table, then the restarts per component."""
        rows = [(f"{site} replicas", f"{n['now']} now, peak {n['peak']}, {n['autoscaler_changes']} autoscaler change(s)")
                for site, n in self.scaling_numbers().items()]
        restarts = self.restart_counts()
        return rows + [("restarts", ", ".join(f"{name} {count}" for name, count in restarts.items()))]

    def describe(self) -> str:
        lines = [f"web page:      {self.web_url}/",
                 f"preprocessor:  {self.preprocessor_url}/process?camera=ID  (POST JPEG frames)",
                 f"broker:        {'mqtts' if self.options.broker_tls else 'mqtt'}://{self.broker.host}:{self.broker.port}"
                 if self.broker else "broker: -"]
        for site in SITES:
            wan = ""
            if site == "cloud" and self.relays[site].link:
                link = self.options.wan
                wan = f" via WAN {1000 * link.delay_s:.0f} ms one-way, {_mbps(link.uplink_bps)} up / {_mbps(link.downlink_bps)} down"
            lines.append(f"{site + ' pool:':<15}{self.relays[site].url} -> {self.pools[site].size} replica(s){wan}")
        if self.endpoint_api is not None:
            lines.append(f"EndpointSlices: {self.endpoint_api.url} (kubeconfig {self.kubeconfig}; the preprocessor "
                         f"discovers replicas here{'' if self.options.discovery == 'kubernetes' else ': not used, static'})")
        if self.broker:
            lines.append(f"replay into it: edgeoffload replay TRACE --target {self.preprocessor_url} "
                         f"--mqtt-port {self.broker.port} --mqtt-user monitor "
                         f"--mqtt-password-file {self.monitor_password_file}"
                         + (f" --mqtt-cafile {self._mqtt_cafile}" if self._mqtt_cafile else "")
                         + "  (per-run password, readable by you only)")
        lines.append(f"logs:          {self.log_dir}")
        return "\n".join(lines)


def committed_results() -> Path | None:
    """experiments/results of a source checkout (what `make` installs), if there is one."""
    folder = units_root() / "experiments" / "results"
    return folder if folder.is_dir() else None


def port_or_free(host: str, port: int) -> int:
    """`port` if it can be bound on `host` now, else (with a warning) any free port; 0 = any."""
    if port:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
            return port
        except OSError:
            log.warning("port %d on %s is in use; using a free port instead", port, host)
    return free_port(host)


def _mbps(bps: float) -> str:
    return "unlimited" if math.isinf(bps) else f"{bps / 1e6:g} Mbit/s"


# --- command line ---------------------------------------------------------------------------

def add_testbed_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by `up` and `demo`."""
    for site in SITES:
        parser.add_argument(f"--{site}-detector", default="haar-face",
                            choices=("haar-face", "hog-people", "darknet", "openvino"))
        parser.add_argument(f"--{site}-model", help="model file (.weights for darknet, .xml/.onnx for openvino)")
        parser.add_argument(f"--{site}-config", help="darknet .cfg")
        parser.add_argument(f"--{site}-replicas", type=int, default=1, help="replicas at start")
        parser.add_argument(f"--{site}-max-replicas", type=int, default=2, help="autoscaler upper bound")
    parser.add_argument("--policy", default="min-latency", help="offloading policy (name, module:attr or file.py:attr)")
    parser.add_argument("--max-side", type=int, default=None,
                        help="preprocessor downscales frames to this longer side (default: the unit's, 640)")
    parser.add_argument("--wan-delay-ms", type=float, default=20.0, help="one-way edge<->cloud delay")
    parser.add_argument("--wan-up-mbps", type=float, default=20.0, help="edge->cloud bandwidth (0 = unlimited)")
    parser.add_argument("--wan-down-mbps", type=float, default=100.0, help="cloud->edge bandwidth (0 = unlimited)")
    parser.add_argument("--no-autoscale", action="store_true", help="keep the starting replica counts")
    parser.add_argument("--hpa", default=None, help="HPA manifests to scale with (default: the project's autoscale.yml)")
    parser.add_argument("--discovery", choices=("kubernetes", "static"), default="kubernetes",
                        help="how the preprocessor finds replicas: their EndpointSlices, as shipped (default), "
                             "or one Service address per site")
    parser.add_argument("--sync-period", type=float, default=15.0, help="autoscaler sync period (s)")
    parser.add_argument("--kubernetes-version", default=DEFAULT_RELEASE, choices=RELEASES,
                        help=f"release whose HPA controller the autoscaler reproduces (default {DEFAULT_RELEASE})")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="preprocessor port (0 = any)")
    parser.add_argument("--web-port", type=int, default=8000, help="web page port (0 = any)")
    parser.add_argument("--mqtt-port", type=int, default=0, help="broker port (0 = any)")
    add_tls_arguments(parser, "mqtt-")
    parser.add_argument("--workdir", default=None, help="logs, broker files (default: a temp dir)")


def options_from(args: argparse.Namespace) -> TestbedOptions:
    def site(name: str) -> SiteOptions:
        return SiteOptions(kind=getattr(args, f"{name}_detector"), model_path=getattr(args, f"{name}_model"),
                           config_path=getattr(args, f"{name}_config"), replicas=getattr(args, f"{name}_replicas"),
                           max_replicas=getattr(args, f"{name}_max_replicas"))

    def bps(mbps: float) -> float:
        return math.inf if mbps <= 0 else mbps * 1e6

    return TestbedOptions(host=args.host, edge=site("edge"), cloud=site("cloud"),
                          wan=LinkProfile(args.wan_delay_ms / 1000.0, bps(args.wan_up_mbps), bps(args.wan_down_mbps)),
                          policy=args.policy, max_side=args.max_side, autoscale=not args.no_autoscale, hpa_file=args.hpa,
                          sync_period_s=args.sync_period, kubernetes_version=args.kubernetes_version,
                          discovery=args.discovery, broker_port=args.mqtt_port, broker_tls=tls_from(args, "mqtt_"),
                          preprocessor_port=args.port, web_port=args.web_port, workdir=args.workdir)


def _say(message: str) -> None:
    print(f"edgeoffload: {message}", file=sys.stderr, flush=True)


def register(parser: argparse.ArgumentParser) -> None:
    """`edgeoffload up`: run the local testbed until Ctrl-C."""
    add_testbed_arguments(parser)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    with StopOnSignals() as stop, Testbed(options_from(args)) as testbed:
        testbed_ready(testbed)
        while not stop.wait(0.5):
            pass
    return 0


def testbed_ready(testbed: Testbed) -> None:
    print(testbed.describe(), flush=True)
    _say("testbed running; Ctrl-C stops every process")


__all__ = ["Testbed", "TestbedOptions", "SiteOptions", "StopOnSignals", "add_testbed_arguments", "options_from",
           "hpa_for", "starting_replicas"]
