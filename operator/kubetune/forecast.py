"""Time and cost of a run before it starts: tokens/s, ETA, GPU-hours and cost on a GPU product. Pure.

Throughput is FLOPs: a GPU does `peak x MFU` useful FLOP/s, and a token costs `6N + 12·L·d·s` FLOPs
(PaLM's MFU convention, as docs/benchmarks.md uses it: N the matmul parameters without the input
embedding, L layers, d the attention width, s the sequence length). MFU (model FLOPs utilisation) is
per method and gradient checkpointing: the measured H100 rows of docs/benchmarks.md by default,
calibrated from runs where throughput records are given (`ThroughputRecord`, the shape the operator's
calibration store keeps next to memory peaks). The run's tokens come from maxSteps, or from epochs
and the dataset's token count when that is known; otherwise the ETA is unknown, not guessed.
docs/planning.md has the sources and the limits.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from kubetune.api import FineTuneJobSpec, ForecastStatus
from kubetune.catalog import ModelArchitecture
from kubetune.gpus import find_product

SECONDS_PER_HOUR = 3600.0
TERA = 1e12

# Dense (no sparsity) bf16 tensor-core peak per GPU, TFLOP/s, from NVIDIA's datasheets (fp16 for
# Turing/Volta, which lack bf16: the trainer falls back to fp16 there). A10G has no NVIDIA datasheet
# (an AWS-only part): 70 is the figure commonly cited for it, the weakest row of this table.
PEAK_TFLOPS: Mapping[str, float] = {
    "NVIDIA-B200": 2250.0,
    "NVIDIA-H200": 989.0,
    "NVIDIA-H200-NVL": 835.0,
    "NVIDIA-GH200-480GB": 989.0,
    "NVIDIA-H100-80GB-HBM3": 989.0,
    "NVIDIA-H100-SXM5-80GB": 989.0,
    "NVIDIA-H100-PCIe": 756.0,
    "NVIDIA-H100-NVL": 835.0,
    "NVIDIA-A100-SXM4-80GB": 312.0,
    "NVIDIA-A100-80GB-PCIe": 312.0,
    "NVIDIA-A100-SXM4-40GB": 312.0,
    "NVIDIA-A100-PCIE-40GB": 312.0,
    "NVIDIA-L40S": 362.0,
    "NVIDIA-L40": 181.0,
    "NVIDIA-L4": 121.0,
    "NVIDIA-A40": 150.0,
    "NVIDIA-A10G": 70.0,
    "NVIDIA-A10": 125.0,
    "NVIDIA-RTX-A6000": 155.0,
    "NVIDIA-RTX-6000-Ada-Generation": 364.0,
    "NVIDIA-GeForce-RTX-4090": 165.0,  # bf16 with fp32 accumulation (Ada whitepaper)
    "NVIDIA-GeForce-RTX-3090": 71.0,  # fp16 with fp32 accumulation (Ampere GA102 whitepaper)
    "Tesla-T4": 65.0,
    "Tesla-V100-SXM2-16GB": 125.0,
    "Tesla-V100-SXM2-32GB": 125.0,
    "Tesla-V100-PCIE-16GB": 112.0,
    "Tesla-V100-PCIE-32GB": 112.0,
}

# MFU by (method, gradient checkpointing) when no measured run says otherwise: the H100 rows of
# docs/benchmarks.md (2026-11-22; small models, 30 steps, steady window). lora+ckpt 11.4% (1B);
# lora without 15.2% (1B); qlora+ckpt 12.2% (mean of 12.8% at 3B and 11.6% at 8B); full+ckpt 8.2%
# (0.5B). The two rows without measurements scale their method's ckpt row by the LoRA rows' ratio
# (15.2 / 11.4: recomputation costs a forward pass the convention does not count). Small models
# use a GPU worst, so on larger ones these forecasts run long rather than short.
DEFAULT_MFU: Mapping[tuple[str, bool], float] = {
    ("lora", True): 0.114,
    ("lora", False): 0.152,
    ("qlora", True): 0.122,
    ("qlora", False): 0.163,
    ("full", True): 0.082,
    ("full", False): 0.109,
}
DEFAULT_MFU_SOURCE = "docs/benchmarks.md H100 rows"
# A measured MFU outside this range is a broken record (wrong GPU count or product), not a run.
PLAUSIBLE_MFU = (0.005, 0.9)

TokensBasis = Literal["maxSteps", "maxSteps; at most, without packing", "epochs x dataset tokens", "unknown"]


@dataclass(frozen=True)
class ThroughputRecord:
    """One measured run: what the trainer reported (status.training.tokensPerSecond, over all GPUs) and
    what it ran on. The calibration store keeps these; forecasts take them as a pure input."""

    gpu_product: str
    method: str
    architecture_key: str  # the model's catalog key or name; runs of the same model count first
    tokens_per_second: float
    gpus: int  # world size: GPUs per node x nodes
    flops_per_token: float
    gradient_checkpointing: bool = True

    def to_wire(self) -> dict[str, Any]:
        return {"gpuProduct": self.gpu_product, "method": self.method, "architectureKey": self.architecture_key,
                "tokensPerSecond": self.tokens_per_second, "gpus": self.gpus,
                "flopsPerToken": self.flops_per_token, "gradientCheckpointing": self.gradient_checkpointing}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> ThroughputRecord:
        """A record from its wire form; KeyError/TypeError/ValueError on a malformed one."""
        record = cls(str(data["gpuProduct"]), str(data["method"]), str(data["architectureKey"]),
                     float(data["tokensPerSecond"]), int(data["gpus"]), float(data["flopsPerToken"]),
                     bool(data.get("gradientCheckpointing", True)))
        if record.tokens_per_second <= 0 or record.gpus <= 0 or record.flops_per_token <= 0:
            raise ValueError("tokensPerSecond, gpus and flopsPerToken must be above 0")
        return record


def peak_tflops(product: str) -> float | None:
    known = find_product(product)
    return PEAK_TFLOPS.get(known.label) if known else None


def flops_per_token(architecture: ModelArchitecture, seq_length: int) -> float:
    """6N + 12·L·d·s: N the block linears plus the output projection, d the attention (query) width."""
    matmul_parameters = architecture.block_linear_parameters + architecture.hidden_size * architecture.vocab_size
    return 6.0 * matmul_parameters + 12.0 * architecture.num_layers * architecture.q_width * seq_length


def measured_mfu(record: ThroughputRecord) -> float | None:
    peak = peak_tflops(record.gpu_product)
    if peak is None:
        return None
    mfu = record.tokens_per_second * record.flops_per_token / (record.gpus * peak * TERA)
    return mfu if PLAUSIBLE_MFU[0] <= mfu <= PLAUSIBLE_MFU[1] else None


def _same_product(a: str, b: str) -> bool:
    known_a, known_b = find_product(a), find_product(b)
    return a.lower() == b.lower() or (known_a is not None and known_a == known_b)


def efficiency(product: str, method: str, checkpointing: bool, architecture_key: str,
               records: Iterable[ThroughputRecord] = ()) -> tuple[float, str]:
    """MFU to expect and where it comes from: the median of measured runs of this method and
    checkpointing on this product (of this model when there are such runs), else on other products,
    else the default table."""
    usable = [(r, mfu) for r in records if r.method == method and r.gradient_checkpointing == checkpointing
              and (mfu := measured_mfu(r)) is not None]
    here = [(r, mfu) for r, mfu in usable if _same_product(r.gpu_product, product)]
    same_model = [(r, mfu) for r, mfu in here if r.architecture_key == architecture_key]
    for chosen, where in ((same_model, f"this model on {product}"), (here, product), (usable, "other GPUs")):
        if chosen:
            return statistics.median(mfu for _, mfu in chosen), f"calibrated: {len(chosen)} run(s) of {where}"
    return DEFAULT_MFU[(method, checkpointing)], f"assumed ({DEFAULT_MFU_SOURCE})"


def run_tokens(spec: FineTuneJobSpec, dataset_tokens: int | None = None) -> tuple[int | None, TokensBasis]:
    """Tokens the run trains on: maxSteps x tokens per optimizer step (every rank's batches of
    maxSeqLength; without packing, a bound from above), or epochs x the dataset's tokens."""
    training, resources = spec.training, spec.resources
    if training.max_steps is not None:
        per_step = (training.batch_size * training.gradient_accumulation_steps * training.max_seq_length
                    * max(1, resources.gpus) * resources.nodes)
        return training.max_steps * per_step, "maxSteps" if training.packing else "maxSteps; at most, without packing"
    if dataset_tokens is not None and dataset_tokens > 0:
        return round(training.epochs * dataset_tokens), "epochs x dataset tokens"
    return None, "unknown"


@dataclass(frozen=True)
class Forecast:
    gpu_product: str
    gpus: int  # world size
    mfu: float
    basis: str  # where the MFU comes from
    tokens_per_second: float  # over all GPUs
    tokens: int | None
    tokens_basis: TokensBasis
    eta_seconds: float | None
    gpu_hours: float | None
    cost: float | None  # in the price list's currency, when the product has a price

    def to_status(self) -> ForecastStatus:
        return ForecastStatus(gpu_product=self.gpu_product, tokens_per_second=round(self.tokens_per_second, 1),
                              tokens=self.tokens, eta_seconds=None if self.eta_seconds is None
                              else round(self.eta_seconds), gpu_hours=None if self.gpu_hours is None
                              else round(self.gpu_hours, 2), cost=None if self.cost is None
                              else round(self.cost, 2), basis=self.basis)


def price_of(product: str, prices: Mapping[str, float]) -> float | None:
    return next((price for name, price in prices.items() if _same_product(name, product)), None)


def forecast(spec: FineTuneJobSpec, architecture: ModelArchitecture, product: str, *,
             records: Iterable[ThroughputRecord] = (), prices: Mapping[str, float] | None = None,
             dataset_tokens: int | None = None, architecture_key: str | None = None) -> Forecast | None:
    """The forecast of a spec (presets resolved) on a GPU product; None for a product whose peak is not
    in the table or a job without GPUs."""
    peak = peak_tflops(product)
    world = spec.resources.gpus * spec.resources.nodes
    if peak is None or world == 0:
        return None
    training = spec.training
    key = architecture_key or architecture.name or (spec.model.name or "")
    mfu, basis = efficiency(product, spec.method.type, training.gradient_checkpointing, key, records)
    tokens_per_second = world * peak * TERA * mfu / flops_per_token(architecture, training.max_seq_length)
    tokens, tokens_basis = run_tokens(spec, dataset_tokens)
    eta = None if tokens is None else tokens / tokens_per_second
    gpu_hours = None if eta is None else eta * world / SECONDS_PER_HOUR
    price = price_of(product, prices or {})
    cost = None if gpu_hours is None or price is None else gpu_hours * price
    return Forecast(product, world, mfu, basis, tokens_per_second, tokens, tokens_basis, eta, gpu_hours, cost)


def duration(seconds: float | None) -> str:
    """1h 05m, 3d 4h, 12m, 40s; "unknown" for None."""
    if seconds is None:
        return "unknown"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m" if minutes else f"{secs}s"


# The GPUs `kubetune estimate --gpus` checks: the common fine-tuning GPUs from a T4 to a B200.
STANDARD_GPUS = ("Tesla-T4", "NVIDIA-L4", "NVIDIA-A10G", "NVIDIA-GeForce-RTX-4090", "NVIDIA-A100-SXM4-40GB",
                 "NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3", "NVIDIA-H200", "NVIDIA-B200")


@dataclass(frozen=True)
class ProductRow:
    """One GPU product for a job: does one of its GPUs hold the job's per-GPU estimate, and the forecast."""

    product: str
    memory_gib: float
    fits: bool
    forecast: Forecast | None  # only for products that fit


@dataclass(frozen=True)
class ForecastInputs:
    """What calibrates and prices forecasts: measured runs, prices per GPU-hour, the dataset's tokens."""

    records: tuple[ThroughputRecord, ...] = ()
    prices: Mapping[str, float] | None = None
    dataset_tokens: int | None = None


def product_rows(spec: FineTuneJobSpec, per_gpu_gib: float, architecture: ModelArchitecture,
                 products: Iterable[tuple[str, float]], *, safety_margin: float,
                 inputs: ForecastInputs = ForecastInputs()) -> list[ProductRow]:
    """(product, GiB per GPU) -> a row each, smallest GPU first; one row per product."""
    rows = []
    for product, memory in sorted(dict(products).items(), key=lambda item: (item[1], item[0])):
        fits = memory * (1 - safety_margin) >= per_gpu_gib
        predicted = forecast(spec, architecture, product, records=inputs.records, prices=inputs.prices,
                             dataset_tokens=inputs.dataset_tokens) if fits else None
        rows.append(ProductRow(product, memory, fits, predicted))
    return rows


def forecast_wire(spec: FineTuneJobSpec, product: str | None, inputs: ForecastInputs) -> dict[str, Any] | None:
    """status.forecast for a placement on this product (wire form); None where there is none to give."""
    from kubetune.catalog import UnknownModelError, resolve_architecture

    if product is None:
        return None
    try:
        architecture = resolve_architecture(spec)
    except UnknownModelError:
        return None
    predicted = forecast(spec, architecture, product, records=inputs.records, prices=inputs.prices,
                         dataset_tokens=inputs.dataset_tokens)
    return None if predicted is None else predicted.to_status().to_wire()


def record_of_run(spec: FineTuneJobSpec, architecture: ModelArchitecture, gpu_product: str,
                  tokens_per_second: float, architecture_key: str | None = None) -> ThroughputRecord | None:
    """The throughput record of a finished run (status.training.tokensPerSecond on status.placement's
    product), for the calibration store; None where it would calibrate nothing."""
    world = spec.resources.gpus * spec.resources.nodes
    record = ThroughputRecord(gpu_product, spec.method.type, architecture_key or architecture.name or "",
                              tokens_per_second, world, flops_per_token(architecture, spec.training.max_seq_length),
                              spec.training.gradient_checkpointing)
    return record if world > 0 and tokens_per_second > 0 and measured_mfu(record) is not None else None
