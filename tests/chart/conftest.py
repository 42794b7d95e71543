"""Renders the chart with the real Helm engine (helm-python-sdk) and finds the external checkers.

`render(values)` gives the rendered objects; the matrix below is every non-default configuration
the tests render, lint and validate.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "kubetune"
# The newest Kubernetes whose schemas kubernetes-validate ships; the chart's kubeVersion allows it.
KUBE_VERSION = "1.37.0"
# Where CI (and a developer) install checkov: its own venv, because its pins would downgrade
# packages the project uses (packaging, networkx).
CHECKOV_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kubetune-tools" / "checkov"

Manifest = dict[str, Any]
Render = Callable[..., list[Manifest]]

# name -> values: every non-default configuration the chart must render, lint and validate.
VALUES_MATRIX: dict[str, dict[str, Any]] = {
    "default values": {},
    "namespaced operator with monitoring and a network policy": {
        "operator": {"watchNamespaces": ["team-a", "team-b"], "replicas": 2, "logFormat": "text"},
        "prometheus": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "networkPolicy": {
            "enabled": True,
            "metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
            "apiServerCIDRs": ["10.96.0.1/32", "192.168.0.0/24"],
        },
    },
    "cluster-wide with monitoring, alert labels and dashboards elsewhere": {
        "prometheus": {"enabled": True, "alerts": {"labels": {"team": "ml-platform"}, "trainingStalledMinutes": 45}},
        "grafana": {"dashboards": {"namespace": "grafana", "annotations": {"grafana_folder": "kubetune"}}},
    },
    "CRDs, RBAC, service account, PDB and dashboards managed elsewhere, images pinned by digest": {
        "crds": {"install": False},
        "rbac": {"create": False},
        "serviceAccount": {"create": False, "name": "platform-operator"},
        "podDisruptionBudget": {"enabled": False},
        "grafana": {"dashboards": {"enabled": False}},
        "image": {"digest": "sha256:" + "a" * 64},
        "trainerImage": {"repository": "registry.example.com/ml/trainer", "digest": "sha256:" + "b" * 64},
    },
    "every pod-level knob set": {
        "fullnameOverride": "ftj-operator",
        "imagePullSecrets": ["regcred"],
        "crds": {"keep": False},
        "operator": {
            "extraEnv": [{"name": "KOPF_DEBUG", "value": "1"}],
            "podAnnotations": {"example.com/team": "ml"},
            "podLabels": {"team": "ml"},
            "priorityClassName": "system-cluster-critical",
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}
                        ]
                    }
                }
            },
        },
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/kubetune"}},
        "podDisruptionBudget": {"maxUnavailable": "50%"},
    },
}


def _script(file_name: str) -> ModuleType:
    """A module of scripts/ (their names have dashes, so they cannot be imported by name)."""
    module_name = file_name.removesuffix(".py").replace("-", "_")
    spec = importlib.util.spec_from_file_location(module_name, REPO / "scripts" / file_name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The chart is rendered exactly as manifests/install.yaml is.
INSTALL_MANIFEST = _script("render-install-manifest.py")
RELEASE: str = INSTALL_MANIFEST.RELEASE
NAMESPACE: str = INSTALL_MANIFEST.NAMESPACE
render_chart: Callable[..., dict[str, str]] = INSTALL_MANIFEST.render_chart
manifests: Callable[[dict[str, str]], list[Manifest]] = INSTALL_MANIFEST.manifests


def find(objects: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def only(objects: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _rules_in(objects: list[Manifest], service_account: str, namespace: str) -> list[Manifest]:
    """Every rule granted to the ServiceAccount that applies in `namespace`."""
    rules: list[Manifest] = []
    for binding in find(objects, "ClusterRoleBinding") + find(objects, "RoleBinding"):
        subjects = {(s["name"], s["namespace"]) for s in binding["subjects"]}
        if (service_account, NAMESPACE) not in subjects:
            continue
        if binding["kind"] == "RoleBinding" and binding["metadata"]["namespace"] != namespace:
            continue
        role_kind = binding["roleRef"]["kind"]
        role = only(
            [r for r in find(objects, role_kind) if r["metadata"].get("namespace", namespace) == namespace],
            role_kind,
            binding["roleRef"]["name"],
        )
        rules += role["rules"]
    return rules


def allowed(objects: list[Manifest], verb: str, group: str, resource: str, namespace: str, *, name: str = "") -> bool:
    """Whether the rendered RBAC lets the operator's ServiceAccount do `verb` there ("" is cluster scope)."""
    service_account = only(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    return any(
        group in rule["apiGroups"]
        and resource in rule["resources"]
        and verb in rule["verbs"]
        and (not rule.get("resourceNames") or name in rule["resourceNames"])
        for rule in _rules_in(objects, service_account, namespace)
    )


@pytest.fixture(scope="session")
def render() -> Render:
    """Render once per distinct values (many tests share a configuration)."""
    cache: dict[str, list[Manifest]] = {}

    def rendered(values: dict[str, Any] | None = None) -> list[Manifest]:
        key = json.dumps(values or {}, sort_keys=True)
        if key not in cache:
            cache[key] = manifests(render_chart(values))
        return cache[key]

    return rendered


@pytest.fixture(scope="session")
def default_objects() -> list[Manifest]:
    return manifests(render_chart())


@pytest.fixture(scope="session")
def monitored_objects() -> list[Manifest]:
    return manifests(render_chart({"prometheus": {"enabled": True}}))


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus; scripts/setup.sh dev does it)")
    return path


@pytest.fixture(scope="session")
def checkov() -> str:
    path = os.environ.get("KUBETUNE_CHECKOV") or shutil.which("checkov")
    venv_checkov = CHECKOV_VENV / "bin" / "checkov"
    if path is None and venv_checkov.exists():
        path = str(venv_checkov)
    if path is None:
        pytest.skip(
            f"checkov is not installed: python3 -m venv {CHECKOV_VENV} && "
            f"{CHECKOV_VENV}/bin/pip install checkov==3.3.30 (or set KUBETUNE_CHECKOV)"
        )
    return path
