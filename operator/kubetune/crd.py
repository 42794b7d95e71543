"""Generates the FineTuneJob CRD and docs/api.md from the pydantic models in api.py.

The schema is structural (no $ref, anyOf only for int-or-string, every object typed) so that a
real API server prunes, defaults and validates it. Rules the schema alone cannot say are CEL
`x-kubernetes-validations`, each the twin of a rule in validation.py with the same message.

`python -m kubetune.crd --write` regenerates the committed files; tests fail when they drift.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import yaml

from kubetune import api, contract

CRD_NAME = f"{api.PLURAL}.{api.GROUP}"
REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = REPO_ROOT / "crds" / f"{CRD_NAME}.yaml"
CHART_CRD_FILE = REPO_ROOT / "helm" / "kubetune" / "files" / "crd-finetunejobs.yaml"
API_DOC_FILE = REPO_ROOT / "docs" / "api.md"

# Fields a preset fills: the CRD must not default them, or the API server's default would look
# like the user's choice and the preset could never apply.
NO_SCHEMA_DEFAULTS_UNDER = ("training",)
# Status is written by the operator and the trainer only; defaults there would invent values.
NO_DEFAULTS_IN_STATUS = ("status",)


# Keys of JSON Schema that a structural CRD schema does not take.
DROPPED_KEYS = ("title", "additionalProperties", "quantityPattern", "quantityMaxLength", "quantityMinimum",
                "quantityMaximum", "propertyNames", "$defs")

def _reserved_env_rule() -> str:
    """CEL: the variable's name is none that kubetune sets itself (contract.is_reserved_env_name)."""
    prefixes = " || ".join(f"self.name.startsWith('{prefix}')" for prefix in contract.RESERVED_ENV_PREFIXES)
    names = ", ".join(f"'{name}'" for name in contract.RESERVED_ENV_NAMES)
    return f"!({prefixes}) && !(self.name in [{names}])"


def _cel_string(text: str) -> str:
    """Text inside a single-quoted CEL string literal (a regex's backslashes doubled)."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


# CEL rules: (schema path inside spec, rule, message). Each mirrors a rule in validation.py.
CEL_RULES: list[tuple[tuple[str, ...], str, str]] = [
    (("model",), "has(self.name) != has(self.path)",
     "spec.model: set exactly one of name (a hub id) and path (a directory on a volume)"),
    (("dataset",), "[has(self.name), has(self.path), has(self.url)].filter(x, x).size() == 1",
     "spec.dataset: set exactly one of name (a hub id), path (on a volume) and url"),
    (("dataset",), "has(self.name) || !(has(self.config) || has(self.revision))",
     "spec.dataset: config and revision apply to hub datasets (name) only; remove them"),
    (("dataset",), "!(has(self.evalSplit) && has(self.evalFraction))",
     "spec.dataset.evalFraction: set evalSplit or evalFraction, not both"),
    (("method",), "self.type == 'qlora' ? has(self.quantization) : !has(self.quantization)",
     "spec.method.quantization: required for qlora (bits 4 or 8), and only for qlora"),
    (("method",), "self.type != 'full' || !has(self.lora)",
     "spec.method.lora: only for lora and qlora (type is full); remove it or change the type"),
    (("method", "quantization"), "self.bits == 4 || !has(self.type)",
     "spec.method.quantization.type: nf4/fp4 are 4-bit types; remove it for 8-bit"),
    (("resources",), "self.gpus > 0 || self.nodes == 1",
     "spec.resources.nodes: CPU-only jobs (gpus: 0) run on one node; set nodes to 1"),
    (("resources",), "self.gpus > 0 || !(has(self.gpuProduct) || has(self.minGpuMemoryGiB))",
     "spec.resources: gpuProduct and minGpuMemoryGiB have no meaning with gpus: 0; remove them or request GPUs"),
    (("resources", "tolerations", "[]"), "self.operator != 'Exists' || !has(self.value) || self.value == ''",
     "spec.resources.tolerations: value must be empty with operator Exists"),
    (("method", "lora", "targetModules"), "!('all-linear' in self) || self.size() == 1",
     "spec.method.lora.targetModules: all-linear already covers every linear layer; list it alone"),
    (("volumes",), "self.all(v, self.exists_one(w, w.mountPath == v.mountPath))",
     "spec.volumes: a mountPath is used twice; give each volume its own mountPath"),
    ((), "!has(self.training) || !has(self.training.evalSteps) || has(self.dataset.evalSplit) || "
         "has(self.dataset.evalFraction)",
     "spec.training.evalSteps: needs evaluation data: set spec.dataset.evalSplit or spec.dataset.evalFraction"),
    ((), "!has(self.evaluation) || !has(self.evaluation.metrics) || !('rouge' in self.evaluation.metrics) || "
         "has(self.dataset.evalSplit) || has(self.dataset.evalFraction)",
     "spec.evaluation.metrics: rouge needs evaluation data: set spec.dataset.evalSplit or spec.dataset.evalFraction"),
    ((), "!has(self.training) || !has(self.training.strategy) || self.training.strategy == 'auto' || "
         "(has(self.resources) ? self.resources.gpus * self.resources.nodes : 1) >= 2",
     "spec.training.strategy: ddp and fsdp need at least 2 GPUs in all (gpus x nodes); use auto"),
    ((), "!has(self.output) || !has(self.output.pushToHub) || has(self.hfTokenSecretRef)",
     "spec.output.pushToHub: needs spec.hfTokenSecretRef with a token that can write the repo"),
    ((), "!has(self.output) || !has(self.output.mergeAdapter) || !self.output.mergeAdapter || "
         "!has(self.method) || self.method.type != 'full'",
     "spec.output.mergeAdapter: full fine-tuning has no adapter to merge; remove it"),
    (("env", "[]"), _reserved_env_rule(), "spec.env: a name kubetune sets itself cannot be set here"),
    (("model",), "!has(self.revision) || !self.revision.contains('..')",
     "spec.model.revision: not a git ref: remove '..'"),
    (("dataset",), f"!has(self.url) || !self.url.matches('{_cel_string(api.CREDENTIAL_QUERY)}')",
     "spec.dataset.url: carries credentials (a token in the query); put the file on a volume or in a private hub "
     "dataset"),
    (("dataset",), "!has(self.revision) || !self.revision.contains('..')",
     "spec.dataset.revision: not a git ref: remove '..'"),
    (("resources",), f"!has(self.nodeSelector) || self.nodeSelector.all(k, k.matches('{_cel_string(api.LABEL_KEY)}'))",
     "spec.resources.nodeSelector: every key must be a Kubernetes label key ([prefix/]name)"),
    (("env", "[]"), "!(has(self.value) && has(self.valueFrom))", "spec.env: set value or valueFrom, not both"),
    (("env", "[]", "valueFrom"), "has(self.secretKeyRef) != has(self.configMapKeyRef)",
     "spec.env: valueFrom takes exactly one of secretKeyRef and configMapKeyRef"),
]


PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.name"},
    {"name": "Method", "type": "string", "jsonPath": ".spec.method.type"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Progress", "type": "string", "jsonPath": ".status.training.progress"},
    {"name": "Loss", "type": "number", "jsonPath": ".status.training.loss"},
    {"name": "VRAM", "type": "number", "jsonPath": ".status.estimate.perGpuGiB",
     "description": "Estimated peak GPU memory per GPU, GiB"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "GPUs", "type": "integer", "jsonPath": ".spec.resources.gpus", "priority": 1},
    {"name": "Node", "type": "string", "jsonPath": ".status.placement.nodes[0]", "priority": 1},
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
]


# ---------------------------------------------------------------- JSON Schema -> structural schema


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline every $ref (pydantic puts nested models in $defs)."""
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = _resolve(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        siblings = {k: _resolve(v, defs) for k, v in node.items() if k != "$ref"}
        return {**target, **siblings}
    return {key: _resolve(value, defs) for key, value in node.items()}


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """`X | None` -> X: an optional field is simply not required; users never write null."""
    options = [option for option in schema.get("anyOf", []) if option.get("type") != "null"]
    if "anyOf" not in schema or len(options) != 1:
        return schema
    merged = {**options[0], **{k: v for k, v in schema.items() if k != "anyOf"}}
    if merged.get("default", 0) is None:
        del merged["default"]
    return merged


def _int_or_string(schema: dict[str, Any]) -> dict[str, Any]:
    """A quantity: the integer branch range-checked, the string branch by apimachinery's grammar. The
    range of a string quantity is the validator's (the schema has no arithmetic on quantities)."""
    string_branch: dict[str, Any] = {"type": "string"}
    integer_branch: dict[str, Any] = {"type": "integer"}
    for source, branch, target in (("quantityPattern", string_branch, "pattern"),
                                   ("quantityMaxLength", string_branch, "maxLength"),
                                   ("quantityMinimum", integer_branch, "minimum"),
                                   ("quantityMaximum", integer_branch, "maximum")):
        if source in schema:
            branch[target] = schema[source]
    kept = {k: v for k, v in schema.items() if k in ("description", "x-kubernetes-int-or-string")}
    return {**kept, "anyOf": [integer_branch, string_branch]}


def _literal(schema: dict[str, Any]) -> dict[str, Any]:
    if "const" in schema:
        schema = {**schema, "enum": [schema.pop("const")]}
    if "enum" in schema and "type" not in schema:
        kinds = {type(value) for value in schema["enum"]}
        schema["type"] = "integer" if kinds == {int} else "string"
    return schema


def _exclusive_bounds(schema: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema 2020's numeric exclusive bounds -> OpenAPI 3.0's boolean form. The int64 bounds are left
    out: an integer field is an int64 already, and Helm's fromYaml would turn them into floats beyond it."""
    if schema.get("maximum") == api.INT64_MAX:
        del schema["maximum"]
    if schema.get("minimum") == -api.INT64_MAX - 1:
        del schema["minimum"]
    for exclusive, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(schema.get(exclusive), int | float) and not isinstance(schema.get(exclusive), bool):
            schema[inclusive] = schema.pop(exclusive)
            schema[exclusive] = True
    return schema


def structural(schema: dict[str, Any], path: tuple[str, ...] = ()) -> dict[str, Any]:
    """A pydantic JSON schema node (refs resolved) as a structural CRD schema node."""
    schema = _without_null(dict(schema))
    if schema.get("x-kubernetes-int-or-string"):
        return _int_or_string(schema)
    schema = _exclusive_bounds(_literal(schema))
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        schema.pop("additionalProperties", None)
        schema["type"] = "object"
    if any(part in (*NO_SCHEMA_DEFAULTS_UNDER, *NO_DEFAULTS_IN_STATUS) for part in path):
        schema.pop("default", None)
    if isinstance(schema.get("default"), dict | list) and not schema["default"]:
        schema.pop("default")
    if "patternProperties" in schema:  # a map with constrained keys: the keys are checked by a CEL rule
        (values,) = schema.pop("patternProperties").values()
        schema["additionalProperties"] = values
    if isinstance(schema.get("additionalProperties"), dict):
        schema["additionalProperties"] = structural(schema["additionalProperties"], path)
    elif "properties" in schema:
        schema["type"] = "object"
        schema["properties"] = {
            name: structural(child, (*path, name)) for name, child in schema["properties"].items()
        }
    if "items" in schema:
        schema["items"] = structural(schema["items"], path)
    for key in DROPPED_KEYS:
        if key != "additionalProperties" or not isinstance(schema.get(key), dict):
            schema.pop(key, None)
    return schema


def model_schema(model: type[api.BaseModel], path: tuple[str, ...] = ()) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    resolved = _resolve({k: v for k, v in raw.items() if k != "$defs"}, raw.get("$defs", {}))
    return structural(resolved, path)


def _default_empty_sections(model: type[api.BaseModel], schema: dict[str, Any]) -> None:
    """Sections with a default_factory (method, training, ...) default to {} so that the API server
    fills their nested defaults even when the user leaves the whole section out."""
    for name, field in model.model_fields.items():
        node = schema["properties"][field.alias or name]
        if field.default_factory is not None and node.get("type") == "object" and "properties" in node:
            node["default"] = {}


# ------------------------------------------------------------------------------------ CEL rules


def _node(schema: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    """The schema node at a path of property names; "[]" steps into a list's items."""
    for part in path:
        schema = schema["items"] if part == "[]" else schema["properties"][part]
    return schema


def _add_cel_rules(spec_schema: dict[str, Any]) -> None:
    for path, rule, message in CEL_RULES:
        node = _node(spec_schema, path)
        node.setdefault("x-kubernetes-validations", []).append({"rule": rule, "message": message})


def _field_unchanged(field: str) -> str:
    return (
        f"(has(self.spec.{field}) == has(oldSelf.spec.{field}) && "
        f"(!has(self.spec.{field}) || self.spec.{field} == oldSelf.spec.{field}))"
    )


def frozen_spec_rule(spec_schema: dict[str, Any]) -> dict[str, str]:
    """Transition rule: once a Job exists (status.jobName), only api.EDITABLE_AFTER_START may change.

    resources is compared only in the fields that size the job (api.FROZEN_RESOURCES); comparing
    its free-form affinity would also have an unbounded CEL cost, which the API server refuses.
    """
    frozen = [name for name in spec_schema["properties"]
              if name not in (*api.EDITABLE_AFTER_START, "resources")]
    clauses = [_field_unchanged(name) for name in frozen]
    clauses += [_field_unchanged(f"resources.{name}") for name in api.FROZEN_RESOURCES]
    started = "has(oldSelf.status) && has(oldSelf.status.jobName)"
    return {
        "rule": f"!({started}) || ({' && '.join(clauses)})",
        "message": f"spec is frozen once training started: only {', '.join(api.EDITABLE_AFTER_START)} and "
        "resources' placement hints may change; create a new FineTuneJob to train differently",
        "reason": "FieldValueForbidden",
    }


# ------------------------------------------------------------------------------------------ CRD


def crd_manifest() -> dict[str, Any]:
    spec_schema = model_schema(api.FineTuneJobSpec)
    _default_empty_sections(api.FineTuneJobSpec, spec_schema)
    _add_cel_rules(spec_schema)
    status_schema = model_schema(api.FineTuneJobStatus, NO_DEFAULTS_IN_STATUS)
    root = {
        "type": "object",
        "description": api.FineTuneJob.__doc__,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
        "x-kubernetes-validations": [frozen_spec_rule(spec_schema)],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/name": "kubetune", "app.kubernetes.io/part-of": "kubetune"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": list(api.CATEGORIES),
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": copy.deepcopy(PRINTER_COLUMNS),
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def crd_yaml() -> str:
    header = "# Generated by `python -m kubetune.crd --write` from operator/kubetune/api.py. Do not edit.\n"
    return header + yaml.safe_dump(crd_manifest(), sort_keys=False, width=120)


# ---------------------------------------------------------------------------------- docs/api.md


def _type_text(schema: dict[str, Any]) -> str:
    if schema.get("x-kubernetes-int-or-string"):
        return "quantity (int or string)"
    if "enum" in schema:
        return " \\| ".join(f"`{value}`" for value in schema["enum"])
    kind = schema.get("type", "object")
    if kind == "array":
        return f"list of {_type_text(schema.get('items', {}))}"
    if kind == "object" and "additionalProperties" in schema:
        return f"map of {_type_text(schema['additionalProperties'])}"
    return str(kind)


def _bounds_text(schema: dict[str, Any]) -> str:
    parts = []
    for key, symbol in (("minimum", ">="), ("maximum", "<=")):
        if key in schema:
            strict = schema.get("exclusive" + key[:1].upper() + key[1:]) is True
            parts.append(f"{symbol.rstrip('=') if strict else symbol} {schema[key]}")
    if "default" in schema:
        parts.append(f"default `{schema['default']}`")
    return ", ".join(parts)


def _doc_sections(title: str, schema: dict[str, Any], out: list[str]) -> None:
    properties = schema.get("properties", {})
    required = set(schema.get("required", []))
    out += [f"### `{title}`", "", schema.get("description", ""), "",
            "| field | type | notes | description |", "| --- | --- | --- | --- |"]
    nested = []
    for name, child in properties.items():
        note = ", ".join(filter(None, ["required" if name in required else "", _bounds_text(child)]))
        description = " ".join(child.get("description", "").split())
        out.append(f"| `{name}` | {_type_text(child)} | {note} | {description} |")
        target = child.get("items", child)
        if target.get("properties"):
            nested.append((f"{title}.{name}" + ("[]" if "items" in child else ""), target))
    out.append("")
    for child_title, child_schema in nested:
        _doc_sections(child_title, child_schema, out)


def api_markdown() -> str:
    manifest = crd_manifest()
    version = manifest["spec"]["versions"][0]
    root = version["schema"]["openAPIV3Schema"]
    out = [
        "# FineTuneJob API reference (kubetune.io/v1alpha1)",
        "",
        "Generated by `python -m kubetune.crd --write` from `operator/kubetune/api.py`; do not edit.",
        "",
        f"Kind `{api.KIND}`, plural `{api.PLURAL}`, short name `{api.SHORT_NAMES[0]}`, "
        f"category `{api.CATEGORIES[0]}`, namespaced.",
        "",
        "## spec",
        "",
    ]
    _doc_sections("spec", root["properties"]["spec"], out)
    out += ["## Rules across fields (enforced by the CRD and by `kubetune validate`)", ""]
    out += [f"- {message}" for _, _, message in CEL_RULES]
    out += [f"- {frozen_spec_rule(root['properties']['spec'])['message']}", "",
            "`kubetune validate` checks more rules than the CRD can (see operator/kubetune/validation.py).", "",
            "## status", ""]
    _doc_sections("status", root["properties"]["status"], out)
    out += ["## Printer columns", "", "| column | JSONPath | shown |", "| --- | --- | --- |"]
    out += [f"| {c['name']} | `{c['jsonPath']}` | {'-o wide' if c.get('priority') else 'always'} |"
            for c in PRINTER_COLUMNS]
    return "\n".join(out) + "\n"


def generated_files() -> dict[Path, str]:
    """Every committed file this module generates, with its content."""
    crd_text = crd_yaml()
    return {CRD_FILE: crd_text, CHART_CRD_FILE: crd_text, API_DOC_FILE: api_markdown()}


def main() -> None:
    parser = argparse.ArgumentParser(description="Regenerate the CRD and docs/api.md from api.py.")
    parser.add_argument("--write", action="store_true", help="write the generated files into the repository")
    args = parser.parse_args()
    if not args.write:
        print(crd_yaml(), end="")
        return
    for path, text in generated_files().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
