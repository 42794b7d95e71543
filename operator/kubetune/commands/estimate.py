"""`kubetune estimate -f job.yaml [-o table|json] [--fetch-config]`."""

from __future__ import annotations

import argparse
import json
import os
from typing import TYPE_CHECKING

from kubetune.commands import forecasting

if TYPE_CHECKING:
    from kubetune.api import FineTuneJobSpec
    from kubetune.calibration import Store
    from kubetune.catalog import ModelArchitecture
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
    add_calibration_argument(parser)
    parser.add_argument("--gpus", action="store_true",
                        help="also check the job against common GPUs (T4 to B200): fit, ETA, GPU-hours, cost")
    parser.add_argument("--safety-margin", type=float, default=None, metavar="FRACTION",
                        help="with --gpus: fraction of GPU memory kept free (default 0.10)")
    forecasting.add_arguments(parser)


def add_calibration_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calibration", metavar="FILE",
                        help="measured runs that correct the estimate: the operator's kubetune-calibration "
                        "ConfigMap (`kubectl get cm -n kubetune-system kubetune-calibration -o yaml`) or its "
                        "records.json; the same numbers the operator plans with")


# A calibration store holds at most a few thousand records: far less than this.
CALIBRATION_FILE_BYTES = 4 * 2**20


def load_calibration(path: str | None) -> Store | None:
    """The calibration store of --calibration FILE, or None without one; CliError when unreadable."""
    if path is None:
        return None
    from kubetune.calibration import store_from_file_text
    from kubetune.manifest_files import CliError, decode_text, parse_documents, read_bytes

    text = decode_text(path, read_bytes(path, CALIBRATION_FILE_BYTES))
    parse_documents(path, text)  # the strict loader first: no alias, duplicate key or deep nesting reaches the store
    try:
        return store_from_file_text(text)
    except ValueError as exc:
        raise CliError(f"--calibration {path}: {exc}") from None


def architecture_and_estimate(spec: FineTuneJobSpec, *, fetch_config: bool, calibration: Store | None = None
                              ) -> tuple[ModelArchitecture, VramEstimate]:
    """The model's dimensions and the estimate (calibrated when a store is given), or CliError (exit 1)
    when the model's dimensions cannot be found."""
    from kubetune.calibration import calibrate
    from kubetune.catalog import HubConfigSource, UnknownModelError, resolve_architecture
    from kubetune.contract import ENV_HF_TOKEN
    from kubetune.estimate import estimate
    from kubetune.manifest_files import CliError
    from kubetune.presets import effective_spec

    hub = HubConfigSource(token=os.environ.get(ENV_HF_TOKEN)) if fetch_config else None
    try:
        architecture = resolve_architecture(spec, hub)
        analytic = estimate(spec, architecture)
    except UnknownModelError as exc:
        fetch_note = f" --fetch-config found no config.json: {hub.last_failure}." if hub and hub.last_failure else ""
        raise CliError(f"{exc}{fetch_note}") from None
    if calibration is None:
        return architecture, analytic
    return architecture, calibrate(analytic, effective_spec(spec), calibration.records)


def estimate_job(spec: FineTuneJobSpec, *, fetch_config: bool, calibration: Store | None = None) -> VramEstimate:
    """The estimate (calibrated when a store is given), or CliError (exit 1) when the model's dimensions
    cannot be found."""
    return architecture_and_estimate(spec, fetch_config=fetch_config, calibration=calibration)[1]


def safety_margin_of(args: argparse.Namespace) -> float:
    from kubetune.manifest_files import CliError
    from kubetune.plan import DEFAULT_SAFETY_MARGIN

    margin = DEFAULT_SAFETY_MARGIN if args.safety_margin is None else args.safety_margin
    if not 0 <= margin < 1:
        raise CliError(f"--safety-margin: must be at least 0 and below 1; got {margin}")
    return float(margin)


def render_estimate(vram: VramEstimate) -> str:
    """The estimate as a readable table."""
    gpus = vram.total_gib / vram.per_gpu_gib if vram.per_gpu_gib else 0
    unit = "GiB of RAM" if vram.strategy == "cpu" else "GiB per GPU"
    lines = [f"{'component':<16}{unit:>14}"]
    lines += [f"{name:<16}{value:>14.2f}" for name, value in vram.breakdown.items() if value > 0]
    lines.append(f"{'peak':<16}{vram.per_gpu_gib:>14.2f}")
    if vram.calibration_note is not None:
        lines.append(f"{'(analytic)':<16}{vram.analytic_gib:>14.2f}")
        lines.append(f"calibration: {vram.calibration_note}")
    lines += [
        "",
        f"strategy:  {vram.strategy}, {gpus:.0f} process(es), {vram.total_gib:.2f} GiB in all",
        f"trainable: {vram.trainable_parameters:,} of {vram.total_parameters:,} parameters "
        f"({vram.trainable_parameters / vram.total_parameters:.2%})",
        "assumptions:",
    ]
    lines += [f"  - {note}" for note in vram.assumptions]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from kubetune.forecast import STANDARD_GPUS, product_rows
    from kubetune.gpus import product_memory_gib
    from kubetune.manifest_files import load_job
    from kubetune.presets import effective_spec

    job = load_job(args.filename)
    architecture, vram = architecture_and_estimate(job.spec, fetch_config=args.fetch_config,
                                                   calibration=load_calibration(args.calibration))
    if not args.gpus:
        print(json.dumps(vram.to_json()) if args.output == "json" else render_estimate(vram))
        return 0
    products = [(product, product_memory_gib(product) or 0.0) for product in STANDARD_GPUS]
    rows = product_rows(effective_spec(job.spec), vram.per_gpu_gib, architecture, products,
                        safety_margin=safety_margin_of(args), inputs=forecasting.inputs_of(args))
    if args.output == "json":
        print(json.dumps(vram.to_json() | {"gpus": forecasting.rows_json(rows)}))
    else:
        print(render_estimate(vram) + "\n\n" + forecasting.render_rows(rows))
    return 0
