"""Resume picks the newest complete checkpoint and skips a half-written one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune_trainer.checkpoints import newest_complete_checkpoint


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
