"""Test group 1: every manifest of the deployment applies server-side, and broken ones do not.

The real kube-apiserver decides: server-side apply with dryRun=All and strict field validation
into the `edgeoffload` namespace as namespace.yml creates it (Pod Security `restricted`
enforced), with RBAC and the default admission plugins on. Pod Security admission only warns
for workload objects, so each Deployment's pod template is also dry-run created as a Pod, where
it is enforced. Then ~35 deliberately broken variants of the real objects: the server must refuse
each one, except the few the API does not validate (stated per case); the offline schema
validator of tests/test_deploy.py is run on the same variants for comparison.
"""
from __future__ import annotations

import copy
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import kubernetes_validate
import pytest
from serverside import Server
from test_deploy import KUBERNETES_VERSION, NAMESPACE, ROOT, documents, manifest_files, objects, template_files

KUBECTL = Path("/usr/bin/kubectl")


def object_id(obj: Mapping[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


# ------------------------------------------------------------------ the real manifests
def test_every_manifest_and_template_applies_server_side_without_warnings(server: Server, namespace: str) -> None:
    applied = [doc for path in manifest_files() + template_files() for doc in documents(path)]
    kinds = {doc["kind"] for doc in applied}
    # Whatever the unit folders hold is covered (the preprocessor's RBAC included).
    assert {"Deployment", "Service", "ConfigMap", "NetworkPolicy", "HorizontalPodAutoscaler", "Secret",
            "PersistentVolumeClaim", "ServiceAccount", "Role", "RoleBinding", "Namespace"} <= kinds
    answers = {object_id(doc): server.apply(doc) for doc in applied}
    refused = {key: a for key, a in answers.items() if not a.accepted}
    warned = {key: a.warnings for key, a in answers.items() if a.warnings}
    assert not refused, refused
    assert not warned, warned


def test_kustomize_build_applies_server_side(server: Server, namespace: str) -> None:
    if not KUBECTL.exists():
        pytest.skip(f"{KUBECTL} is not installed: the kustomize build is not applied (each file is, above)")
    built = subprocess.run([str(KUBECTL), "kustomize", str(ROOT)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    import yaml

    rendered = [doc for doc in yaml.safe_load_all(built.stdout) if doc]
    assert len(rendered) == len(objects())
    answers = {object_id(doc): server.apply(doc) for doc in rendered}
    assert {key: a for key, a in answers.items() if not a.accepted or a.warnings} == {}


def pod_from_template(deployment: Mapping[str, Any], suffix: str = "probe") -> dict[str, Any]:
    template = copy.deepcopy(deployment["spec"]["template"])
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{deployment['metadata']['name']}-{suffix}", "namespace": NAMESPACE,
                         "labels": template["metadata"].get("labels", {})},
            "spec": template["spec"]}


def deployments() -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects() if o["kind"] == "Deployment"}


@pytest.mark.parametrize("name", sorted(deployments()))
def test_every_pod_template_passes_restricted_pod_security(server: Server, namespace: str, name: str) -> None:
    answer = server.create(pod_from_template(deployments()[name]))
    assert answer.accepted and not answer.warnings, answer


def root_pod_template(deployment: Mapping[str, Any]) -> dict[str, Any]:
    """The same workload, running as root with privilege escalation allowed."""
    broken = copy.deepcopy(dict(deployment))
    spec = broken["spec"]["template"]["spec"]
    spec["securityContext"] = {"runAsUser": 0}
    spec["containers"][0]["securityContext"] = {"allowPrivilegeEscalation": True}
    return broken


def test_pod_security_is_enforced_on_pods_and_only_warned_on_deployments(server: Server, namespace: str) -> None:
    deployment = root_pod_template(deployments()["edge-inference"])
    pod = server.create(pod_from_template(deployment, "root"))
    assert pod.status == 403 and 'violates PodSecurity "restricted:latest"' in pod.message, pod
    assert "runAsNonRoot" in pod.message and "allowPrivilegeEscalation" in pod.message, pod
    workload = server.apply(deployment)
    assert workload.accepted, workload
    assert any('would violate PodSecurity "restricted:latest"' in w for w in workload.warnings), workload


# ------------------------------------------------------------------ broken variants
DELETE = object()
Path_ = tuple[Any, ...]
CONTAINER = ("spec", "template", "spec", "containers", 0)
POD = ("spec", "template", "spec")


@dataclass(frozen=True)
class Broken:
    """A real object with one deliberate mistake: `changes` maps a path to a new value (or DELETE)."""

    id: str
    kind: str
    name: str
    changes: Mapping[Path_, Any]
    server_accepts: str = ""   # why the API server does not refuse it ("" = it must refuse)

    def build(self) -> dict[str, Any]:
        matches = [o for o in objects() if o["kind"] == self.kind and o["metadata"]["name"] == self.name]
        matches += [d for p in template_files() for d in documents(p)
                    if d["kind"] == self.kind and d["metadata"]["name"] == self.name]
        assert matches, f"{self.id}: no {self.kind}/{self.name} in the manifests"
        obj = copy.deepcopy(matches[0])
        for path, value in self.changes.items():
            parent = obj
            for key in path[:-1]:
                parent = parent[key]
            if value is DELETE:
                del parent[path[-1]]
            else:
                parent[path[-1]] = value
        return obj


BROKEN: Sequence[Broken] = (
    # names and labels
    Broken("deployment-name-uppercase", "Deployment", "edge-inference", {("metadata", "name"): "Edge-Inference"}),
    Broken("deployment-name-underscore", "Deployment", "cloud-inference", {("metadata", "name"): "cloud_inference"}),
    Broken("configmap-name-too-long", "ConfigMap", "edge-inference", {("metadata", "name"): "c" * 254}),
    Broken("label-value-too-long", "Service", "edge-inference",
           {("metadata", "labels", "app.kubernetes.io/part-of"): "x" * 64}),
    Broken("label-key-bad-prefix", "ConfigMap", "preprocessor",
           {("metadata", "labels", "Edge_Offload.io/role"): "x"}),
    Broken("container-name-invalid", "Deployment", "edge-inference", {(*CONTAINER, "name"): "Inference_Main"}),
    # Deployments
    Broken("selector-does-not-match-template", "Deployment", "edge-inference",
           {("spec", "selector", "matchLabels", "app.kubernetes.io/component"): "cloud-inference"}),
    Broken("selector-missing", "Deployment", "preprocessor", {("spec", "selector"): DELETE}),
    Broken("replicas-negative", "Deployment", "webserver", {("spec", "replicas"): -1}),
    Broken("strategy-type-unknown", "Deployment", "edge-inference", {("spec", "strategy", "type"): "Rolling"}),
    Broken("container-port-name-too-long", "Deployment", "preprocessor",
           {(*CONTAINER, "ports", 0, "name"): "http-frames-port"}),
    Broken("container-port-out-of-range", "Deployment", "cloud-inference",
           {(*CONTAINER, "ports", 0, "containerPort"): 70000}),
    Broken("cpu-quantity-malformed", "Deployment", "edge-inference",
           {(*CONTAINER, "resources", "requests", "cpu"): "2 cores"}),
    Broken("cpu-request-above-limit", "Deployment", "cloud-inference",
           {(*CONTAINER, "resources", "requests", "cpu"): "4"}),
    Broken("memory-suffix-unknown", "Deployment", "preprocessor",
           {(*CONTAINER, "resources", "limits", "memory"): "1GB"}),
    Broken("unknown-field-resource", "Deployment", "edge-inference",
           {(*CONTAINER, "resource"): {"limits": {"cpu": "1"}}}),
    Broken("env-name-with-equals", "Deployment", "webserver", {(*CONTAINER, "env"): [{"name": "A=B", "value": "1"}]}),
    Broken("probe-with-two-handlers", "Deployment", "edge-inference",
           {(*CONTAINER, "readinessProbe", "exec"): {"command": ["true"]}}),
    Broken("grace-period-negative", "Deployment", "cloud-inference", {(*POD, "terminationGracePeriodSeconds"): -5},
           server_accepts="a negative grace period is accepted with a warning and treated as 1 s"),
    Broken("volume-mount-of-undeclared-volume", "Deployment", "edge-inference",
           {(*CONTAINER, "volumeMounts", 0, "name"): "scratch"}),
    # Services
    Broken("service-type-wrong-case", "Service", "edge-inference", {("spec", "type"): "ClusterIp"}),
    Broken("service-selector-value-with-space", "Service", "cloud-inference",
           {("spec", "selector", "app.kubernetes.io/component"): "cloud inference"}),
    Broken("service-duplicate-port", "Service", "edge-inference",
           {("spec", "ports"): [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"},
                                {"name": "http2", "port": 8080, "targetPort": "http", "protocol": "TCP"}]}),
    # HorizontalPodAutoscalers
    Broken("hpa-min-above-max", "HorizontalPodAutoscaler", "cloud-inference", {("spec", "minReplicas"): 12}),
    Broken("hpa-max-zero", "HorizontalPodAutoscaler", "edge-inference", {("spec", "maxReplicas"): 0}),
    Broken("hpa-utilization-zero", "HorizontalPodAutoscaler", "preprocessor",
           {("spec", "metrics", 0, "resource", "target", "averageUtilization"): 0}),
    Broken("hpa-pods-metric-with-utilization-target", "HorizontalPodAutoscaler", "edge-inference",
           {("spec", "metrics", 1, "pods", "target"): {"type": "Utilization", "averageUtilization": 50}}),
    Broken("hpa-policy-period-too-long", "HorizontalPodAutoscaler", "cloud-inference",
           {("spec", "behavior", "scaleUp", "policies", 0, "periodSeconds"): 3600}),
    Broken("hpa-select-policy-unknown", "HorizontalPodAutoscaler", "edge-inference",
           {("spec", "behavior", "scaleDown", "selectPolicy"): "Maximum"}),
    Broken("hpa-window-above-an-hour", "HorizontalPodAutoscaler", "preprocessor",
           {("spec", "behavior", "scaleDown", "stabilizationWindowSeconds"): 7200}),
    Broken("hpa-target-without-name", "HorizontalPodAutoscaler", "cloud-inference",
           {("spec", "scaleTargetRef", "name"): DELETE}),
    # NetworkPolicies, storage, secrets
    Broken("networkpolicy-protocol-http", "NetworkPolicy", "edge-inference",
           {("spec", "ingress", 0, "ports", 0, "protocol"): "HTTP"}),
    Broken("networkpolicy-cidr-invalid", "NetworkPolicy", "preprocessor",
           {("spec", "egress", 2, "to", 0, "ipBlock", "cidr"): "0.0.0.0/33"}),
    Broken("networkpolicy-except-outside-cidr", "NetworkPolicy", "preprocessor",
           {("spec", "egress", 2, "to", 0, "ipBlock"): {"cidr": "10.0.0.0/16", "except": ["192.168.0.0/24"]}}),
    Broken("pvc-access-mode-unknown", "PersistentVolumeClaim", "broker-data",
           {("spec", "accessModes"): ["ReadWriteEverywhere"]}),
    Broken("pvc-size-malformed", "PersistentVolumeClaim", "broker-data",
           {("spec", "resources", "requests", "storage"): "1 GB"}),
    Broken("secret-data-not-base64", "Secret", "broker-passwd", {("data",): {"passwd": "not base64!"}}),
    # RBAC
    Broken("role-rule-without-verbs", "Role", "preprocessor-endpointslices", {("rules", 0, "verbs"): []}),
    Broken("rolebinding-roleref-kind-unknown", "RoleBinding", "preprocessor-endpointslices",
           {("roleRef", "kind"): "Roles"}),
    Broken("rolebinding-serviceaccount-without-namespace", "RoleBinding", "preprocessor-endpointslices",
           {("subjects", 0, "namespace"): DELETE},
           server_accepts="a ServiceAccount subject without namespace is allowed in a RoleBinding "
                          "(it means the binding's namespace)"),
    Broken("role-verb-misspelt", "Role", "preprocessor-endpointslices", {("rules", 0, "verbs"): ["get", "lsit"]},
           server_accepts="RBAC verbs are free strings: a misspelt verb silently grants nothing "
                          "(tests/test_deploy.py pins the exact rule)"),
    Broken("role-resource-misspelt", "Role", "preprocessor-endpointslices",
           {("rules", 0, "resources"): ["endpointslice"]},
           server_accepts="RBAC resources are free strings, not checked against discovery"),
)


def offline_validator_accepts(obj: Mapping[str, Any]) -> bool:
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError:
        return False
    except Exception:   # the validator's own errors (unknown kind/version): not an acceptance
        return False
    return True


@pytest.mark.parametrize("case", BROKEN, ids=lambda c: c.id)
def test_the_server_refuses_each_broken_variant(server: Server, namespace: str, case: Broken) -> None:
    answer = server.apply(case.build())
    if case.server_accepts:
        assert answer.accepted, f"{case.id}: documented as accepted by the API ({case.server_accepts}), got {answer}"
    else:
        # Refused with a message naming the problem; server-side apply answers 500 (not 400) when
        # the object cannot even be converted (malformed quantity or base64, unknown field,
        # duplicate list key), as kubectl apply --server-side shows.
        assert not answer.accepted and answer.message, f"{case.id}: the server accepted it: {answer}"


def test_offline_validation_misses_what_the_server_refuses(server: Server, namespace: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The measurement: how many broken variants the offline validator passes that the API server
    refuses. The offline validator must never be stricter than the server (that would reject a
    valid manifest)."""
    rows = [(case.id, offline_validator_accepts(case.build()), server.apply(case.build()).accepted)
            for case in BROKEN]
    stricter = [case for case, offline, served in rows if served and not offline]
    assert not stricter, f"the offline validator refuses what the API server accepts: {stricter}"
    missed = [case for case, offline, served in rows if offline and not served]
    with capsys.disabled():
        print(f"\nbroken variants: {len(rows)}; API server refused {sum(not s for _, _, s in rows)}; "
              f"offline validator (kubernetes-validate {KUBERNETES_VERSION}, strict) refused "
              f"{sum(not o for _, o, _ in rows)}; passed offline but refused by the server: {len(missed)}")
    assert missed, "every variant the server refuses is caught offline too: the broken set is too easy"


# ------------------------------------------------------------------ the preprocessor's RBAC, for real
PREPROCESSOR = f"system:serviceaccount:{NAMESPACE}:preprocessor"


def access_review(server: Server, verb: str, resource: str, group: str = "", namespace: str = NAMESPACE,
                  subresource: str = "") -> bool:
    """A SubjectAccessReview: may the preprocessor's ServiceAccount do this?"""
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
              "spec": {"user": PREPROCESSOR, "groups": ["system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}",
                                                        "system:authenticated"],
                       "resourceAttributes": {"namespace": namespace, "verb": verb, "group": group,
                                              "resource": resource, "subresource": subresource}}}
    response = server.session.post(f"{server.base}/apis/authorization.k8s.io/v1/subjectaccessreviews",
                                   json=review, timeout=30)
    assert response.status_code == 201, response.text
    return bool(response.json()["status"].get("allowed"))


ALLOWED = [("get", "endpointslices"), ("list", "endpointslices"), ("watch", "endpointslices")]
DENIED = ([(verb, "endpointslices") for verb in ("create", "update", "patch", "delete", "deletecollection")]
          + [(verb, resource) for resource in ("pods", "services", "endpoints", "secrets", "configmaps",
                                               "deployments", "horizontalpodautoscalers", "serviceaccounts")
             for verb in ("get", "list", "watch", "create")])
GROUPS = {"endpointslices": "discovery.k8s.io", "deployments": "apps", "horizontalpodautoscalers": "autoscaling"}


def test_the_preprocessor_may_read_endpointslices_in_its_namespace_and_nothing_else(server: Server,
                                                                                    preprocessor_rbac: None) -> None:
    for verb, resource in ALLOWED:
        assert access_review(server, verb, resource, GROUPS[resource]), (verb, resource)
    granted = [(verb, resource) for verb, resource in DENIED
               if access_review(server, verb, resource, GROUPS.get(resource, ""))]
    assert not granted, f"the preprocessor may also: {granted}"
    for other in ("default", "kube-system"):
        assert not access_review(server, "list", "endpointslices", GROUPS["endpointslices"], namespace=other), other
    assert not access_review(server, "create", "serviceaccounts", subresource="token")


def test_impersonated_preprocessor_lists_endpointslices_and_is_refused_pods(server: Server,
                                                                          preprocessor_rbac: None) -> None:
    """The same through real requests, as the ServiceAccount (impersonation by the admin)."""
    headers = {"Impersonate-User": PREPROCESSOR, "Impersonate-Group": "system:serviceaccounts"}
    slices = server.session.get(f"{server.base}/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices",
                                headers=headers, timeout=30)
    assert slices.status_code == 200 and slices.json()["kind"] == "EndpointSliceList", slices.text
    watch = server.session.get(f"{server.base}/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices",
                               params={"watch": "true", "timeoutSeconds": "1"}, headers=headers, timeout=30)
    assert watch.status_code == 200, watch.text
    for path in (f"/api/v1/namespaces/{NAMESPACE}/pods", f"/api/v1/namespaces/{NAMESPACE}/secrets",
                 "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"):
        refused = server.session.get(server.base + path, headers=headers, timeout=30)
        assert refused.status_code == 403, (path, refused.status_code)
