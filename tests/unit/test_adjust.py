"""Out-of-memory adjustments: the next attempt keeps the training the same and fits what was learned."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.adjust import MAX_ADJUSTMENTS, apply_adjustments, decide
from kubetune.api import AdjustmentStatus
from kubetune.estimate import estimate
from kubetune.presets import effective_spec
from kubetune.validation import parse_spec

L4, A100 = ("NVIDIA-L4", 22.5), ("NVIDIA-A100-SXM4-80GB", 80.0)


def spec_of(**training: Any) -> Any:
    return effective_spec(parse_spec({
        "model": {"name": "meta-llama/Llama-3.2-1B"}, "dataset": {"name": "tatsu-lab/alpaca"},
        "resources": {"gpus": 1},
        "training": {"batchSize": 8, "gradientAccumulationSteps": 2, "maxSeqLength": 2048, **training},
    }))


def analytic(spec: Any) -> float:
    return estimate(spec).per_gpu_gib


def decision(spec: Any, *, gpu: float, products: list[tuple[str, float]] | None = None, done: int = 0) -> Any:
    return decide(spec, attempt=1, done=done, estimate_gib=analytic(spec), gpu_memory_gib=gpu,
                  gpu_product=(products or [L4])[0][0], products=products or [L4], estimator=analytic, margin=0.1)


def effective_batch(spec: Any) -> int:
    return spec.training.batch_size * spec.training.gradient_accumulation_steps


@pytest.mark.parametrize(
    ("training", "gpu", "products", "expected"),
    [
        ({"gradientCheckpointing": False}, 22.5, [L4],
         {"training": {"batchSize": 2, "gradientAccumulationSteps": 8}}),
        ({"gradientCheckpointing": False, "batchSize": 1, "gradientAccumulationSteps": 16}, 9.0, [("small", 9.0)],
         {"training": {"gradientCheckpointing": True}}),
        ({"gradientCheckpointing": True, "batchSize": 1, "maxSeqLength": 16384}, 6.0, [("small", 6.0), A100],
         {"resources": {"gpuProduct": A100[0]}}),
    ],
    ids=[
        "a smaller micro-batch with more accumulation comes first",
        "gradient checkpointing comes when the micro-batch is already one",
        "a GPU product with more memory comes last",
    ],
)
def test_adjustments_come_in_order(training: dict[str, Any], gpu: float, products: list[tuple[str, float]],
                                   expected: dict[str, Any]) -> None:
    spec = spec_of(**training)
    made = decision(spec, gpu=gpu, products=products)
    assert made.adjustment is not None, made.message
    assert made.adjustment.changes == expected
    adjusted = apply_adjustments(spec, [made.adjustment])
    assert effective_batch(adjusted) == effective_batch(spec)
    assert adjusted.training.max_seq_length == spec.training.max_seq_length  # never applied: shorter sequences
    assert adjusted.method == spec.method and adjusted.training.optimizer == spec.training.optimizer


def test_the_chosen_change_fits_the_lower_bound_the_failure_taught() -> None:
    spec = spec_of(gradientCheckpointing=False)  # estimated 39 GiB, yet out of memory on a 48 GiB GPU
    made = decision(spec, gpu=48.0, products=[("NVIDIA-A40", 48.0)])
    assert made.adjustment is not None
    adjusted = apply_adjustments(spec, [made.adjustment])
    ratio = 48.0 / analytic(spec)
    assert ratio > 1
    assert analytic(adjusted) * ratio <= 48.0 * 0.9
    assert analytic(apply_adjustments(spec, [made.adjustment])) < analytic(spec)
    assert "OutOfMemory at 48 GiB on NVIDIA-A40" in made.message and "attempt 2 with" in made.message


def test_after_the_cap_the_job_fails_with_the_numbers_and_only_suggests_what_alters_results() -> None:
    made = decision(spec_of(), gpu=22.5, done=MAX_ADJUSTMENTS)
    assert made.adjustment is None
    assert f"{MAX_ADJUSTMENTS} adjustments" in made.message and "qlora" in made.message


def test_nothing_that_fits_fails_rather_than_wasting_an_attempt() -> None:
    spec = spec_of(gradientCheckpointing=True, batchSize=1, maxSeqLength=16384)
    made = decision(spec, gpu=4.0, products=[("tiny", 4.0)])
    assert made.adjustment is None
    assert "no change that keeps the training the same fits" in made.message


def test_adjustments_accumulate_in_order() -> None:
    spec = spec_of(gradientCheckpointing=False)
    first = AdjustmentStatus(attempt=1, changes={"training": {"batchSize": 4, "gradientAccumulationSteps": 4}})
    second = AdjustmentStatus(attempt=2, changes={"training": {"gradientCheckpointing": True}})
    adjusted = apply_adjustments(spec, [first, second])
    assert (adjusted.training.batch_size, adjusted.training.gradient_accumulation_steps) == (4, 4)
    assert adjusted.training.gradient_checkpointing is True
    assert adjusted.model == spec.model


def test_gradient_accumulation_never_exceeds_its_bound() -> None:
    spec = spec_of(gradientCheckpointing=True, batchSize=64, gradientAccumulationSteps=4096)
    made = decision(spec, gpu=22.5, products=[L4])
    assert made.adjustment is None or "batchSize" not in made.adjustment.changes.get("training", {})


def test_an_adjustment_changes_only_what_adjustments_may_change() -> None:
    """status is writable by the trainer's own pod: a forged adjustment cannot swap the image or the data."""
    spec = spec_of()
    forged = AdjustmentStatus(attempt=1, changes={
        "image": "evil.example/miner:latest", "dataset": {"name": "other/data"},
        "training": {"batchSize": 4, "optimizer": "sgd"}, "resources": {"gpus": 8, "gpuProduct": "NVIDIA-L4"},
    })
    adjusted = apply_adjustments(spec, [forged])
    assert adjusted.training.batch_size == 4 and adjusted.resources.gpu_product == "NVIDIA-L4"
    assert adjusted.image == spec.image and adjusted.dataset == spec.dataset
    assert adjusted.training.optimizer == spec.training.optimizer and adjusted.resources.gpus == spec.resources.gpus


def test_adjustments_in_status_that_do_not_validate_are_skipped() -> None:
    from kubetune.reconcile import adjustments_of

    status = {"adjustments": [{"attempt": 1, "changes": {"training": {"batchSize": 2}}}, {"attempt": "x"}, "junk"]}
    assert [a.changes for a in adjustments_of(status)] == [{"training": {"batchSize": 2}}]
    assert adjustments_of({"adjustments": "junk"}) == []
