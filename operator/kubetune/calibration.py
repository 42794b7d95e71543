"""Calibration: measured GPU memory peaks flow back into later estimates.

Every attempt that ends (Succeeded, OutOfMemory, OOMKilled) yields a `CalibrationRecord`: the analytic
estimate and its breakdown, what was measured (the trainer's peak, or for a CUDA out-of-memory "at
least the GPU's memory"), and the facts that make two jobs the same *shape* (the model's dimensions,
method, quantization, checkpointing, strategy and world size). The operator keeps records in one
bounded store (a ConfigMap it owns; `Store`); `calibrate` is pure and takes the records as input,
so `kubetune estimate/plan --calibration FILE` gives the same answer offline as the operator live.

The rule (docs/estimator.md, "Calibration"):
- a record of the same shape whose tokens per micro-batch are within a factor of two counts;
- upward from a single record: the estimate becomes analytic x the largest measured/estimated ratio;
- downward only with `MIN_AGREEING_RECORDS` records whose ratios agree within `AGREEMENT`, all below 1,
  and never below analytic x (1 - the planner's safety margin);
- ratios are clamped to `MAX_RATIO`, so a corrupt or forged record cannot make every job unschedulable.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from kubetune import __version__
from kubetune.api import FineTuneJobSpec
from kubetune.estimate import VramEstimate
from kubetune.gpus import DEFAULT_SAFETY_MARGIN

# A record counts for a spec whose tokens per micro-batch are within this factor of the record's: the
# measured/estimated ratio is a property of the shape (allocator behaviour, kernels), not of one size.
TOKENS_FACTOR = 2.0
# Downward corrections need this many records of the shape that agree ...
MIN_AGREEING_RECORDS = 3
# ... within this relative spread (max ratio / min ratio - 1).
AGREEMENT = 0.10
# The largest correction a record may make (8-bit QLoRA measured 2.4x its analytic estimate on an H100).
MAX_RATIO = 3.0
# Store bounds: records per shape, shapes, and the serialized size (a ConfigMap holds at most 1 MiB).
RECORDS_PER_SHAPE = 8
MAX_SHAPES = 256
MAX_STORE_BYTES = 512 * 1024
# The ConfigMap the operator owns in its own namespace, and its key.
CONFIGMAP_NAME = "kubetune-calibration"
CONFIGMAP_KEY = "records.json"
# The CUDA context the driver holds outside PyTorch's allocator; the trainer's peak is the allocator's.
CUDA_CONTEXT_GIB = 0.6

Outcome = Literal["Succeeded", "OutOfMemory", "OOMKilled"]
Text = Annotated[str, StringConstraints(max_length=253)]
GiB = Annotated[float, Field(ge=0, le=1e6)]


class CalibrationRecord(BaseModel):
    """One finished attempt: what was estimated and what was measured."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: Text
    """<FineTuneJob uid>/<attempt>: writing the same record twice is a no-op."""
    shape: Text
    """The shape key (`shape_key`)."""
    tokens: int = Field(ge=1, le=2**40)
    """Tokens per micro-batch per GPU (batchSize x maxSeqLength)."""
    method: Text
    estimate_gib: GiB = Field(alias="estimateGiB")
    """The analytic estimate per GPU (no calibration)."""
    measured_gib: GiB = Field(alias="measuredGiB")
    """The measured peak per GPU (allocator peak + CUDA context); a lower bound when lowerBound."""
    lower_bound: bool = Field(default=False, alias="lowerBound")
    """True for an out-of-memory: the job needed at least measuredGiB."""
    outcome: Outcome
    gpu_product: Text | None = Field(default=None, alias="gpuProduct")
    breakdown: dict[Annotated[str, StringConstraints(max_length=32)], GiB] = Field(
        default_factory=dict, max_length=16
    )
    version: Text = __version__
    """The kubetune version that estimated and trained."""

    @property
    def ratio(self) -> float:
        """measured / estimated, clamped to [1 / MAX_RATIO, MAX_RATIO]."""
        if self.estimate_gib <= 0:
            return 1.0
        return min(MAX_RATIO, max(1 / MAX_RATIO, self.measured_gib / self.estimate_gib))

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


@dataclass(frozen=True)
class Calibration:
    """What calibration did to one estimate."""

    analytic_gib: float
    calibrated_gib: float
    records: int  # records of this shape that informed it
    ratio: float  # calibrated / analytic
    note: str


def shape_key(spec: FineTuneJobSpec, estimate: VramEstimate) -> str:
    """What makes two jobs the same for calibration: the model's dimensions, method, quantization,
    checkpointing, attention, packing, kernels, strategy and GPUs. Model names are not part of it (a
    fine-tune of a fine-tune is the same shape); tokens per micro-batch are matched separately (TOKENS_FACTOR)."""
    quantization = spec.method.quantization if spec.method.type == "qlora" else None
    bits = f"q{quantization.bits}" if quantization else spec.model.dtype
    checkpointing = "ckpt" if spec.training.gradient_checkpointing else "nockpt"
    world = spec.resources.gpus * spec.resources.nodes
    training = spec.training
    layout = f"{spec.model.attention}|{'packed' if training.packing else 'padded'}|kernels-{training.kernels}"
    return (f"{estimate.architecture_key}|{spec.method.type}|{bits}|{checkpointing}|{layout}|"
            f"{estimate.strategy}x{world}")


def tokens_per_micro_batch(spec: FineTuneJobSpec) -> int:
    return spec.training.batch_size * spec.training.max_seq_length


def matching(records: Iterable[CalibrationRecord], shape: str, tokens: int) -> list[CalibrationRecord]:
    """The records that speak for a spec of this shape and size."""
    return [r for r in records if r.shape == shape and 1 / TOKENS_FACTOR <= r.tokens / tokens <= TOKENS_FACTOR]


def correction(analytic_gib: float, records: Sequence[CalibrationRecord],
               margin: float = DEFAULT_SAFETY_MARGIN) -> Calibration:
    """The calibrated estimate from the records of its shape (see the module's rule)."""
    if not records:
        return Calibration(analytic_gib, analytic_gib, 0, 1.0, "no measured run of this shape yet")
    ratios = [r.ratio for r in records]
    highest = max(ratios)
    if highest > 1:
        what = "an out-of-memory at" if records[ratios.index(highest)].lower_bound else "a measured peak of"
        source = records[ratios.index(highest)]
        return Calibration(analytic_gib, analytic_gib * highest, len(records), highest,
                           f"raised x{highest:.2f}: {what} {source.measured_gib:.1f} GiB against an estimate "
                           f"of {source.estimate_gib:.1f} ({len(records)} run(s) of this shape)")
    agree = highest / min(ratios) - 1 <= AGREEMENT
    if len(records) >= MIN_AGREEING_RECORDS and agree:
        ratio = max(highest, 1 - margin)
        return Calibration(analytic_gib, analytic_gib * ratio, len(records), ratio,
                           f"lowered x{ratio:.2f}: {len(records)} agreeing runs of this shape peaked at "
                           f"x{min(ratios):.2f}-x{highest:.2f} of their estimates (floor: the {margin:.0%} margin)")
    return Calibration(analytic_gib, analytic_gib, len(records), 1.0,
                       f"kept: {len(records)} run(s) of this shape peaked below the estimate; lowering needs "
                       f"{MIN_AGREEING_RECORDS} that agree within {AGREEMENT:.0%}")


def calibrate(estimate: VramEstimate, spec: FineTuneJobSpec, records: Iterable[CalibrationRecord],
              margin: float = DEFAULT_SAFETY_MARGIN) -> VramEstimate:
    """The estimate the planner uses: the analytic one corrected by measured runs of the same shape.
    `spec` is the effective spec (presets resolved), the one `estimate` was made from."""
    shape = shape_key(spec, estimate)
    found = matching(records, shape, tokens_per_micro_batch(spec))
    result = correction(estimate.per_gpu_gib, found, margin)
    return estimate.calibrated(result.calibrated_gib, result.records, result.note)


# ------------------------------------------------------------------------------------------ records


def measured_record(
    *, uid: str, attempt: int, spec: FineTuneJobSpec, estimate: VramEstimate, outcome: Outcome,
    peak_gib: float | None, gpu_memory_gib: float | None, gpu_product: str | None,
) -> CalibrationRecord | None:
    """The record of a finished attempt, or None when nothing was measured.

    Succeeded: the trainer's peak (allocator) + the CUDA context. OutOfMemory: at least the GPU's
    memory (or the peak reported before it died, if larger). OOMKilled is the host's memory limit: it
    says nothing about the GPU beyond the peak the trainer reported before, which is then a lower bound.
    """
    if estimate.strategy == "cpu":
        return None
    measured = peak_gib + CUDA_CONTEXT_GIB if peak_gib else None
    lower_bound = outcome != "Succeeded"
    if outcome == "OutOfMemory" and gpu_memory_gib:
        measured = max(measured or 0.0, gpu_memory_gib)
    if measured is None or (lower_bound and measured <= estimate.analytic_gib):
        return None  # a lower bound under the estimate teaches nothing
    return CalibrationRecord(
        id=f"{uid}/{attempt}", shape=shape_key(spec, estimate),
        tokens=tokens_per_micro_batch(spec), method=spec.method.type, estimate_gib=round(estimate.analytic_gib, 3),
        measured_gib=round(measured, 3), lower_bound=lower_bound, outcome=outcome, gpu_product=gpu_product,
        breakdown={k: v for k, v in list(estimate.breakdown.items())[:16]},
    )


class Store:
    """The bounded set of records (in memory; the operator writes it to its ConfigMap)."""

    def __init__(self, records: Iterable[CalibrationRecord] = ()) -> None:
        self._records: list[CalibrationRecord] = []
        for record in records:
            self.add(record)

    @property
    def records(self) -> tuple[CalibrationRecord, ...]:
        return tuple(self._records)

    def add(self, record: CalibrationRecord) -> bool:
        """Add a record (False when it is there already); the oldest go first past the bounds."""
        if any(r.id == record.id for r in self._records):
            return False
        self._records.append(record)
        same = [r for r in self._records if r.shape == record.shape]
        for old in same[:-RECORDS_PER_SHAPE]:
            self._records.remove(old)
        shapes = list(dict.fromkeys(r.shape for r in reversed(self._records)))  # newest first
        for gone in shapes[MAX_SHAPES:]:
            self._records = [r for r in self._records if r.shape != gone]
        while len(self.dumps()) > MAX_STORE_BYTES:
            del self._records[0]
        return True

    def dumps(self) -> str:
        return json.dumps({"version": 1, "records": [r.to_wire() for r in self._records]}, separators=(",", ":"))

    @classmethod
    def loads(cls, text: str) -> Store:
        """The store from its JSON; records that do not validate are dropped (the store is input too)."""
        if len(text) > 2 * MAX_STORE_BYTES:
            raise ValueError(f"calibration data is {len(text):,} bytes; at most {2 * MAX_STORE_BYTES:,} are read")
        data = json.loads(text)
        raw = data.get("records") if isinstance(data, dict) else data
        if not isinstance(raw, list):
            raise ValueError("calibration data: expected {'records': [...]}")
        records = []
        for item in raw:
            try:
                record = CalibrationRecord.model_validate(item)
            except ValidationError:
                continue
            if math.isfinite(record.estimate_gib) and math.isfinite(record.measured_gib):
                records.append(record)
        return cls(records)

    def configmap(self, namespace: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": CONFIGMAP_NAME, "namespace": namespace,
                         "labels": {"app.kubernetes.io/managed-by": "kubetune",
                                    "app.kubernetes.io/component": "calibration"}},
            "data": {CONFIGMAP_KEY: self.dumps()},
        }


def store_from_configmap(configmap: dict[str, Any] | None) -> Store:
    """The store a calibration ConfigMap holds (an empty store for none)."""
    text = ((configmap or {}).get("data") or {}).get(CONFIGMAP_KEY)
    return Store.loads(str(text)) if text else Store()


def store_from_file_text(text: str) -> Store:
    """A store from `--calibration FILE`: the records JSON, or the ConfigMap as kubectl prints it (YAML/JSON)."""
    import yaml

    stripped = text.lstrip()
    if stripped.startswith("{") and '"records"' in stripped[:200]:
        return Store.loads(text)
    document = yaml.safe_load(text)
    if isinstance(document, dict) and isinstance(document.get("data"), dict):
        return Store.loads(str(document["data"].get(CONFIGMAP_KEY) or '{"records": []}'))
    if isinstance(document, dict) and "records" in document:
        return Store.loads(json.dumps(document))
    raise ValueError(f"expected the {CONFIGMAP_NAME} ConfigMap or its {CONFIGMAP_KEY}")
