"""Validation of FineTuneJob manifests: every problem names its field path and the fix.

`validate_manifest(document)` -> (FineTuneJob | None, [Problem]). Field-level rules come from the
pydantic models (api.py); cross-field rules are the functions in RULES below. The same code runs in
`kubetune validate`, in the operator's admission of a new spec, and in tests.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from kubetune import contract
from kubetune.api import (
    API_VERSION,
    KIND,
    MAX_NAME_LENGTH,
    MAX_PARAMETERS,
    FineTuneJob,
    FineTuneJobSpec,
    normalized_path,
    redact_url,
)
from kubetune.catalog import from_api, lookup
from kubetune.presets import PRESETS, effective_spec

# Mount paths the trainer's container uses itself (its virtual environment is /opt/kubetune).
RESERVED_MOUNT_PATHS = ("/output", "/dev/shm", "/tmp", "/cache", "/etc/kubetune", "/opt/kubetune")
# The system's own directories: a volume there would hide or replace the OS, the kernel's views or
# the service-account token (/var/run/secrets). /lib* covers /lib32, /lib64, /libx32.
SYSTEM_MOUNT_PATHS = ("/proc", "/sys", "/dev", "/etc", "/usr", "/bin", "/sbin", "/boot", "/root", "/run",
                      "/var/run", "/var/lib", "/var/log")
SYSTEM_MOUNT_PREFIXES = ("/lib",)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest: where, and what to do."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class SpecError(ValueError):
    """A manifest or spec that cannot be used; carries every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


# ---------------------------------------------------------------------------- pydantic -> Problem


def _field_by_alias(model: type[BaseModel], alias: str) -> Any:
    for name, field in model.model_fields.items():
        if alias in (name, field.alias):
            return field.annotation
    return None


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    """The BaseModel classes an annotation can hold (through Optional, list, dict, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, dict, typing.Annotated):
        args = typing.get_args(annotation)
        for arg in args[:1] if origin is typing.Annotated else args:
            yield from _models_in(arg)


def _model_at(root: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = root
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        annotation = _field_by_alias(model, part)
        model = next(_models_in(annotation), None)
    return model


def _wire_names(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


def _did_you_mean(root: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    parent = _model_at(root, loc[:-1])
    if parent is None:
        return "unknown field; remove it"
    known = _wire_names(parent)
    close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown field; {hint}known fields here: {', '.join(known)}"


def _message(error: ErrorDetails, root: type[BaseModel]) -> str:
    kind = error["type"]
    ctx = error.get("ctx", {})
    if kind == "extra_forbidden":
        return _did_you_mean(root, tuple(error["loc"]))
    if kind == "missing":
        return "is required"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}; got {error['input']!r}"
    bounds = {
        "greater_than": "must be greater than {gt}",
        "greater_than_equal": "must be at least {ge}",
        "less_than": "must be less than {lt}",
        "less_than_equal": "must be at most {le}",
        "string_too_long": "must be at most {max_length} characters",
        "string_too_short": "must not be empty",
        "too_long": "must have at most {max_length} items",
        "too_short": "must have at least {min_length} item(s)",
    }
    if kind in bounds:
        return f"{bounds[kind].format(**ctx)}; got {_short(error['input'])}"
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, ")
    if kind == "string_pattern_mismatch":
        return f"{_short(error['input'])} is not valid here (must match {ctx.get('pattern')})"
    return f"{error['msg'].rstrip('.').lower()}; got {_short(error['input'])}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def problems_from_validation_error(exc: ValidationError, root: type[BaseModel], prefix: str) -> list[Problem]:
    problems = []
    for error in exc.errors():
        if error["loc"][-1:] == ("url",) and isinstance(error["input"], str):
            error["input"] = redact_url(error["input"])  # a URL may carry credentials: never echo them
        loc = error["loc"][:-2] if error["loc"][-1:] == ("[key]",) else error["loc"]  # a bad map key: the map
        path = prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
        problems.append(Problem(path.lstrip("."), _message(error, root)))
    return problems


# ------------------------------------------------------------------------------- cross-field rules

Rule = Callable[[FineTuneJobSpec, FineTuneJobSpec], Iterator[Problem]]
RULES: list[Rule] = []


def rule(function: Rule) -> Rule:
    RULES.append(function)
    return function


def _count_set(*values: object) -> int:
    return sum(value is not None for value in values)


@rule
def exactly_one_model_source(spec: FineTuneJobSpec, _: FineTuneJobSpec) -> Iterator[Problem]:
    if _count_set(spec.model.name, spec.model.path) != 1:
        yield Problem("spec.model", "set exactly one of name (a hub id) and path (a directory on a volume)")


@rule
def exactly_one_dataset_source(spec: FineTuneJobSpec, _: FineTuneJobSpec) -> Iterator[Problem]:
    if _count_set(spec.dataset.name, spec.dataset.path, spec.dataset.url) != 1:
        yield Problem("spec.dataset", "set exactly one of name (a hub id), path (on a volume) and url")
    hub_only = [field for field in ("config", "revision") if getattr(spec.dataset, field) is not None]
    if spec.dataset.name is None and hub_only:
        yield Problem("spec.dataset", f"config and revision apply to hub datasets (name) only; remove them "
                      f"(set: {', '.join(hub_only)})")


@rule
def quantization_matches_method(spec: FineTuneJobSpec, _: FineTuneJobSpec) -> Iterator[Problem]:
    method = spec.method
    if method.type == "qlora" and method.quantization is None:
        yield Problem("spec.method.quantization", "is required for qlora: set bits to 4 or 8")
    if method.type != "qlora" and method.quantization is not None:
        yield Problem("spec.method.quantization", f"only for type qlora (type is {method.type}); remove it")
    if method.quantization is not None and method.quantization.bits == 8:
        if method.quantization.type is not None:
            yield Problem("spec.method.quantization.type", "nf4/fp4 are 4-bit types; remove it for 8-bit")
        if "double_quant" in method.quantization.model_fields_set:
            yield Problem("spec.method.quantization.doubleQuant", "applies to 4-bit only; remove it for 8-bit")


@rule
def lora_only_with_adapters(spec: FineTuneJobSpec, _: FineTuneJobSpec) -> Iterator[Problem]:
    if spec.method.type == "full" and spec.method.lora is not None:
        yield Problem("spec.method.lora", "only for lora and qlora (type is full); remove it or change the type")
    if spec.method.type == "full" and spec.output.merge_adapter:
        yield Problem("spec.output.mergeAdapter", "full fine-tuning has no adapter to merge; remove it")


@rule
def all_linear_stands_alone(spec: FineTuneJobSpec, _: FineTuneJobSpec) -> Iterator[Problem]:
    targets = spec.method.adapter.target_modules
    if "all-linear" in targets and len(targets) > 1:
        yield Problem("spec.method.lora.targetModules", "all-linear already covers every linear layer; list it alone")
    if len(set(targets)) != len(targets):
        yield Problem("spec.method.lora.targetModules", "lists a module twice; list each once")


@rule
def one_eval_source(spec: FineTuneJobSpec, _: FineTuneJobSpec) -> Iterator[Problem]:
    dataset = spec.dataset
    if dataset.eval_split is not None and dataset.eval_fraction is not None:
        yield Problem("spec.dataset.evalFraction", "set evalSplit or evalFraction, not both")
    if dataset.eval_split is not None and dataset.eval_split == dataset.split:
        yield Problem("spec.dataset.evalSplit", "is the training split; use another split or evalFraction")


def _has_eval_data(spec: FineTuneJobSpec) -> bool:
    return spec.dataset.eval_split is not None or spec.dataset.eval_fraction is not None


@rule
def evaluation_needs_eval_data(spec: FineTuneJobSpec, effective: FineTuneJobSpec) -> Iterator[Problem]:
    if _has_eval_data(spec):
        return
    fix = "set spec.dataset.evalSplit or spec.dataset.evalFraction"
    if "eval_steps" in spec.training.model_fields_set:
        yield Problem("spec.training.evalSteps", f"needs evaluation data: {fix}")
    if effective.training.lr_scheduler == "reduce_lr_on_plateau":
        yield Problem("spec.training.lrScheduler", f"reduce_lr_on_plateau needs evaluation data: {fix}")
    if "rouge" in spec.evaluation.metrics:
        yield Problem("spec.evaluation.metrics", f"rouge needs evaluation data: {fix}")
    if spec.evaluation.max_samples is not None:
        yield Problem("spec.evaluation.maxSamples", f"needs evaluation data: {fix}")


@rule
def text_data_has_no_prompt(spec: FineTuneJobSpec, _: FineTuneJobSpec) -> Iterator[Problem]:
    if spec.dataset.format != "text":
        return
    if "rouge" in spec.evaluation.metrics:
        yield Problem("spec.evaluation.metrics", "rouge compares generated responses: needs instruction or chat data")
    if "completion_only_loss" in spec.training.model_fields_set and spec.training.completion_only_loss:
        yield Problem("spec.training.completionOnlyLoss", "plain text has no prompt to mask; set it to false")


# Columns each format reads; a mapping outside them is a mistake (the format or the field is wrong).
FIELDS_BY_FORMAT = {
    "text": {"text"},
    "instruction": {"prompt", "input", "response", "system"},
    "chat": {"messages", "system"},
    "vision": {"images", "messages", "prompt", "input", "response", "system"},
}


@rule
def fields_match_format(spec: FineTuneJobSpec, _: FineTuneJobSpec) -> Iterator[Problem]:
    fields, data_format = spec.dataset.fields, spec.dataset.format
    if fields is None or data_format == "auto":
        return
    allowed = FIELDS_BY_FORMAT[data_format]
    for name, field in type(fields).model_fields.items():
        if getattr(fields, name) is not None and name not in allowed:
            yield Problem(
                f"spec.dataset.fields.{field.alias or name}",
                f"format {data_format} reads only {', '.join(sorted(allowed))}; remove it or change the format",
            )
    if data_format == "instruction" and (fields.prompt is None) != (fields.response is None):
        yield Problem("spec.dataset.fields", "map both prompt and response for instruction data")


@rule
def vision_data_is_well_formed(spec: FineTuneJobSpec, effective: FineTuneJobSpec) -> Iterator[Problem]:
    vision, data_format = spec.vision, spec.dataset.format
    if vision is not None and len(set(vision.train)) != len(vision.train):
        yield Problem("spec.vision.train", "lists a part twice; list each of projector and visionTower once")
    if vision is not None and vision.render is not None and data_format not in ("auto", "vision"):
        yield Problem("spec.vision.render", f"turns rows into images with a prompt and a response, so the format is "
                      f"vision (it is {data_format}); set spec.dataset.format to vision or auto, or remove render")
    if vision is not None and vision.render is not None and spec.dataset.fields is not None and (
            spec.dataset.fields.images is not None):
        yield Problem("spec.dataset.fields.images", "render makes the images from spec.vision.render.field; "
                      "remove fields.images or render")
    if effective.has_image_data and effective.training.packing:
        yield Problem("spec.training.packing", "TRL cannot pack rows with images (each row keeps its own images); "
                      "set it to false")


@rule
def images_fit_the_model(spec: FineTuneJobSpec, effective: FineTuneJobSpec) -> Iterator[Problem]:
    """For a model in the catalog: image rows need a vision tower, and the sequence must hold the image tokens."""
    known = lookup(spec.model.name) if spec.model.name is not None and spec.model.architecture is None else None
    if known is None:
        return
    wants_vision = effective.has_image_data or bool(spec.vision is not None and spec.vision.train)
    if known.vision is None:
        if wants_vision:
            yield Problem("spec.model.name", f"{spec.model.name} is a text-only model, but the job trains on images "
                          "(spec.dataset.format vision, spec.vision.render or spec.vision.train); pick a "
                          "vision-language model (docs/vision.md) or text data")
        return
    settings = effective.vision_settings
    image_tokens = known.vision.image_tokens(settings.max_pixels) * settings.images_per_row
    if effective.has_image_data and image_tokens >= effective.training.max_seq_length:
        yield Problem("spec.training.maxSeqLength", f"is {effective.training.max_seq_length}, but a row's images "
                      f"take up to {image_tokens:,} tokens of {spec.model.name} ({settings.images_per_row} image(s) "
                      f"at maxPixels {settings.max_pixels:,}) before any text; raise maxSeqLength or lower "
                      "spec.vision.maxPixels or maxImages")


@rule
def cpu_only_jobs_are_small_and_single(spec: FineTuneJobSpec, effective: FineTuneJobSpec) -> Iterator[Problem]:
    resources = spec.resources
    if resources.gpus > 0:
        return
    if resources.nodes != 1:
        yield Problem("spec.resources.nodes", "CPU-only jobs (gpus: 0) run on one node; set nodes to 1")
    if resources.gpu_product is not None or resources.min_gpu_memory_gib is not None:
        yield Problem("spec.resources", "gpuProduct and minGpuMemoryGiB have no meaning with gpus: 0; "
                      "remove them or request GPUs")
    if spec.model.dtype == "float16":
        yield Problem("spec.model.dtype", "float16 training needs a GPU; use bfloat16 or float32 with gpus: 0")
    if effective.training.optimizer == "paged_adamw_8bit":
        yield Problem(
            "spec.training.optimizer", "paged_adamw_8bit pages GPU memory; pick adamw_torch with gpus: 0"
            + _preset_note(spec, "optimizer")
        )
    if spec.model.attention == "flash_attention_2":
        yield Problem("spec.model.attention", "flash_attention_2 needs a GPU; use sdpa or auto with gpus: 0")
    if spec.training.kernels == "liger":
        yield Problem("spec.training.kernels", "Liger kernels need a CUDA GPU; use auto or none with gpus: 0")
    if spec.method.quantization is not None and spec.method.quantization.bits == 8:
        yield Problem("spec.method.quantization.bits", "8-bit quantization needs a GPU; use 4 or request GPUs")


def _preset_note(spec: FineTuneJobSpec, field: str) -> str:
    if field in spec.training.model_fields_set:
        return ""
    return f" (the value comes from preset {spec.training.preset}; set spec.training.{field} to override)"


@rule
def flash_attention_needs_half_precision(spec: FineTuneJobSpec, _: FineTuneJobSpec) -> Iterator[Problem]:
    if spec.model.attention == "flash_attention_2" and spec.model.dtype == "float32":
        yield Problem("spec.model.attention", "flash_attention_2 runs in bfloat16/float16; change spec.model.dtype")


@rule
def fsdp_needs_several_gpus(spec: FineTuneJobSpec, _: FineTuneJobSpec) -> Iterator[Problem]:
    gpus_total = spec.resources.gpus * spec.resources.nodes
    if spec.training.strategy in ("ddp", "fsdp") and gpus_total < 2:
        yield Problem(
            "spec.training.strategy",
            f"{spec.training.strategy} needs at least 2 GPUs in all (gpus x nodes = {gpus_total}); use auto",
        )


@rule
def qlora_shards_with_ddp_only(spec: FineTuneJobSpec, _: FineTuneJobSpec) -> Iterator[Problem]:
    if spec.method.type == "qlora" and spec.training.strategy == "fsdp":
        yield Problem(
            "spec.training.strategy",
            "fsdp cannot shard qlora's bitsandbytes-quantized weights in kubetune's trainer (it loads them onto "
            "each GPU); qlora trains across GPUs and nodes with ddp: set strategy to ddp or auto, or use lora",
        )


@rule
def push_needs_token(spec: FineTuneJobSpec, _: FineTuneJobSpec) -> Iterator[Problem]:
    if spec.output.push_to_hub is not None and spec.hf_token_secret_ref is None:
        yield Problem("spec.output.pushToHub", "needs spec.hfTokenSecretRef with a token that can write the repo")


def _is_under(path: str, directory: str) -> bool:
    return directory in ("/", path) or path.startswith(directory + "/")


@rule
def local_sources_are_mounted(spec: FineTuneJobSpec, _: FineTuneJobSpec) -> Iterator[Problem]:
    """Judged on the normalised paths: /data/../../etc is /etc, on no volume."""
    mounts = [normalized_path(volume.mount_path) for volume in spec.volumes]
    for path, where in ((spec.model.path, "spec.model.path"), (spec.dataset.path, "spec.dataset.path")):
        if path is not None and not any(_is_under(normalized_path(path), m) for m in mounts):
            yield Problem(where, f"{normalized_path(path)} is on no volume: add the PVC that holds it to spec.volumes")


def _mount_path_problem(mount_path: str) -> str | None:
    if ".." in mount_path.split("/"):
        return "must not contain '..'; give the directory itself"
    mount = normalized_path(mount_path)
    if mount == "/" or any(_is_under(mount, r) for r in RESERVED_MOUNT_PATHS):
        return f"{mount} is used by the trainer itself; mount under /data or /models instead"
    if any(_is_under(mount, p) for p in SYSTEM_MOUNT_PATHS) or mount.startswith(SYSTEM_MOUNT_PREFIXES):
        return f"{mount} is a system directory; mount under /data or /models instead"
    return None


@rule
def volumes_do_not_collide(spec: FineTuneJobSpec, _: FineTuneJobSpec) -> Iterator[Problem]:
    seen: set[str] = set()
    for index, volume in enumerate(spec.volumes):
        mount = normalized_path(volume.mount_path)
        where = f"spec.volumes[{index}].mountPath"
        if mount in seen:
            yield Problem("spec.volumes", f"a mountPath is used twice ({where}: {mount}); "
                          "give each volume its own mountPath")
        seen.add(mount)
        problem = _mount_path_problem(volume.mount_path)
        if problem is not None:
            yield Problem(where, problem)
    sub_path = spec.output.volume.sub_path if spec.output.volume else None
    if sub_path is not None and ".." in sub_path.split("/"):
        yield Problem("spec.output.volume.subPath", "must stay inside the volume; remove '..'")


@rule
def architecture_is_physical(spec: FineTuneJobSpec, _: FineTuneJobSpec) -> Iterator[Problem]:
    """The dimensions hold at most MAX_PARAMETERS, and a given parameter count is at least what the
    linear layers and embeddings of those dimensions hold (the estimator subtracts them from it)."""
    given = spec.model.architecture
    if given is None:
        return
    counted = from_api(given)
    if counted.counted_parameters > MAX_PARAMETERS:
        yield Problem("spec.model.architecture", f"these dimensions hold {counted.counted_parameters:.3g} parameters, "
                      f"more than any model can have (at most {MAX_PARAMETERS:.0e}); check them against config.json")
    floor = counted.block_linear_parameters + counted.embedding_parameters
    if given.parameters is not None and given.parameters < floor:
        yield Problem("spec.model.architecture.parameters", f"{given.parameters} is fewer than the linear layers and "
                      f"embeddings of these dimensions hold ({floor}); correct it or leave it out")


@rule
def tolerations_are_well_formed(spec: FineTuneJobSpec, _: FineTuneJobSpec) -> Iterator[Problem]:
    for index, toleration in enumerate(spec.resources.tolerations or []):
        where = f"spec.resources.tolerations[{index}]"
        if toleration.operator == "Exists" and toleration.value:
            yield Problem("spec.resources.tolerations", f"value must be empty with operator Exists ({where})")
        if toleration.key is None and toleration.operator != "Exists":
            yield Problem(f"{where}.operator", "an empty key needs operator Exists")
        if toleration.toleration_seconds is not None and toleration.effect != "NoExecute":
            yield Problem(f"{where}.tolerationSeconds", "applies only to effect NoExecute")


@rule
def steps_fit_together(spec: FineTuneJobSpec, effective: FineTuneJobSpec) -> Iterator[Problem]:
    max_steps = effective.training.max_steps
    if max_steps is None:
        return
    for name, alias in (("eval_steps", "evalSteps"), ("save_steps", "saveSteps")):
        value = getattr(effective.training, name)
        if name in spec.training.model_fields_set and value is not None and value > max_steps:
            yield Problem(f"spec.training.{alias}", f"{value} is beyond maxSteps ({max_steps}); lower it")


@rule
def env_is_well_formed(spec: FineTuneJobSpec, _: FineTuneJobSpec) -> Iterator[Problem]:
    seen: set[str] = set()
    for index, variable in enumerate(spec.env):
        where = f"spec.env[{index}]"
        if variable.name in seen:
            yield Problem("spec.env", f"{variable.name} is set twice ({where}); keep one")
        seen.add(variable.name)
        if contract.is_reserved_env_name(variable.name):
            hint = "; give the token with spec.hfTokenSecretRef" if variable.name == contract.ENV_HF_TOKEN else ""
            yield Problem("spec.env", f"a name kubetune sets itself cannot be set here ({where}: {variable.name}); "
                          f"remove it{hint}")
        if variable.value is not None and variable.value_from is not None:
            yield Problem("spec.env", f"set value or valueFrom, not both ({where})")
        source = variable.value_from
        if source is not None and _count_set(source.secret_key_ref, source.config_map_key_ref) != 1:
            yield Problem("spec.env", f"valueFrom takes exactly one of secretKeyRef and configMapKeyRef ({where})")


def cross_field_problems(spec: FineTuneJobSpec) -> list[Problem]:
    """Every rule that spans fields, checked on the spec as written and on its effective form."""
    effective = effective_spec(spec)
    return [problem for check in RULES for problem in check(spec, effective)]


# ------------------------------------------------------------------------------------ entry points


def parse_spec(data: Any) -> FineTuneJobSpec:
    """A valid spec from its wire form as a user wrote it, or SpecError with every problem."""
    spec = parse_effective_spec(data)
    problems = cross_field_problems(spec)
    if problems:
        raise SpecError(problems)
    return spec


def parse_effective_spec(data: Any) -> FineTuneJobSpec:
    """The effective spec the operator resolved and wrote for the trainer, or SpecError.

    Only the field rules apply. The cross-field rules judge what the user wrote, telling given fields
    from defaults, and the operator ran them on the FineTuneJob before it wrote this; in an effective
    spec every field reads as given, so they would refuse defaults the user never set (a defaulted
    saveSteps beyond a short maxSteps, a preset's evalSteps without evaluation data, doubleQuant on 8-bit).
    """
    try:
        return FineTuneJobSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(problems_from_validation_error(exc, FineTuneJobSpec, "spec")) from None


def _envelope_problems(document: Any) -> list[Problem]:
    if not isinstance(document, dict):
        return [Problem("(document)", f"must be a mapping (a FineTuneJob object), not {type(document).__name__}")]
    problems = []
    if document.get("apiVersion") != API_VERSION:
        problems.append(Problem("apiVersion", f"must be {API_VERSION}; got {document.get('apiVersion')!r}"))
    if document.get("kind") != KIND:
        problems.append(Problem("kind", f"must be {KIND}; got {document.get('kind')!r}"))
    return problems


def validate_manifest(document: Any) -> tuple[FineTuneJob | None, list[Problem]]:
    """Check a whole FineTuneJob manifest: envelope, metadata, spec fields and cross-field rules."""
    problems = _envelope_problems(document)
    if problems:
        return None, problems
    try:
        job = FineTuneJob.model_validate(document)
    except ValidationError as exc:
        return None, [_name_hint(p) for p in problems_from_validation_error(exc, FineTuneJob, "")]
    problems = cross_field_problems(job.spec)
    return (None, problems) if problems else (job, [])


def _name_hint(problem: Problem) -> Problem:
    if problem.path == "metadata.name" and "required" not in problem.message:
        return Problem(
            problem.path,
            f"must be a DNS label of at most {MAX_NAME_LENGTH} characters (lower-case letters, digits, '-'); "
            "kubetune names the Job and ConfigMap after it",
        )
    return problem


def check_presets() -> list[Problem]:
    """Every preset's values pass the field rules (a test guards this)."""
    problems = []
    for name, values in PRESETS.items():
        try:
            FineTuneJobSpec.model_validate(
                {"model": {"name": "x"}, "dataset": {"name": "y"}, "training": {"preset": name, **values}}
            )
        except ValidationError as exc:
            problems.extend(problems_from_validation_error(exc, FineTuneJobSpec, f"preset {name}"))
    return problems
