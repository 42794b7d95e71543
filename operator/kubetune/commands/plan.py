"""`kubetune plan -f job.yaml [--nodes nodes.yaml] [--pods pods.yaml] [-o table|json]`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from kubetune.commands import forecasting
from kubetune.commands.estimate import add_calibration_argument

if TYPE_CHECKING:
    from kubetune.calibration import Store
    from kubetune.capacity import NodeType
    from kubetune.estimate import VramEstimate
    from kubetune.gpus import GpuNode
    from kubetune.plan import PlanResult

HELP = (
    "Check whether a FineTuneJob fits the cluster's GPUs: where it would run, whether it waits for busy "
    "GPUs, or why it cannot fit and which changes would. Works offline on `kubectl get nodes -o yaml` "
    "(and `kubectl get pods -A -o yaml`) output, or reads the current kubeconfig's cluster (read-only). "
    "With --nodepools or --node-groups it plans like the operator in capacity.mode autoscale. "
    "Exit 0: fits (a free GPU, or a node type the cluster can add); 2: waits; 3: does not fit; 1: error."
)

EXIT_PLACED, EXIT_WAIT, EXIT_NO_FIT = 0, 2, 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--filename", required=True, metavar="FILE", help="FineTuneJob manifest (- for stdin)")
    parser.add_argument("--nodes", metavar="FILE",
                        help="Nodes as YAML/JSON (a List, one Node, or several documents); default: the cluster")
    parser.add_argument("--pods", metavar="FILE",
                        help="Pods holding GPUs (same forms); with --nodes and without this, every GPU is free")
    parser.add_argument("--safety-margin", type=float, default=None, metavar="FRACTION",
                        help="fraction of GPU memory kept free (default 0.10)")
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table", help="output format")
    parser.add_argument("--fetch-config", action="store_true",
                        help="fetch config.json from the hub for a model that is not in the catalog")
    parser.add_argument("--nodepools", metavar="FILE",
                        help="Karpenter NodePools (`kubectl get nodepools -o yaml`): node types the cluster can add")
    parser.add_argument("--label-products", metavar="FILE",
                        help="YAML list as in the chart's gpuDiscovery.labelProducts: node labels that say which "
                        "GPU a node has ({label: key=value, product | memoryGiB})")
    parser.add_argument("--node-groups", metavar="FILE",
                        help="YAML list of node groups as in the chart's capacity.nodeGroups: node types the "
                        "cluster can add")
    forecasting.add_arguments(parser)
    add_calibration_argument(parser)
    parser.add_argument("--calibration-namespace", default="kubetune-system", metavar="NAMESPACE",
                        help="without --nodes: where the operator keeps its kubetune-calibration ConfigMap")


def objects_in(source: str, kind: str) -> list[dict[str, Any]]:
    """The objects of a kind in a file: `kubectl get -o yaml` Lists, single objects or multi-doc YAML."""
    from kubetune.manifest_files import CliError, load_documents

    found: list[dict[str, Any]] = []
    for document in load_documents([source]):
        content = document.content
        items = content.get("items") if isinstance(content, dict) and "items" in content else [content]
        for item in items or ():
            if not isinstance(item, dict) or item.get("kind", kind) != kind:
                raise CliError(f"{document.label}: expected {kind} objects (or a List of them)")
            found.append(item)
    return found


def objects_from_files(nodes_file: str, pods_file: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Nodes and pods from saved `kubectl get -o yaml` output; without a pods file every GPU is free."""
    return objects_in(nodes_file, "Node"), objects_in(pods_file, "Pod") if pods_file is not None else []


def cluster_objects() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Nodes and pods of the current kubeconfig's cluster, as the API returns them (read-only)."""
    from kubernetes import client, config

    from kubetune.manifest_files import CliError

    try:
        config.load_kube_config()
        core = client.CoreV1Api()
        # Raw responses: the objects exactly as the API returns them (camelCase), without model classes.
        node_response: Any = core.list_node(_preload_content=False)
        pod_response: Any = core.list_pod_for_all_namespaces(
            field_selector="status.phase!=Succeeded,status.phase!=Failed", _preload_content=False)
        nodes, pods = json.loads(node_response.data)["items"], json.loads(pod_response.data)["items"]
    except Exception as exc:  # config, connection and API errors all mean "cannot read the cluster"
        raise CliError(f"cannot read nodes and pods from the cluster: {exc}; give --nodes (and --pods) "
                       "files from `kubectl get nodes -o yaml` instead") from None
    return nodes, pods


def provisionable_from_files(nodepools_file: str | None, node_groups_file: str | None) -> tuple[NodeType, ...]:
    """Node types the cluster can add, from saved NodePools and a node-group list."""
    from kubetune.capacity import CapacityError, node_groups, nodepools_types
    from kubetune.commands.forecasting import load_yaml
    from kubetune.manifest_files import CliError

    types: list[NodeType] = []
    if nodepools_file is not None:
        types += nodepools_types(objects_in(nodepools_file, "NodePool"))
    if node_groups_file is not None:
        try:
            types += node_groups(load_yaml(node_groups_file), node_groups_file)
        except CapacityError as error:
            raise CliError(str(error)) from None
    return tuple(types)


def cluster_calibration(namespace: str) -> Store | None:
    """The operator's calibration store from the cluster; None (with a note on stderr) when it cannot be read."""
    from kubernetes import client

    from kubetune.calibration import CONFIGMAP_NAME, store_from_configmap

    try:
        response: Any = client.CoreV1Api().read_namespaced_config_map(CONFIGMAP_NAME, namespace,
                                                                      _preload_content=False)
        return store_from_configmap(json.loads(response.data))
    except Exception as exc:  # missing, forbidden or unreadable: plan with the analytic estimate
        reason = getattr(exc, "reason", None) or type(exc).__name__
        print(f"note: no calibration from {namespace}/{CONFIGMAP_NAME} ({reason}); the analytic estimate is used",
              file=sys.stderr)
        return None


def result_json(vram: VramEstimate, result: PlanResult) -> dict[str, Any]:
    from kubetune.plan import NoFit, Placement, Provision

    body: dict[str, Any] = {"estimate": vram.to_json()}
    if isinstance(result, Provision):
        body |= {"result": "Provision", "reason": "WaitingForNodes", "message": result.message,
                 "placement": {"nodeTypes": [t.describe() for t in result.node_types],
                               "gpuProduct": result.gpu_product, "gpuMemoryGiB": round(result.gpu_memory_gib, 2),
                               "headroomGiB": result.headroom_gib, "nodeAffinity": result.node_affinity}}
    elif isinstance(result, Placement):
        body["result"] = "Placement"
        body["placement"] = {"nodes": list(result.nodes), "gpuProduct": result.gpu_product,
                             "gpuMemoryGiB": result.gpu_memory_gib, "headroomGiB": result.headroom_gib,
                             "nodeAffinity": result.node_affinity}
    elif isinstance(result, NoFit):
        body |= {"result": "NoFit", "reason": str(result.reason), "message": result.message,
                 "neededGiB": result.needed_gib, "bestAvailableGiB": result.best_available_gib,
                 "suggestions": [{"description": s.description, "specPatch": s.spec_patch,
                                  "perGpuGiB": s.estimate.per_gpu_gib} for s in result.suggestions]}
    else:
        body |= {"result": "Wait", "reason": str(result.reason), "message": result.message}
    return body


def render_result(vram: VramEstimate, result: PlanResult) -> str:
    import yaml

    from kubetune.plan import SUGGESTIONS_INTRO, NoFit, Placement, Provision

    head = f"estimate: {vram.per_gpu_gib:.2f} GiB per GPU ({vram.strategy})"
    if vram.calibration_note is not None:
        head += f"; analytic {vram.analytic_gib:.2f}, calibration: {vram.calibration_note}"
    if isinstance(result, Provision):
        return "\n".join([head, f"fits a node type the cluster can add ({result.gpu_product}, "
                                 f"{result.gpu_memory_gib:.1f} GiB; headroom {result.headroom_gib:.2f} GiB per GPU): "
                                 "the Job is created now and waits for the node (WaitingForNodes)",
                           *(f"  - {t.describe()}" for t in result.node_types),
                           "node affinity the Job carries:",
                           yaml.safe_dump(result.node_affinity, sort_keys=False).rstrip()])
    if isinstance(result, Placement):
        product = result.gpu_product or ("GPU" if result.gpu_memory_gib else "CPU")  # an unnamed GPU, or none
        gpu = product + (f", {result.gpu_memory_gib:.1f} GiB" if result.gpu_memory_gib else "")
        lines = [head, f"fits: {gpu}; headroom {result.headroom_gib:.2f} GiB per GPU",
                 f"nodes: {', '.join(result.nodes) or '(any)'}"]
        if result.node_affinity:
            lines += ["node affinity the Job carries:", yaml.safe_dump(result.node_affinity, sort_keys=False).rstrip()]
        return "\n".join(lines)
    if isinstance(result, NoFit):
        lines = [head, f"does not fit ({result.reason}): needs {result.needed_gib:.2f} GiB per GPU, best available "
                 + (f"{result.best_available_gib:.2f} GiB" if result.best_available_gib is not None else "none"),
                 result.message.split(SUGGESTIONS_INTRO)[0]]
        if result.suggestions:
            lines.append("changes that fit:")
        for index, suggestion in enumerate(result.suggestions, 1):
            lines.append(f"  {index}. {suggestion.description}: {suggestion.estimate.per_gpu_gib:.2f} GiB per GPU; "
                         f"patch {json.dumps(suggestion.spec_patch)}")
        return "\n".join(lines)
    return "\n".join([head, f"waits ({result.reason}): {result.message}"])


def parsed_nodes(nodes: list[dict[str, Any]], label_products_file: str | None) -> list[GpuNode]:
    """The nodes as the planner reads them, with the --label-products mappings applied."""
    from kubetune.commands.forecasting import load_yaml
    from kubetune.gpus import DiscoveryError, gpu_node, label_products
    from kubetune.manifest_files import CliError

    try:
        hints = label_products(load_yaml(label_products_file), label_products_file) if label_products_file else ()
    except DiscoveryError as error:
        raise CliError(str(error)) from None
    return [gpu_node(node, hints) for node in nodes]


def cluster_products(nodes: list[GpuNode]) -> list[tuple[str, float]]:
    """(product, GiB per GPU) of the cluster's GPU nodes whose memory is known."""
    return [(node.product or f"GPU of {node.memory_gib:.0f} GiB", node.memory_gib)
            for node in nodes if node.gpus > 0 and node.memory_gib is not None]


def unknown_memory_nodes(nodes: list[GpuNode]) -> list[str]:
    return sorted(node.name for node in nodes if node.gpus > 0 and node.memory_gib is None)


def run(args: argparse.Namespace) -> int:
    from kubetune.commands.estimate import architecture_and_estimate, load_calibration, safety_margin_of
    from kubetune.forecast import product_rows
    from kubetune.manifest_files import load_job
    from kubetune.plan import NoFit, Placement, Provision, plan
    from kubetune.presets import effective_spec

    margin = safety_margin_of(args)
    inputs = forecasting.inputs_of(args)
    job = load_job(args.filename)
    live = args.nodes is None
    raw_nodes, pods = cluster_objects() if live else objects_from_files(args.nodes, args.pods)
    nodes = parsed_nodes(raw_nodes, args.label_products)
    store = load_calibration(args.calibration)
    if store is None and live:
        store = cluster_calibration(args.calibration_namespace)
    architecture, vram = architecture_and_estimate(job.spec, fetch_config=args.fetch_config, calibration=store)
    provisionable = provisionable_from_files(args.nodepools, args.node_groups)
    result = plan(job.spec, vram, nodes, pods, safety_margin=margin, provisionable=provisionable)
    products = [*cluster_products(nodes),
                *((t.product, t.memory_gib) for t in provisionable if t.product and t.memory_gib is not None)]
    rows = product_rows(effective_spec(job.spec), vram.per_gpu_gib, architecture, products,
                        safety_margin=margin, inputs=inputs)
    if args.output == "json":
        print(json.dumps(result_json(vram, result) | {"gpus": forecasting.rows_json(rows)}))
    else:
        where = "in the cluster or that it can add" if provisionable else "in the cluster"
        table = f"\n\nGPU products {where}:\n{forecasting.render_rows(rows)}" if rows else ""
        unknown = unknown_memory_nodes(nodes)
        if unknown:
            table += (f"\nGPU memory unknown (not in the table): {', '.join(unknown)}; "
                      "annotate them kubetune.io/gpu-memory-gib=<GiB per GPU>")
        print(render_result(vram, result) + table)
    if isinstance(result, Placement | Provision):
        return EXIT_PLACED
    return EXIT_NO_FIT if isinstance(result, NoFit) else EXIT_WAIT
