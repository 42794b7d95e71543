"""`kubetune estimate -f job.yaml [-o table|json] [--fetch-config]`."""

from __future__ import annotations

import argparse
import json
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kubetune.api import FineTuneJobSpec
    from kubetune.estimate import VramEstimate

HELP = (
    "Estimate the peak GPU memory of a FineTuneJob, per GPU, with a breakdown. Models outside the "
    "built-in catalog need spec.model.architecture (hiddenSize, numLayers, numAttentionHeads, "
    "numKeyValueHeads, intermediateSize, vocabSize from the model's config.json), a spec.model.path "
    "holding a readable config.json, or --fetch-config."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--filename", required=True, metavar="FILE", help="FineTuneJob manifest (- for stdin)")
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table", help="output format")
    parser.add_argument("--fetch-config", action="store_true",
                        help="fetch config.json from the hub (honours HF_ENDPOINT and HF_TOKEN) for a model "
                        "that is not in the catalog")


def estimate_job(spec: FineTuneJobSpec, *, fetch_config: bool) -> VramEstimate:
    """The estimate, or CliError (exit 1) when the model's dimensions cannot be found."""
    from kubetune.catalog import HubConfigSource, UnknownModelError, resolve_architecture
    from kubetune.contract import ENV_HF_TOKEN
    from kubetune.estimate import estimate
    from kubetune.manifest_files import CliError

    hub = HubConfigSource(token=os.environ.get(ENV_HF_TOKEN)) if fetch_config else None
    try:
        return estimate(spec, resolve_architecture(spec, hub))
    except UnknownModelError as exc:
        fetch_note = f" --fetch-config found no config.json: {hub.last_failure}." if hub and hub.last_failure else ""
        raise CliError(f"{exc}{fetch_note}") from None


def render_estimate(vram: VramEstimate) -> str:
    """The estimate as a readable table."""
    gpus = vram.total_gib / vram.per_gpu_gib if vram.per_gpu_gib else 0
    unit = "GiB of RAM" if vram.strategy == "cpu" else "GiB per GPU"
    lines = [f"{'component':<16}{unit:>14}"]
    lines += [f"{name:<16}{value:>14.2f}" for name, value in vram.breakdown.items() if value > 0]
    lines += [
        f"{'peak':<16}{vram.per_gpu_gib:>14.2f}",
        "",
        f"strategy:  {vram.strategy}, {gpus:.0f} process(es), {vram.total_gib:.2f} GiB in all",
        f"trainable: {vram.trainable_parameters:,} of {vram.total_parameters:,} parameters "
        f"({vram.trainable_parameters / vram.total_parameters:.2%})",
        "assumptions:",
    ]
    lines += [f"  - {note}" for note in vram.assumptions]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from kubetune.manifest_files import load_job

    job = load_job(args.filename)
    vram = estimate_job(job.spec, fetch_config=args.fetch_config)
    print(json.dumps(vram.to_json()) if args.output == "json" else render_estimate(vram))
    return 0
