"""docs/operator.md's RBAC table is the chart's: derived here from the rendered chart (default values, the
cluster-wide ClusterRole bound to the operator's ServiceAccount), so a change to the chart's RBAC fails this test
until the doc is regenerated (the failure prints the table to paste)."""

from __future__ import annotations

from pathlib import Path

from .conftest import REPO, Manifest, only

OPERATOR_DOC = REPO / "docs" / "operator.md"
TABLE_START = "<!-- rbac-table: generated from the chart"
TABLE_END = "<!-- /rbac-table -->"


def rbac_table(objects: list[Manifest]) -> str:
    """The operator's rules, one Markdown row per rule, in the chart's order."""
    service_account = only(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    binding = next(b for b in objects if b["kind"] == "ClusterRoleBinding"
                   and any(s["name"] == service_account for s in b["subjects"]))
    role = only(objects, "ClusterRole", binding["roleRef"]["name"])
    rows = ["| API group | resources | verbs | names |", "| --- | --- | --- | --- |"]
    for rule in role["rules"]:
        groups = ", ".join(f"`{group}`" if group else '`""` (core)' for group in rule["apiGroups"])
        resources = ", ".join(f"`{resource}`" for resource in rule["resources"])
        names = ", ".join(f"`{name}`" for name in rule.get("resourceNames", ())) or "any"
        rows.append(f"| {groups} | {resources} | {', '.join(rule['verbs'])} | {names} |")
    return "\n".join(rows)


def documented_table(doc: Path) -> str:
    text = doc.read_text(encoding="utf-8")
    start = text.index("\n", text.index(TABLE_START)) + 1
    return text[start:text.index(TABLE_END)].strip()


def test_the_rbac_table_in_the_operator_doc_is_the_charts(default_objects: list[Manifest]) -> None:
    expected = rbac_table(default_objects)

    assert documented_table(OPERATOR_DOC) == expected, (
        f"docs/operator.md's RBAC table differs from the chart; replace it with:\n{expected}")
