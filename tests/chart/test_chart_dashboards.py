"""Grafana dashboards: well-formed dashboard JSON, queries promtool can parse, and metric names that
the trainer's and operator's registries really expose, both ways."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from tests.chart.conftest import CHART, Manifest, only

from kubetune import contract
from kubetune.metrics import OperatorMetrics
from kubetune_trainer.metrics import TrainerMetrics
from kubetune_trainer.ranks import RankMemory

DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
METRIC = re.compile(r"\bkubetune_[a-z0-9_]+")
SELECTOR = re.compile(r"\b(kubetune_[a-z0-9_]+)\{([^}]*)\}")
GROUPING = re.compile(r"\b(?:by|without) ?\(([^)]*)\)")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Labels Prometheus adds to every scraped series, and the PodMonitor's finetunejob label.
TARGET_LABELS = {"namespace", "pod", "instance", "job", "container", "endpoint", "service", "finetunejob"}
# Values the dashboards' template variables take when a query is checked outside Grafana.
VARIABLES = {"$namespace": "ml", "$finetunejob": "llama"}


def load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def queries(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]


def exposed(registry: CollectorRegistry) -> dict[str, set[str]]:
    """Sample name -> label names, as /metrics shows them (counters with _total, histograms' series)."""
    samples: dict[str, set[str]] = {}
    for family in registry.collect():
        if not family.samples:  # declared, no value yet: exposed under its family name
            samples.setdefault(family.name + ("_total" if family.type == "counter" else ""), set())
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(set(sample.labels) - {"le"})
    return {name: labels for name, labels in samples.items() if not name.endswith("_created")}


def registries() -> dict[str, set[str]]:
    operator = OperatorMetrics(lambda: ["Running"])
    operator.reconciles.labels(outcome="ok").inc()
    operator.api_errors.labels(code="500").inc()
    operator.estimate_accuracy.labels(method="lora").observe(1.02)
    trainer = TrainerMetrics()
    trainer.set_ranks([RankMemory(0, 1, 2, 3)])
    return exposed(trainer.registry) | exposed(operator.registry)


def rule_exprs(monitored_objects: list[Manifest]) -> list[str]:
    return [r["expr"] for g in only(monitored_objects, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]


def contract_name(sample: str) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        base = sample.removesuffix(suffix)
        if base != sample and base in contract.OPERATOR_METRICS + contract.TRAINER_METRICS:
            return base
    return sample


@pytest.mark.parametrize("path", DASHBOARDS, ids=[f"{p.stem} dashboard is well-formed" for p in DASHBOARDS])
def test_dashboard_is_well_formed_grafana_json(path: Path) -> None:
    dashboard = load(path)
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] and dashboard["title"].startswith("kubetune / ")
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        columns = range(grid["x"], grid["x"] + grid["w"])
        area = {(x, y) for x in columns for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not area & cells, f"panel {panel['title']!r} overlaps another"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["description"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]


def test_dashboard_uids_are_unique() -> None:
    uids = [load(p)["uid"] for p in DASHBOARDS]
    assert len(uids) == len(set(uids)) == 2


def test_every_finetunejob_panel_shows_one_job() -> None:
    dashboard = load(CHART / "dashboards" / "finetunejob.json")
    assert {"namespace", "finetunejob"} <= {v["name"] for v in dashboard["templating"]["list"]}
    for expr in queries(dashboard):
        for _, matchers in SELECTOR.findall(expr):
            assert 'namespace="$namespace"' in matchers and 'finetunejob="$finetunejob"' in matchers, expr


def test_dashboard_queries_parse_as_promql(promtool: str, tmp_path: Path) -> None:
    exprs = [expr for path in DASHBOARDS for expr in queries(load(path))]
    for name, value in VARIABLES.items():
        exprs = [expr.replace(name, value) for expr in exprs]
    rules = [{"record": f"kubetune:dashboard_query:{i}", "expr": expr} for i, expr in enumerate(exprs)]
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_metric_on_a_dashboard_or_in_an_alert_is_exposed(monitored_objects: list[Manifest]) -> None:
    available = registries()
    used = {m for p in DASHBOARDS for e in queries(load(p)) for m in METRIC.findall(e)}
    used |= {m for e in rule_exprs(monitored_objects) for m in METRIC.findall(e)}
    assert used - set(available) == set()


def test_every_label_a_query_filters_on_exists(monitored_objects: list[Manifest]) -> None:
    available = registries()
    exprs = [e for p in DASHBOARDS for e in queries(load(p))] + rule_exprs(monitored_objects)
    for expr in exprs:
        for metric, matchers in SELECTOR.findall(expr):
            labels = {m.split("=")[0].strip().rstrip("!~") for m in matchers.split(",") if m.strip()}
            assert labels <= available[metric] | TARGET_LABELS, expr


def test_every_label_a_query_groups_by_exists(monitored_objects: list[Manifest]) -> None:
    available = registries()
    exprs = [e for p in DASHBOARDS for e in queries(load(p))] + rule_exprs(monitored_objects)
    for expr in exprs:
        labels = set().union(TARGET_LABELS, *(available[metric] | ({"le"} if metric.endswith("_bucket") else set())
                                              for metric in METRIC.findall(expr)))
        for grouping in GROUPING.findall(expr):
            assert {label.strip() for label in grouping.split(",") if label.strip()} <= labels, expr


def test_every_contracted_metric_is_exposed_and_on_a_dashboard() -> None:
    exposed_names = {contract_name(name) for name in registries()}
    on_dashboards = {contract_name(m) for p in DASHBOARDS for e in queries(load(p)) for m in METRIC.findall(e)}
    contracted = set(contract.TRAINER_METRICS + contract.OPERATOR_METRICS)
    assert contracted - exposed_names == set()
    assert contracted - on_dashboards == set()
