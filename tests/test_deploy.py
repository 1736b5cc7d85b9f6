"""The Kubernetes deployment (unit folders, autoscale.yml, deploy/, Dockerfile) against the code.

Manifests are validated against the Kubernetes OpenAPI schemas (kubernetes-validate, offline)
and then checked for consistency with what the code really does: routes from each unit's
Flask url_map, environment variables from the config dataclasses and gunicorn_conf.py,
metric names from edgeoffload.metrics, the broker config from edgeoffload.broker, HPA
parameters through edgeoffload.hpa and the simulator's scenario loader.
"""
from __future__ import annotations

import dataclasses
import functools
import http.server
import importlib.util
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import kubernetes_validate
import pytest
import requests
import yaml
from prometheus_client.metrics import MetricWrapperBase

from edgeoffload import broker, brokerplugin, metrics
from edgeoffload.config import env_names, load_config
from edgeoffload.hpa import HPASpec, load_hpa_manifests, parse_quantity
from edgeoffload.serve import READY_PATHS, UNITS, start_unit
from edgeoffload.units.probes import PROBE_PATHS

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "edgeoffload"
# A recent Kubernetes release whose schemas kubernetes-validate ships (k3s stable is 1.33+).
KUBERNETES_VERSION = "1.33.0"
UNIT_DIRS = ("EdgeBrokerProvider", "EdgeInferenceUnit", "CloudInferenceUnit", "EdgePreprocessorUnit",
             "EdgeWebServerUnit")
HPA_MANAGED = {"preprocessor", "edge-inference", "cloud-inference"}
SITE_LABELS = {"edge": "edgeoffload.io/edge", "cloud": "edgeoffload.io/cloud"}
# Deployment -> (unit served by the image, its config class path, env prefix)
UNIT_OF_DEPLOYMENT = {
    "edge-inference": ("inference", "edgeoffload.units.inference:InferenceConfig", "INFER_"),
    "cloud-inference": ("inference", "edgeoffload.units.inference:InferenceConfig", "INFER_"),
    "preprocessor": ("preprocessor", "edgeoffload.units.preprocessor:PreprocessorConfig", "PRE_"),
    "webserver": ("webserver", "edgeoffload.units.webserver:WebConfig", "WEB_"),
}
SCENARIO_POOL_DEPLOYMENTS = {"edge": "edge-inference", "cloud": "cloud-inference"}
PLACEHOLDER = "REPLACE_ME"
# Pinned to a release: a moving tag (":2") would change the broker on the next pull. The broker
# image is that release plus the client-id plugin (EdgeBrokerProvider/Dockerfile).
MOSQUITTO_IMAGE = "eclipse-mosquitto:2.0.21"
BROKER_DOCKERFILE = ROOT / "EdgeBrokerProvider" / "Dockerfile"


# ------------------------------------------------------------------ loading
def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def manifest_files() -> list[Path]:
    """What `kubectl apply -f` applies: namespace.yml, every unit folder's *.yml/*.yaml, autoscale.yml."""
    unit_files = sorted(p for d in UNIT_DIRS for p in (ROOT / d).iterdir() if p.suffix in (".yml", ".yaml", ".json"))
    return [ROOT / "namespace.yml", *unit_files, ROOT / "autoscale.yml"]


def template_files() -> list[Path]:
    return sorted(p for d in UNIT_DIRS for p in (ROOT / d).glob("*.template"))


@functools.cache
def objects() -> tuple[dict[str, Any], ...]:
    return tuple(doc for path in manifest_files() for doc in documents(path))


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects() if o["kind"] == kind}


def pod_spec(deployment: Mapping[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]


def only_container(deployment: Mapping[str, Any]) -> dict[str, Any]:
    containers = pod_spec(deployment)["containers"]
    assert len(containers) == 1, f"{deployment['metadata']['name']}: expected one container"
    return containers[0]


def config_map_env(deployment: Mapping[str, Any]) -> dict[str, str]:
    """Every variable the container gets: envFrom ConfigMaps, then env (secrets as placeholders)."""
    container = only_container(deployment)
    config_maps = of_kind("ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]]["data"])
    for entry in container.get("env", []):
        env[entry["name"]] = entry.get("value", PLACEHOLDER)
    return env


def import_attr(spec: str) -> Any:
    module_name, attr = spec.split(":")
    return getattr(importlib.import_module(module_name), attr)


@functools.cache
def load_fetch_models():
    """deploy/fetch_models.py runs in the image build, outside the package: import it by path."""
    spec = importlib.util.spec_from_file_location("fetch_models", ROOT / "deploy" / "fetch_models.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fetch_models"] = module
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ schemas and kustomize
@pytest.mark.parametrize("path", manifest_files() + template_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_manifest_validates_against_kubernetes_schema(path: Path) -> None:
    docs = documents(path)
    assert docs, f"{path} holds no object"
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_schema_validation_rejects_a_broken_manifest() -> None:
    """The validator really checks: a misspelt field and a wrong type are refused."""
    deployment = json.loads(json.dumps(of_kind("Deployment")["edge-inference"]))
    only_container(deployment)["resource"] = only_container(deployment).pop("resources")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    service = json.loads(json.dumps(of_kind("Service")["broker"]))
    service["spec"]["ports"][0]["port"] = "mqtt-port"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, KUBERNETES_VERSION, strict=True)


def test_every_object_lives_in_the_namespace_and_names_are_unique() -> None:
    seen: set[tuple[str, str]] = set()
    for obj in objects():
        key = (obj["kind"], obj["metadata"]["name"])
        assert key not in seen, f"duplicate {key}"
        seen.add(key)
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, key
    assert ("Namespace", NAMESPACE) in seen


def test_kustomization_lists_every_applied_manifest_and_no_template() -> None:
    kustomization = yaml.safe_load((ROOT / "kustomization.yaml").read_text())
    listed = [ROOT / r for r in kustomization["resources"]]
    assert sorted(listed) == sorted(manifest_files())
    assert not any(p.suffix == ".template" for p in listed)


def test_kustomize_build_yields_exactly_the_manifests() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize .` not checked (the manifests are, above)")
    built = subprocess.run([kubectl, "kustomize", str(ROOT)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    rendered = [d for d in yaml.safe_load_all(built.stdout) if d]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in rendered) == \
        sorted((o["kind"], o["metadata"]["name"]) for o in objects())
    images = {c["image"] for d in rendered if d["kind"] == "Deployment" for c in pod_spec(d)["containers"]}
    assert images == {f"edgeoffload:{project_version()}", f"edgeoffload-broker:{project_version()}"}


# ------------------------------------------------------------------ units: routes, env, probes
@functools.cache
def app_rules(unit: str) -> dict[str, frozenset[str]]:
    """path -> methods, from the unit's real Flask app (background services stopped again)."""
    module = importlib.import_module(UNITS[unit].split(":")[0])
    if unit == "preprocessor":
        config = module.PreprocessorConfig(mqtt_port=1, health_interval_s=0)
        app = module.create_app(config)
        app.extensions["preprocessor"].close()
    elif unit == "webserver":
        app = module.create_app(module.WebConfig(mqtt_enabled=False), connect_mqtt=False)
    else:
        app = module.create_app(module.InferenceConfig())
    return {rule.rule: frozenset(rule.methods) for rule in app.url_map.iter_rules()}


GUNICORN_CONF = ROOT / "edgeoffload" / "units" / "gunicorn_conf.py"


def gunicorn_env_names() -> set[str]:
    """The variables gunicorn_conf.py reads (the units' server settings)."""
    return set(re.findall(r"os\.environ(?:\.get\(|\[)\"([A-Z_]+)\"", GUNICORN_CONF.read_text()))


def gunicorn_bind_port(env: Mapping[str, str], setting: str = "BIND") -> int:
    """The port gunicorn listens on ($BIND), or its probes (PROBE_BIND): the variable, else
    gunicorn_conf.py's default."""
    default = re.search(rf'os\.environ\.get\("{setting}", "([^"]+)"\)', GUNICORN_CONF.read_text()).group(1)
    return int(env.get(setting, default).rsplit(":", 1)[1])


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


@pytest.mark.parametrize("name", sorted(UNIT_OF_DEPLOYMENT))
def test_unit_deployment_serves_its_unit_on_real_routes(name: str) -> None:
    unit = UNIT_OF_DEPLOYMENT[name][0]
    deployment = of_kind("Deployment")[name]
    container = only_container(deployment)
    assert container["image"] == f"edgeoffload:{project_version()}"
    assert container["args"] == ["serve", unit] and unit in UNITS
    bind_port = gunicorn_bind_port(config_map_env(deployment))
    probe_port = gunicorn_bind_port(config_map_env(deployment), "PROBE_BIND")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": bind_port, "probes": probe_port}
    rules = app_rules(unit)
    probes = {kind: container[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe") if kind in container}
    assert "readinessProbe" in probes and "livenessProbe" in probes
    for kind, probe in probes.items():
        path, port = probe["httpGet"]["path"], probe["httpGet"]["port"]
        assert "GET" in rules.get(path, ()), f"{name} {kind}: {path} is not a GET route of {unit}"
        assert path in PROBE_PATHS, f"{name} {kind}: the probe listener does not answer {path}"
        assert ports.get(port, port) == probe_port, f"{name} {kind}: not on the probe listener"
    assert probes["readinessProbe"]["httpGet"]["path"] == READY_PATHS[unit]
    annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
    if annotations.get("prometheus.io/scrape") == "true":
        assert "GET" in rules.get(annotations["prometheus.io/path"], ())
        assert int(annotations["prometheus.io/port"]) == bind_port
    else:
        assert "/metrics" not in rules, f"{name} serves /metrics but is not scraped"
    service = of_kind("Service")[name]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert all(p["targetPort"] in ports for p in service["spec"]["ports"])


def test_app_rules_come_from_the_real_apps() -> None:
    """Guard for the route checks above: they see each unit's actual API."""
    assert app_rules("inference")["/infer"] >= {"POST"}
    assert app_rules("preprocessor")["/process"] >= {"POST"}
    assert "/v2/health/ready" not in app_rules("webserver")


@pytest.mark.parametrize("name", sorted(UNIT_OF_DEPLOYMENT))
def test_every_env_var_set_is_read_by_the_code_and_parses(name: str) -> None:
    _, config_class_path, prefix = UNIT_OF_DEPLOYMENT[name]
    config_class = import_attr(config_class_path)
    env = config_map_env(of_kind("Deployment")[name])
    known = set(env_names(config_class, prefix)) | gunicorn_env_names()
    unread = sorted(set(env) - known)
    assert not unread, f"{name} sets variables no code reads: {unread}"
    for server_setting in ("WORKERS", "THREADS"):
        assert int(env[server_setting]) >= 1
    config = load_config(config_class, prefix, env={k: v for k, v in env.items() if k != f"{prefix}CONFIG"})
    assert isinstance(config, config_class)
    if hasattr(config, "detector_config"):
        config.detector_config()  # the detector part is valid too
    if prefix == "PRE_":  # one worker: the unit keeps its queues and policy state per process
        assert env["WORKERS"] == "1"


def test_units_find_each_other_through_services() -> None:
    services = of_kind("Service")
    deployments = of_kind("Deployment")

    def service_port(url_host: str, port: int) -> None:
        assert url_host in services, f"no Service {url_host}"
        assert port in {p["port"] for p in services[url_host]["spec"]["ports"]}

    pre = config_map_env(deployments["preprocessor"])
    for key, target in (("PRE_EDGE_URL", "edge-inference"), ("PRE_CLOUD_URL", "cloud-inference")):
        match = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", pre[key])
        assert match and match.group(1) == target, pre[key]
        service_port(match.group(1), int(match.group(2)))
    web = config_map_env(deployments["webserver"])
    for host, port in ((pre["PRE_MQTT_HOST"], pre["PRE_MQTT_PORT"]), (web["WEB_MQTT_HOST"], web["WEB_MQTT_PORT"])):
        assert host == "broker"
        service_port(host, int(port))
    # The MQTT accounts are ACL roles, and the policy's replica assumptions are the HPA minimums.
    assert pre["PRE_MQTT_USERNAME"] == "preprocessor" and web["WEB_MQTT_USERNAME"] == "webserver"
    assert {pre["PRE_MQTT_USERNAME"], web["WEB_MQTT_USERNAME"]} <= set(broker.ROLES)
    hpas = {spec.target: spec for spec in load_hpa_manifests(ROOT / "autoscale.yml")}
    assert int(pre["PRE_EDGE_REPLICAS"]) == hpas["edge-inference"].min_replicas
    assert int(pre["PRE_CLOUD_REPLICAS"]) == hpas["cloud-inference"].min_replicas


def test_secret_references_match_the_templates_and_templates_hold_no_secret() -> None:
    templates = {}
    for path in template_files():
        for doc in documents(path):
            assert doc["kind"] == "Secret"
            for key, value in doc["stringData"].items():
                assert PLACEHOLDER in value and "$7$" not in value, f"{path}: {key} is not a placeholder"
            templates[doc["metadata"]["name"]] = set(doc["stringData"])
    referenced: dict[str, set[str]] = {}
    for deployment in of_kind("Deployment").values():
        for container in pod_spec(deployment)["containers"]:
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    referenced.setdefault(ref["name"], set()).add(ref["key"])
        # A mounted Secret's keys are the files the container's configuration names under the mount:
        # mosquitto.conf for the broker (passwd, the TLS files), the ConfigMaps for the units (the CA).
        named = re.findall(r"\s(/\S+)", broker.k8s_config()) + list(config_map_env(deployment).values())
        for volume in pod_spec(deployment).get("volumes", []):
            if "secret" in volume:
                mount = next(m["mountPath"] for c in pod_spec(deployment)["containers"]
                             for m in c.get("volumeMounts", []) if m["name"] == volume["name"]).rstrip("/")
                keys = {Path(path).name for path in named if Path(path).parent == Path(mount)}
                assert keys, f"{deployment['metadata']['name']}: nothing names a file of Secret volume {volume['name']}"
                referenced.setdefault(volume["secret"]["secretName"], set()).update(keys)
    assert referenced == templates
    assert not [o for o in objects() if o["kind"] == "Secret"], "real Secrets must not be committed"
    # kubectl apply -f DIR reads only .json/.yaml/.yml files: templates stay out of it.
    assert all(p.suffixes[-1] == ".template" for p in template_files())


# ------------------------------------------------------------------ hardening and placement
def test_every_pod_is_hardened_and_bounded() -> None:
    for name, deployment in of_kind("Deployment").items():
        spec = pod_spec(deployment)
        # Only the preprocessor holds an API token (EndpointSlice discovery), under its own account.
        assert spec["automountServiceAccountToken"] is (name == "preprocessor"), name
        assert spec.get("serviceAccountName") == ("preprocessor" if name == "preprocessor" else None), name
        pod_security = spec["securityContext"]
        assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] > 0, name
        assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        mounts_by_volume = {}
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["capabilities"] == {"drop": ["ALL"]}, name
            assert security.get("runAsUser", pod_security["runAsUser"]) != 0, name
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), f"{name}: {bound}"
            requests_, limits = container["resources"]["requests"], container["resources"]["limits"]
            assert parse_quantity(requests_["cpu"]) <= parse_quantity(limits["cpu"]), name
            mounts_by_volume.update({m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])})
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        tmp = [vol for vol, path in mounts_by_volume.items() if path == "/tmp"]
        assert tmp and "emptyDir" in volumes[tmp[0]], f"{name}: /tmp must be an emptyDir (read-only rootfs)"
        if name in UNIT_OF_DEPLOYMENT:  # set before gunicorn starts, on the writable emptyDir
            assert config_map_env(deployment)["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/"), name


def test_a_restarted_server_does_not_continue_stale_gauges(tmp_path: Path) -> None:
    """PROMETHEUS_MULTIPROC_DIR lies in the pod's /tmp emptyDir, which survives a container
    restart, and PIDs repeat in a container: unless gunicorn's on_starting empties the directory,
    the new run sums (and its workers continue) the crashed run's gauges, and the HPA scales on
    in-flight frames that no longer exist."""
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"))
    (tmp_path / "metrics").mkdir()
    crashed_run = "from edgeoffload import metrics; metrics.INFERENCE_IN_FLIGHT.labels('edge').inc(3)"
    subprocess.run([sys.executable, "-c", crashed_run], env=env, check=True)  # exits without cleanup
    restart = ("import importlib.util, sys\n"
               "spec = importlib.util.spec_from_file_location('conf', sys.argv[1])\n"
               "conf = importlib.util.module_from_spec(spec); spec.loader.exec_module(conf)\n"
               "conf.on_starting(None)\n"
               "from edgeoffload import metrics; metrics.INFERENCE_IN_FLIGHT.labels('edge')\n"
               "print(metrics.render()[0].decode())\n")
    exposed = subprocess.run([sys.executable, "-c", restart, str(GUNICORN_CONF)], env=env, check=True,
                             capture_output=True, text=True).stdout
    assert 'edgeoffload_inference_in_flight{site="edge"} 0.0' in exposed, exposed


def test_our_image_runs_as_the_dockerfile_user() -> None:
    uid = image_uid()
    for name in UNIT_OF_DEPLOYMENT:
        assert pod_spec(of_kind("Deployment")[name])["securityContext"]["runAsUser"] == uid


def test_units_are_placed_on_their_site() -> None:
    for name, deployment in of_kind("Deployment").items():
        site = "cloud" if name.startswith("cloud-") else "edge"
        assert pod_spec(deployment)["nodeSelector"] == {SITE_LABELS[site]: "true"}, name


# ------------------------------------------------------------------ autoscaling
def hpa_manifests() -> dict[str, dict[str, Any]]:
    return of_kind("HorizontalPodAutoscaler")


def test_hpas_target_deployments_that_leave_replicas_to_them() -> None:
    deployments = of_kind("Deployment")
    targets = {}
    for name, hpa in hpa_manifests().items():
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["apiVersion"], ref["kind"]) == ("apps/v1", "Deployment")
        assert ref["name"] in deployments, f"HPA {name} targets missing Deployment {ref['name']}"
        targets[ref["name"]] = hpa
    assert set(targets) == HPA_MANAGED
    for name, deployment in deployments.items():
        if name in HPA_MANAGED:
            assert "replicas" not in deployment["spec"], f"{name}: spec.replicas would fight the HPA"
            assert "cpu" in only_container(deployment)["resources"]["requests"]
        else:
            assert deployment["spec"]["replicas"] == 1, name


def test_hpas_scale_on_cpu_and_a_served_in_flight_metric_with_explicit_behavior() -> None:
    gauges = metric_families("gauge")
    adapter_metrics = adapter_rule_names()
    for spec in load_hpa_manifests(ROOT / "autoscale.yml"):
        raw = hpa_manifests()[spec.name]["spec"]
        assert {"scaleUp", "scaleDown"} <= set(raw["behavior"]), spec.name
        for direction in raw["behavior"].values():
            assert {"stabilizationWindowSeconds", "selectPolicy", "policies"} <= set(direction), spec.name
        kinds = {(m.kind, m.name) for m in spec.metrics}
        assert ("Resource", "cpu") in kinds, spec.name
        pods_metrics = [m for m in spec.metrics if m.kind == "Pods"]
        assert len(pods_metrics) == 1, spec.name
        assert pods_metrics[0].name in gauges, f"{spec.name}: {pods_metrics[0].name} is not a gauge in metrics.py"
        assert "in_flight" in pods_metrics[0].name
        assert pods_metrics[0].name in adapter_metrics, f"prometheus-adapter does not serve {pods_metrics[0].name}"


def test_simulator_hpa_equals_autoscale_yml() -> None:
    """Every scenario's autoscaled pool scales like the Deployment it models."""
    from edgeoffload.sim.scenario import load_scenario

    deployed = {spec.target: normalised(spec) for spec in load_hpa_manifests(ROOT / "autoscale.yml")}
    scenarios = sorted((ROOT / "experiments" / "scenarios").glob("*.yaml"))
    compared = 0
    for path in scenarios:
        scenario = load_scenario(path)
        for pool_name, deployment in SCENARIO_POOL_DEPLOYMENTS.items():
            pool = getattr(scenario, pool_name)
            if pool.hpa is None:
                continue
            compared += 1
            assert normalised(pool.hpa) == deployed[deployment], f"{path.name}: {pool_name}.hpa != autoscale.yml {deployment}"
            request = only_container(of_kind("Deployment")[deployment])["resources"]["requests"]["cpu"]
            assert pool.cpu_request == parse_quantity(request), f"{path.name}: {pool_name}.cpu_request"
    if not compared:
        pytest.skip("no scenario autoscales a pool")


def test_the_preprocessor_fills_every_replica_past_its_hpa_target() -> None:
    """The in-flight metric only counts frames the preprocessor sends. It sends each ready
    replica up to the unit's admission bound, so a busy site shows more than the target per pod
    and the HPA can keep scaling up to maxReplicas; the pod keeps threads beyond that bound, so
    its probes and /metrics are answered under full load."""
    from edgeoffload.units.inference import InferenceConfig
    from edgeoffload.units.preprocessor import PreprocessorConfig

    pre = load_config(PreprocessorConfig, "PRE_", env=config_map_env(of_kind("Deployment")["preprocessor"]))
    for spec in load_hpa_manifests(ROOT / "autoscale.yml"):
        if spec.target not in SCENARIO_POOL_DEPLOYMENTS.values():
            continue
        site = spec.target.split("-")[0]
        env = config_map_env(of_kind("Deployment")[spec.target])
        unit = load_config(InferenceConfig, "INFER_", env=env)
        admitted = unit.queue_bound * int(env["WORKERS"])
        assert getattr(pre, f"{site}_replica_concurrency") == admitted, f"{spec.target}: PRE_{site.upper()}_REPLICA_CONCURRENCY"
        assert getattr(pre, f"{site}_discovery") == "kubernetes"
        target = next(m.value for m in spec.metrics if m.kind == "Pods")
        assert admitted > target * (1 + spec.tolerance), f"{spec.target}: a pod can never exceed its target"
        assert int(env["THREADS"]) >= unit.queue_bound + 2, f"{spec.target}: no thread left for probes at full load"


def test_a_replica_leaving_finishes_its_frames_within_the_grace_period() -> None:
    """Scale-down: preStop keeps the pod serving while the EndpointSlice change reaches the
    preprocessor; then gunicorn's graceful timeout lets admitted frames finish (at least the
    preprocessor's request timeout); both fit in terminationGracePeriodSeconds."""
    from edgeoffload.units.preprocessor import PreprocessorConfig

    pre = load_config(PreprocessorConfig, "PRE_", env=config_map_env(of_kind("Deployment")["preprocessor"]))
    for name in SCENARIO_POOL_DEPLOYMENTS.values():
        deployment = of_kind("Deployment")[name]
        container = only_container(deployment)
        pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep" and float(pre_stop[1]) >= 2, name
        graceful = float(config_map_env(deployment).get("GRACEFUL_TIMEOUT", 10))
        assert graceful >= pre.request_timeout_s, name
        assert float(pre_stop[1]) + graceful + 5 <= pod_spec(deployment)["terminationGracePeriodSeconds"], name


def test_the_preprocessor_may_only_read_endpointslices_of_its_namespace() -> None:
    accounts = {o["metadata"]["name"]: o for o in objects() if o["kind"] == "ServiceAccount"}
    assert set(accounts) == {"preprocessor"} and accounts["preprocessor"]["automountServiceAccountToken"] is False
    assert not [o for o in objects() if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    (binding,) = [o for o in objects() if o["kind"] == "RoleBinding"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "preprocessor", "namespace": NAMESPACE}]
    role = of_kind("Role")[binding["roleRef"]["name"]]
    assert binding["roleRef"]["kind"] == "Role" and len(of_kind("Role")) == 1
    assert role["rules"] == [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                              "verbs": ["get", "list", "watch"]}]
    # What it watches exists: each site's Service, whose port name the EndpointSlices carry.
    from edgeoffload.discovery import service_of
    from edgeoffload.units.preprocessor import PreprocessorConfig

    pre = load_config(PreprocessorConfig, "PRE_", env=config_map_env(of_kind("Deployment")["preprocessor"]))
    for site in ("edge", "cloud"):
        service = getattr(pre, f"{site}_service") or service_of(getattr(pre, f"{site}_url"))
        assert [p["name"] for p in of_kind("Service")[service]["spec"]["ports"]] == ["http"], service


def normalised(spec: HPASpec) -> HPASpec:
    """Compare what the HPA does, not what it is called or how often the simulation syncs."""
    return dataclasses.replace(spec, name="", target="", sync_period_s=15.0, tolerance=0.1)


def test_keda_alternative_matches_the_hpas() -> None:
    hpas = hpa_manifests()
    scaled = documents(ROOT / "deploy" / "keda.yml")
    assert {s["metadata"]["name"] for s in scaled} == set(hpas)
    for obj in scaled:
        assert (obj["apiVersion"], obj["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
        assert obj["metadata"]["namespace"] == NAMESPACE
        hpa = hpas[obj["metadata"]["name"]]["spec"]
        spec = obj["spec"]
        assert spec["scaleTargetRef"]["name"] == hpa["scaleTargetRef"]["name"]
        assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (hpa["minReplicas"], hpa["maxReplicas"])
        assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == hpa["behavior"]
        triggers = {t["type"]: t for t in spec["triggers"]}
        cpu = next(m for m in hpa["metrics"] if m["type"] == "Resource")["resource"]["target"]
        assert triggers["cpu"]["metricType"] == "Utilization"
        assert int(triggers["cpu"]["metadata"]["value"]) == cpu["averageUtilization"]
        pods = next(m for m in hpa["metrics"] if m["type"] == "Pods")["pods"]
        prom = triggers["prometheus"]
        assert prom["metricType"] == "AverageValue"
        assert float(prom["metadata"]["threshold"]) == float(pods["target"]["averageValue"])
        assert pods["metric"]["name"] in prom["metadata"]["query"]
        assert f'pod=~"{spec["scaleTargetRef"]["name"]}-.*"' in prom["metadata"]["query"]


# ------------------------------------------------------------------ monitoring
def metric_families(kind: str | None = None) -> set[str]:
    """Family names (edgeoffload_...) of the metrics edgeoffload.metrics defines."""
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                if kind is None or family.type == kind:
                    names.add(family.name)
    return names


def exposed_series() -> set[str]:
    """Series names as Prometheus stores them (counter _total, histogram _bucket/_sum/_count)."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "gauge": ("",), "summary": ("_sum", "_count", "_created")}
    series = set()
    for kind, endings in suffixes.items():
        for family in metric_families(kind):
            series.update(family + ending for ending in endings)
    return series


def adapter_rule_names() -> set[str]:
    values = yaml.safe_load((ROOT / "deploy" / "prometheus-adapter-values.yml").read_text())
    assert values["rules"]["default"] is False
    return {rule["name"]["as"] for rule in values["rules"]["custom"]}


@pytest.mark.parametrize("relative", ["deploy/grafana-dashboard.json", "deploy/keda.yml",
                                      "deploy/prometheus-adapter-values.yml", "autoscale.yml"])
def test_monitoring_files_name_only_metrics_the_code_exports(relative: str) -> None:
    text = (ROOT / relative).read_text()
    used = set(re.findall(r"\bedgeoffload_[a-z_]+\b", text))
    assert used, f"{relative} names no edgeoffload metric"
    unknown = sorted(used - exposed_series())
    assert not unknown, f"{relative} uses metrics edgeoffload/metrics.py does not export: {unknown}"


def test_grafana_dashboard_covers_frames_decisions_drops_latency_and_replicas() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for needed in ("edgeoffload_preprocessor_frames_total", "edgeoffload_preprocessor_decisions_total",
                   "edgeoffload_preprocessor_drops_total", "edgeoffload_preprocessor_latency_seconds_bucket",
                   "kube_horizontalpodautoscaler_status_current_replicas"):
        assert needed in exprs
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_scraped_pods_are_reachable_by_prometheus_and_metric_rules_map_pods() -> None:
    values = yaml.safe_load((ROOT / "deploy" / "prometheus-adapter-values.yml").read_text())
    for rule in values["rules"]["custom"]:
        assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
        assert rule["resources"]["overrides"]["namespace"] == {"resource": "namespace"}
        assert "<<.GroupBy>>" in rule["metricsQuery"]
    prometheus = Endpoint("monitoring", {"app.kubernetes.io/name": "prometheus"})
    for name, deployment in of_kind("Deployment").items():
        annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") == "true":
            port = int(annotations["prometheus.io/port"])
            assert flow_allowed(prometheus, pod_endpoint(name), port), f"Prometheus cannot scrape {name}"


# ------------------------------------------------------------------ network policies
@dataclass(frozen=True)
class Endpoint:
    """A pod (namespace + labels) or, with namespace None, an address outside the cluster."""

    namespace: str | None
    labels: Mapping[str, str]

    def __hash__(self) -> int:
        return hash((self.namespace, tuple(sorted(self.labels.items()))))


OUTSIDE = Endpoint(None, {})
KUBE_DNS = Endpoint("kube-system", {"k8s-app": "kube-dns"})


def pod_endpoint(deployment: str) -> Endpoint:
    return Endpoint(NAMESPACE, of_kind("Deployment")[deployment]["spec"]["template"]["metadata"]["labels"])


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    assert "matchExpressions" not in selector, "extend this evaluator before using matchExpressions"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def peer_matches(peer: Mapping[str, Any], endpoint: Endpoint) -> bool:
    if "ipBlock" in peer:  # modelled coarsely: only "everywhere" (/0) matches an outside address
        return endpoint.namespace is None and ipaddress.ip_network(peer["ipBlock"]["cidr"]).prefixlen == 0
    if endpoint.namespace is None:
        return False
    if "namespaceSelector" in peer:
        namespace_ok = selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": endpoint.namespace})
    else:
        namespace_ok = endpoint.namespace == NAMESPACE
    return namespace_ok and selects(peer.get("podSelector", {}), endpoint.labels)


def rule_allows(rule: Mapping[str, Any], peers_key: str, other: Endpoint, port: int, protocol: str) -> bool:
    peers = rule.get(peers_key)
    ports = rule.get("ports")
    peer_ok = peers is None or any(peer_matches(p, other) for p in peers)
    port_ok = ports is None or any(p.get("port") == port and p.get("protocol", "TCP") == protocol for p in ports)
    return peer_ok and port_ok


def direction_allows(pod: Endpoint, direction: str, other: Endpoint, port: int, protocol: str) -> bool:
    """NetworkPolicy semantics: isolated once any policy of that direction selects the pod; then
    allowed if any rule of any selecting policy allows."""
    if pod.namespace != NAMESPACE:
        return True  # no policies outside our namespace
    policies = [p["spec"] for p in of_kind("NetworkPolicy").values()
                if selects(p["spec"]["podSelector"], pod.labels) and direction in p["spec"]["policyTypes"]]
    if not policies:
        return True
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    return any(rule_allows(rule, peers_key, other, port, protocol) for p in policies for rule in p.get(key, []))


def flow_allowed(source: Endpoint, destination: Endpoint, port: int, protocol: str = "TCP") -> bool:
    return (direction_allows(source, "Egress", destination, port, protocol)
            and direction_allows(destination, "Ingress", source, port, protocol))


def test_network_policies_allow_exactly_the_needed_flows() -> None:
    pre, web, brk = pod_endpoint("preprocessor"), pod_endpoint("webserver"), pod_endpoint("broker")
    edge, cloud = pod_endpoint("edge-inference"), pod_endpoint("cloud-inference")
    prometheus = Endpoint("monitoring", {"app.kubernetes.io/name": "prometheus"})
    stranger = Endpoint("default", {"app": "curl"})
    newcomer = Endpoint(NAMESPACE, {"app": "something-new"})  # isolated by namespace.yml's default deny
    allowed = [(pre, edge, 8080), (pre, cloud, 8080), (pre, brk, 8883), (web, brk, 8883), (pre, OUTSIDE, 6443),
               (OUTSIDE, pre, 8080), (OUTSIDE, web, 8080), (prometheus, edge, 8080), (prometheus, cloud, 8080)]
    denied = [(web, edge, 8080), (web, cloud, 8080), (OUTSIDE, edge, 8080), (stranger, cloud, 8080),
              (OUTSIDE, brk, 8883), (stranger, brk, 8883), (edge, brk, 8883), (cloud, pre, 8080),
              (pre, brk, 1883), (web, brk, 1883),  # no plaintext MQTT
              (brk, pre, 8080), (pre, OUTSIDE, 443), (edge, OUTSIDE, 80), (web, OUTSIDE, 443),
              (edge, OUTSIDE, 6443), (cloud, OUTSIDE, 6443), (web, OUTSIDE, 6443), (brk, OUTSIDE, 6443),
              (pre, brk, 8080), (pre, edge, 22), (OUTSIDE, newcomer, 8080), (newcomer, brk, 8883),
              # the probe listener is for the kubelet (on the node, which policies always allow)
              (OUTSIDE, pre, 8081), (OUTSIDE, web, 8081), (pre, edge, 8081), (pre, cloud, 8081),
              (prometheus, edge, 8081), (prometheus, cloud, 8081)]
    for source, destination, port in allowed:
        assert flow_allowed(source, destination, port), f"blocked: {source} -> {destination}:{port}"
    for source, destination, port in denied:
        assert not flow_allowed(source, destination, port), f"open: {source} -> {destination}:{port}"
    for unit in (pre, web, brk, edge, cloud):
        assert flow_allowed(unit, KUBE_DNS, 53, "UDP") and flow_allowed(unit, KUBE_DNS, 53, "TCP")
        assert not flow_allowed(unit, KUBE_DNS, 80)


# ------------------------------------------------------------------ broker
def test_broker_config_map_is_the_rendered_config_and_acl() -> None:
    data = of_kind("ConfigMap")["broker-config"]["data"]
    assert data["mosquitto.conf"] == broker.k8s_config() == (ROOT / "EdgeBrokerProvider" / "mosquitto.conf").read_text()
    assert data["acl"] == broker.ACL == (ROOT / "EdgeBrokerProvider" / "acl").read_text()


def test_broker_deployment_mounts_what_the_config_names() -> None:
    deployment = of_kind("Deployment")["broker"]
    container = only_container(deployment)
    assert container["image"] == f"edgeoffload-broker:{project_version()}"
    assert container["command"] == ["mosquitto", "-c", f"{broker.K8S_CONFIG_DIR}/mosquitto.conf"]
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    mounts = {m["mountPath"].rstrip("/"): volumes[m["name"]] for m in container["volumeMounts"]}
    assert mounts[broker.K8S_CONFIG_DIR]["configMap"]["name"] == "broker-config"
    assert mounts[broker.K8S_SECRET_DIR]["secret"]["secretName"] == "broker-passwd"
    assert mounts[broker.K8S_TLS_DIR]["secret"]["secretName"] == "broker-tls"
    claim = mounts[broker.K8S_DATA_DIR.rstrip("/")]["persistentVolumeClaim"]["claimName"]
    assert claim in of_kind("PersistentVolumeClaim")
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # one ReadWriteOnce volume
    config = broker.k8s_config()
    for path in (f"{broker.K8S_SECRET_DIR}/passwd", f"{broker.K8S_CONFIG_DIR}/acl"):
        assert path in config
    listener = int(re.search(r"^listener (\d+)", config, re.M).group(1))
    assert [p["containerPort"] for p in container["ports"]] == [listener]
    assert [p["port"] for p in of_kind("Service")["broker"]["spec"]["ports"]] == [listener]


# ------------------------------------------------------------------ image
def dockerfile_instructions(keyword: str, dockerfile: Path = ROOT / "Dockerfile") -> list[str]:
    """Arguments of every `keyword` instruction (continuation lines joined, comments dropped)."""
    lines = [l for l in dockerfile.read_text().splitlines() if not l.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [m.group(1).strip() for m in re.finditer(rf"^{keyword}\s+(.*)$", joined, re.M)]


def image_uid() -> int:
    """The final USER, with a build-arg default (`USER ${UID}:${UID}`, `ARG UID=10001`) resolved."""
    user = dockerfile_instructions("USER")[-1].split(":")[0]
    defaults = dict(a.split("=", 1) for a in dockerfile_instructions("ARG") if "=" in a)
    match = re.fullmatch(r"\$\{?(\w+)\}?", user)
    return int(defaults[match.group(1)] if match else user)


def dockerignore_allows(path: str) -> bool:
    """The allow-list .dockerignore: `*` first, then `!path` entries (a directory allows its files)."""
    patterns = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()
                if l.strip() and not l.startswith("#")]
    assert patterns[0] == "*", ".dockerignore must start by excluding everything"
    allowed = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    return any(path.rstrip("/") == a or path.startswith(a + "/") for a in allowed)


def test_dockerfile_is_one_slim_non_root_image_for_every_unit() -> None:
    froms = dockerfile_instructions("FROM")
    assert len(froms) >= 2 and all(f.startswith("${PYTHON_IMAGE}") for f in froms)
    assert dockerfile_instructions("ARG")[0].startswith("PYTHON_IMAGE=python:3.11-slim")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert json.loads(dockerfile_instructions("ENTRYPOINT")[-1]) == ["edgeoffload"] and "edgeoffload" in scripts
    command = json.loads(dockerfile_instructions("CMD")[-1])
    assert command[0] == "serve" and command[1] in UNITS
    assert image_uid() >= 10000
    for copy in dockerfile_instructions("COPY"):
        if copy.startswith("--from="):
            continue
        *sources, _destination = shlex.split(copy)
        for source in sources:
            assert (ROOT / source).exists() or source == "README.md", f"COPY {source}: no such path"
            assert dockerignore_allows(source), f"COPY {source} is excluded by .dockerignore"
    env = dict(pair.split("=", 1) for line in dockerfile_instructions("ENV") for pair in line.split())
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/") and env["HOME"] == "/tmp"  # emptyDir
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"  # read-only root filesystem
    assert env["INFER_CONFIG"] == f"/models/{load_fetch_models().CONFIG_NAME}"
    assert dockerfile_instructions("EXPOSE") == [f"{gunicorn_bind_port(env)} {gunicorn_bind_port(env, 'PROBE_BIND')}"]
    unit_settings = {prefix: import_attr(path) for _, path, prefix in UNIT_OF_DEPLOYMENT.values()}
    for name in env:
        for prefix, config_class in unit_settings.items():
            if name.startswith(prefix):
                assert name in env_names(config_class, prefix), f"Dockerfile ENV {name} is read by no code"


def test_broker_image_is_the_pinned_mosquitto_with_the_plugin_the_config_loads() -> None:
    froms = dockerfile_instructions("FROM", BROKER_DOCKERFILE)
    assert dockerfile_instructions("ARG", BROKER_DOCKERFILE) == [f"MOSQUITTO_IMAGE={MOSQUITTO_IMAGE}"]
    assert [f.split()[0] for f in froms] == ["${MOSQUITTO_IMAGE}"] * 2 and froms[-1].endswith("AS broker")
    source, _ = shlex.split(dockerfile_instructions("COPY", BROKER_DOCKERFILE)[0])
    assert ROOT / source == brokerplugin.SOURCE and dockerignore_allows(source)
    plugin = re.search(r"^plugin (\S+)$", broker.k8s_config(), re.M).group(1)
    assert plugin == broker.K8S_PLUGIN
    assert dockerfile_instructions("COPY", BROKER_DOCKERFILE)[-1].split()[-1] == plugin
    compile_line = next(r for r in dockerfile_instructions("RUN", BROKER_DOCKERFILE) if r.startswith("gcc"))
    assert "-Werror" in compile_line and compile_line.split()[-1] == f"/src/{brokerplugin.SOURCE.name}"


def test_readme_exists_for_the_image_build() -> None:
    """pyproject.toml names README.md as the readme: `pip install .` in the image needs it."""
    assert (ROOT / "README.md").is_file()


def test_the_installed_package_ships_its_data_files(tmp_path: Path) -> None:
    """The image installs the package (not an editable tree): templates, static files and any
    other data under edgeoffload/ must be part of it, or the web server fails only in the
    container. setuptools' build_py collects exactly what a wheel would hold, offline, from a
    copy without .git (like the Docker build context)."""
    source = tmp_path / "src"
    shutil.copytree(ROOT / "edgeoffload", source / "edgeoffload",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", source)
    (source / "README.md").write_text("edgeoffload\n")
    built = subprocess.run([sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", "build_py",
                            "-d", str(tmp_path / "lib")], cwd=source, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    shipped = {str(p.relative_to(tmp_path / "lib")) for p in (tmp_path / "lib").rglob("*") if p.is_file()}
    assert "edgeoffload/serve.py" in shipped
    data = sorted(str(p.relative_to(source)) for p in (source / "edgeoffload").rglob("*")
                  if p.is_file() and p.suffix != ".py")
    missing = [p for p in data if p not in shipped]
    assert not missing, f"not installed (add [tool.setuptools.package-data] to pyproject.toml): {missing}"


# ------------------------------------------------------------------ build-time model fetcher
class _FileServer:
    """A local HTTP server for `files` (path -> bytes); counts requests."""

    def __init__(self, files: dict[str, bytes]) -> None:
        served = files

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                body = served.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "_FileServer":
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def fetch_models():
    return load_fetch_models()


@pytest.fixture(scope="module")
def yolo_files(tmp_path_factory: pytest.TempPathFactory):
    """A genuine-format YOLOv3-tiny (standard cfg, random weights) as the download source."""
    from edgeoffload.detect.testmodels import make_darknet_model

    return make_darknet_model(tmp_path_factory.mktemp("yolo-source"), full_yolov3_tiny=True)


def test_fetch_verifies_size_and_digest_and_leaves_nothing_partial(fetch_models, tmp_path: Path) -> None:
    import hashlib

    body = b"weights" * 1000
    with _FileServer({"/w": body}) as server:
        good = fetch_models.Artifact(f"{server.url}/w", "w.bin", len(body), hashlib.sha256(body).hexdigest())
        path = fetch_models.fetch(good, tmp_path / "ok")
        assert path.read_bytes() == body
        for bad in (dataclasses.replace(good, size=len(body) + 1), dataclasses.replace(good, sha256="0" * 64)):
            with pytest.raises(fetch_models.FetchError):
                fetch_models.fetch(bad, tmp_path / "bad")
            assert list((tmp_path / "bad").iterdir()) == []
        with pytest.raises(OSError):
            fetch_models.fetch(dataclasses.replace(good, url=f"{server.url}/missing"), tmp_path / "404")
        assert list((tmp_path / "404").iterdir()) == []


def test_default_image_detector_needs_no_files(fetch_models, tmp_path: Path) -> None:
    from edgeoffload.units.inference import InferenceConfig

    assert fetch_models.main([str(tmp_path)]) == 0
    config = load_config(InferenceConfig, "INFER_", env={"INFER_CONFIG": str(tmp_path / "inference.yaml")})
    assert config.kind == "haar-face" and config.model_path is None
    assert fetch_models.main([str(tmp_path / "d"), "--detector", "darknet"]) == 1  # no files, no yolo
    assert fetch_models.main([str(tmp_path / "x"), "--detector", "nonsense"]) == 1


def test_yolo_image_serves_the_fetched_model_with_the_manifest_settings(fetch_models, yolo_files, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """FETCH_YOLO=1 end to end: download (with the official size check), inference.yaml, and the
    inference unit started with the edge-inference ConfigMap's settings serving that model."""
    files = {"/yolov3-tiny.cfg": yolo_files.cfg_path.read_bytes(),
             "/yolov3-tiny.weights": yolo_files.weights_path.read_bytes()}
    models = tmp_path / "models"
    with _FileServer(files) as server:
        monkeypatch.setattr(fetch_models, "YOLOV3_TINY_CFG_URL", f"{server.url}/yolov3-tiny.cfg")
        monkeypatch.setattr(fetch_models, "YOLOV3_TINY_WEIGHTS_URL", f"{server.url}/yolov3-tiny.weights")
        assert fetch_models.main([str(models), "--fetch-yolo", "1"]) == 0
    assert (models / "yolov3-tiny.weights").stat().st_size == fetch_models.YOLOV3_TINY_WEIGHTS_BYTES
    settings = yaml.safe_load((models / fetch_models.CONFIG_NAME).read_text())
    assert settings == {"kind": "darknet", "model_path": str(models / "yolov3-tiny.weights"),
                        "config_path": str(models / "yolov3-tiny.cfg")}

    from edgeoffload.frames import encode_jpeg
    from edgeoffload.units.inference import warmup_frame

    env = config_map_env(of_kind("Deployment")["edge-inference"])
    unit_env = {k: v for k, v in env.items() if k.startswith("INFER_")} | {"INFER_CONFIG": str(models / "inference.yaml")}
    with start_unit("inference", env=unit_env, workers=int(env["WORKERS"]), threads=int(env["THREADS"]),
                    log_dir=tmp_path / "logs") as unit:
        answer = requests.post(f"{unit.url}/infer", data=encode_jpeg(warmup_frame(), 80),
                               headers={"Content-Type": "image/jpeg"}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == "edge/darknet:yolov3-tiny"
        exposed = requests.get(f"{unit.url}/metrics", timeout=10).text
        hpa_metric = next(m.name for s in load_hpa_manifests(ROOT / "autoscale.yml")
                          if s.target == "edge-inference" for m in s.metrics if m.kind == "Pods")
        assert re.search(rf'^{hpa_metric}\{{site="edge"\}} 0\.0$', exposed, re.M), exposed[:2000]


def test_the_image_carries_the_committed_results_where_the_webserver_shows_them() -> None:
    copies = [shlex.split(c) for c in dockerfile_instructions("COPY") if not c.startswith("--from=")]
    (destination,) = [dest for *sources, dest in copies if sources == ["experiments/results"]]
    assert config_map_env(of_kind("Deployment")["webserver"])["WEB_RESULTS_DIR"] == destination
    assert dockerignore_allows("experiments/results") and (ROOT / "experiments" / "results").is_dir()
