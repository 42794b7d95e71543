"""Recovering from a CUDA out-of-memory: the next attempt with changes that keep the training the same.

With `spec.training.onOutOfMemory: Adjust`, an attempt that ends OutOfMemory is followed by one that
changes, in this order, the first thing that makes it fit:
1. a smaller micro-batch with more gradient accumulation, so the effective batch is unchanged;
2. gradient checkpointing (with the largest micro-batch that then fits);
3. a GPU product with more memory, when the cluster has one.
"Fits" means: the analytic estimate of the changed spec, scaled by what the failed attempt taught (it
needed at least the GPU's memory: `ratio` >= memory / its estimate), within the planner's margin.
Changes that alter results (quantization, an 8-bit optimizer, shorter sequences) are only suggested.
The user's spec is never edited: adjustments live in status.adjustments and in the attempt's ConfigMap.
Pure: the estimator is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from kubetune.api import AdjustmentStatus, FineTuneJobSpec
from kubetune.validation import SpecError, parse_effective_spec

# At most this many adjusted attempts per FineTuneJob; the next out-of-memory fails it with the numbers.
MAX_ADJUSTMENTS = 3
# The bound validation puts on gradientAccumulationSteps (api.TrainingSpec).
MAX_GRADIENT_ACCUMULATION = 4096
SUGGESTED_ONLY = ("method qlora (4-bit)", "optimizer adamw_8bit", "a shorter maxSeqLength")
# The only fields an adjustment may change (section -> fields): status is writable by the trainer's own pod,
# so anything else found in status.adjustments is ignored rather than trusted.
ADJUSTABLE = {"training": ("batchSize", "gradientAccumulationSteps", "gradientCheckpointing"),
              "resources": ("gpuProduct",)}

Estimator = Callable[[FineTuneJobSpec], float]  # spec -> analytic GiB per GPU


@dataclass(frozen=True)
class Candidate:
    patch: dict[str, Any]  # wire-form merge patch of spec
    words: str  # what changes, for people


def apply_adjustments(spec: FineTuneJobSpec, adjustments: Iterable[AdjustmentStatus]) -> FineTuneJobSpec:
    """The effective spec with every adjustment so far applied, in order (checked by the field rules)."""
    adjustments = list(adjustments)
    if not adjustments:
        return spec
    wire = spec.to_wire()
    for adjustment in adjustments:
        wire = _merge(wire, _adjustable(adjustment.changes))
    return parse_effective_spec(wire)


def _adjustable(changes: dict[str, Any]) -> dict[str, Any]:
    """The part of a patch an adjustment may make (ADJUSTABLE); the rest is dropped."""
    kept: dict[str, Any] = {}
    for section, fields in ADJUSTABLE.items():
        values = changes.get(section)
        if isinstance(values, dict):
            allowed = {name: value for name, value in values.items() if name in fields}
            if allowed:
                kept[section] = allowed
    return kept


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in patch.items():
        merged[key] = _merge(merged.get(key) or {}, value) if isinstance(value, dict) else value
    return merged


def _divisors_below(n: int) -> list[int]:
    return [d for d in range(n - 1, 0, -1) if n % d == 0]


def _smaller_batches(spec: FineTuneJobSpec, checkpointing: bool | None) -> Iterator[Candidate]:
    training = spec.training
    for batch in _divisors_below(training.batch_size):
        accumulation = training.gradient_accumulation_steps * (training.batch_size // batch)
        if accumulation > MAX_GRADIENT_ACCUMULATION:
            break
        patch: dict[str, Any] = {"batchSize": batch, "gradientAccumulationSteps": accumulation}
        words = f"batchSize {batch} x gradientAccumulationSteps {accumulation}"
        if checkpointing:
            patch["gradientCheckpointing"] = True
            words = f"gradientCheckpointing on, {words}"
        yield Candidate({"training": patch}, words)


def candidates(
    spec: FineTuneJobSpec, products: Sequence[tuple[str, float]], gpu_memory_gib: float
) -> Iterator[Candidate]:
    """Every change that keeps the training the same, in the order they are tried."""
    yield from _smaller_batches(spec, None)
    if not spec.training.gradient_checkpointing:
        yield Candidate({"training": {"gradientCheckpointing": True}}, "gradientCheckpointing on")
        yield from _smaller_batches(spec, True)
    for product, memory in sorted(products, key=lambda pair: pair[1]):
        if memory > gpu_memory_gib:
            yield Candidate({"resources": {"gpuProduct": product}}, f"gpuProduct {product} ({memory:g} GiB)")


@dataclass(frozen=True)
class Decision:
    """The next adjustment, or why there is none (then the job fails with `message`)."""

    adjustment: AdjustmentStatus | None
    message: str


def decide(
    spec: FineTuneJobSpec,
    *,
    attempt: int,
    done: int,
    estimate_gib: float,
    gpu_memory_gib: float,
    gpu_product: str | None,
    products: Sequence[tuple[str, float]],
    estimator: Estimator,
    margin: float,
    resume: str = "",
) -> Decision:
    """What attempt `attempt + 1` changes after attempt `attempt` ran out of memory (pure).

    `spec` is the effective spec the failed attempt ran (adjustments so far applied); `estimate_gib`
    its analytic estimate; `gpu_memory_gib` the memory of the GPU it ran on; `resume` says where the next
    attempt starts ("resumes from checkpoint-400"), for the message.
    """
    where = f"on {gpu_product}" if gpu_product else "on its GPU"
    ratio = max(1.0, gpu_memory_gib / estimate_gib) if estimate_gib > 0 else 1.0
    lead = f"OutOfMemory at {gpu_memory_gib:g} GiB {where} (estimate {estimate_gib:.1f})"
    suggestions = f"changes that alter the training are only suggested: {', '.join(SUGGESTED_ONLY)}"
    if done >= MAX_ADJUSTMENTS:
        return Decision(None, f"{lead}; {done} adjustments made already (at most {MAX_ADJUSTMENTS}); {suggestions}")
    for candidate in candidates(spec, products, gpu_memory_gib):
        try:
            changed = apply_adjustments(spec, [AdjustmentStatus(attempt=attempt, changes=candidate.patch)])
        except SpecError:
            continue  # never propose what validation refuses
        memory = dict(products).get(changed.resources.gpu_product or "", gpu_memory_gib)
        needed = estimator(changed) * ratio
        if needed <= memory * (1 - margin):
            message = (f"{lead}; attempt {attempt + 1}{' ' + resume if resume else ''} with {candidate.words} "
                       f"(needs about {needed:.1f} GiB of {memory:g})")
            return Decision(AdjustmentStatus(attempt=attempt, changes=candidate.patch, message=message), message)
    return Decision(None, f"{lead}; no change that keeps the training the same fits "
                          f"(smaller micro-batches, gradient checkpointing, a larger GPU product); {suggestions}")
