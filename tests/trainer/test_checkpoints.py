"""Resume picks the newest complete checkpoint, skips a half-written one, and continues the token count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune_trainer import train
from kubetune_trainer.checkpoints import newest_complete_checkpoint

from .conftest import ContextFactory


def _checkpoint(root: Path, step: int, state_step: int | None, weights: bool) -> None:
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if state_step is not None:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": state_step}))
    if weights:
        (folder / "adapter_model.safetensors").write_bytes(b"weights")


@pytest.mark.parametrize(
    ("checkpoints", "expected"),
    [
        ([(10, 10, True), (20, 20, True)], "checkpoint-20"),
        ([(10, 10, True), (20, None, True)], "checkpoint-10"),
        ([(10, 10, True), (20, 20, False)], "checkpoint-10"),
        ([(10, 10, True), (20, 10, True)], "checkpoint-10"),
        ([(9, 9, True), (10, 10, True)], "checkpoint-10"),
        ([], None),
    ],
    ids=[
        "the newest complete checkpoint wins",
        "one without trainer state is half-written and skipped",
        "one without weights is half-written and skipped",
        "one whose state names another step is skipped",
        "steps compare as numbers, not strings",
        "no checkpoint means a fresh start",
    ],
)
def test_newest_complete_checkpoint(tmp_path: Path, checkpoints: list[tuple[int, int | None, bool]],
                                    expected: str | None) -> None:
    for step, state_step, weights in checkpoints:
        _checkpoint(tmp_path, step, state_step, weights)

    found = newest_complete_checkpoint(tmp_path)

    assert (found.name if found else None) == expected


def test_the_token_count_continues_across_a_resume(make_context: ContextFactory, tmp_path: Path) -> None:
    straight = train.run(make_context({"training": {"maxSteps": 10, "saveSteps": 5}}, output_dir=tmp_path / "straight"))
    resumed_output = tmp_path / "resumed"
    first = train.run(make_context({"training": {"maxSteps": 5, "saveSteps": 5}}, output_dir=resumed_output))

    resumed = train.run(make_context({"training": {"maxSteps": 10, "saveSteps": 5}}, output_dir=resumed_output))

    assert resumed["resumed_from"] == str(resumed_output / "checkpoint-5")
    assert 0 < first["tokens_total"] < resumed["tokens_total"] == straight["tokens_total"]
    attempt_tokens = resumed["tokens_total"] - first["tokens_total"]
    assert resumed["tokens_per_second"] == pytest.approx(attempt_tokens / resumed["runtime_seconds"], rel=0.01)


def test_an_adjusted_attempt_resumes_with_a_smaller_micro_batch_and_the_same_effective_batch(
    make_context: ContextFactory, tmp_path: Path
) -> None:
    """What the operator does after an out-of-memory: the same output, batchSize halved, accumulation doubled."""
    output = tmp_path / "adjusted"
    first = train.run(make_context({"training": {"maxSteps": 4, "saveSteps": 2, "batchSize": 8,
                                                 "gradientAccumulationSteps": 1}}, output_dir=output))
    resumed = train.run(make_context({"training": {"maxSteps": 8, "saveSteps": 2, "batchSize": 4,
                                                   "gradientAccumulationSteps": 2}}, output_dir=output))
    straight = train.run(make_context({"training": {"maxSteps": 8, "saveSteps": 2, "batchSize": 8,
                                                    "gradientAccumulationSteps": 1}}, output_dir=tmp_path / "straight"))
    assert resumed["resumed_from"] == str(output / "checkpoint-4")
    assert resumed["steps"] == straight["steps"] == 8
    # Every optimizer step saw the same number of tokens: the count matches an uninterrupted run.
    assert 0 < first["tokens_total"] < resumed["tokens_total"] == straight["tokens_total"]
