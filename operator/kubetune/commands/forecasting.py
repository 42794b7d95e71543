"""The forecast table `kubetune plan` and `kubetune estimate --gpus` print, and its inputs."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubetune.forecast import ForecastInputs, ProductRow


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prices", metavar="FILE",
                        help="YAML/JSON mapping of GPU product -> price per GPU-hour (the chart's pricing.gpuHour)")
    parser.add_argument("--throughput", metavar="FILE",
                        help="YAML/JSON list of measured runs ({gpuProduct, method, architectureKey, "
                        "tokensPerSecond, gpus, flopsPerToken, gradientCheckpointing}) that calibrate the forecast")
    parser.add_argument("--dataset-tokens", type=int, metavar="N",
                        help="tokens in the dataset, for an ETA of a run without maxSteps")


def load_yaml(path: str) -> Any:
    import yaml

    from kubetune.manifest_files import CliError, read_text

    try:
        return yaml.safe_load(read_text(path))
    except yaml.YAMLError as error:
        raise CliError(f"{path}: not YAML or JSON ({error})") from None


def _prices(path: str) -> dict[str, float]:
    from kubetune.manifest_files import CliError

    data = load_yaml(path)
    if not isinstance(data, dict) or not all(
        isinstance(value, int | float) and not isinstance(value, bool) and value >= 0 for value in data.values()
    ):
        raise CliError(f"{path}: expected a mapping of GPU product -> price per GPU-hour (a number, 0 or more)")
    return {str(product): float(price) for product, price in data.items()}


def _records(path: str) -> tuple[Any, ...]:
    from kubetune.forecast import ThroughputRecord
    from kubetune.manifest_files import CliError

    data = load_yaml(path)
    if not isinstance(data, list):
        raise CliError(f"{path}: expected a list of measured runs")
    records = []
    for index, item in enumerate(data):
        try:
            records.append(ThroughputRecord.from_wire(item))
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise CliError(f"{path}[{index}]: not a measured run ({error}); fields: gpuProduct, method, "
                           "architectureKey, tokensPerSecond, gpus, flopsPerToken") from None
    return tuple(records)


def inputs_of(args: argparse.Namespace) -> ForecastInputs:
    from kubetune.forecast import ForecastInputs
    from kubetune.manifest_files import CliError

    if args.dataset_tokens is not None and args.dataset_tokens <= 0:
        raise CliError(f"--dataset-tokens: must be above 0; got {args.dataset_tokens}")
    return ForecastInputs(
        records=_records(args.throughput) if args.throughput else (),
        prices=_prices(args.prices) if args.prices else None,
        dataset_tokens=args.dataset_tokens,
    )


def render_rows(rows: list[ProductRow]) -> str:
    from kubetune.forecast import duration

    header = f"{'GPU':<32}{'GiB/GPU':>8}  {'fits':<5}{'tokens/s':>10}  {'ETA':>8}{'GPU-hours':>11}{'cost':>10}"
    lines = [header]
    for row in rows:
        cells = f"{row.product:<32}{row.memory_gib:>8.1f}  {'yes' if row.fits else 'no':<5}"
        f = row.forecast
        if f is None:
            lines.append(cells + f"{'-':>10}  {'-':>8}{'-':>11}{'-':>10}")
            continue
        hours = "unknown" if f.gpu_hours is None else f"{f.gpu_hours:.2f}"
        cost = "-" if f.cost is None else f"{f.cost:.2f}"
        lines.append(cells + f"{f.tokens_per_second:>10,.0f}  {duration(f.eta_seconds):>8}{hours:>11}{cost:>10}")
    notes = sorted({row.forecast.basis for row in rows if row.forecast is not None})
    tokens = next((row.forecast for row in rows if row.forecast is not None), None)
    if tokens is not None:
        lines.append(f"run: {tokens.tokens:,} tokens ({tokens.tokens_basis})" if tokens.tokens is not None
                     else "run: tokens unknown (no maxSteps; give --dataset-tokens for an ETA)")
    lines += [f"efficiency: {note}" for note in notes]
    return "\n".join(lines)


def rows_json(rows: list[ProductRow]) -> list[dict[str, Any]]:
    return [{"gpuProduct": row.product, "gpuMemoryGiB": round(row.memory_gib, 2), "fits": row.fits,
             "forecast": None if row.forecast is None else row.forecast.to_status().to_wire()} for row in rows]
