"""One training run: spec -> model + data -> TRL SFTTrainer -> checkpoints, artefacts, summary.

`run(context)` is the whole run; `python -m kubetune_trainer` and `kubetune train` both call it.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import MutableMapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from accelerate.utils import is_peft_model
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints
from trl import SFTConfig, SFTTrainer
from trl.trainer.utils import add_fused_lm_head

from kubetune import contract
from kubetune.api import FineTuneJobSpec, OutputStatus
from kubetune.estimate import estimate
from kubetune_trainer import checkpoint_writes, checkpoints, data, evaluation, kernels, packing, sharding, vision
from kubetune_trainer import model as models
from kubetune_trainer.context import RunContext, is_main_process
from kubetune_trainer.errors import (
    ConfigError,
    GpuOutOfMemoryError,
    TrainerError,
    TrainingInterruptedError,
    write_termination_message,
)
from kubetune_trainer.launch import parallelism
from kubetune_trainer.progress import (
    GIB,
    Listener,
    Progress,
    ProgressCallback,
    ProgressTracker,
    gpu_memory,
    gpu_peak_allocated_bytes,
)
from kubetune_trainer.ranks import RankMemoryCallback

log = logging.getLogger(__name__)

# spec.training.optimizer -> the transformers `optim` name.
OPTIMIZERS = {
    "adamw_torch": "adamw_torch",
    "adamw_8bit": "adamw_bnb_8bit",
    "paged_adamw_8bit": "paged_adamw_8bit",
    "adafactor": "adafactor",
    "sgd": "sgd",
}
# cosine_with_min_lr decays to this fraction of the peak learning rate.
MIN_LR_RATE = 0.1
# warmup_stable_decay decays over the last tenth of the steps (the usual WSD recipe).
WSD_DECAY_FRACTION = 0.1
FINAL_DIR, MERGED_DIR = "final", "merged"


@dataclass(frozen=True)
class Environment:
    """The hardware this process trains on."""

    device: models.Device
    device_index: int | None
    bf16_supported: bool
    capability: tuple[int, int] | None
    world_size: int


def detect_environment() -> Environment:
    import torch

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if not torch.cuda.is_available():
        return Environment("cpu", None, False, None, world_size)
    index = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(index)
    return Environment("cuda", index, torch.cuda.is_bf16_supported(), torch.cuda.get_device_capability(index),
                       world_size)


def estimated_gib(spec: FineTuneJobSpec) -> tuple[float | None, str | None]:
    """kubetune's estimate of the peak GPU memory per GPU and its strategy; (None, None) when unknown."""
    try:
        result = estimate(spec)
    except ValueError as exc:  # UnknownModelError: a model outside the catalog without an architecture
        log.info("no GPU memory estimate: %s", exc)
        return None, None
    return result.per_gpu_gib, result.strategy


def shards_with_fsdp(strategy: str | None, environment: Environment) -> bool:
    return strategy == "fsdp" and environment.world_size > 1


def training_arguments(
    spec: FineTuneJobSpec, output_dir: Path, *, precision: models.Precision, environment: Environment,
    has_eval: bool, interactive: bool, strategy: str | None, kernel_choice: kernels.KernelChoice,
) -> Any:
    """TRL's SFTConfig from the effective spec and the fast paths chosen for this machine."""

    training = spec.training
    evaluate_during = has_eval and training.eval_steps is not None
    report_to = ["tensorboard"] if _tensorboard_installed() else []
    fsdp = shards_with_fsdp(strategy, environment)
    return SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=training.epochs,
        max_steps=training.max_steps or -1,
        per_device_train_batch_size=training.batch_size,
        per_device_eval_batch_size=training.batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        learning_rate=training.learning_rate,
        lr_scheduler_type=training.lr_scheduler,
        lr_scheduler_kwargs={"min_lr_rate": MIN_LR_RATE} if training.lr_scheduler == "cosine_with_min_lr" else None,
        warmup_steps=training.warmup_ratio,  # a float below 1 is a fraction of the total steps
        weight_decay=training.weight_decay,
        max_grad_norm=training.max_grad_norm,
        optim=kernel_choice.optimizer,
        use_liger_kernel=kernel_choice.liger,
        seed=training.seed,
        # transformers 5's names: gradient_checkpointing* are deprecated aliases (TRL defaults the old one to True)
        activation_checkpointing=training.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if training.gradient_checkpointing else None,
        bf16=precision.bf16,
        fp16=precision.fp16,
        use_cpu=environment.device == "cpu",
        logging_steps=training.logging_steps,
        # The filter reads every micro-batch's loss on the host (isnan, isinf: two syncs); off, a NaN loss shows in
        # the logged average instead of being hidden.
        logging_nan_inf_filter=False,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=training.save_steps,
        save_total_limit=training.save_total_limit,
        eval_strategy="steps" if evaluate_during else "no",
        eval_steps=training.eval_steps if evaluate_during else None,
        max_length=training.max_seq_length,
        packing=training.packing,
        padding_free=kernel_choice.padding_free,
        completion_only_loss=training.completion_only_loss,
        report_to=report_to,
        disable_tqdm=not interactive,
        ddp_find_unused_parameters=False,
        fsdp=fsdp,  # type: ignore[arg-type]  # annotated str, documented and read as a bool ("fsdp=True")
        fsdp_config=sharding.fsdp_config() if fsdp else None,
        dataloader_pin_memory=environment.device == "cuda",
    )


def _tensorboard_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def quiet_libraries() -> None:
    """No per-map and per-shard progress bars from datasets and transformers, no warnings about choices kubetune
    makes on purpose: the log stays readable."""
    import datasets
    from transformers.utils import logging as transformers_logging

    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()
    # kubetune asks for Liger's layer kernels on purpose (kernels.py); TRL's pointer to Hub kernels is noise here.
    warnings.filterwarnings("ignore", message=r"`use_liger_kernel=True` is deprecated", category=FutureWarning)


def use_own_console_output(trainer: Any, *, interactive: bool) -> None:
    """ProgressPrinter writes the loss lines; the Trainer keeps only its progress bar (interactive runs)."""
    from transformers.trainer_callback import PrinterCallback
    from transformers.trainer_callback import ProgressCallback as BarCallback

    class ProgressBarOnly(BarCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            return

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(BarCallback)
    if interactive:
        trainer.add_callback(ProgressBarOnly())


class ProgressPrinter:
    """A loss line per new log (the progress bar shows the rest); repeats of the same numbers are skipped."""

    def __init__(self) -> None:
        self._last: tuple[int, float | None, float | None] | None = None

    def __call__(self, progress: Progress, milestone: str | None) -> None:
        shown = (progress.step, progress.loss, progress.eval_loss)
        if milestone is not None or progress.loss is None or shown == self._last:
            return
        self._last = shown
        parts = [f"step {progress.step}/{progress.total_steps}", f"loss {progress.loss:.4f}"]
        if progress.eval_loss is not None:
            parts.append(f"eval_loss {progress.eval_loss:.4f}")
        if progress.learning_rate is not None:
            parts.append(f"lr {progress.learning_rate:.2e}")
        if progress.tokens_per_second is not None:
            parts.append(f"{progress.tokens_per_second:,.0f} tokens/s")
        print("  ".join(parts), flush=True)


@dataclass
class Run:
    """What a run built, kept for the final steps and for tests."""

    trainer: Any
    tokenizer: Any
    tracker: ProgressTracker
    stop: checkpoints.StopOnSignal
    resumed_from: Path | None
    eval_rows: Any
    estimate_gib: float | None
    trainable_parameters: int
    total_parameters: int
    kernels: kernels.KernelChoice


def is_logged_step(step: int, logging_steps: int, logging_first_step: bool) -> bool:
    """Whether the Trainer logs after optimizer step `step` (DefaultFlowCallback's rule for logging_strategy steps)."""
    return (step == 1 and logging_first_step) or step % logging_steps == 0


def unwrapped_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside accelerate's AcceleratedOptimizer (or the optimizer itself)."""
    return getattr(optimizer, "optimizer", optimizer)


class KubetuneSFTTrainer(SFTTrainer):
    """SFTTrainer that can size warmup_stable_decay's decay phase once the step count is known, that
    shards with FSDP on CPU processes as on GPUs, and that writes a full fine-tune's checkpoints in the
    background (checkpoint_writes.py).

    TRL computes entropy and mean token accuracy in its fused LM head and syncs them (and a token count) to
    the host on every training step, though only logged steps report them; here they are computed on
    logged steps only, and the token count is summed on the device and synced when logged or checkpointed.
    That count lives in the Trainer's state (num_input_tokens_seen), so it continues across a resume.
    """

    model: Any  # the peft (or plain) model TRL was given, never None here
    args: SFTConfig

    def __init__(self, *args: Any, checkpoint_choice: checkpoint_writes.CheckpointChoice, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.checkpoint_writes = checkpoint_writes.CheckpointWrites(checkpoint_choice)
        self.add_callback(self.checkpoint_writes)
        self._head_model = self.model.get_base_model() if is_peft_model(self.model) else self.model
        self._head_with_metrics = self._head_model.forward  # TRL's fused head: log-probs, entropy, top-1
        add_fused_lm_head(self._head_model)  # log-probs only
        self._head_loss_only = self._head_model.forward
        self._head_model.forward = self._head_with_metrics
        self._loss_is_plain_nll = (
            self.compute_loss_func is None and self.label_smoother is None and self.args.loss_type == "nll"
            and not self.aux_loss_enabled and getattr(self.accelerator, "parallelism_config", None) is None
        )
        self._uncounted_tokens: Any = 0

    def _skips_metrics(self, return_outputs: bool) -> bool:
        """A training micro-batch of a step that is not logged, whose loss is TRL's plain NLL from the fused head."""
        return (
            self.model.training and not return_outputs and self._loss_is_plain_nll
            and self.args.logging_strategy == "steps"
            and not is_logged_step(self.state.global_step + 1, self.state.logging_steps, self.args.logging_first_step)
        )

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        import torch

        tokens = packing.take_token_count(inputs)  # taken out of a packed-rows batch in evaluation too
        if self.model.training:
            self._uncounted_tokens = self._uncounted_tokens + tokens
        if not self._skips_metrics(return_outputs):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self._head_model.forward = self._head_loss_only
        try:
            outputs = model(**inputs, use_cache=False, fused_lm_head=True)
        finally:
            self._head_model.forward = self._head_with_metrics
        # TRL's loss for the same outputs (SFTTrainer.compute_loss, loss_type nll)
        num_tokens = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = -outputs.log_probs.sum() / torch.as_tensor(num_tokens).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        return loss

    def _count_tokens(self) -> None:
        """Adds the tokens trained on since the last count, on every rank, to state.num_input_tokens_seen."""
        import torch

        uncounted = torch.as_tensor(self._uncounted_tokens, device=self.args.device)
        self.state.num_input_tokens_seen += int(self.accelerator.gather(uncounted).sum().item())
        self._uncounted_tokens = 0

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training:
            self._count_tokens()
            self._metrics["train"]["num_tokens"] = [self.state.num_input_tokens_seen]
        super().log(logs, start_time)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """Training, and then the checkpoint write still in flight: its files are complete (or its failure is the
        error) before the caller writes the final model or exits, on a SIGTERM stop too."""
        try:
            result = super().train(*args, **kwargs)
        except BaseException:
            self.checkpoint_writes.end(quietly=True)
            raise
        self.checkpoint_writes.end()
        return result

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """The Trainer's checkpoint, timed. In the background (a full fine-tune): the previous write is waited for,
        the Trainer writes the small files (trainer state, scheduler, RNG), then the weights and optimizer state are
        staged and written while training goes on; saveTotalLimit's rotation waits until they are complete."""
        entered = time.monotonic()
        self._count_tokens()  # the checkpoint's trainer state counts every token up to its step
        step = self.state.global_step
        folder = Path(self._get_output_dir(trial)) / f"{PREFIX_CHECKPOINT_DIR}-{step}"
        writes = self.checkpoint_writes
        if not writes.choice.asynchronous:
            super()._save_checkpoint(model, trial)
            writes.saved(step, folder, time.monotonic() - entered)
            return
        writes.wait()
        started = time.monotonic()
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        writes.start(step, folder, checkpoint_writes.training_state(self.model, unwrapped_optimizer(self.optimizer)),
                     entered=entered, started=started, after=partial(self._rotate_checkpoints_to, limit))

    def _rotate_checkpoints_to(self, limit: int | None) -> None:
        """The Trainer's saveTotalLimit rotation (the newest checkpoint is always kept), on the process that saves."""
        if self.args.should_save:
            rotate_checkpoints(output_dir=self._get_output_dir(None), save_total_limit=limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        # The Trainer's own calls (a checkpoint's weights; its push_to_hub and Ray Tune, which kubetune does not use):
        # with background writes the weights go with the optimizer state (_save_checkpoint).
        if _internal_call and self.checkpoint_writes.choice.asynchronous:
            return
        super().save_model(output_dir, _internal_call)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not self.checkpoint_writes.choice.asynchronous:
            super()._save_optimizer_and_scheduler(output_dir)
            return
        import torch
        from transformers.trainer import SCHEDULER_NAME

        assert self.lr_scheduler is not None  # made with the optimizer, before any checkpoint
        if self.args.should_save:  # the optimizer state is written in the background (_save_checkpoint)
            os.makedirs(output_dir, exist_ok=True)
            torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        checkpoint = Path(resume_from_checkpoint)
        if not checkpoint_writes.is_async_checkpoint(checkpoint):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        self.checkpoint_writes.load_model(self.model if model is None else model, checkpoint)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None or not checkpoint_writes.is_async_checkpoint(Path(checkpoint)):
            super()._load_optimizer_and_scheduler(checkpoint)
            return
        import torch
        from transformers.trainer import SCHEDULER_NAME

        assert self.lr_scheduler is not None  # made with the optimizer, before the checkpoint is loaded
        self.checkpoint_writes.load_optimizer(self.model, unwrapped_optimizer(self.optimizer), Path(checkpoint))
        self.lr_scheduler.load_state_dict(torch.load(Path(checkpoint) / SCHEDULER_NAME, weights_only=True))

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        if self.args.lr_scheduler_type == "warmup_stable_decay":
            decay_steps = max(1, int(WSD_DECAY_FRACTION * num_training_steps))
            self.args.lr_scheduler_kwargs = {"num_decay_steps": decay_steps}
        return super().create_scheduler(num_training_steps, optimizer)

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        sharding.shard_cpu_processes(self)


def check_model_reads_the_data(spec: FineTuneJobSpec, vision_language: bool, has_images: bool) -> None:
    """Image rows need a vision-language model; ConfigError names the fields otherwise."""
    if has_images and not vision_language:
        source, field = models.model_source(spec)
        raise ConfigError(f"{field}: {source} is a text-only model (its config has no vision_config), but the rows "
                          "have images (spec.dataset.format vision or spec.vision.render); use a vision-language "
                          "model or text data")


def build_run(context: RunContext, tracker: ProgressTracker,
              stop: checkpoints.StopOnSignal | None = None) -> Run:
    """Model, tokenizer, data and the SFTTrainer, ready to train (may resume)."""
    spec = context.spec
    environment = detect_environment()
    precision = models.choose_precision(spec.model.dtype, spec.method.type, environment.device,
                                        environment.bf16_supported)
    attention, attention_note = models.choose_attention(
        spec.model.attention, environment.device, precision.load_dtype, models.flash_attention_installed(),
        environment.capability,
    )
    estimate_gib, estimated_strategy = estimated_gib(spec)
    strategy = parallelism(estimated_strategy, spec, environment.world_size)
    fsdp = shards_with_fsdp(strategy, environment)
    for note in (precision.note, attention_note):
        if note:
            log.warning(note)
    models.check_model_directory(spec, context.local_mounts)
    vision_language = vision.is_vision_language(models.load_config(spec, context.hf_token))
    tokenizer = models.load_processing_class(spec, context.hf_token, vision_language)
    train_rows, eval_rows = data.load_training_data(spec, context.hf_token, context.local_mounts)
    check_model_reads_the_data(spec, vision_language, "images" in train_rows.column_names)
    model = models.load_model(spec, precision, attention, context.hf_token, environment.device_index,
                              vision_language=vision_language)
    kernel_choice = kernels.choose_kernels(
        spec.training.kernels, packing=spec.training.packing, attention=model.config._attn_implementation,
        optimizer=OPTIMIZERS[spec.training.optimizer],
        facts=kernels.kernel_facts(environment.device, environment.capability, model),
        adapters_autocast=kernels.adapters_under_autocast(
            spec.method.type, spec.method.adapter.use_dora, precision.bf16 or precision.fp16, fsdp),
    )
    if is_main_process():
        log.info("%s", kernel_choice.describe())
    model = models.add_adapter(model, spec, spec.training.gradient_checkpointing)
    trainable, total = models.parameter_counts(model)
    arguments = training_arguments(
        spec, context.output_dir, precision=precision, environment=environment, has_eval=eval_rows is not None,
        interactive=context.interactive, strategy=strategy, kernel_choice=kernel_choice,
    )
    checkpoint_choice = checkpoint_writes.choose_checkpoint_writes(spec.method.type, fsdp=fsdp)
    if is_main_process():
        log.info("%s", checkpoint_choice.describe())
    stop = stop or checkpoints.StopOnSignal()
    progress = ProgressCallback(tracker)
    trainer = KubetuneSFTTrainer(
        model=model,
        args=arguments,
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        processing_class=tokenizer,
        callbacks=[progress, stop],
        checkpoint_choice=checkpoint_choice,
    )
    if kernel_choice.packing == "rows":
        trainer.data_collator = packing.as_rows(trainer.data_collator)
    if vision_language:
        trainer.add_callback(vision.FrozenTowerOutOfBackward())
    trainer.checkpoint_writes.listeners.append(progress.checkpoint_saved)
    use_own_console_output(trainer, interactive=context.interactive)
    resumed_from = checkpoints.newest_complete_checkpoint(context.output_dir)
    return Run(trainer, tokenizer, tracker, stop, resumed_from, eval_rows, estimate_gib, trainable, total,
               kernel_choice)


def out_of_memory(estimate_gib: float | None, exc: BaseException) -> GpuOutOfMemoryError:
    import torch

    peak = torch.cuda.max_memory_reserved() / GIB if torch.cuda.is_available() else 0.0
    estimated = f"{estimate_gib:.1f} GiB" if estimate_gib is not None else "unknown"
    return GpuOutOfMemoryError(
        f"CUDA out of memory: peak reserved {peak:.1f} GiB, kubetune's estimate {estimated} per GPU. "
        f"Lower spec.training.batchSize or spec.training.maxSeqLength, turn on gradientCheckpointing, "
        f"use qlora, or request a larger GPU ({str(exc).splitlines()[0]})"
    )


def adapter_inputs_left_to_autocast(model: Any, *, active: bool) -> Any:
    """peft's float32 cast of LoRA inputs off while the Trainer trains under autocast (kernels.py)."""
    from peft.helpers import disable_input_dtype_casting

    return disable_input_dtype_casting(model, active=active)


def train(run: Run) -> Any:
    """trainer.train(), resuming when a checkpoint exists; OOM and SIGTERM become TrainerErrors."""
    import torch

    if run.resumed_from is not None:
        print(f"resuming from {run.resumed_from}", flush=True)
    try:
        with adapter_inputs_left_to_autocast(run.trainer.model, active=run.kernels.adapters_autocast):
            result = run.trainer.train(resume_from_checkpoint=str(run.resumed_from) if run.resumed_from else None)
    except torch.OutOfMemoryError as exc:
        raise out_of_memory(run.estimate_gib, exc) from None
    if run.stop.requested.is_set():
        step = run.trainer.state.global_step
        raise TrainingInterruptedError(
            f"stopped by SIGTERM at step {step}; checkpoint-{step} saved, the next attempt resumes"
        )
    return result


def save_artefacts(run: Run, context: RunContext) -> Path:
    """The adapter (or full model) and tokenizer in <output>/final, and the merged model when asked."""
    final = context.output_dir / FINAL_DIR
    sharding.save_model(run.trainer, final)
    run.tokenizer.save_pretrained(str(final))
    if context.spec.output.merge_adapter and is_main_process():
        merge_adapter(context.spec, final, context.output_dir / MERGED_DIR, context.hf_token)
    return final


def merge_adapter(spec: FineTuneJobSpec, adapter_dir: Path, merged_dir: Path, token: str | None) -> None:
    """Base weights (unquantized, in spec.model.dtype) with the adapter merged in."""
    from peft import PeftModel

    base_spec = spec.model_copy(update={"method": spec.method.model_copy(update={"quantization": None})})
    vision_language = vision.is_vision_language(models.load_config(spec, token))
    base = models.load_model(base_spec, models.Precision(spec.model.dtype), "sdpa", token, None,
                             vision_language=vision_language)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(merged_dir))
    models.load_processing_class(spec, token, vision_language).save_pretrained(str(merged_dir))


def push_to_hub(spec: FineTuneJobSpec, folder: Path, token: str | None) -> str | None:
    target = spec.output.push_to_hub
    if target is None:
        return None
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(target.repo, private=target.private, exist_ok=True)
    api.upload_folder(repo_id=target.repo, folder_path=str(folder), commit_message="kubetune fine-tune")
    return f"https://huggingface.co/{target.repo}"


def evaluate(run: Run, spec: FineTuneJobSpec) -> dict[str, Any]:
    """eval loss, perplexity and (when asked) ROUGE on the eval data; empty without eval data."""
    if run.trainer.eval_dataset is None:
        return {}
    eval_loss = float(run.trainer.evaluate()["eval_loss"])
    results: dict[str, Any] = {"eval_loss": eval_loss, "perplexity": evaluation.perplexity(eval_loss)}
    run.tracker.update(None, eval_loss=eval_loss)
    if "rouge" in spec.evaluation.metrics and run.eval_rows is not None and "prompt" in run.eval_rows.column_names:
        results["rouge"] = evaluation.rouge_on(
            run.trainer.model, run.tokenizer, run.eval_rows, spec.evaluation.max_new_tokens
        )
    return results


def summary(run: Run, spec: FineTuneJobSpec, result: Any, *, evaluated: dict[str, Any], final: Path,
            hub_url: str | None) -> dict[str, Any]:
    progress = run.tracker.progress
    runtime = float(result.metrics.get("train_runtime", 0.0))
    peak, peak_allocated = gpu_memory()["gpu_peak_bytes"], gpu_peak_allocated_bytes()
    attempt_tokens = progress.tokens_total - progress.tokens_before_resume
    return {
        "model": spec.model.name or spec.model.path,
        "method": spec.method.type,
        "steps": run.trainer.state.global_step,
        "epochs": run.trainer.state.epoch,
        "first_loss": progress.first_loss,
        "final_loss": progress.loss,
        "train_loss": result.training_loss,
        **evaluated,
        "runtime_seconds": round(runtime, 3),
        "tokens_total": progress.tokens_total,
        "tokens_per_second": round(attempt_tokens / runtime, 1) if runtime > 0 else None,  # this attempt's
        "steady_tokens_per_second": progress.tokens_per_second,  # over the last logging window
        "peak_gpu_memory_gib": round(peak / GIB, 3) if peak is not None else None,
        "peak_gpu_memory_allocated_gib": round(peak_allocated / GIB, 3) if peak_allocated is not None else None,
        "estimated_gpu_memory_gib": run.estimate_gib,
        "trainable_parameters": run.trainable_parameters,
        "total_parameters": run.total_parameters,
        "kernels": run.kernels.as_summary(),
        "checkpoints": run.trainer.checkpoint_writes.as_summary(),
        "resumed_from": str(run.resumed_from) if run.resumed_from else None,
        "output_path": str(final),
        "hub_url": hub_url,
    }


def summary_text(report: dict[str, Any]) -> str:
    """training_summary.json for people: what was trained, how well, how fast, where the result is."""
    lines = [f"trained {report['steps']} steps in {report['runtime_seconds']:.1f} s "
             f"({report['tokens_per_second'] or 0:,.0f} tokens/s)"]
    if report.get("first_loss") is not None and report.get("final_loss") is not None:
        lines.append(f"loss {report['first_loss']:.4f} -> {report['final_loss']:.4f}")
    if report.get("eval_loss") is not None:
        lines.append(f"eval loss {report['eval_loss']:.4f}, perplexity {report['perplexity']:.2f}")
    if report.get("rouge"):
        lines.append("ROUGE " + ", ".join(f"{name} {value:.3f}" for name, value in report["rouge"].items()))
    if report.get("peak_gpu_memory_gib") is not None:
        estimate_note = (f" (kubetune estimated {report['estimated_gpu_memory_gib']:.2f} GiB)"
                         if report.get("estimated_gpu_memory_gib") is not None else "")
        lines.append(f"peak GPU memory {report['peak_gpu_memory_gib']:.2f} GiB{estimate_note}")
    lines.append(f"trainable parameters {report['trainable_parameters']:,} of {report['total_parameters']:,}")
    if report.get("checkpoints", {}).get("saved"):
        saved = report["checkpoints"]
        how = "in the background" if saved["async"] else "synchronously"
        lines.append(f"{saved['saved']} checkpoints written {how}: training waited {saved['blockedSeconds']:.1f} s "
                     f"for writes of {saved['writeSeconds']:.1f} s")
    lines.append(f"result: {report['output_path']}")
    return "\n".join(lines)


def finish(run: Run, context: RunContext, result: Any) -> tuple[dict[str, Any], OutputStatus]:
    """Artefacts, evaluation, hub upload and training_summary.json (rank 0 writes the files)."""
    final = save_artefacts(run, context)
    evaluated = evaluate(run, context.spec)
    hub_url = push_to_hub(context.spec, final, context.hf_token) if is_main_process() else None
    report = summary(run, context.spec, result, evaluated=evaluated, final=final, hub_url=hub_url)
    if is_main_process():
        (context.output_dir / contract.SUMMARY_FILE_NAME).write_text(json.dumps(report, indent=2) + "\n")
    return report, OutputStatus(path=str(final), hub_url=hub_url)


def check_output_dir(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"output directory {output_dir}: cannot create it: {exc.strerror or exc}") from None



def already_complete(context: RunContext, completed: checkpoints.CompletedRun) -> dict[str, Any]:
    """A rerun of a finished run trains nothing: it says so, keeps the summary and (in a pod) restates the final
    status, which a lost final patch of the attempt that finished would otherwise leave unsaid."""
    from kubetune_trainer import status

    report = completed.summary
    if is_main_process():
        print(f"already complete (step {completed.step}/{completed.total_steps}): {completed.checkpoint} is the "
              f"last step; nothing to train. Results: {report.get('output_path')}, summary: "
              f"{context.output_dir / contract.SUMMARY_FILE_NAME}", flush=True)
    if is_main_process() and context.reports_status:
        progress = Progress(step=completed.step, total_steps=completed.total_steps, epoch=report.get("epochs"),
                            loss=report.get("final_loss"), first_loss=report.get("first_loss"),
                            eval_loss=report.get("eval_loss"), tokens_total=report.get("tokens_total") or 0,
                            gpu_peak_bytes=round(peak * GIB) if (peak := report.get("peak_gpu_memory_gib")) else None,
                            started=True, finished=True)
        output = OutputStatus(path=str(report.get("output_path")), hub_url=report.get("hub_url"))
        client = status.KubeClient.in_cluster(str(context.namespace), str(context.job_name), context.api_url)
        status.StatusReporter(client, context.status_interval_seconds).start().stop(
            status.status_patch(progress, output))
    return report


def run(context: RunContext, listeners: tuple[Listener, ...] = ()) -> dict[str, Any]:
    """The whole run; rank 0 serves metrics and reports status. Returns the training summary."""
    from kubetune_trainer import metrics as trainer_metrics
    from kubetune_trainer import status

    check_output_dir(context.output_dir)
    completed = checkpoints.completed_run(context.output_dir, context.spec.training)
    if completed is not None:
        return already_complete(context, completed)
    quiet_libraries()
    main_process = is_main_process()
    tracker = ProgressTracker(listeners=[ProgressPrinter(), *listeners] if main_process else [])
    served = trainer_metrics.TrainerMetrics()
    server = None
    if main_process and context.metrics_port is not None:
        server = trainer_metrics.serve(served, context.metrics_port)
        tracker.listeners.append(served.update)
        print(f"metrics on http://127.0.0.1:{server.server_port}/metrics", flush=True)
    reporter = None
    if main_process and context.reports_status:
        client = status.KubeClient.in_cluster(str(context.namespace), str(context.job_name), context.api_url)
        reporter = status.StatusReporter(client, context.status_interval_seconds).start()
        tracker.listeners.append(reporter.on_progress)
    final_patch = None
    try:
        stop = checkpoints.StopOnSignal().install()  # before loading: a SIGTERM then stops at the first step
        built = build_run(context, tracker, stop)
        built.trainer.add_callback(RankMemoryCallback(served.set_ranks))
        served.set_static(built.trainable_parameters, built.estimate_gib)
        result = train(built)
        report, output = finish(built, context, result)
        if main_process:
            print(summary_text(report), flush=True)
        tracker.update("end", finished=True)
        final_patch = status.status_patch(tracker.progress, output)
        return report
    finally:
        if reporter is not None:
            reporter.stop(final_patch or status.status_patch(tracker.progress))
        if server is not None:
            server.shutdown()


def use_growable_allocator_segments(environ: MutableMapping[str, str]) -> None:
    """Expandable segments for the CUDA allocator unless the pod's env chose its own allocator settings.

    The variable is set for the processes this one starts (torchrun's workers), and applied to this
    process's allocator, which may have read the environment already.
    """
    import torch

    if contract.ENV_CUDA_ALLOC_CONF in environ:
        return
    environ[contract.ENV_CUDA_ALLOC_CONF] = contract.CUDA_ALLOC_CONF
    if torch.cuda.is_available():
        torch.cuda.memory._set_allocator_settings(contract.CUDA_ALLOC_CONF)


def execute(context: RunContext, listeners: tuple[Listener, ...] = ()) -> int:
    """run() with every failure classified: an exit code, and the JSON termination message when
    context.termination_log is set. Unexpected errors keep their traceback in the log."""
    import torch

    use_growable_allocator_segments(os.environ)
    try:
        run(context, listeners)
    except TrainerError as exc:
        failure = exc
    except torch.OutOfMemoryError as exc:
        failure = out_of_memory(estimated_gib(context.spec)[0], exc)
    except Exception as exc:
        log.exception("training failed")
        failure = TrainerError(f"{type(exc).__name__}: {exc}")
    else:
        return contract.ExitCode.OK
    log.error("%s: %s", failure.reason, failure.message)
    if context.termination_log is not None:
        write_termination_message(context.termination_log, failure.reason, failure.message)
    return int(failure.exit_code)
