"""`kubetune render -f job.yaml [--nodes nodes.yaml] [--pods pods.yaml]`: what the operator would create."""

from __future__ import annotations

import argparse
import sys
from typing import Any

HELP = (
    "Dry run: print, as YAML, the objects the operator would create for a FineTuneJob "
    "(exit 0 placed, 2 would wait, 3 cannot fit, 1 error)."
)
EXIT_PLACED, EXIT_ERROR, EXIT_WAIT, EXIT_NO_FIT = 0, 1, 2, 3


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


def read_objects(source: str) -> list[dict[str, Any]]:
    """Objects of a file that holds a v1 List, a YAML list, or one object per document."""
    from kubetune.manifest_files import CliError, load_documents

    objects: list[dict[str, Any]] = []
    for document in load_documents([source]):
        content = document.content
        items = content.get("items") if isinstance(content, dict) and "items" in content else content
        for item in items if isinstance(items, list) else [items]:
            if not isinstance(item, dict):
                raise CliError(f"{document.label}: expected Kubernetes objects, found {type(item).__name__}")
            objects.append(item)
    return objects


def run(args: argparse.Namespace) -> int:
    import yaml

    from kubetune import manifests
    from kubetune.estimate import estimate
    from kubetune.manifest_files import CliError, load_job
    from kubetune.plan import NoFit, Placement, plan
    from kubetune.presets import effective_spec
    from kubetune.settings import load_settings

    config = load_settings()
    job = load_job(args.filename)
    spec = effective_spec(job.spec)
    owner = manifests.Owner(job.metadata.name, job.metadata.namespace or "default", "")
    try:
        needed = estimate(spec)
    except ValueError as error:
        raise CliError(str(error)) from None
    affinity = None
    if args.nodes is None:
        print(
            "kubetune render: no --nodes given: rendering as if the job fits, without GPU node affinity",
            file=sys.stderr,
        )
    else:
        pods = read_objects(args.pods) if args.pods else []
        outcome = plan(spec, needed, read_objects(args.nodes), pods, safety_margin=config.safety_margin)
        if isinstance(outcome, NoFit):
            print(f"kubetune render: cannot fit: {outcome.message}", file=sys.stderr)
            return EXIT_NO_FIT
        if not isinstance(outcome, Placement) and spec.queue_name is None:
            print(f"kubetune render: would wait ({outcome.reason}): {outcome.message}", file=sys.stderr)
            return EXIT_WAIT
        affinity = outcome.node_affinity if isinstance(outcome, Placement) else None
    objects = [
        *manifests.build_trainer_rbac(owner.namespace),
        manifests.build_configmap(owner, spec),
        manifests.build_job(
            owner,
            spec,
            args.attempt,
            image=config.trainer_image,
            status_interval_seconds=config.trainer_status_interval_seconds,
            node_affinity=affinity,
        ),
    ]
    print(yaml.safe_dump_all(objects, sort_keys=False), end="")
    return EXIT_PLACED
