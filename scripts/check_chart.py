#!/usr/bin/env python3
"""Checks the Helm chart without a cluster and without a helm binary.

For every value set in charts/meshd/ci/*-values.yaml (Helm's convention):

  lint      Helm's own linter, strict (warnings fail), through helm-python-sdk,
            which binds Helm's Go SDK as a shared library bundled in its wheel;
            values.schema.json is enforced here too.
  render    the templates, as `helm install meshd -n meshd-system` would.
  validate  every rendered object against the OpenAPI schemas of each
            Kubernetes version in KUBERNETES_VERSIONS, strictly (an unknown
            field is an error), with kubernetes-validate. A kind it has no
            schema for is an error too (its command line only warns).
  check     the properties the chart promises (see check_render): the
            injection webhook's selectors and policies, the hardened pod, the
            names meshd is told agreeing with the objects and RBAC rules that
            carry them, and RBAC without wildcards and with Secrets restricted
            as designed.

Then it proves each stage can fail: values the chart must refuse (REFUSED:
schema violations, a grace period shorter than the drain, a
PodDisruptionBudget that blocks every node drain, ...), also with the schema
skipped, must be refused with an error that names them; values next to them
(ACCEPTED) must still render with every property holding; an unknown field
and broken RBAC and webhook objects must each be reported.

Exits 1 on any finding; the last line is the summary.
Usage: scripts/check_chart.py CHART_DIR (run by scripts/check-chart).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import helm_python as helm
import jsonschema
import yaml
from kubernetes_validate import utils as kubernetes_validate

RELEASE = "meshd"
# The chart under check (set by main): check_observability reads its dashboards.
CHART = Path("charts/meshd")
NAMESPACE = "meshd-system"
# The oldest Kubernetes the chart supports (native sidecars, Chart.yaml's
# kubeVersion) and the newest kubernetes-validate 1.37.0 knows.
KUBERNETES_VERSIONS = ["1.29.0", "1.37.0"]
LINT_KUBE_VERSION = "v1.29.0"

# Helm severities (helm_python.lint): 1 info, 2 warning, 3 error.
LINT_WARNING = 2

CLUSTER_SCOPED = {
    "ClusterRole",
    "ClusterRoleBinding",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
}


class Findings:
    """Collects what is wrong, each with where it was found."""

    def __init__(self, context: str) -> None:
        self.context = context
        self.problems: list[str] = []
        self.checked = 0

    def expect(self, ok: bool, message: str) -> bool:
        self.checked += 1
        if not ok:
            self.problems.append(f"{self.context}: {message}")
        return ok


def lint(chart: Path, values: dict[str, Any]) -> list[str]:
    """Helm lint findings at warning level or above."""
    report = helm.lint(
        chart, values, strict=True, namespace=NAMESPACE, kube_version=LINT_KUBE_VERSION
    )
    problems = [
        f"lint {m.get('path', '')}: {str(m.get('error', '')).strip()}"
        for m in report.get("messages", [])
        if m.get("severity", 0) >= LINT_WARNING
    ]
    problems += [f"lint: {e}" for e in report.get("errors", []) or []]
    return problems


def render(chart: Path, values: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The merged values and the rendered objects (NOTES.txt left out)."""
    with helm.Chart.load(chart) as loaded:
        merged = loaded.merge_values(values)
        manifests = loaded.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for document in yaml.safe_load_all(text):
            if document:
                objects.append(document)
    return merged, objects


def describe(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata", {})
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind')} {where}{meta.get('name')}"


def monitor_schema(endpoints: str) -> dict[str, Any]:
    """The part of the Prometheus operator's ServiceMonitor / PodMonitor
    (monitoring.coreos.com/v1) that the chart renders, strictly: field names
    and types as in the operator's CRDs, anything else an error.
    kubernetes-validate bundles no CRD schemas."""
    string_map = {"type": "object", "additionalProperties": {"type": "string"}}
    endpoint = {
        "type": "object",
        "additionalProperties": False,
        "required": ["port"],
        "properties": {
            "port": {"type": "string", "minLength": 1},
            "path": {"type": "string", "pattern": "^/"},
            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
            # The operator's Duration pattern, for the units the chart allows.
            "interval": {"type": "string", "pattern": "^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
        },
    }
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"enum": ["ServiceMonitor", "PodMonitor"]},
            "metadata": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "namespace"],
                "properties": {
                    "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"},
                    "namespace": {"type": "string"},
                    "labels": string_map,
                    "annotations": string_map,
                },
            },
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", endpoints],
                "properties": {
                    "selector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "matchLabels": string_map,
                            "matchExpressions": {"type": "array", "items": {"type": "object"}},
                        },
                    },
                    "namespaceSelector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "any": {"type": "boolean"},
                            "matchNames": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                    endpoints: {"type": "array", "minItems": 1, "items": endpoint},
                },
            },
        },
    }


MONITOR_SCHEMAS = {
    "ServiceMonitor": monitor_schema("endpoints"),
    "PodMonitor": monitor_schema("podMetricsEndpoints"),
}


def validate(objects: list[dict[str, Any]]) -> list[str]:
    problems = []
    for obj in objects:
        if obj.get("apiVersion") == "monitoring.coreos.com/v1" and obj.get("kind") in MONITOR_SCHEMAS:
            for e in jsonschema.Draft7Validator(MONITOR_SCHEMAS[obj["kind"]]).iter_errors(obj):
                path = ".".join(str(p) for p in e.path)
                problems.append(f"{describe(obj)} is invalid for the Prometheus operator: {path}: {e.message}")
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                problems.append(
                    f"{describe(obj)} is invalid for Kubernetes {e.version}: {path}: {e.message}"
                )
            except (
                kubernetes_validate.SchemaNotFoundError,
                kubernetes_validate.InvalidSchemaError,
                kubernetes_validate.VersionNotSupportedError,
            ) as e:
                problems.append(f"{describe(obj)} cannot be validated for {version}: {e.message}")
    return problems


# --- properties of a render ------------------------------------------------


def one(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == kind]


def seconds(duration: str) -> int | None:
    """Seconds of a duration as meshd's --drain-period and --workload-cert-ttl
    read it (a whole number with s, m or h); None if meshd would refuse it."""
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = duration[:-1], duration[-1:]
    if not (number.isascii() and number.isdigit()) or unit not in units:
        return None
    return int(number) * units[unit]


def pods_kept(min_available: Any, replicas: int) -> int:
    """How many replicas a PodDisruptionBudget's minAvailable keeps up;
    Kubernetes rounds a percentage up."""
    if isinstance(min_available, str) and min_available.endswith("%"):
        return -(-int(min_available[:-1]) * replicas // 100)
    return int(min_available)


def port_number(container: dict[str, Any], port: Any) -> Any:
    """A probe's or Service's target port, by name or number."""
    for p in container.get("ports", []):
        if port in (p.get("name"), p.get("containerPort")):
            return p.get("containerPort")
    return None


def has_wildcard(rule: dict[str, Any]) -> bool:
    return any(
        "*" in str(item)
        for key in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs")
        for item in rule.get(key, []) or []
    )


def meshd_variables(chart: Path) -> set[str]:
    """The MESHD_* variables meshd reads: its clap arguments' env = "..." and
    the few read directly (MESHD_LOG), i.e. every such string in meshd/src."""
    source = chart.resolve().parents[1] / "meshd" / "src"
    return {
        m.group(1)
        for file in source.rglob("*.rs")
        for m in re.finditer(r'"(MESHD_[A-Z0-9_]+)"', file.read_text())
    }


def unread_variables(objects: list[dict[str, Any]], known: set[str]) -> list[str]:
    """MESHD_* variables the chart sets that meshd does not read: a typo
    there is silently ignored, and meshd runs on its default."""
    return [
        f"{describe(d)}: meshd reads no variable {e['name']} (meshd/src)"
        for d in one(objects, "Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
        for e in c.get("env", [])
        if e["name"].startswith("MESHD_") and e["name"] not in known
    ]


def check_render(f: Findings, v: dict[str, Any], objects: list[dict[str, Any]]) -> None:
    """The chart's promises, for the merged values `v`."""
    identity_namespaces = v["identitySecrets"]["namespaces"] or []
    plugin_ca = v["pluginCA"]["secretName"]

    # Every namespaced object states its namespace (Helm does not add it).
    for obj in objects:
        ns = obj.get("metadata", {}).get("namespace")
        if obj["kind"] in CLUSTER_SCOPED:
            f.expect(ns is None, f"{describe(obj)} is cluster-scoped but names a namespace")
        elif obj["kind"] == "RoleBinding" and ns in identity_namespaces:
            pass
        else:
            f.expect(ns == NAMESPACE, f"{describe(obj)} is not in the release namespace")

    services = one(objects, "Service")
    deployments = one(objects, "Deployment")
    accounts = one(objects, "ServiceAccount")
    mutating = one(objects, "MutatingWebhookConfiguration")
    validating = one(objects, "ValidatingWebhookConfiguration")
    if not (
        f.expect(len(services) == 1, f"expected one Service, found {len(services)}")
        and f.expect(len(deployments) == 1, f"expected one Deployment, found {len(deployments)}")
        and f.expect(len(accounts) == 1, f"expected one ServiceAccount, found {len(accounts)}")
        and f.expect(len(mutating) == 1, "expected one MutatingWebhookConfiguration")
    ):
        return
    service, deployment, account = services[0], deployments[0], accounts[0]
    svc = service["metadata"]["name"]
    host = f"{svc}.{NAMESPACE}.svc"
    mutating_name = mutating[0]["metadata"]["name"]
    validating_name = validating[0]["metadata"]["name"] if validating else None
    f.expect(
        bool(validating) == bool(v["validator"]["enabled"]),
        "the ValidatingWebhookConfiguration must exist exactly when validator.enabled",
    )

    # --- the Deployment ---
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"].get("labels", {})
    f.expect(spec.get("replicas") == v["replicaCount"], "replicas differ from replicaCount")
    f.expect(
        pod_labels.get("meshd.io/inject") == "false",
        "meshd's own pods must carry meshd.io/inject: \"false\"",
    )
    f.expect(pod.get("automountServiceAccountToken") is True, "meshd needs its token mounted")
    f.expect(
        pod.get("serviceAccountName") == account["metadata"]["name"] == v["serviceAccount"]["name"],
        "the pod must run as the chart's service account (serviceAccount.name)",
    )
    psc = pod.get("securityContext", {})
    f.expect(psc.get("runAsNonRoot") is True, "pod securityContext.runAsNonRoot must be true")
    f.expect(psc.get("runAsUser") == 65532, "pod securityContext.runAsUser must be 65532")
    f.expect(
        psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
        "pod seccompProfile must be RuntimeDefault",
    )
    f.expect(
        pod.get("priorityClassName") == (v["priorityClassName"] or None),
        "priorityClassName differs from the value",
    )
    containers = pod.get("containers", [])
    if not f.expect(len(containers) == 1, "expected one container"):
        return
    c = containers[0]
    sc = c.get("securityContext", {})
    f.expect(sc.get("runAsNonRoot") is True, "container runAsNonRoot must be true")
    f.expect(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem must be true")
    f.expect(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation must be false")
    f.expect(sc.get("privileged") in (None, False), "the container must not be privileged")
    caps = sc.get("capabilities", {})
    f.expect(caps.get("drop") == ["ALL"], "capabilities must drop ALL")
    f.expect(not caps.get("add"), "no capability may be added")
    f.expect(
        sc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
        "container seccompProfile must be RuntimeDefault",
    )
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c.get(probe, {}).get("httpGet", {})
        f.expect(
            get.get("path") == path and port_number(c, get.get("port")) == 15014,
            f"{probe} must be GET {path} on 15014",
        )
    f.expect(
        ("startupProbe" in c) == bool(v["startupProbe"]["enabled"]),
        "startupProbe must be present exactly when startupProbe.enabled",
    )
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    f.expect(
        ports == {"grpc-xds": 15010, "https-webhook": 15017, "http-monitoring": 15014},
        f"container ports are {ports}",
    )

    env = {e["name"]: e for e in c.get("env", [])}
    values_of = {name: e.get("value") for name, e in env.items()}

    def env_is(name: str, expected: Any) -> None:
        f.expect(values_of.get(name) == expected, f"{name} is {values_of.get(name)!r}, expected {expected!r}")

    def env_from_field(name: str, field: str) -> None:
        got = env.get(name, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        f.expect(got == field, f"{name} must come from the downward API field {field}")

    env_is("MESHD_KUBERNETES", "true")
    env_is("MESHD_XDS_ADDRESS", "0.0.0.0:15010")
    env_is("MESHD_WEBHOOK_ADDRESS", "0.0.0.0:15017")
    env_is("MESHD_DEBUG_ADDRESS", "0.0.0.0:15014")
    env_is("MESHD_WEBHOOK_SERVICE", svc)
    env_from_field("MESHD_NAMESPACE", "metadata.namespace")
    env_from_field("MESHD_POD_NAME", "metadata.name")
    env_from_field("MESHD_SERVICE_ACCOUNT", "spec.serviceAccountName")
    env_is("MESHD_XDS_DNS_NAMES", f"{host},{host}.cluster.local")
    env_is("MESHD_INJECT_XDS_ADDRESS", f"{host}:15010")
    env_is("MESHD_TRUST_DOMAIN", v["mesh"]["trustDomain"])
    env_is("MESHD_MTLS_MODE", v["mesh"]["mtlsMode"])
    env_is("MESHD_WORKLOAD_CERT_TTL", v["mesh"]["workloadCertTTL"])
    env_is("MESHD_DEBOUNCE_MS", str(v["debounceMs"]))
    env_is("MESHD_PROXY_IMAGE", v["proxy"]["image"])
    env_is("MESHD_INIT_IMAGE", c.get("image"))
    env_is("MESHD_NATIVE_SIDECAR", "true" if v["mesh"]["nativeSidecar"] else "false")
    env_is("MESHD_MUTATING_WEBHOOK_CONFIGURATION", mutating_name)
    env_is("MESHD_VALIDATING_WEBHOOK_CONFIGURATION", validating_name)
    env_is("MESHD_DRAIN_PERIOD", v["drainPeriod"])
    env_is("MESHD_LOG", v["logLevel"])
    # Unset limits stay out of the environment, so meshd derives them from
    # its open-file limit.
    limits = v.get("maxConnections") or {}
    for key, name in (
        ("xds", "MESHD_XDS_MAX_CONNECTIONS"),
        ("webhook", "MESHD_WEBHOOK_MAX_CONNECTIONS"),
        ("debug", "MESHD_DEBUG_MAX_CONNECTIONS"),
    ):
        if limits.get(key) is None:
            f.expect(name not in env, f"{name} must be unset when maxConnections.{key} is")
        else:
            env_is(name, str(limits[key]))
    pull_secrets = v["mesh"].get("imagePullSecrets") or []
    if pull_secrets:
        env_is("MESHD_IMAGE_PULL_SECRETS", ",".join(pull_secrets))
    else:
        f.expect("MESHD_IMAGE_PULL_SECRETS" not in env, "MESHD_IMAGE_PULL_SECRETS must be unset without mesh.imagePullSecrets")
    drain = seconds(v["drainPeriod"])
    f.expect(
        drain is not None and pod.get("terminationGracePeriodSeconds", 30) >= drain + 5,
        "terminationGracePeriodSeconds must exceed the drain period by 5 seconds or more",
    )

    mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
    volumes = {vol["name"]: vol for vol in pod.get("volumes", [])}
    if plugin_ca:
        f.expect("MESHD_CA_SECRET" not in env, "MESHD_CA_SECRET must be unset with a plug-in CA")
        mounted = [
            m for name, m in mounts.items()
            if volumes.get(name, {}).get("secret", {}).get("secretName") == plugin_ca
        ]
        f.expect(
            len(mounted) == 1
            and mounted[0].get("readOnly") is True
            and values_of.get("MESHD_PLUG_IN_CA") == mounted[0]["mountPath"],
            "the plug-in CA Secret must be mounted read-only where MESHD_PLUG_IN_CA points",
        )
    else:
        f.expect("MESHD_PLUG_IN_CA" not in env, "MESHD_PLUG_IN_CA must be unset without a plug-in CA")
        f.expect(
            not any("secret" in vol for vol in volumes.values()),
            "no Secret is mounted without a plug-in CA",
        )

    anti_affinity = pod.get("affinity", {}).get("podAntiAffinity", {})
    if not v["affinity"]:
        required = v["antiAffinity"] == "required"
        terms = (
            anti_affinity.get("requiredDuringSchedulingIgnoredDuringExecution", [])
            if required
            else [
                t["podAffinityTerm"]
                for t in anti_affinity.get("preferredDuringSchedulingIgnoredDuringExecution", [])
            ]
        )
        f.expect(
            any(
                t.get("topologyKey") == "kubernetes.io/hostname"
                and t.get("labelSelector", {}).get("matchLabels", {}).items() <= pod_labels.items()
                for t in terms
            ),
            f"replicas must {'be on' if required else 'prefer'} different nodes "
            f"({v['antiAffinity']} anti-affinity on kubernetes.io/hostname)",
        )
        other = "preferred" if required else "required"
        f.expect(
            not anti_affinity.get(f"{other}DuringSchedulingIgnoredDuringExecution"),
            f"antiAffinity {v['antiAffinity']} must not also render {other} terms",
        )
        # A surge pod needs a node without a replica: with required
        # anti-affinity and no spare node, it would never schedule and the
        # rollout would stall. One replica at a time is replaced instead.
        rolling = spec.get("strategy", {}).get("rollingUpdate", {})
        f.expect(
            (rolling.get("maxSurge"), rolling.get("maxUnavailable")) == ((0, 1) if required else (1, 0)),
            f"with antiAffinity {v['antiAffinity']} the rollout must be maxSurge "
            f"{0 if required else 1}, maxUnavailable {1 if required else 0}, is {rolling}",
        )

    # --- the Service ---
    selector = service["spec"].get("selector", {})
    f.expect(
        bool(selector) and selector.items() <= pod_labels.items(),
        "the Service must select the meshd pods",
    )
    f.expect(
        spec["selector"]["matchLabels"].items() <= pod_labels.items(),
        "the Deployment's selector must match its pods",
    )
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    expected_ports = {"grpc-xds": (15010, 15010), "https-webhook": (443, 15017), "http-monitoring": (15014, 15014)}
    for name, (port, target) in expected_ports.items():
        p = service_ports.get(name, {})
        f.expect(
            p.get("port") == port and port_number(c, p.get("targetPort")) == target,
            f"Service port {name} must be {port} -> {target}",
        )
    f.expect(service_ports.get("grpc-xds", {}).get("appProtocol") == "grpc", "grpc-xds needs appProtocol grpc")

    # --- the webhooks ---
    def check_client(w: dict[str, Any], path: str) -> None:
        client = w.get("clientConfig", {})
        ref = client.get("service", {})
        f.expect(
            ref.get("name") == svc
            and ref.get("namespace") == NAMESPACE
            and ref.get("path") == path
            and ref.get("port") == service_ports.get("https-webhook", {}).get("port"),
            f"webhook {w.get('name')} must call the Service's https-webhook port at {path}",
        )
        f.expect(
            "caBundle" not in client,
            f"webhook {w.get('name')}: caBundle must be left out (meshd writes it; Helm would wipe it)",
        )
        f.expect(w.get("admissionReviewVersions") == ["v1"], "admissionReviewVersions must be [v1]")

    hooks = mutating[0].get("webhooks", [])
    if f.expect(len(hooks) == 1, "the injector configuration must hold one webhook"):
        w = hooks[0]
        check_client(w, "/inject")
        f.expect(
            w.get("rules") == [{
                "operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                "resources": ["pods"], "scope": "Namespaced",
            }],
            "the injector must see Pod CREATE only",
        )
        ns_selector = w.get("namespaceSelector", {})
        f.expect(
            ns_selector.get("matchLabels") == {"meshd-injection": "enabled"},
            "the injector's namespaceSelector must match meshd-injection=enabled",
        )
        expressions = ns_selector.get("matchExpressions", [])
        f.expect(
            any(
                e["key"] == "kubernetes.io/metadata.name" and e["operator"] == "NotIn"
                and {"kube-system", NAMESPACE} <= set(e["values"])
                for e in expressions
            ),
            "the injector must exclude kube-system and the release namespace",
        )
        limited = [
            e for e in expressions
            if e["key"] == "kubernetes.io/metadata.name" and e["operator"] == "In"
        ]
        if identity_namespaces:
            f.expect(
                len(limited) == 1 and sorted(limited[0]["values"]) == sorted(identity_namespaces),
                "the injector must be limited to identitySecrets.namespaces",
            )
        else:
            f.expect(not limited, "the injector must not be limited to namespaces")
        f.expect(
            w.get("objectSelector") == {"matchExpressions": [
                {"key": "meshd.io/inject", "operator": "NotIn", "values": ["false"]}
            ]},
            "the injector's objectSelector must pass over pods labelled meshd.io/inject=false",
        )
        f.expect(w.get("sideEffects") == "NoneOnDryRun", "the injector's sideEffects must be NoneOnDryRun")
        f.expect(w.get("reinvocationPolicy") == "IfNeeded", "the injector's reinvocationPolicy must be IfNeeded")
        f.expect(w.get("failurePolicy") == v["injector"]["failurePolicy"], "injector failurePolicy differs from the value")
        f.expect(w.get("timeoutSeconds") == v["injector"]["timeoutSeconds"], "injector timeoutSeconds differs from the value")

    if validating:
        hooks = validating[0].get("webhooks", [])
        # One webhook for routing annotations (Services, Namespaces), one for
        # Gateway API routes attached to Services: both call /validate.
        expected = {
            "routing-annotations.meshd.io": ([""], ["namespaces", "services"]),
            "mesh-routes.meshd.io": (["gateway.networking.k8s.io"], ["grpcroutes", "httproutes"]),
        }
        if f.expect(
            sorted(w.get("name") for w in hooks) == sorted(expected),
            f"the validator configuration must hold the webhooks {sorted(expected)}",
        ):
            for w in hooks:
                groups, resources = expected[w["name"]]
                check_client(w, "/validate")
                rules = w.get("rules", [])
                f.expect(
                    len(rules) == 1
                    and sorted(rules[0]["operations"]) == ["CREATE", "UPDATE"]
                    and sorted(rules[0]["resources"]) == resources
                    and rules[0]["apiGroups"] == groups,
                    f"the validator {w['name']} must see {', '.join(resources)} CREATE and UPDATE",
                )
                f.expect(w.get("sideEffects") == "None", "the validator's sideEffects must be None")
                f.expect(w.get("failurePolicy") == v["validator"]["failurePolicy"], "validator failurePolicy differs from the value")

    # --- RBAC ---
    sa = account["metadata"]["name"]
    roles = {("Role", o["metadata"]["name"]): o for o in one(objects, "Role")}
    roles.update({("ClusterRole", o["metadata"]["name"]): o for o in one(objects, "ClusterRole")})
    bindings = one(objects, "RoleBinding") + one(objects, "ClusterRoleBinding")
    for role in roles.values():
        for rule in role.get("rules", []):
            f.expect(not has_wildcard(rule), f"{describe(role)} has a wildcard rule {rule}")
    bound: dict[tuple[str, str], list[tuple[str, str | None]]] = {}
    for b in bindings:
        ref = b["roleRef"]
        f.expect(
            (ref["kind"], ref["name"]) in roles,
            f"{describe(b)} refers to {ref['kind']} {ref['name']}, which the chart does not create",
        )
        f.expect(
            b.get("subjects") == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}],
            f"{describe(b)} must bind meshd's service account only",
        )
        bound.setdefault((ref["kind"], ref["name"]), []).append((b["kind"], b["metadata"].get("namespace")))

    def rules_for(resource: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        return [
            (role, rule)
            for role in roles.values()
            for rule in role.get("rules", [])
            if resource in rule.get("resources", [])
        ]

    # Secrets: identity Secrets get/create/patch in a ClusterRole, bound as designed.
    for role, rule in rules_for("secrets"):
        verbs = set(rule["verbs"])
        if role["kind"] == "ClusterRole":
            f.expect(
                verbs == {"get", "create", "patch"} and not rule.get("resourceNames"),
                f"{describe(role)}: identity Secret rules must be exactly get, create, patch",
            )
            key = ("ClusterRole", role["metadata"]["name"])
            places = bound.get(key, [])
            if identity_namespaces:
                f.expect(
                    sorted(places) == sorted(("RoleBinding", ns) for ns in identity_namespaces),
                    f"{describe(role)} must be bound only in {identity_namespaces}, is bound as {places}",
                )
            else:
                f.expect(
                    places == [("ClusterRoleBinding", None)],
                    f"{describe(role)} must be bound cluster-wide once, is bound as {places}",
                )
        else:
            f.expect(not plugin_ca, f"{describe(role)}: no Secret access in the release namespace with a plug-in CA")
            if rule.get("resourceNames"):
                f.expect(
                    rule["resourceNames"] == [values_of.get("MESHD_CA_SECRET")],
                    f"{describe(role)}: named Secret rules must name MESHD_CA_SECRET only",
                )
            else:
                f.expect(verbs == {"create"}, f"{describe(role)}: unnamed Secret rules may only create")
    secret_roles = {role["kind"] for role, _ in rules_for("secrets")}
    f.expect("ClusterRole" in secret_roles, "the identity Secret ClusterRole is missing")
    f.expect(
        ("Role" in secret_roles) != bool(plugin_ca),
        "the root CA Secret rules must exist exactly when no plug-in CA is set",
    )

    # Gateway API: the routes and grants are only listed and watched (the
    # watch source); only the routes' status subresource is read and
    # patched (the leader's conditions); their spec is never written.
    gateway_rules = {
        resource: [(role, rule) for role, rule in rules_for(resource)]
        for resource in ("httproutes", "grpcroutes", "referencegrants", "httproutes/status", "grpcroutes/status")
    }
    for resource, found in gateway_rules.items():
        expected = {"get", "patch"} if resource.endswith("/status") else {"list", "watch"}
        f.expect(bool(found), f"no RBAC rule for {resource} (gateway.networking.k8s.io)")
        for role, rule in found:
            f.expect(
                role["kind"] == "ClusterRole"
                and rule.get("apiGroups") == ["gateway.networking.k8s.io"]
                and set(rule["verbs"]) == expected,
                f"{describe(role)}: {resource} must be exactly {sorted(expected)} in gateway.networking.k8s.io",
            )

    for role, rule in rules_for("leases"):
        f.expect(role["kind"] == "Role", "Lease rules belong in the release namespace's Role")
        if rule.get("resourceNames"):
            f.expect(
                rule["resourceNames"] == [values_of.get("MESHD_LEADER_ELECTION_LEASE")]
                and set(rule["verbs"]) == {"get", "update"},
                "the named Lease rule must be get/update on MESHD_LEADER_ELECTION_LEASE",
            )
        else:
            f.expect(rule["verbs"] == ["create"], "unnamed Lease rules may only create")

    for kind, name in (
        ("mutatingwebhookconfigurations", mutating_name),
        ("validatingwebhookconfigurations", validating_name),
    ):
        found = rules_for(kind)
        f.expect(len(found) == (1 if name else 0), f"expected one rule for {kind}")
        for _, rule in found:
            f.expect(
                rule.get("resourceNames") == [name] and set(rule["verbs"]) == {"get", "patch"},
                f"{kind}: get and patch on {name} only",
            )
    for kind in ("namespaces", "services", "pods"):
        found = rules_for(kind)
        f.expect(
            bool(found) and all(set(rule["verbs"]) == {"get", "list", "watch"} for _, rule in found),
            f"{kind}: read only (get, list, watch)",
        )
    found = rules_for("endpointslices")
    f.expect(
        bool(found) and all(set(rule["verbs"]) == {"list", "watch"} for _, rule in found),
        "endpointslices: list and watch only",
    )
    for _, rule in rules_for("events"):
        f.expect(rule["verbs"] == ["create"], "events: create only")

    # --- the PodDisruptionBudget ---
    pdbs = one(objects, "PodDisruptionBudget")
    wanted = v["podDisruptionBudget"]["enabled"] and v["replicaCount"] > 1
    f.expect(len(pdbs) == (1 if wanted else 0), "a PodDisruptionBudget exactly when enabled with replicas > 1")
    for pdb in pdbs:
        min_available = pdb["spec"].get("minAvailable")
        f.expect(min_available == v["podDisruptionBudget"]["minAvailable"], "PDB minAvailable differs")
        f.expect(
            pods_kept(min_available, spec["replicas"]) < spec["replicas"],
            f"PDB minAvailable {min_available!r} keeps every one of {spec['replicas']} replicas up: no node drain could evict one",
        )
        f.expect(
            pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(),
            "the PodDisruptionBudget must select the meshd pods",
        )

    check_observability(f, v, objects, service, c)


def check_observability(
    f: Findings, v: dict[str, Any], objects: list[dict[str, Any]], service: dict[str, Any], c: dict[str, Any]
) -> None:
    """The Grafana dashboards (one ConfigMap each, labelled for Grafana's
    sidecar, exactly when dashboards.enabled) and the Prometheus operator's
    monitors (exactly when enabled, pointed at meshd's metrics port and the
    sidecars' meshd-metrics port)."""
    shipped = sorted(p.name for p in (CHART / "dashboards").glob("*.json"))
    d = v["dashboards"]
    maps = [
        m for m in one(objects, "ConfigMap")
        if m["metadata"].get("labels", {}).get(d["label"]) == d["labelValue"]
    ]
    keys = sorted(k for m in maps for k in m.get("data", {}))
    f.expect(
        keys == (shipped if d["enabled"] else []),
        f"dashboard ConfigMaps hold {keys}, expected {shipped if d['enabled'] else []}",
    )
    f.expect(bool(shipped), "the chart has no dashboards/*.json")
    for m in maps:
        for key, text in m.get("data", {}).items():
            try:
                board = json.loads(text)
            except json.JSONDecodeError as e:
                f.expect(False, f"{describe(m)}: {key} is not JSON: {e}")
                continue
            f.expect(
                isinstance(board, dict) and bool(board.get("uid")) and bool(board.get("panels")),
                f"{describe(m)}: {key} is not a Grafana dashboard with a uid and panels",
            )
            f.expect(
                text.strip() == (CHART / "dashboards" / key).read_text().strip(),
                f"{describe(m)}: {key} differs from dashboards/{key} (it must not be templated)",
            )
            f.expect(
                m["metadata"].get("annotations", {}) == (d["annotations"] or {}),
                f"{describe(m)}: annotations differ from dashboards.annotations",
            )

    monitors = one(objects, "ServiceMonitor")
    wanted = v["metrics"]["serviceMonitor"]["enabled"]
    f.expect(len(monitors) == (1 if wanted else 0), "a ServiceMonitor exactly when metrics.serviceMonitor.enabled")
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    for sm in monitors:
        spec = sm["spec"]
        f.expect(
            spec["selector"].get("matchLabels", {}).items() <= service["metadata"].get("labels", {}).items()
            and bool(spec["selector"].get("matchLabels")),
            "the ServiceMonitor must select the meshd Service by its labels",
        )
        f.expect(
            spec.get("namespaceSelector", {}).get("matchNames") == [NAMESPACE],
            "the ServiceMonitor must look in the release namespace only",
        )
        for e in spec["endpoints"]:
            target = service_ports.get(e.get("port"), {}).get("targetPort")
            f.expect(
                port_number(c, target) == 15014 and e.get("path") == "/metrics",
                f"the ServiceMonitor must scrape /metrics on the Service's port to 15014, not {e}",
            )
        f.expect(
            sm["metadata"].get("labels", {}).items() >= (v["metrics"]["serviceMonitor"]["labels"] or {}).items(),
            "the ServiceMonitor must carry metrics.serviceMonitor.labels",
        )
    monitors = one(objects, "PodMonitor")
    wanted = v["metrics"]["podMonitor"]["enabled"]
    f.expect(len(monitors) == (1 if wanted else 0), "a PodMonitor exactly when metrics.podMonitor.enabled")
    for pm in monitors:
        spec = pm["spec"]
        f.expect(
            [(e.get("port"), e.get("path")) for e in spec["podMetricsEndpoints"]]
            == [("meshd-metrics", "/stats/prometheus")],
            "the PodMonitor must scrape the sidecars' meshd-metrics port at /stats/prometheus",
        )
        namespaces = v["metrics"]["podMonitor"]["namespaces"] or []
        f.expect(
            spec.get("namespaceSelector")
            == ({"matchNames": namespaces} if namespaces else {"any": True}),
            "the PodMonitor's namespaces differ from metrics.podMonitor.namespaces",
        )


# --- the checks must be able to fail ----------------------------------------

# Values that must not install, each with the words its error must contain
# (the value's name, and what is wrong), so the operator knows what to change.
REFUSED: list[tuple[str, dict[str, Any], list[str]]] = [
    ("a grace period shorter than the drain (seconds)",
     {"drainPeriod": "60s", "terminationGracePeriodSeconds": 30},
     ["terminationGracePeriodSeconds", "drainPeriod", "60s"]),
    # #11 E.1: the guard used to understand whole seconds only.
    ("a grace period shorter than the drain (minutes)",
     {"drainPeriod": "1m", "terminationGracePeriodSeconds": 30},
     ["terminationGracePeriodSeconds", "drainPeriod", "1m"]),
    ("a grace period shorter than the drain (hours)",
     {"drainPeriod": "1h", "terminationGracePeriodSeconds": 600},
     ["terminationGracePeriodSeconds", "drainPeriod", "1h"]),
    # The schema used to accept durations meshd refuses at start.
    ("a drain period meshd cannot parse (1m30s)", {"drainPeriod": "1m30s"}, ["drainPeriod"]),
    ("a drain period meshd cannot parse (500ms)", {"drainPeriod": "500ms"}, ["drainPeriod"]),
    ("a workload certificate lifetime meshd cannot parse",
     {"mesh": {"workloadCertTTL": "1h30m"}}, ["workloadCertTTL"]),
    ("a workload certificate lifetime below meshd's 60s minimum",
     {"mesh": {"workloadCertTTL": "30s"}}, ["workloadCertTTL", "30s", "60"]),
    # #11 E.1: a budget that keeps every replica up blocks every node drain.
    ("podDisruptionBudget.minAvailable equal to replicaCount",
     {"replicaCount": 2, "podDisruptionBudget": {"minAvailable": 2}},
     ["podDisruptionBudget.minAvailable", "replicaCount", "drain"]),
    ("podDisruptionBudget.minAvailable above replicaCount",
     {"replicaCount": 3, "podDisruptionBudget": {"minAvailable": 4}},
     ["podDisruptionBudget.minAvailable", "replicaCount"]),
    ("podDisruptionBudget.minAvailable 100%",
     {"replicaCount": 2, "podDisruptionBudget": {"minAvailable": "100%"}},
     ["podDisruptionBudget.minAvailable", "100%"]),
    ("podDisruptionBudget.minAvailable 60% of 2 replicas (rounded up: 2)",
     {"replicaCount": 2, "podDisruptionBudget": {"minAvailable": "60%"}},
     ["podDisruptionBudget.minAvailable", "60%", "50%"]),
    ("podDisruptionBudget.minAvailable above 100%",
     {"podDisruptionBudget": {"minAvailable": "150%"}}, ["minAvailable"]),
    # Listener connection limits: meshd's flags take a count of 1 or more.
    ("maxConnections.xds 0", {"maxConnections": {"xds": 0}}, ["maxConnections/xds"]),
    ("maxConnections.webhook not a number", {"maxConnections": {"webhook": "many"}}, ["maxConnections/webhook"]),
    ("maxConnections.debug above the kernel's descriptor ceiling",
     {"maxConnections": {"debug": 2_000_000}}, ["maxConnections/debug"]),
    ("an unknown maxConnections listener", {"maxConnections": {"grpc": 10}}, ["grpc"]),
    ("a pull secret that is not a Secret name", {"mesh": {"imagePullSecrets": ["Registry A"]}}, ["imagePullSecrets"]),
    # #11 E.3
    ("an unknown antiAffinity", {"antiAffinity": "sometimes"}, ["antiAffinity"]),
    # #13 dashboards and monitors
    ("a scrape interval Prometheus cannot read",
     {"metrics": {"serviceMonitor": {"enabled": True, "interval": "30 seconds"}}}, ["interval"]),
    ("a dashboard label that is not a label key", {"dashboards": {"label": "grafana dashboard"}}, ["label"]),
    ("an unknown podMonitor field", {"metrics": {"podMonitor": {"port": 15090}}}, ["port"]),
    ("antiAffinity required next to an affinity that replaces it",
     {"antiAffinity": "required", "affinity": {"nodeAffinity": {}}}, ["antiAffinity", "affinity"]),
]

# Values next to the refused ones that must still install and keep every
# property of check_render.
ACCEPTED: list[tuple[str, dict[str, Any]]] = [
    ("a drain in minutes within the grace period",
     {"drainPeriod": "1m", "terminationGracePeriodSeconds": 65}),
    ("minAvailable 50% of 2 replicas", {"replicaCount": 2, "podDisruptionBudget": {"minAvailable": "50%"}}),
    ("minAvailable 2 of 3 replicas", {"replicaCount": 3, "podDisruptionBudget": {"minAvailable": 2}}),
    ("minAvailable 1 with a single replica (no budget)", {"replicaCount": 1}),
    ("one connection limit (the others left to meshd)", {"maxConnections": {"xds": 1048576}}),
    ("pull secrets for the injected images", {"mesh": {"imagePullSecrets": ["registry-a", "registry-b"]}}),
    ("no dashboards", {"dashboards": {"enabled": False}}),
    ("a PodMonitor in every namespace", {"metrics": {"podMonitor": {"enabled": True}}}),
]


def refusal(chart: Path, values: dict[str, Any]) -> str | None:
    """Why Helm refuses to render `values` (schema or template), or None."""
    try:
        render(chart, values)
    except helm.HelmError as e:
        return " ".join(str(e).split())
    return None



def self_tests(chart: Path, default_values: dict[str, Any], default_objects: list[dict[str, Any]]) -> list[str]:
    """Each stage, fed something wrong, must say so."""
    problems = []

    def expect_failure(what: str, found: list[str]) -> None:
        if found:
            first = " ".join(found[0].split())
            print(f"  ok   {what}: reported ({first[:110]})")
        else:
            problems.append(f"self-test: {what} went unreported")

    expect_failure(
        "lint of injector.failurePolicy=Sometimes",
        lint(chart, {"injector": {"failurePolicy": "Sometimes"}}),
    )
    for what, values, words in REFUSED:
        message = refusal(chart, values)
        if message is None:
            problems.append(f"self-test: {what} {values} was rendered, not refused")
        elif missing := [w for w in words if w not in message]:
            problems.append(f"self-test: {what}: the refusal does not name {missing}: {message}")
        else:
            print(f"  ok   refused {what}: {message[:110]}")
    # `helm install --skip-schema-validation` leaves the templates alone to
    # refuse what meshd cannot run with: the guards must not pass a value
    # they cannot read.
    with tempfile.TemporaryDirectory() as scratch:
        unchecked = Path(scratch) / chart.name
        shutil.copytree(chart, unchecked)
        (unchecked / "values.schema.json").unlink()
        for what, values, words in [
            ("a drain period meshd cannot parse", {"drainPeriod": "1m30s"}, ["drainPeriod", "1m30s"]),
            ("a drain in minutes longer than the grace period",
             {"drainPeriod": "1m", "terminationGracePeriodSeconds": 30}, ["terminationGracePeriodSeconds"]),
            ("a workload certificate lifetime meshd cannot parse",
             {"mesh": {"workloadCertTTL": "500ms"}}, ["workloadCertTTL", "500ms"]),
        ]:
            message = refusal(unchecked, values)
            if message is None or any(w not in message for w in words):
                problems.append(f"self-test: without the schema, {what} {values} was not refused by name: {message}")
            else:
                print(f"  ok   refused without the schema {what}: {message[:90]}")
    for what, values in ACCEPTED:
        try:
            merged, objects = render(chart, values)
        except helm.HelmError as e:
            problems.append(f"self-test: {what} {values} must render: {' '.join(str(e).split())}")
            continue
        f = Findings(f"self-test ({what})")
        check_render(f, merged, objects)
        problems += f.problems
        if not f.problems:
            print(f"  ok   accepted {what}: {f.checked} properties hold")

    def broken(change: Callable[[list[dict[str, Any]]], None]) -> list[dict[str, Any]]:
        objects = copy.deepcopy(default_objects)
        change(objects)
        return objects

    def unknown_field(objects: list[dict[str, Any]]) -> None:
        one(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["readinessGate"] = True

    expect_failure("strict validation of an unknown container field", validate(broken(unknown_field)))

    def misspelt_variable(objects: list[dict[str, Any]]) -> None:
        one(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"].append(
            {"name": "MESHD_XDS_MAX_CONNECTION", "value": "10"}
        )

    expect_failure(
        "a MESHD_ variable meshd does not read",
        unread_variables(broken(misspelt_variable), meshd_variables(chart)),
    )

    def broken_monitor(objects: list[dict[str, Any]]) -> None:
        objects.append({
            "apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
            "metadata": {"name": "meshd-proxies", "namespace": NAMESPACE},
            "spec": {"selector": {}, "podMetricsEndpoints": [{"port": "meshd-metrics", "intervall": "30s"}]},
        })

    expect_failure("strict validation of an unknown PodMonitor field", validate(broken(broken_monitor)))

    cases: list[tuple[str, Callable[[list[dict[str, Any]]], None]]] = [
        ("a dashboard left out", lambda o: o.remove(next(
            m for m in one(o, "ConfigMap") if "grafana_dashboard" in m["metadata"].get("labels", {})))),
        ("a dashboard that is not JSON", lambda o: [
            m["data"].update({k: "{" for k in m["data"]})
            for m in one(o, "ConfigMap") if "grafana_dashboard" in m["metadata"].get("labels", {})]),
        ("a ServiceMonitor not asked for", lambda o: o.append({
            "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
            "metadata": {"name": "meshd", "namespace": NAMESPACE},
            "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "meshd"}},
                     "endpoints": [{"port": "grpc-xds", "path": "/metrics"}]}})),
        ("a wildcard verb", lambda o: one(o, "ClusterRole")[0]["rules"][0]["verbs"].append("*")),
        ("list on identity Secrets", lambda o: [
            r["verbs"].append("list")
            for role in one(o, "ClusterRole") for r in role["rules"] if "secrets" in r["resources"]
        ]),
        ("an unnamed get on Secrets in the release namespace", lambda o: one(o, "Role")[0]["rules"].append(
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}
        )),
        ("a caBundle in the template", lambda o: one(o, "MutatingWebhookConfiguration")[0]["webhooks"][0][
            "clientConfig"].update({"caBundle": ""})),
        ("a writable root filesystem", lambda o: one(o, "Deployment")[0]["spec"]["template"]["spec"][
            "containers"][0]["securityContext"].update({"readOnlyRootFilesystem": False})),
        ("sideEffects None on the injector", lambda o: one(o, "MutatingWebhookConfiguration")[0]["webhooks"][0]
            .update({"sideEffects": "None"})),
        ("a renamed Service", lambda o: one(o, "Service")[0]["metadata"].update({"name": "other"})),
        ("a connection limit set without its value", lambda o: one(o, "Deployment")[0]["spec"]["template"][
            "spec"]["containers"][0]["env"].append({"name": "MESHD_XDS_MAX_CONNECTIONS", "value": "10"})),
        ("a pod without anti-affinity", lambda o: one(o, "Deployment")[0]["spec"]["template"]["spec"][
            "affinity"]["podAntiAffinity"].clear()),
    ]
    for what, change in cases:
        f = Findings("self-test")
        check_render(f, default_values, broken(change))
        expect_failure(f"property check of {what}", f.problems)

    # A budget that keeps every replica, as if the template's guard were gone.
    values = copy.deepcopy(default_values)
    values["podDisruptionBudget"]["minAvailable"] = values["replicaCount"]
    f = Findings("self-test")
    check_render(f, values, broken(lambda o: one(o, "PodDisruptionBudget")[0]["spec"].update(
        {"minAvailable": values["replicaCount"]})))
    expect_failure("property check of a PodDisruptionBudget that keeps every replica", f.problems)

    # antiAffinity required, rendered as the default's preferred term.
    values = copy.deepcopy(default_values)
    values["antiAffinity"] = "required"
    f = Findings("self-test")
    check_render(f, values, broken(lambda o: None))
    expect_failure("property check of required anti-affinity rendered as preferred", f.problems)
    return problems


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: check_chart.py CHART_DIR", file=sys.stderr)
        return 2
    global CHART
    chart = Path(sys.argv[1])
    CHART = chart
    value_files = sorted((chart / "ci").glob("*-values.yaml"))
    if not value_files:
        print(f"no value sets in {chart / 'ci'} (files named *-values.yaml)", file=sys.stderr)
        return 1
    print(
        f"helm SDK {helm.helm_sdk_version()} (helm-c {helm.helm_c_version()}), "
        f"kubernetes-validate against {', '.join(KUBERNETES_VERSIONS)} (strict)"
    )
    known_variables = meshd_variables(chart)
    problems: list[str] = []
    if not known_variables:
        problems.append("no MESHD_* variables found in meshd/src: cannot check the chart's environment")
    total_objects = 0
    total_checks = 0
    defaults: tuple[dict[str, Any], list[dict[str, Any]]] | None = None
    for file in value_files:
        name = f"ci/{file.name}"
        values = yaml.safe_load(file.read_text()) or {}
        found = lint(chart, values)
        try:
            merged, objects = render(chart, values)
        except helm.HelmError as e:
            problems += [f"{name}: {p}" for p in found] + [f"{name}: render: {e}"]
            print(f"  FAIL {name}: does not render")
            continue
        found += validate(objects)
        found += unread_variables(objects, known_variables)
        f = Findings(name)
        check_render(f, merged, objects)
        found = [f"{name}: {p}" for p in found] + f.problems
        problems += found
        total_objects += len(objects)
        total_checks += f.checked
        status = "ok  " if not found else "FAIL"
        print(
            f"  {status} {name}: lint clean, {len(objects)} objects valid, "
            f"{f.checked - len(f.problems)}/{f.checked} properties hold"
            if not found
            else f"  {status} {name}: {len(found)} problems"
        )
        if file.name == "default-values.yaml":
            defaults = (merged, objects)
    if defaults is None:
        problems.append("ci/default-values.yaml is missing: the self-tests need the default render")
    else:
        problems += self_tests(chart, *defaults)
    for p in problems:
        print(f"ERROR {p}")
    print(
        f"chart checks: {len(value_files)} value sets, {total_objects} objects, "
        f"{total_checks} properties, {len(problems)} problems"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
