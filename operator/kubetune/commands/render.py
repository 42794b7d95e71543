"""`kubetune render -f job.yaml [--nodes nodes.yaml] [--pods pods.yaml]`: what the operator would create."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

HELP = (
    "Dry run: print, as YAML, the objects the operator would create for a FineTuneJob "
    "(exit 0 placed, 2 would wait, 3 cannot fit, 1 error)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-f", "--filename", required=True, metavar="FILE", help="FineTuneJob manifest (- for stdin)"
    )
    parser.add_argument(
        "--nodes", metavar="FILE", help="Nodes (YAML: a List, a list or documents) to plan against"
    )
    parser.add_argument("--pods", metavar="FILE", help="Pods already on those nodes (their GPUs are taken)")
    parser.add_argument(
        "--attempt", type=int, default=1, help="attempt number the Job is named after (default 1)"
    )


Objects = list[dict[str, Any]]


def readable_yaml(objects: Objects) -> str:
    """The objects as YAML documents, with multi-line strings (the ConfigMap's spec.yaml) as literal blocks."""
    import yaml

    class BlockDumper(yaml.SafeDumper):
        pass

    def represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    BlockDumper.add_representer(str, represent_str)
    return yaml.dump_all(objects, Dumper=BlockDumper, sort_keys=False)


def cluster_or_none(read: Callable[[], tuple[Objects, Objects]]) -> tuple[Objects, Objects] | None:
    """Nodes and pods of the kubeconfig's cluster (read-only), or None when there is none to read."""
    from kubetune.manifest_files import CliError

    try:
        return read()
    except CliError:
        return None


def run(args: argparse.Namespace) -> int:
    from kubetune import distributed, manifests
    from kubetune.commands.estimate import estimate_job
    from kubetune.commands.plan import (
        EXIT_NO_FIT,
        EXIT_PLACED,
        EXIT_WAIT,
        cluster_objects,
        objects_from_files,
        require_nodes_with_pods,
    )
    from kubetune.gpus import gpu_node
    from kubetune.manifest_files import load_job
    from kubetune.plan import NoFit, Placement, Provision, Wait, plan
    from kubetune.presets import effective_spec
    from kubetune.settings import load_settings

    require_nodes_with_pods(args)
    config = load_settings()
    job = load_job(args.filename)
    spec = effective_spec(job.spec)
    owner = manifests.Owner(job.metadata.name, job.metadata.namespace or "default", "")
    needed = estimate_job(spec, fetch_config=False)
    affinity = None
    cluster = cluster_or_none(cluster_objects) if args.nodes is None else objects_from_files(args.nodes, args.pods)
    if cluster is None:
        print(
            "kubetune render: no --nodes and no readable cluster: rendering as if the job fits, "
            "without GPU node affinity",
            file=sys.stderr,
        )
    else:
        # As the operator with the same settings: its label -> product mappings, its node groups when it
        # autoscales (Karpenter NodePools are the live cluster's: not read here).
        nodes = [gpu_node(node, config.gpu_label_products) for node in cluster[0]]
        provisionable = config.node_groups if config.capacity_mode == "autoscale" else ()
        outcome = plan(spec, needed, nodes, cluster[1], safety_margin=config.safety_margin,
                       provisionable=provisionable)
        if isinstance(outcome, NoFit):
            print(f"kubetune render: cannot fit: {outcome.message}", file=sys.stderr)
            return EXIT_NO_FIT
        if isinstance(outcome, Wait) and spec.queue_name is None:
            print(f"kubetune render: would wait ({outcome.reason}): {outcome.message}", file=sys.stderr)
            return EXIT_WAIT
        affinity = outcome.node_affinity if isinstance(outcome, Placement | Provision) else None
    job_body = manifests.build_job(
        owner,
        spec,
        args.attempt,
        image=config.trainer_image,
        status_interval_seconds=config.trainer_status_interval_seconds,
        node_affinity=affinity,
    )
    service = [distributed.build_headless_service(job_body)] if distributed.is_multinode(spec) else []
    objects = [
        *manifests.build_trainer_rbac(owner),
        manifests.build_configmap(owner, spec),
        *service,
        job_body,
    ]
    print(readable_yaml(objects), end="")
    return EXIT_PLACED
