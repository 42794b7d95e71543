"""`kubetune plan -f job.yaml [--nodes nodes.yaml] [--pods pods.yaml] [-o table|json]`."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubetune.estimate import VramEstimate
    from kubetune.plan import PlanResult

HELP = (
    "Check whether a FineTuneJob fits the cluster's GPUs: where it would run, whether it waits for busy "
    "GPUs, or why it cannot fit and which changes would. Works offline on `kubectl get nodes -o yaml` "
    "(and `kubectl get pods -A -o yaml`) output, or reads the current kubeconfig's cluster (read-only). "
    "Exit 0: fits; 2: waits for GPUs; 3: does not fit; 1: error."
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


def objects_in(source: str, kind: str) -> list[dict[str, Any]]:
    """The objects of a kind in a file: `kubectl get -o yaml` Lists, single objects or multi-doc YAML;
    each has the shape of the fields the planner reads (a file is input too), or CliError names it."""
    from pydantic import ValidationError

    from kubetune.cluster_shapes import SHAPES
    from kubetune.manifest_files import MAX_CLUSTER_FILE_BYTES, CliError, load_documents

    found: list[dict[str, Any]] = []
    for document in load_documents([source], MAX_CLUSTER_FILE_BYTES):
        content = document.content
        items = content.get("items") if isinstance(content, dict) and "items" in content else [content]
        if not isinstance(items, list):
            raise CliError(f"{document.label}: items must be a list of {kind} objects")
        for index, item in enumerate(items):
            if not isinstance(item, dict) or item.get("kind", kind) != kind:
                raise CliError(f"{document.label}: expected {kind} objects (or a List of them)")
            try:
                SHAPES[kind].model_validate(item)
            except ValidationError as exc:
                error = exc.errors()[0]
                where = ".".join(str(part) for part in error["loc"])
                raise CliError(f"{document.label}: {kind} {index + 1}: {where}: {error['msg'].lower()}") from None
            found.append(item)
    return found


def require_nodes_with_pods(args: argparse.Namespace) -> None:
    """--pods describes GPUs taken on the --nodes given: alone it would be silently ignored."""
    from kubetune.manifest_files import CliError

    if args.pods is not None and args.nodes is None:
        raise CliError("--pods needs --nodes (the nodes those pods run on); give both, or neither to read the cluster")


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


def result_json(vram: VramEstimate, result: PlanResult) -> dict[str, Any]:
    from kubetune.plan import NoFit, Placement

    body: dict[str, Any] = {"estimate": vram.to_json()}
    if isinstance(result, Placement):
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

    from kubetune.plan import SUGGESTIONS_INTRO, NoFit, Placement

    head = f"estimate: {vram.per_gpu_gib:.2f} GiB per GPU ({vram.strategy})"
    if isinstance(result, Placement):
        gpu = f"{result.gpu_product or 'CPU'}" + (f", {result.gpu_memory_gib:.1f} GiB" if result.gpu_memory_gib else "")
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


def run(args: argparse.Namespace) -> int:
    from kubetune.commands.estimate import estimate_job
    from kubetune.manifest_files import CliError, load_job
    from kubetune.plan import DEFAULT_SAFETY_MARGIN, NoFit, Placement, plan

    margin = DEFAULT_SAFETY_MARGIN if args.safety_margin is None else args.safety_margin
    if not 0 <= margin < 1:
        raise CliError(f"--safety-margin: must be at least 0 and below 1; got {margin}")
    require_nodes_with_pods(args)
    job = load_job(args.filename)
    vram = estimate_job(job.spec, fetch_config=args.fetch_config)
    nodes, pods = objects_from_files(args.nodes, args.pods) if args.nodes is not None else cluster_objects()
    result = plan(job.spec, vram, nodes, pods, safety_margin=margin)
    print(json.dumps(result_json(vram, result)) if args.output == "json" else render_result(vram, result))
    if isinstance(result, Placement):
        return EXIT_PLACED
    return EXIT_NO_FIT if isinstance(result, NoFit) else EXIT_WAIT
