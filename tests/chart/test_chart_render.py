"""The chart rendered by the real Helm engine: lint, Kubernetes schemas, values schema, and the
contracts with the operator (settings, RBAC for what it creates) and the trainer (pod labels,
metrics port)."""

from __future__ import annotations

import json
import tomllib
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from tests.chart.conftest import (
    CHART,
    INSTALL_MANIFEST,
    KUBE_VERSION,
    REPO,
    VALUES_MATRIX,
    Manifest,
    Render,
    allowed,
    find,
    only,
    render_chart,
)

from kubetune import __version__, contract, settings
from kubetune.cli import build_parser
from kubetune.manifest_files import load_job
from kubetune.manifests import Owner, build_configmap, build_job, build_trainer_rbac
from kubetune.presets import effective_spec

# Custom resources the chart renders; kubernetes-validate has no schema for them (their CRDs'
# schemas live with the Prometheus Operator and kopf).
CUSTOM_KINDS = {"ClusterKopfPeering", "KopfPeering", "ServiceMonitor", "PodMonitor", "PrometheusRule"}
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
MATRIX = pytest.mark.parametrize("values", list(VALUES_MATRIX.values()), ids=list(VALUES_MATRIX))


def deployment(objects: list[Manifest]) -> Manifest:
    return only(objects, "Deployment")


def operator_container(objects: list[Manifest]) -> Manifest:
    containers = deployment(objects)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def env_of(objects: list[Manifest]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in operator_container(objects)["env"]}


# ----------------------------------------------------------------------------- chart metadata


def test_chart_app_version_is_the_package_version() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == pyproject["project"]["version"] == __version__


@MATRIX
def test_helm_lint_strict_is_clean(values: dict[str, Any]) -> None:
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == []


@MATRIX
def test_every_built_in_object_passes_kubernetes_validate_strict(render: Render, values: dict[str, Any]) -> None:
    objects = render(values)
    assert objects
    for obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    assert {o["kind"] for o in objects} - CUSTOM_KINDS, "nothing was validated"


@MATRIX
def test_every_namespaced_object_names_its_namespace(render: Render, values: dict[str, Any]) -> None:
    cluster_scoped = {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering",
                      "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    missing = [
        f"{o['kind']}/{o['metadata']['name']}"
        for o in render(values)
        if o["kind"] not in cluster_scoped and not o["metadata"].get("namespace")
    ]
    assert missing == []


# ----------------------------------------------------------------------------- values schema


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"replicaCount": 2}, "replicaCount"),
        ({"operator": {"watchNamespace": ["a"]}}, "watchNamespace"),
        ({"prometheus": {"alerts": {"trainingStaledMinutes": 5}}}, "trainingStaledMinutes"),
        ({"grafana": {"dashboards": {"lable": "x"}}}, "lable"),
        ({"image": {"repository": "r", "tags": "1"}}, "tags"),
    ],
    ids=[
        "a key the chart does not have at the top level is refused",
        "a misspelt operator setting is refused",
        "a misspelt alert threshold is refused",
        "a misspelt dashboard setting is refused",
        "a misspelt image field is refused",
    ],
)
def test_values_schema_rejects_a_typo(values: dict[str, Any], key: str) -> None:
    with pytest.raises(helm.HelmError, match=key):
        render_chart(values)


@pytest.mark.parametrize(
    "values",
    [
        {"operator": {"safetyMargin": 1.5}},
        {"operator": {"logFormat": "yaml"}},
        {"operator": {"watchNamespaces": ["Team_A"]}},
        {"image": {"digest": "latest"}},
    ],
    ids=[
        "a safety margin above 0.9 is refused",
        "a log format other than json or text is refused",
        "a namespace that is not a DNS label is refused",
        "a digest that is not sha256 is refused",
    ],
)
def test_values_schema_rejects_a_bad_value(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmError):
        render_chart(values)


def _object_schemas(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(node, dict):
        return []
    found = [(path, node)] if "properties" in node else []
    for key, child in node.get("properties", {}).items():
        found += _object_schemas(child, f"{path}.{key}")
    found += _object_schemas(node.get("items"), f"{path}[]")
    return found


def test_values_schema_forbids_unknown_keys_in_every_object() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    objects = _object_schemas(schema)
    assert len(objects) > 10
    assert [path for path, node in objects if node.get("additionalProperties") is not False] == []


def _leaf_paths(values: dict[str, Any], schema: dict[str, Any], path: str = "") -> list[tuple[str, Any]]:
    found = []
    for key, value in values.items():
        child = schema.get("properties", {}).get(key, {})
        found.append((f"{path}.{key}", child))
        if isinstance(value, dict) and "properties" in child:
            found += _leaf_paths(value, child, f"{path}.{key}")
    return found


def test_every_default_value_is_described_in_the_schema() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert [path for path, node in _leaf_paths(values, schema) if not node.get("description")] == []


# ------------------------------------------------------------------------- operator deployment


def test_the_operator_gets_every_setting_it_reads(default_objects: list[Manifest]) -> None:
    read = {getattr(settings, name) for name in dir(settings) if name.startswith("ENV_")}
    assert read <= set(env_of(default_objects))


@pytest.mark.parametrize(
    ("values", "env", "expected"),
    [
        ({}, settings.ENV_WATCH_NAMESPACES, ""),
        ({"operator": {"watchNamespaces": ["a", "b"]}}, settings.ENV_WATCH_NAMESPACES, "a,b"),
        ({"operator": {"safetyMargin": 0.25}}, settings.ENV_SAFETY_MARGIN, "0.25"),
        ({"operator": {"replanIntervalSeconds": 15}}, settings.ENV_REPLAN_INTERVAL_SECONDS, "15"),
        ({"operator": {"trainerStatusIntervalSeconds": 7}}, settings.ENV_TRAINER_STATUS_INTERVAL_SECONDS, "7"),
        ({"operator": {"metricsPort": 9100}}, settings.ENV_OPERATOR_METRICS_PORT, "9100"),
        ({"operator": {"healthPort": 9101}}, settings.ENV_HEALTH_PORT, "9101"),
        ({"operator": {"peeringName": "ml"}}, settings.ENV_PEERING_NAME, "ml"),
        ({"operator": {"logFormat": "text"}}, settings.ENV_LOG_FORMAT, "text"),
        ({}, settings.ENV_TRAINER_IMAGE, f"ghcr.io/kubetune/trainer:{__version__}"),
        ({"trainerImage": {"tag": "0.2.0-cu124"}}, settings.ENV_TRAINER_IMAGE, "ghcr.io/kubetune/trainer:0.2.0-cu124"),
        (
            {"trainerImage": {"tag": "x", "digest": "sha256:" + "c" * 64}},
            settings.ENV_TRAINER_IMAGE,
            "ghcr.io/kubetune/trainer@sha256:" + "c" * 64,
        ),
    ],
    ids=[
        "no watched namespaces means cluster-wide",
        "watched namespaces are comma-separated",
        "the safety margin is passed through",
        "the re-plan interval is passed through",
        "the trainer status interval is passed through",
        "the metrics port is passed through",
        "the health port is passed through",
        "the peering name is passed through",
        "the log format is passed through",
        "the trainer image defaults to the app version, as the operator's own default does",
        "the trainer image tag can be set",
        "a trainer image digest wins over its tag",
    ],
)
def test_operator_settings_reach_the_operator(render: Render, values: dict[str, Any], env: str, expected: str) -> None:
    assert env_of(render(values))[env] == expected


GROWING = {
    "capacity": {"mode": "autoscale", "nodeGroups": [{"name": "a100", "gpuProduct": "NVIDIA-A100-SXM4-80GB",
                                                       "gpusPerNode": 8, "maxNodes": 2,
                                                       "nodeSelector": {"cloud.google.com/gke-nodepool": "a100"}}]},
    "gpuDiscovery": {"labelProducts": [{"label": "pool=big", "memoryGiB": 94}]},
    "pricing": {"gpuHour": {"NVIDIA-A100-SXM4-80GB": 2.5}},
}


def test_capacity_discovery_and_prices_reach_the_operator_as_it_reads_them(render: Render) -> None:
    loaded = settings.load_settings(env_of(render(GROWING)))
    assert loaded.capacity_mode == "autoscale" and loaded.node_groups[0].max_nodes == 2
    assert loaded.gpu_label_products[0].memory_gib == 94.0
    assert loaded.gpu_prices == {"NVIDIA-A100-SXM4-80GB": 2.5}
    defaults = settings.load_settings(env_of(render({})))
    assert (defaults.capacity_mode, defaults.node_groups, defaults.gpu_prices) == ("fixed", (), {})


@pytest.mark.parametrize(("values", "reads"), [({}, False), (GROWING, True)],
                         ids=["fixed capacity reads no NodePools", "autoscale may list Karpenter's NodePools"])
def test_the_operator_may_read_nodepools_only_in_autoscale_mode(render: Render, values: dict[str, Any],
                                                                 reads: bool) -> None:
    role = next(o for o in render(values) if o["kind"] == "ClusterRole" and o["metadata"]["name"] == "kubetune")
    assert any("karpenter.sh" in rule.get("apiGroups", []) for rule in role["rules"]) == reads


def test_the_chart_default_trainer_image_is_the_operator_default(default_objects: list[Manifest]) -> None:
    assert env_of(default_objects)[settings.ENV_TRAINER_IMAGE] == settings.DEFAULT_TRAINER_IMAGE


def test_the_operator_runs_as_a_restricted_non_root_pod(default_objects: list[Manifest]) -> None:
    pod = deployment(default_objects)["spec"]["template"]["spec"]
    container = operator_container(default_objects)
    security = container["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] > 0
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["args"] == ["operator"]
    assert container["resources"]["limits"] and container["resources"]["requests"]


def test_verbose_turns_on_the_operators_verbose_flag(render: Render) -> None:
    args = operator_container(render({"operator": {"verbose": True}}))["args"]
    assert args == ["operator", "--verbose"]
    assert build_parser().parse_args(args).verbose  # a flag the operator command really has


def test_probes_and_ports_follow_the_configured_ports(render: Render) -> None:
    objects = render({"operator": {"metricsPort": 9100, "healthPort": 9101}})
    container = operator_container(objects)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 9100, "health": 9101}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    service = only(objects, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"


@MATRIX
def test_selectors_select_the_operator_pods(render: Render, values: dict[str, Any]) -> None:
    objects = render(values)
    pod_labels = deployment(objects)["spec"]["template"]["metadata"]["labels"]
    assert pod_labels[contract.LABEL_APP_NAME] == contract.OPERATOR_APP_NAME
    selectors = [deployment(objects)["spec"]["selector"]["matchLabels"], only(objects, "Service")["spec"]["selector"]]
    selectors += [o["spec"]["selector"]["matchLabels"] for o in find(objects, "PodDisruptionBudget")]
    selectors += [o["spec"]["podSelector"]["matchLabels"] for o in find(objects, "NetworkPolicy")]
    for selector in selectors:
        assert selector.items() <= pod_labels.items()


def test_the_network_policy_opens_only_named_ports_the_pod_has(render: Render) -> None:
    objects = render(VALUES_MATRIX["namespaced operator with monitoring and a network policy"])
    policy = only(objects, "NetworkPolicy")
    named = {p["name"] for p in operator_container(objects)["ports"]}
    ingress_ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert ingress_ports == named
    api_rule = policy["spec"]["egress"][1]
    assert [p["port"] for p in api_rule["ports"]] == [443, 6443]
    assert [t["ipBlock"]["cidr"] for t in api_rule["to"]] == ["10.96.0.1/32", "192.168.0.0/24"]


# ------------------------------------------------------------------------------------- RBAC


def _group(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def _plural(kind: str) -> str:
    return {"ServiceAccount": "serviceaccounts", "Role": "roles", "RoleBinding": "rolebindings"}.get(
        kind, kind.lower() + "s"
    )


def _objects_the_operator_creates(namespace: str) -> list[Manifest]:
    job = load_job(str(REPO / "manifests" / "examples" / "cpu-tiny-smollm2.yaml"))
    owner = Owner(job.metadata["name"] if isinstance(job.metadata, dict) else job.metadata.name, namespace, "uid-1")
    spec = effective_spec(job.spec)
    return [
        build_job(owner, spec, 1, image="trainer:1", status_interval_seconds=30, node_affinity=None),
        build_configmap(owner, spec),
        *build_trainer_rbac(owner),
    ]


RBAC_MODES = pytest.mark.parametrize(
    ("values", "namespace"),
    [({}, "research"), ({"operator": {"watchNamespaces": ["team-a", "team-b"]}}, "team-b")],
    ids=["cluster-wide operator in any namespace", "namespaced operator in a watched namespace"],
)


@RBAC_MODES
def test_the_operator_may_create_and_read_every_object_it_builds(
    render: Render, values: dict[str, Any], namespace: str
) -> None:
    objects = render(values)
    missing = [
        f"{verb} {child['kind']}/{child['metadata']['name']}"
        for child in _objects_the_operator_creates(namespace)
        for verb in ("create", "get")
        if not allowed(
            objects,
            verb,
            _group(child["apiVersion"]),
            _plural(child["kind"]),
            namespace,
            name=child["metadata"]["name"],
        )
    ]
    assert missing == []


@RBAC_MODES
def test_the_operator_holds_every_permission_it_grants_the_trainer(
    render: Render, values: dict[str, Any], namespace: str
) -> None:
    objects = render(values)
    trainer_role = only(build_trainer_rbac(Owner("tune", namespace, "uid-1")), "Role")
    for rule in trainer_role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert allowed(objects, verb, group, resource, namespace), (verb, resource)


@RBAC_MODES
@pytest.mark.parametrize(
    "permission",
    [
        ("watch", "kubetune.io", "finetunejobs"),
        ("patch", "kubetune.io", "finetunejobs"),
        ("patch", "kubetune.io", "finetunejobs/status"),
        ("watch", "batch", "jobs"),
        ("delete", "batch", "jobs"),
        ("delete", "kubetune.io", "finetunejobs"),
        ("create", "", "services"),
        ("get", "", "persistentvolumeclaims"),
        ("watch", "", "pods"),
        ("watch", "", "nodes"),
        ("create", "", "events"),
        ("create", "events.k8s.io", "events"),
        ("watch", "apiextensions.k8s.io", "customresourcedefinitions"),
    ],
    ids=[
        "kopf watches FineTuneJobs",
        "kopf patches finalizers and progress annotations",
        "the operator writes status",
        "the operator follows its Jobs",
        "the operator deletes a Job to retry",
        "the operator deletes a FineTuneJob whose TTL after finishing has passed",
        "the operator gives a multi-node gang its headless Service",
        "the operator reads the output PVC's access modes",
        "the operator follows trainer pods and GPU use",
        "the operator reads GPU capacity from nodes",
        "the operator posts core events",
        "the operator posts events.k8s.io events",
        "kopf follows CRDs",
    ],
)
def test_the_operator_may_do_its_work(
    render: Render, values: dict[str, Any], namespace: str, permission: tuple[str, str, str]
) -> None:
    verb, group, resource = permission
    assert allowed(render(values), verb, group, resource, namespace)


@pytest.mark.parametrize(
    ("verb", "group", "resource", "name"),
    [
        ("get", "", "secrets", ""),
        ("list", "", "secrets", ""),
        ("create", "", "pods", ""),
        ("delete", "", "persistentvolumeclaims", ""),
        ("patch", "rbac.authorization.k8s.io", "roles", "admin"),
        ("patch", "", "serviceaccounts", "default"),
        ("create", "batch", "jobs", ""),
        ("delete", "", "configmaps", ""),
        ("patch", "batch", "jobs", ""),
        ("get", "kubetune.io", "finetunejobs/status", ""),
    ],
    ids=[
        "it cannot read Secrets (HF tokens stay a secretKeyRef)",
        "it cannot list Secrets",
        "it cannot create bare pods",
        "it never deletes a PersistentVolumeClaim (the output volume outlives the job)",
        "it cannot change other Roles",
        "it cannot change other ServiceAccounts",
        "a namespaced operator cannot create Jobs outside its namespaces",
        "it never deletes a ConfigMap (the garbage collector does)",
        "it never changes a Job",
        "it writes the status without reading it",
    ],
)
def test_the_operator_may_not_do_more(render: Render, verb: str, group: str, resource: str, name: str) -> None:
    objects = render({"operator": {"watchNamespaces": ["team-a"]}})
    namespace = "elsewhere" if resource == "jobs" else "team-a"
    assert not allowed(objects, verb, group, resource, namespace, name=name)


@MATRIX
def test_no_rule_uses_a_wildcard(render: Render, values: dict[str, Any]) -> None:
    for role in find(render(values), "ClusterRole") + find(render(values), "Role"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]


def test_kopf_peering_is_cluster_wide_or_per_watched_namespace(render: Render) -> None:
    cluster = render({"operator": {"peeringName": "ml"}})
    peering = only(cluster, "ClusterKopfPeering", "ml")
    assert peering["apiVersion"] == "kopf.dev/v1"
    assert "post-install" in peering["metadata"]["annotations"]["helm.sh/hook"]
    assert allowed(cluster, "patch", "kopf.dev", "clusterkopfpeerings", "any")
    namespaced = render({"operator": {"watchNamespaces": ["team-a", "team-b"]}})
    assert not find(namespaced, "ClusterKopfPeering")
    assert {p["metadata"]["namespace"] for p in find(namespaced, "KopfPeering", "kubetune")} == {"team-a", "team-b"}
    assert allowed(namespaced, "patch", "kopf.dev", "kopfpeerings", "team-b")
    assert not allowed(namespaced, "patch", "kopf.dev", "clusterkopfpeerings", "")


# ------------------------------------------------------------------------------------- CRDs


def test_the_chart_installs_the_generated_crd_and_keeps_it(default_objects: list[Manifest]) -> None:
    generated = yaml.safe_load((REPO / "crds" / "finetunejobs.kubetune.io.yaml").read_text())
    crd = only(default_objects, "CustomResourceDefinition", generated["metadata"]["name"])
    assert crd["spec"] == generated["spec"]
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    peering_crds = {c["metadata"]["name"] for c in find(default_objects, "CustomResourceDefinition")} - {
        generated["metadata"]["name"]
    }
    assert peering_crds == {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}


@pytest.mark.parametrize(
    ("values", "crds", "kept"),
    [
        ({"crds": {"install": False}}, 0, 0),
        ({"crds": {"keep": False}}, 3, 0),
        ({}, 3, 3),
    ],
    ids=[
        "crds.install=false installs no CRD",
        "crds.keep=false lets helm uninstall delete them",
        "by default all three CRDs are installed and kept",
    ],
)
def test_crd_switches(render: Render, values: dict[str, Any], crds: int, kept: int) -> None:
    found = find(render(values), "CustomResourceDefinition")
    keep = [c for c in found if c["metadata"].get("annotations", {}).get("helm.sh/resource-policy") == "keep"]
    assert (len(found), len(keep)) == (crds, kept)


# ------------------------------------------------------------------------------- monitoring


def test_monitoring_objects_only_when_prometheus_is_enabled(
    default_objects: list[Manifest], monitored_objects: list[Manifest]
) -> None:
    assert {o["kind"] for o in default_objects} & MONITORING_KINDS == set()
    assert {o["kind"] for o in monitored_objects} >= MONITORING_KINDS


def test_the_pod_monitor_scrapes_the_pods_the_operator_creates(monitored_objects: list[Manifest]) -> None:
    monitor = only(monitored_objects, "PodMonitor")
    job = _objects_the_operator_creates("research")[0]
    pod = job["spec"]["template"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    port_names = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] in port_names
    # Prometheus exposes pod label "a.b/c-d" as __meta_kubernetes_pod_label_a_b_c_d.
    meta_label = "__meta_kubernetes_pod_label_" + "".join(
        ch if ch.isalnum() else "_" for ch in contract.LABEL_FINETUNEJOB
    )
    relabel = endpoint["relabelings"][0]
    assert relabel["sourceLabels"] == [meta_label] and relabel["targetLabel"] == "finetunejob"
    job_label = job["metadata"]["labels"][contract.LABEL_FINETUNEJOB]
    assert pod["metadata"]["labels"][contract.LABEL_FINETUNEJOB] == job_label
    assert monitor["spec"]["namespaceSelector"] == {"any": True}


def test_the_pod_monitor_follows_the_watched_namespaces(render: Render) -> None:
    objects = render({"prometheus": {"enabled": True}, "operator": {"watchNamespaces": ["team-a"]}})
    assert only(objects, "PodMonitor")["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}


def test_the_service_monitor_scrapes_the_operator_service(monitored_objects: list[Manifest]) -> None:
    monitor = only(monitored_objects, "ServiceMonitor")
    service = only(monitored_objects, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]


def test_the_operator_down_alert_watches_the_service_monitor_job(monitored_objects: list[Manifest]) -> None:
    rule = only(monitored_objects, "PrometheusRule")
    exprs = {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}
    # The Prometheus Operator names a ServiceMonitor target's job after its Service.
    assert f'job="{only(monitored_objects, "Service")["metadata"]["name"]}"' in exprs["OperatorDown"]


def test_dashboards_ship_as_labelled_config_maps(render: Render) -> None:
    objects = render({"grafana": {"dashboards": {"label": "grafana_dashboard", "labelValue": "yes"}}})
    maps = [m for m in find(objects, "ConfigMap") if m["metadata"]["labels"].get("grafana_dashboard") == "yes"]
    shipped = {key: json.loads(text) for m in maps for key, text in m["data"].items()}
    on_disk = {f"kubetune-{p.name}": json.loads(p.read_text()) for p in (CHART / "dashboards").glob("*.json")}
    assert shipped == on_disk and len(on_disk) == 2


def test_notes_say_what_was_installed_and_point_at_a_real_example() -> None:
    notes = render_chart({"prometheus": {"enabled": True}})["kubetune/templates/NOTES.txt"]
    examples = [word for word in notes.split() if word.startswith("manifests/examples/")]
    assert examples and all((REPO / path).is_file() for path in examples)
    for expected in ("PrometheusRule", "Grafana dashboards", "rollout status"):
        assert expected in notes


def test_install_manifest_is_the_chart_rendered_with_default_values() -> None:
    assert (REPO / "manifests" / "install.yaml").read_text() == INSTALL_MANIFEST.install_manifest(), (
        "manifests/install.yaml drifted from the chart: run scripts/render-install-manifest.py --write"
    )
