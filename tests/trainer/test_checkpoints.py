"""Resume picks the newest complete checkpoint, skips a half-written one, and continues the token count."""

from __future__ import annotations

import json
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from kubetune import contract
from kubetune.api import TrainingSpec
from kubetune_trainer import train
from kubetune_trainer.checkpoints import completed_run, newest_complete_checkpoint

from .conftest import ContextFactory
from .test_observability import FakeKubeApi


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


def _finished_output(root: Path, *, step: int, state: dict[str, Any], summary_steps: int | None) -> Path:
    """An output folder as a run leaves it: checkpoint-<step> with its trainer state, and maybe the summary."""
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, **state}))
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    if summary_steps is not None:
        summary = {"steps": summary_steps, "final_loss": 4.9, "first_loss": 6.0, "epochs": 0.8,
                   "tokens_total": 1234, "peak_gpu_memory_gib": 12.5, "output_path": str(root / "final"),
                   "hub_url": None}
        (root / contract.SUMMARY_FILE_NAME).write_text(json.dumps(summary))
    return root


@pytest.mark.parametrize(
    ("training", "checkpoint", "summary_steps", "expected"),
    [
        ({"maxSteps": 200}, (200, {"max_steps": 200}), 200, (200, 200)),
        ({"maxSteps": 200}, (100, {"max_steps": 200}), None, None),
        ({"maxSteps": 300}, (200, {"max_steps": 200}), 200, None),
        ({"maxSteps": 200}, (200, {"max_steps": 200}), None, None),
        ({"maxSteps": 200}, (200, {"max_steps": 200}), 100, None),
        ({"epochs": 2}, (50, {"max_steps": 50, "epoch": 2.0}), 50, (50, 50)),
        ({"epochs": 1.5}, (38, {"max_steps": 38, "epoch": 1.52}), 38, (38, 38)),
        ({"epochs": 3}, (50, {"max_steps": 50, "epoch": 2.0}), 50, None),
        ({"epochs": 2}, (25, {"max_steps": 50, "epoch": 1.0}), None, None),
    ],
    ids=[
        "the last step of maxSteps with its summary is a finished run",
        "a checkpoint before maxSteps leaves training to do",
        "a raised maxSteps continues the run",
        "a final checkpoint without its summary is not finished: the results were not written",
        "a summary of an earlier step is not this run's end",
        "the last step of the epochs is a finished run",
        "a fraction of an epoch, rounded up to whole steps, is a finished run",
        "more epochs than the checkpoint planned continue the run",
        "a checkpoint halfway through the epochs leaves training to do",
    ],
)
def test_completed_run(tmp_path: Path, training: dict[str, Any], checkpoint: tuple[int, dict[str, Any]],
                       summary_steps: int | None, expected: tuple[int, int] | None) -> None:
    step, state = checkpoint  # the newest checkpoint's step and what its trainer state says beside global_step
    output = _finished_output(tmp_path, step=step, state=state, summary_steps=summary_steps)

    found = completed_run(output, TrainingSpec.model_validate(training))

    assert ((found.step, found.total_steps) if found else None) == expected


@pytest.mark.parametrize(
    "changes",
    [{"training": {"maxSteps": 6, "saveSteps": 3}},
     {"training": {"maxSteps": None, "epochs": 1, "saveSteps": 3}, "dataset": {"maxSamples": 48}}],
    ids=["a run of maxSteps", "a run of epochs (48 rows, 8 a step: 6 steps)"],
)
def test_a_rerun_of_a_finished_run_trains_nothing_and_keeps_its_results(
    make_context: ContextFactory, changes: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    context = make_context(changes, termination_log=None)
    assert train.run(context)["steps"] == 6
    summary_file = context.output_dir / contract.SUMMARY_FILE_NAME
    summary_before = summary_file.read_bytes()
    capsys.readouterr()

    code = train.execute(context)

    assert code == contract.ExitCode.OK
    assert "already complete (step 6/6)" in capsys.readouterr().out
    assert summary_file.read_bytes() == summary_before
    assert sorted(path.name for path in context.output_dir.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]


@pytest.mark.parametrize("failing", [False, True], ids=["a healthy API", "an API that answers 500"])
def test_an_attempt_after_completion_exits_0_at_once_and_restates_the_final_status(
    make_context: ContextFactory, tmp_path: Path, failing: bool
) -> None:
    api = FakeKubeApi(failing=failing)
    server = ThreadingHTTPServer(("127.0.0.1", 0), api.handler())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    output = _finished_output(tmp_path / "output", step=30, state={"max_steps": 30}, summary_steps=30)
    context = make_context({"training": {"maxSteps": 30}}, output_dir=output, job_name="demo", namespace="team-a",
                           api_url=f"http://127.0.0.1:{server.server_port}")
    try:
        code = train.execute(context)
    finally:
        server.shutdown()

    assert code == contract.ExitCode.OK
    assert not (tmp_path / "termination-log").exists()
    status = api.requests[-1]["body"]["status"]
    assert status["training"]["step"] == status["training"]["totalSteps"] == 30
    assert status["training"]["peakGpuMemoryGiB"] == 12.5 and status["training"]["loss"] == 4.9
    assert status["output"]["path"] == str(output / "final")


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
