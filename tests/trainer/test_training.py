"""Real fine-tunes of the tiny model on CPU: every method learns, masks, packs, saves and resumes."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest
import torch
import trl.trainer.utils as trl_utils
from trl import SFTTrainer

from kubetune import contract
from kubetune.api import LrScheduler
from kubetune_trainer import train
from kubetune_trainer.checkpoints import newest_complete_checkpoint
from kubetune_trainer.progress import ProgressTracker

from .conftest import MOUNT, ContextFactory


@pytest.mark.parametrize(
    "changes",
    [
        {"method": {"type": "lora"}},
        {"method": {"type": "full", "lora": None}, "training": {"learningRate": 1e-3}},
        {"method": {"type": "lora", "lora": {"targetModules": ["q_proj", "v_proj"], "useRslora": True}}},
        {"method": {"type": "lora", "lora": {"useDora": True}}},
    ],
    ids=[
        "lora on all linear layers lowers the loss over 30 steps",
        "full fine-tuning lowers the loss over 30 steps",
        "rslora on explicit q/v projections lowers the loss",
        "dora lowers the loss",
    ],
)
def test_training_lowers_the_loss(make_context: ContextFactory, changes: dict) -> None:
    report = train.run(make_context(changes))

    assert report["steps"] == 30
    assert report["final_loss"] < report["first_loss"] - 0.25  # noise is below 0.05 here
    assert report["trainable_parameters"] < report["total_parameters"] or changes["method"]["type"] == "full"


def test_qlora_4bit_runs_on_cpu_and_saves_an_adapter(make_context: ContextFactory) -> None:
    context = make_context({"method": {"type": "qlora", "quantization": {"bits": 4, "type": "nf4"}},
                            "training": {"maxSteps": 4}})
    report = train.run(context)

    final = Path(report["output_path"])
    assert (final / "adapter_model.safetensors").is_file()
    assert json.loads((final / "adapter_config.json").read_text())["r"] == 8
    assert report["trainable_parameters"] < report["total_parameters"] / 2


def test_chat_completion_only_loss_masks_exactly_the_prompt(make_context: ContextFactory) -> None:
    context = make_context({"dataset": {"path": f"{MOUNT}/chat.jsonl"}})
    built = train.build_run(context, ProgressTracker())
    row = built.trainer.train_dataset[0]

    labels, ids = row["labels"], row["input_ids"]
    first_trained = next(index for index, label in enumerate(labels) if label != -100)
    prompt_part = built.tokenizer.decode(ids[:first_trained])
    assert prompt_part.endswith("<|assistant|>\n")
    assert "<|user|>" in prompt_part
    assert labels[first_trained:] == ids[first_trained:]
    assert built.tokenizer.decode(ids[first_trained:]).startswith("There are")


def test_packing_fills_sequences_with_several_examples(make_context: ContextFactory) -> None:
    unpacked = train.build_run(make_context(), ProgressTracker()).trainer.train_dataset
    packed = train.build_run(make_context({"training": {"packing": True}}), ProgressTracker()).trainer.train_dataset

    assert len(packed) < len(unpacked) / 1.5
    assert max(len(row["input_ids"]) for row in packed) <= 64
    assert sum(len(row["input_ids"]) for row in packed) == sum(len(row["input_ids"]) for row in unpacked)


def test_resume_continues_the_step_count_and_the_optimizer_state(make_context: ContextFactory, tmp_path: Path) -> None:
    output = tmp_path / "resumed"
    first = train.run(make_context({"training": {"maxSteps": 10, "saveSteps": 10}}, output_dir=output))
    checkpoint = newest_complete_checkpoint(output)
    assert first["steps"] == 10 and checkpoint is not None and checkpoint.name == "checkpoint-10"
    saved_optimizer = torch.load(checkpoint / "optimizer.pt", weights_only=False)

    context = make_context({"training": {"maxSteps": 20, "saveSteps": 10}}, output_dir=output)
    built = train.build_run(context, ProgressTracker())
    assert built.resumed_from == checkpoint
    result = train.train(built)

    assert built.trainer.state.global_step == 20
    assert result.global_step == 20
    step_state = built.trainer.optimizer.state_dict()["state"]
    assert min(int(s["step"]) for s in step_state.values()) == 20  # 10 restored + 10 new steps
    assert len(saved_optimizer["state"]) == len(step_state)


def test_summary_holds_the_contracted_numbers(make_context: ContextFactory, tmp_path: Path) -> None:
    context = make_context({"dataset": {"evalFraction": 0.1}, "training": {"maxSteps": 5},
                            "evaluation": {"metrics": ["loss", "perplexity", "rouge"], "maxNewTokens": 8,
                                           "maxSamples": 4}})
    train.run(context)

    summary = json.loads((context.output_dir / contract.SUMMARY_FILE_NAME).read_text())
    assert summary["perplexity"] == pytest.approx(2.718281828 ** summary["eval_loss"], rel=1e-6)
    assert set(summary["rouge"]) == {"rouge1", "rouge2", "rougeL"}
    assert summary["tokens_per_second"] > 0 and summary["runtime_seconds"] > 0
    assert summary["trainable_parameters"] > 0
    assert summary["kernels"] == {"liger": False, "reason": "no CUDA GPU", "packing": "off",
                                  "optimizer": "adamw_torch", "loraInputs": "peft default"}
    assert summary["checkpoints"]["async"] is False and "lora" in summary["checkpoints"]["reason"]
    assert (context.output_dir / "final" / "tokenizer.json").is_file()


def test_merge_adapter_saves_a_plain_model_with_the_adapter_in_it(make_context: ContextFactory,
                                                                   data_root: Path) -> None:
    from transformers import AutoModelForCausalLM

    context = make_context({"training": {"maxSteps": 3}, "output": {"mergeAdapter": True}})
    train.run(context)

    merged = AutoModelForCausalLM.from_pretrained(context.output_dir / "merged")
    names = [name for name, _ in merged.named_parameters()]
    assert names and not any("lora" in name for name in names)
    assert (context.output_dir / "merged" / "tokenizer.json").is_file()
    base = AutoModelForCausalLM.from_pretrained(data_root / "model")
    weight = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[weight], base.state_dict()[weight])


@pytest.mark.parametrize("scheduler", typing.get_args(LrScheduler), ids=lambda name: f"{name} schedules the steps")
def test_every_scheduler_of_the_api_trains(make_context: ContextFactory, scheduler: str) -> None:
    context = make_context({"training": {"maxSteps": 4, "loggingSteps": 1, "lrScheduler": scheduler, "evalSteps": 2,
                                         "warmupRatio": 0.25}, "dataset": {"evalFraction": 0.05}})

    report = train.run(context)

    assert report["steps"] == 4


@pytest.mark.parametrize(
    ("optimizer", "implementation"),
    [("adamw_torch", "torch.optim.adamw.AdamW"), ("adamw_8bit", "bitsandbytes.optim.adamw.AdamW"),
     ("adafactor", "transformers.optimization.Adafactor"), ("sgd", "torch.optim.sgd.SGD")],
    ids=lambda value: f"{value} trains on a CPU" if value in train.OPTIMIZERS else value,
)
def test_each_optimizer_is_the_one_asked_for(make_context: ContextFactory, optimizer: str, implementation: str) -> None:
    built = train.build_run(make_context({"training": {"maxSteps": 3, "optimizer": optimizer}}), ProgressTracker())

    train.train(built)

    assert built.trainer.state.global_step == 3
    used = type(built.trainer.optimizer.optimizer)
    assert f"{used.__module__}.{used.__name__}" == implementation


def test_push_to_hub_uploads_the_result_and_reports_its_url(make_context: ContextFactory,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    calls: list[tuple[str, dict]] = []

    class RecordingHub:
        def __init__(self, token: str | None = None) -> None:
            calls.append(("token", {"token": token}))

        def create_repo(self, repo_id: str, **kwargs: object) -> None:
            calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

        def upload_folder(self, **kwargs: object) -> None:
            calls.append(("upload_folder", kwargs))

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHub)
    context = make_context({"training": {"maxSteps": 2}, "output": {"pushToHub": {"repo": "me/tiny-lora"}},
                            "hfTokenSecretRef": {"name": "hf"}}, hf_token="hf_secret")

    report = train.run(context)

    assert report["hub_url"] == "https://huggingface.co/me/tiny-lora"
    assert calls[0] == ("token", {"token": "hf_secret"})
    assert calls[1] == ("create_repo", {"repo_id": "me/tiny-lora", "private": True, "exist_ok": True})
    assert calls[2][0] == "upload_folder" and calls[2][1]["folder_path"] == report["output_path"]


@pytest.mark.parametrize(
    ("step", "logging_first_step", "logged"),
    [(1, True, True), (1, False, False), (2, True, False), (5, True, True), (7, False, False), (10, False, True)],
    ids=[
        "the first step is logged when logging_first_step asks",
        "the first step is not logged otherwise",
        "a step between logs is not logged",
        "every loggingSteps-th step is logged",
        "a step between logs is not logged without the first step either",
        "a multiple of loggingSteps is logged",
    ],
)
def test_the_steps_the_trainer_logs(step: int, logging_first_step: bool, logged: bool) -> None:
    assert train.is_logged_step(step, 5, logging_first_step) is logged


def test_an_unlogged_step_has_trls_loss_without_its_metrics(make_context: ContextFactory,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = train.build_run(make_context(), ProgressTracker()).trainer
    trainer.model.train()
    trainer.state.global_step, trainer.state.logging_steps = 1, 5  # the step being trained, 2, is not logged
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    head_outputs: list[tuple[str, ...]] = []
    chunked = trl_utils._ChunkedLogProbFunction

    class RecordingHead(chunked):  # type: ignore[misc, valid-type]
        @staticmethod
        def apply(*args: typing.Any) -> typing.Any:
            head_outputs.append(args[-1])
            return chunked.apply(*args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", RecordingHead)

    kubetune_loss = trainer.compute_loss(trainer.model, dict(batch))
    assert head_outputs == [("log_probs",)] and not trainer._metrics["train"]
    trl_loss = SFTTrainer.compute_loss(trainer, trainer.model, dict(batch))
    assert head_outputs[1] == ("log_probs", "entropy", "is_top1")
    assert {"entropy", "mean_token_accuracy", "num_tokens"} <= set(trainer._metrics["train"])
    assert kubetune_loss.item() == pytest.approx(trl_loss.item(), rel=1e-6)


def test_the_token_count_of_padded_batches_is_trls(make_context: ContextFactory) -> None:
    """Packed rows are counted by their collator (TRL counts one row's length there): test_packing.py."""
    built = train.build_run(make_context({"training": {"maxSteps": 6, "loggingSteps": 1}}), ProgressTracker())
    train.train(built)  # every step logged: TRL counts each one itself

    assert built.trainer.state.num_input_tokens_seen == built.trainer._total_train_tokens > 0
    assert built.tracker.progress.tokens_total == built.trainer._total_train_tokens


def test_logs_report_trls_metrics_at_logging_cadence(make_context: ContextFactory) -> None:
    built = train.build_run(make_context({"training": {"maxSteps": 10, "loggingSteps": 5}}), ProgressTracker())
    train.train(built)

    logged = [entry for entry in built.trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logged] == [1, 5, 10]
    assert all({"entropy", "mean_token_accuracy", "num_tokens"} <= set(entry) for entry in logged)
    assert built.tracker.progress.tokens_total == built.trainer.state.num_input_tokens_seen
