"""FineTuneJob validation: every invalid spec is rejected with the right field path and a fix."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.plan import merge_patch
from kubetune.presets import PRESETS, effective_spec
from kubetune.validation import SpecError, check_presets, parse_effective_spec, parse_spec, validate_manifest

BASE: dict[str, Any] = {
    "apiVersion": "kubetune.io/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "demo"},
    "spec": {
        "model": {"name": "meta-llama/Llama-3.1-8B"},
        "dataset": {"name": "tatsu-lab/alpaca"},
    },
}

def spec_patch(**patch: Any) -> dict[str, Any]:
    return {"spec": patch}


# (id, patch of BASE, expected path, a fragment of the expected message)
INVALID: list[tuple[str, dict[str, Any], str, str]] = [
    ("a model with both name and path is rejected",
     spec_patch(model={"path": "/models/x"}), "spec.model", "exactly one of name"),
    ("a model with neither name nor path is rejected",
     spec_patch(model={"name": None}), "spec.model", "exactly one of name"),
    ("a hub id with spaces is rejected",
     spec_patch(model={"name": "meta llama"}), "spec.model.name", "is not valid"),
    ("a relative model path is rejected",
     spec_patch(model={"name": None, "path": "models/x"}), "spec.model.path", "is not valid"),
    ("an unknown dtype is rejected",
     spec_patch(model={"dtype": "fp8"}), "spec.model.dtype", "must be one of"),
    ("an unknown attention implementation is rejected",
     spec_patch(model={"attention": "flash"}), "spec.model.attention", "must be one of"),
    ("an architecture without its hidden size is rejected",
     spec_patch(model={"architecture": {"numLayers": 2, "numAttentionHeads": 2, "intermediateSize": 8,
                                        "vocabSize": 10}}),
     "spec.model.architecture.hiddenSize", "is required"),
    ("a dataset with name and url is rejected",
     spec_patch(dataset={"url": "https://example.org/d.jsonl"}), "spec.dataset", "exactly one of name"),
    ("a dataset without any source is rejected",
     spec_patch(dataset={"name": None}), "spec.dataset", "exactly one of name"),
    ("an ftp dataset url is rejected",
     spec_patch(dataset={"name": None, "url": "ftp://example.org/d.jsonl"}), "spec.dataset.url", "not valid"),
    ("an unknown dataset format is rejected",
     spec_patch(dataset={"format": "sharegpt"}), "spec.dataset.format", "must be one of"),
    ("an eval fraction above one half is rejected",
     spec_patch(dataset={"evalFraction": 0.6}), "spec.dataset.evalFraction", "at most 0.5"),
    ("an eval fraction of zero is rejected",
     spec_patch(dataset={"evalFraction": 0}), "spec.dataset.evalFraction", "greater than 0"),
    ("evalSplit together with evalFraction is rejected",
     spec_patch(dataset={"evalSplit": "test", "evalFraction": 0.1}), "spec.dataset.evalFraction", "not both"),
    ("an eval split equal to the training split is rejected",
     spec_patch(dataset={"evalSplit": "train"}), "spec.dataset.evalSplit", "is the training split"),
    ("maxSamples of zero is rejected",
     spec_patch(dataset={"maxSamples": 0}), "spec.dataset.maxSamples", "at least 1"),
    ("a chat column mapped on instruction data is rejected",
     spec_patch(dataset={"format": "instruction", "fields": {"messages": "conv"}}),
     "spec.dataset.fields.messages", "format instruction reads only"),
    ("an instruction mapping with a prompt but no response is rejected",
     spec_patch(dataset={"format": "instruction", "fields": {"prompt": "q"}}), "spec.dataset.fields",
     "both prompt and response"),
    ("an unknown method type is rejected",
     spec_patch(method={"type": "prefix-tuning"}), "spec.method.type", "must be one of"),
    ("qlora without quantization is rejected",
     spec_patch(method={"type": "qlora"}), "spec.method.quantization", "is required for qlora"),
    ("quantization on plain lora is rejected",
     spec_patch(method={"type": "lora", "quantization": {"bits": 4}}), "spec.method.quantization",
     "only for type qlora"),
    ("3-bit quantization is rejected",
     spec_patch(method={"type": "qlora", "quantization": {"bits": 3}}), "spec.method.quantization.bits",
     "must be one of"),
    ("8-bit quantization with an nf4 type is rejected",
     spec_patch(method={"type": "qlora", "quantization": {"bits": 8, "type": "nf4"}}),
     "spec.method.quantization.type", "4-bit types"),
    ("8-bit quantization with double quantization is rejected",
     spec_patch(method={"type": "qlora", "quantization": {"bits": 8, "doubleQuant": True}}),
     "spec.method.quantization.doubleQuant", "4-bit only"),
    ("lora settings on a full fine-tune are rejected",
     spec_patch(method={"type": "full", "lora": {"rank": 8}}), "spec.method.lora", "only for lora and qlora"),
    ("a lora rank of zero is rejected",
     spec_patch(method={"lora": {"rank": 0}}), "spec.method.lora.rank", "at least 1"),
    ("a lora dropout of one is rejected",
     spec_patch(method={"lora": {"dropout": 1.0}}), "spec.method.lora.dropout", "less than 1"),
    ("all-linear mixed with explicit modules is rejected",
     spec_patch(method={"lora": {"targetModules": ["all-linear", "q_proj"]}}),
     "spec.method.lora.targetModules", "list it alone"),
    ("an empty target module list is rejected",
     spec_patch(method={"lora": {"targetModules": []}}), "spec.method.lora.targetModules", "at least 1"),
    ("a misspelt training field gets a did-you-mean",
     spec_patch(training={"lerningRate": 1e-4}), "spec.training.lerningRate", "did you mean 'learningRate'"),
    ("a learning rate of zero is rejected",
     spec_patch(training={"learningRate": 0}), "spec.training.learningRate", "greater than 0"),
    ("a negative learning rate is rejected",
     spec_patch(training={"learningRate": -1e-4}), "spec.training.learningRate", "greater than 0"),
    ("a sequence length below 16 is rejected",
     spec_patch(training={"maxSeqLength": 8}), "spec.training.maxSeqLength", "at least 16"),
    ("a sequence length above 262144 is rejected",
     spec_patch(training={"maxSeqLength": 300000}), "spec.training.maxSeqLength", "at most 262144"),
    ("a batch size of zero is rejected",
     spec_patch(training={"batchSize": 0}), "spec.training.batchSize", "at least 1"),
    ("an unknown optimizer is rejected",
     spec_patch(training={"optimizer": "lion"}), "spec.training.optimizer", "must be one of"),
    ("an unknown preset is rejected",
     spec_patch(training={"preset": "turbo"}), "spec.training.preset", "must be one of"),
    ("a warmup ratio of one is rejected",
     spec_patch(training={"warmupRatio": 1}), "spec.training.warmupRatio", "less than 1"),
    ("fsdp on a single GPU is rejected",
     spec_patch(training={"strategy": "fsdp"}), "spec.training.strategy", "at least 2 GPUs"),
    ("qlora sharded with fsdp across nodes is rejected for ddp",
     spec_patch(method={"type": "qlora", "quantization": {"bits": 4}}, training={"strategy": "fsdp"},
                resources={"gpus": 8, "nodes": 2}),
     "spec.training.strategy", "qlora trains across GPUs and nodes with ddp"),
    ("evalSteps without evaluation data is rejected",
     spec_patch(training={"evalSteps": 50}), "spec.training.evalSteps", "needs evaluation data"),
    ("reduce-on-plateau without evaluation data is rejected",
     spec_patch(training={"lrScheduler": "reduce_lr_on_plateau"}), "spec.training.lrScheduler",
     "needs evaluation data"),
    ("saveSteps beyond maxSteps is rejected",
     spec_patch(training={"maxSteps": 100, "saveSteps": 500}), "spec.training.saveSteps", "beyond maxSteps"),
    ("completion-only loss on plain text is rejected",
     spec_patch(dataset={"format": "text"}, training={"completionOnlyLoss": True}),
     "spec.training.completionOnlyLoss", "no prompt to mask"),
    ("rouge without evaluation data is rejected",
     spec_patch(evaluation={"metrics": ["rouge"]}), "spec.evaluation.metrics", "rouge needs evaluation data"),
    ("rouge on plain text data is rejected",
     spec_patch(dataset={"format": "text", "evalFraction": 0.1}, evaluation={"metrics": ["rouge"]}),
     "spec.evaluation.metrics", "instruction or chat"),
    ("an unknown evaluation metric is rejected",
     spec_patch(evaluation={"metrics": ["bleu"]}), "spec.evaluation.metrics[0]", "must be one of"),
    ("a CPU-only job over two nodes is rejected",
     spec_patch(resources={"gpus": 0, "nodes": 2}), "spec.resources.nodes", "run on one node"),
    ("a CPU-only job naming a GPU product is rejected",
     spec_patch(resources={"gpus": 0, "gpuProduct": "NVIDIA-A100-SXM4-80GB"}), "spec.resources",
     "no meaning with gpus: 0"),
    ("a CPU-only float16 job is rejected",
     spec_patch(model={"dtype": "float16"}, resources={"gpus": 0}), "spec.model.dtype", "needs a GPU"),
    ("a CPU-only job that requires Liger kernels is rejected",
     spec_patch(training={"kernels": "liger"}, resources={"gpus": 0}), "spec.training.kernels", "need a CUDA GPU"),
    ("an unknown kernels choice is rejected",
     spec_patch(training={"kernels": "unsloth"}), "spec.training.kernels", "auto"),
    ("a CPU-only job whose preset picks a paged optimizer says where it came from",
     spec_patch(training={"preset": "low-memory"}, resources={"gpus": 0}), "spec.training.optimizer",
     "from preset low-memory"),
    ("flash attention in float32 is rejected",
     spec_patch(model={"attention": "flash_attention_2", "dtype": "float32"}), "spec.model.attention",
     "bfloat16/float16"),
    ("17 GPUs per node are rejected",
     spec_patch(resources={"gpus": 17}), "spec.resources.gpus", "at most 16"),
    ("a memory quantity that is not a quantity is rejected",
     spec_patch(resources={"memory": "lots"}), "spec.resources.memory", "not a Kubernetes quantity"),
    ("a toleration with an unknown effect is rejected",
     spec_patch(resources={"tolerations": [{"key": "a", "effect": "Sometimes"}]}),
     "spec.resources.tolerations[0].effect", "must be one of"),
    ("an Exists toleration with a value is rejected",
     spec_patch(resources={"tolerations": [{"key": "a", "operator": "Exists", "value": "b"}]}),
     "spec.resources.tolerations", "empty with operator Exists (spec.resources.tolerations[0])"),
    ("pushToHub without a token secret is rejected",
     spec_patch(output={"pushToHub": {"repo": "org/model"}}), "spec.output.pushToHub", "hfTokenSecretRef"),
    ("mergeAdapter on a full fine-tune is rejected",
     spec_patch(method={"type": "full"}, output={"mergeAdapter": True}), "spec.output.mergeAdapter",
     "no adapter to merge"),
    ("an output subPath that climbs out of the volume is rejected",
     spec_patch(output={"volume": {"claimName": "out", "subPath": "a/../../etc"}}),
     "spec.output.volume.subPath", "stay inside"),
    ("an upper-case claim name is rejected",
     spec_patch(output={"volume": {"claimName": "Out"}}), "spec.output.volume.claimName", "is not valid"),
    ("a model path on no volume is rejected",
     spec_patch(model={"name": None, "path": "/models/llama"}), "spec.model.path", "add the PVC"),
    ("a volume mounted over the trainer's output is rejected",
     spec_patch(volumes=[{"claimName": "data", "mountPath": "/output"}]), "spec.volumes[0].mountPath",
     "used by the trainer"),
    ("two volumes on one mount path are rejected",
     spec_patch(volumes=[{"claimName": "a", "mountPath": "/data"}, {"claimName": "b", "mountPath": "/data"}]),
     "spec.volumes", "used twice (spec.volumes[1].mountPath: /data)"),
    ("a dataset revision on a local file is rejected",
     spec_patch(dataset={"name": None, "path": "/data/a.jsonl", "revision": "v1"},
                volumes=[{"claimName": "data", "mountPath": "/data"}]),
     "spec.dataset", "apply to hub datasets (name) only; remove them (set: revision)"),
    ("an env name kubetune sets itself is rejected",
     spec_patch(env=[{"name": "KUBETUNE_OUTPUT_DIR", "value": "/x"}]), "spec.env",
     "sets itself cannot be set here (spec.env[0]: KUBETUNE_OUTPUT_DIR); remove it"),
    ("HF_TOKEN in env points to hfTokenSecretRef",
     spec_patch(env=[{"name": "HF_TOKEN", "value": "hf_x"}]), "spec.env", "give the token with spec.hfTokenSecretRef"),
    ("torchrun's RANK in env is rejected",
     spec_patch(env=[{"name": "RANK", "value": "0"}]), "spec.env", "(spec.env[0]: RANK)"),
    ("an env variable set twice is rejected",
     spec_patch(env=[{"name": "NCCL_DEBUG", "value": "INFO"}, {"name": "NCCL_DEBUG", "value": "WARN"}]),
     "spec.env", "NCCL_DEBUG is set twice (spec.env[1]); keep one"),
    ("an env variable with value and valueFrom is rejected",
     spec_patch(env=[{"name": "WANDB_API_KEY", "value": "k",
                      "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "key"}}}]),
     "spec.env", "set value or valueFrom, not both (spec.env[0])"),
    ("an env valueFrom with two sources is rejected",
     spec_patch(env=[{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"},
                                                 "configMapKeyRef": {"name": "c", "key": "k"}}}]),
     "spec.env", "exactly one of secretKeyRef and configMapKeyRef (spec.env[0])"),
    ("an env valueFrom with no source is rejected",
     spec_patch(env=[{"name": "X", "valueFrom": {}}]), "spec.env", "exactly one of secretKeyRef and configMapKeyRef"),
    ("an env name starting with a digit is rejected",
     spec_patch(env=[{"name": "1X", "value": "v"}]), "spec.env[0].name", "is not valid here"),
    ("an env secret reference without a key is rejected",
     spec_patch(env=[{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s"}}}]),
     "spec.env[0].valueFrom.secretKeyRef.key", "is required"),
    ("negative retries are rejected",
     spec_patch(maxRetries=-1), "spec.maxRetries", "at least 0"),
    ("a zero deadline is rejected",
     spec_patch(activeDeadlineSeconds=0), "spec.activeDeadlineSeconds", "at least 1"),
    ("an unknown top-level spec field gets a did-you-mean",
     spec_patch(resource={"gpus": 1}), "spec.resource", "did you mean 'resources'"),
    ("a string where a number belongs is rejected",
     spec_patch(training={"epochs": "three"}), "spec.training.epochs", "valid number"),
    ("a name too long for the Job's name is rejected",
     {"metadata": {"name": "x" * 60}}, "metadata.name", "DNS label of at most 52"),
    ("an upper-case name is rejected",
     {"metadata": {"name": "Demo"}}, "metadata.name", "DNS label"),
    ("a wrong apiVersion is rejected",
     {"apiVersion": "kubetune.io/v1"}, "apiVersion", "must be kubetune.io/v1alpha1"),
    ("a wrong kind is rejected",
     {"kind": "Job"}, "kind", "must be FineTuneJob"),
    ("a manifest without a spec is rejected",
     {"spec": None}, "spec", "is required"),
    ("an unknown vision part to train is rejected",
     spec_patch(vision={"train": ["languageModel"]}), "spec.vision.train[0]", "must be one of"),
    ("a vision part listed twice is rejected",
     spec_patch(vision={"train": ["projector", "projector"]}), "spec.vision.train", "lists a part twice"),
    ("a pixel bound below the smallest processable image is rejected",
     spec_patch(vision={"maxPixels": 100}), "spec.vision.maxPixels", "must be at least 784"),
    ("packing vision rows is rejected",
     spec_patch(dataset={"format": "vision"}, training={"packing": True}), "spec.training.packing",
     "cannot pack rows with images"),
    ("packing text rendered to pages is rejected",
     spec_patch(vision={"render": {"field": "article"}}, training={"packing": True}), "spec.training.packing",
     "cannot pack rows with images"),
    ("rendering pages for chat data is rejected",
     spec_patch(dataset={"format": "chat"}, vision={"render": {"field": "article"}}), "spec.vision.render",
     "set spec.dataset.format to vision"),
    ("an images column together with rendered pages is rejected",
     spec_patch(dataset={"fields": {"images": "img"}}, vision={"render": {"field": "article"}}),
     "spec.dataset.fields.images", "remove fields.images or render"),
    ("an images column for instruction data is rejected",
     spec_patch(dataset={"format": "instruction", "fields": {"images": "img"}}), "spec.dataset.fields.images",
     "format instruction reads only"),
    ("image rows for a text-only catalog model are rejected",
     spec_patch(dataset={"format": "vision"}), "spec.model.name", "is a text-only model"),
    ("training a vision tower of a text-only catalog model is rejected",
     spec_patch(vision={"train": ["visionTower"]}), "spec.model.name", "is a text-only model"),
    ("a sequence too short for the image tokens is rejected",
     spec_patch(model={"name": "Qwen/Qwen2.5-VL-7B-Instruct"}, dataset={"format": "vision"},
                vision={"maxImages": 2}, training={"maxSeqLength": 2048}),
     "spec.training.maxSeqLength", "take up to 2,674 tokens"),
    ("a relative font path is rejected",
     spec_patch(vision={"render": {"field": "article", "font": "fonts/x.ttf"}}), "spec.vision.render.font",
     "is not valid"),
]


@pytest.mark.parametrize(("patch", "path", "fragment"), [case[1:] for case in INVALID],
                         ids=[case[0] for case in INVALID])
def test_invalid_manifest_names_the_field_and_the_fix(patch: dict[str, Any], path: str, fragment: str) -> None:
    job, problems = validate_manifest(merge_patch(BASE, patch))
    assert job is None
    matching = [p for p in problems if p.path == path]
    assert matching, f"no problem at {path}; got {[str(p) for p in problems]}"
    assert any(fragment in p.message for p in matching), [str(p) for p in matching]


def test_the_table_has_at_least_forty_distinct_cases() -> None:
    assert len({case[0] for case in INVALID}) == len(INVALID) >= 40


def test_a_non_mapping_document_is_an_error_not_a_traceback() -> None:
    job, problems = validate_manifest(["not", "a", "mapping"])
    assert job is None
    assert [str(p) for p in problems] == ["(document): must be a mapping (a FineTuneJob object), not list"]


def test_the_base_manifest_is_valid() -> None:
    job, problems = validate_manifest(BASE)
    assert problems == []
    assert job is not None


VALID_EDGE_CASES: list[tuple[str, dict[str, Any]]] = [
    ("qlora 4-bit with only bits set is valid", spec_patch(method={"type": "qlora", "quantization": {"bits": 4}})),
    ("qlora 8-bit on a GPU is valid", spec_patch(method={"type": "qlora", "quantization": {"bits": 8}})),
    ("fsdp over two nodes of one GPU is valid", spec_patch(training={"strategy": "fsdp"}, resources={"nodes": 2})),
    ("qlora with ddp across two nodes is valid",
     spec_patch(method={"type": "qlora", "quantization": {"bits": 4}}, training={"strategy": "ddp"},
                resources={"gpus": 8, "nodes": 2})),
    ("a model path under a mounted volume is valid",
     spec_patch(model={"name": None, "path": "/models/llama"},
                volumes=[{"claimName": "models", "mountPath": "/models"}])),
    ("a CPU-only job in float32 is valid", spec_patch(model={"dtype": "float32"}, resources={"gpus": 0})),
    ("a quantity given as an integer is valid", spec_patch(resources={"cpu": 8, "memory": "64Gi"})),
    ("explicit lm_head among the targets is valid",
     spec_patch(method={"lora": {"targetModules": ["q_proj", "v_proj", "lm_head"]}})),
    ("vision data with a trained projector and vision tower is valid",
     spec_patch(model={"name": "HuggingFaceTB/SmolVLM-Instruct"},
                dataset={"format": "vision", "fields": {"images": "pictures", "messages": "turns"}},
                vision={"train": ["projector", "visionTower"], "maxPixels": 512 * 512, "maxImages": 4})),
    ("summarization data rendered to pages with ROUGE is valid",
     spec_patch(model={"name": "google/gemma-3-4b-it"},
                dataset={"fields": {"response": "highlights"}, "evalFraction": 0.1},
                vision={"render": {"field": "article", "fontSize": 14, "pageWidth": 640}},
                evaluation={"metrics": ["loss", "rouge"]})),
    ("qlora on vision data is valid",
     spec_patch(model={"name": "Qwen/Qwen2.5-VL-7B-Instruct"}, method={"type": "qlora", "quantization": {"bits": 4}},
                dataset={"format": "vision"})),
    ("a model outside the catalog may train on images (its kind is read from its config)",
     spec_patch(model={"name": "acme/ocr-vlm"}, dataset={"format": "vision"})),
    ("evalSteps with an eval fraction is valid", spec_patch(dataset={"evalFraction": 0.1}, training={"evalSteps": 10})),
    ("NCCL settings, an empty value and a secret-backed variable in env are valid",
     spec_patch(env=[{"name": "NCCL_SOCKET_IFNAME", "value": "eth0"}, {"name": "NCCL_IB_HCA", "value": ""},
                     {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "key"}}},
                     {"name": "NCCL_DEBUG", "valueFrom": {"configMapKeyRef": {"name": "nccl", "key": "debug",
                                                                              "optional": True}}}])),
]


@pytest.mark.parametrize("patch", [case[1] for case in VALID_EDGE_CASES], ids=[c[0] for c in VALID_EDGE_CASES])
def test_valid_edge_cases_pass(patch: dict[str, Any]) -> None:
    assert validate_manifest(merge_patch(BASE, patch))[1] == []


# ------------------------------------------------------------------------------------ presets

PRESET_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("the default preset keeps the field defaults", {}, {"batch_size": 4, "gradient_checkpointing": True}),
    ("low-memory fills batch size one and a paged optimizer", {"preset": "low-memory"},
     {"batch_size": 1, "gradient_accumulation_steps": 16, "optimizer": "paged_adamw_8bit", "max_seq_length": 1024}),
    ("an explicit field wins over the preset", {"preset": "low-memory", "batchSize": 2, "optimizer": "adamw_torch"},
     {"batch_size": 2, "optimizer": "adamw_torch", "gradient_accumulation_steps": 16}),
    ("high-memory turns checkpointing off", {"preset": "high-memory"},
     {"batch_size": 16, "gradient_checkpointing": False}),
    ("quick-test stops after 30 steps and saves every 10", {"preset": "quick-test"},
     {"max_steps": 30, "save_steps": 10, "logging_steps": 1}),
    ("an explicit maxSteps wins over quick-test", {"preset": "quick-test", "maxSteps": 5}, {"max_steps": 5}),
]


@pytest.mark.parametrize(("training", "expected"), [c[1:] for c in PRESET_CASES], ids=[c[0] for c in PRESET_CASES])
def test_presets_fill_only_unset_fields(training: dict[str, Any], expected: dict[str, Any]) -> None:
    spec = parse_spec({"model": {"name": "a/b"}, "dataset": {"name": "c/d"}, "training": training})
    resolved = effective_spec(spec).training
    assert {name: getattr(resolved, name) for name in expected} == expected


METHOD_DEFAULTS: list[tuple[str, dict[str, Any], float]] = [
    ("lora defaults to a 2e-4 learning rate", {"type": "lora"}, 2e-4),
    ("full fine-tuning defaults to a 2e-5 learning rate", {"type": "full"}, 2e-5),
]


@pytest.mark.parametrize(("method", "learning_rate"), [c[1:] for c in METHOD_DEFAULTS],
                         ids=[c[0] for c in METHOD_DEFAULTS])
def test_learning_rate_default_depends_on_the_method(method: dict[str, Any], learning_rate: float) -> None:
    spec = parse_spec({"model": {"name": "a/b"}, "dataset": {"name": "c/d"}, "method": method})
    assert effective_spec(spec).training.learning_rate == learning_rate


def test_effective_spec_resolves_adapter_and_quantization_defaults() -> None:
    spec = parse_spec({"model": {"name": "a/b", "dtype": "float16"}, "dataset": {"name": "c/d"},
                       "method": {"type": "qlora", "lora": {"rank": 8}, "quantization": {"bits": 4}}})
    method = effective_spec(spec).method
    assert method.lora is not None and method.lora.alpha == 16
    assert method.quantization is not None
    assert (method.quantization.type, method.quantization.compute_dtype) == ("nf4", "float16")


EFFECTIVE_ON_THE_WIRE: list[tuple[str, dict[str, Any]]] = [
    ("quick-test without evaluation data (its evalSteps is a preset value)", {"training": {"preset": "quick-test"}}),
    ("a run shorter than the default save interval", {"training": {"maxSteps": 30}}),
    ("quick-test cut shorter than its own intervals", {"training": {"preset": "quick-test", "maxSteps": 5}}),
    ("plain text data (completionOnlyLoss defaults to true)", {"dataset": {"name": "c/d", "format": "text"}}),
    ("8-bit QLoRA (doubleQuant defaults to true)",
     {"method": {"type": "qlora", "quantization": {"bits": 8}}}),
    ("low-memory full fine-tuning", {"method": {"type": "full"}, "training": {"preset": "low-memory"}}),
]


@pytest.mark.parametrize("changes", [c[1] for c in EFFECTIVE_ON_THE_WIRE], ids=[c[0] for c in EFFECTIVE_ON_THE_WIRE])
def test_the_effective_spec_reads_back_unchanged_from_the_wire(changes: dict[str, Any]) -> None:
    """What the trainer does with the operator's ConfigMap: every field there reads as given."""
    spec = parse_spec({"model": {"name": "a/b"}, "dataset": {"name": "c/d"}, **changes})
    once = effective_spec(spec)
    assert effective_spec(parse_effective_spec(once.to_wire())) == once


def test_field_rules_still_apply_to_an_effective_spec() -> None:
    with pytest.raises(SpecError, match=r"spec.training.learningRate"):
        parse_effective_spec({"model": {"name": "a/b"}, "dataset": {"name": "c/d"}, "training": {"learningRate": -1}})


def test_every_preset_passes_the_field_rules() -> None:
    assert check_presets() == []
    assert set(PRESETS) == {"default", "low-memory", "high-memory", "quick-test"}
