"""The GPU memory estimator: every component, method and strategy behaves as the physics says."""

from __future__ import annotations

import time
from typing import Any

import pytest

from kubetune.api import EstimateStatus
from kubetune.catalog import CATALOG, UnknownModelError
from kubetune.estimate import CUDA_CONTEXT_GIB, VramEstimate, estimate
from kubetune.validation import parse_spec

LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"
QLORA_4BIT = {"type": "qlora", "quantization": {"bits": 4}}


def spec_with(model: str | dict[str, Any] = LLAMA_8B, **sections: dict[str, Any]) -> Any:
    """A valid spec; model is a hub id or the model section, each keyword another section in wire form."""
    model_section = {"name": model} if isinstance(model, str) else model
    return parse_spec({"model": model_section, "dataset": {"name": "tatsu-lab/alpaca"}, **sections})


def gib(value: float) -> float:
    return value / (1 << 30)


def part(vram: VramEstimate, component: str) -> float:
    return vram.breakdown.get(component, 0.0)


PARAMS_8B = CATALOG["meta-llama/llama-3.1-8b"].parameters
LINEAR_8B = CATALOG["meta-llama/llama-3.1-8b"].block_linear_parameters


@pytest.mark.parametrize(
    ("method", "bytes_per_linear_weight"),
    [
        ({"type": "lora"}, 2.0),
        ({"type": "qlora", "quantization": {"bits": 8}}, 1.0),
        ({"type": "qlora", "quantization": {"bits": 4, "doubleQuant": False}}, 0.5 + 4 / 64),
        ({"type": "qlora", "quantization": {"bits": 4}}, 0.5 + (1 + 4 / 256) / 64),
    ],
    ids=[
        "lora keeps bfloat16 weights: two bytes each",
        "qlora 8-bit stores one byte per weight (plus row scales)",
        "qlora 4-bit stores half a byte per weight plus a float32 absmax per 64",
        "double quantization shrinks the constants to 8 bits",
    ],
)
def test_weights_follow_the_storage_format(method: dict[str, Any], bytes_per_linear_weight: float) -> None:
    vram = estimate(spec_with(method=method))
    # Unquantized parts: embeddings and lm_head; qlora keeps them in float32 (prepare_model_for_kbit_training).
    unquantized = (PARAMS_8B - LINEAR_8B) * (4 if method["type"] == "qlora" else 2)
    row_scales = 0.01  # LLM.int8's per-row scales are well under 1% of the weights
    expected = gib(LINEAR_8B * bytes_per_linear_weight + unquantized)
    assert part(vram, "weights") == pytest.approx(expected, rel=row_scales)


def test_eight_bit_qlora_warns_that_it_is_not_validated() -> None:
    vram = estimate(spec_with(method={"type": "qlora", "quantization": {"bits": 8}}))
    assert any("qlora 8-bit" in note and "1.7x" in note for note in vram.assumptions)


def test_double_quantization_saves_about_0_37_bits_per_weight() -> None:
    single = estimate(spec_with(method={"type": "qlora", "quantization": {"bits": 4, "doubleQuant": False}}))
    double = estimate(spec_with(method=QLORA_4BIT))
    saved_bits = (part(single, "weights") - part(double, "weights")) * (1 << 30) * 8 / LINEAR_8B
    assert saved_bits == pytest.approx(0.373, abs=0.01)


@pytest.mark.parametrize(
    ("optimizer", "bytes_per_trainable"),
    [("adamw_torch", 4.0), ("adamw_8bit", 2.03), ("paged_adamw_8bit", 2.03), ("sgd", 0.0)],
    ids=[
        "torch AdamW keeps two states in the parameter dtype",
        "8-bit AdamW keeps two bytes plus block constants",
        "paged 8-bit AdamW is counted on the GPU like 8-bit AdamW",
        "SGD without momentum keeps no state",
    ],
)
def test_full_fine_tuning_optimizer_states(optimizer: str, bytes_per_trainable: float) -> None:
    vram = estimate(spec_with(method={"type": "full"}, training={"optimizer": optimizer}))
    assert vram.trainable_parameters == PARAMS_8B
    assert part(vram, "gradients") == pytest.approx(gib(PARAMS_8B * 2), rel=1e-3)
    assert part(vram, "optimizer") == pytest.approx(gib(PARAMS_8B * bytes_per_trainable), rel=1e-2)


def test_full_fine_tuning_in_float16_keeps_float32_master_weights() -> None:
    half = estimate(spec_with(model={"name": LLAMA_8B, "dtype": "float16"}, method={"type": "full"}))
    assert part(half, "weights") == pytest.approx(gib(PARAMS_8B * 4), rel=1e-3)
    assert part(half, "optimizer") == pytest.approx(gib(PARAMS_8B * 8), rel=1e-3)
    assert any("float32 master weights" in note for note in half.assumptions)


def test_adafactor_factors_its_second_moments_into_rows_and_columns() -> None:
    adafactor = estimate(spec_with(method={"type": "full"}, training={"optimizer": "adafactor"}))
    assert 0 < part(adafactor, "optimizer") < 0.01 * gib(PARAMS_8B * 4)


def test_foreach_adamw_step_needs_a_parameter_sized_temporary_when_activations_are_small() -> None:
    vram = estimate(spec_with(model="Qwen/Qwen2.5-0.5B", method={"type": "full"},
                              training={"batchSize": 1, "maxSeqLength": 16}))
    assert part(vram, "optimizerStep") > 0
    eight_bit = estimate(spec_with(model="Qwen/Qwen2.5-0.5B", method={"type": "full"},
                                   training={"batchSize": 1, "maxSeqLength": 16, "optimizer": "adamw_8bit"}))
    assert part(eight_bit, "optimizerStep") == 0


@pytest.mark.parametrize(
    ("lora", "expected_trainable"),
    [
        ({"rank": 16}, 41_943_040),
        ({"rank": 32}, 83_886_080),
        ({"rank": 16, "targetModules": ["q_proj", "v_proj"]}, 32 * 16 * ((4096 + 4096) + (4096 + 1024))),
        ({"rank": 16, "targetModules": ["q_proj", "v_proj", "lm_head"]},
         32 * 16 * ((4096 + 4096) + (4096 + 1024)) + 16 * (4096 + 128256)),
        ({"rank": 16, "useDora": True}, 41_943_040 + 32 * (4096 + 1024 + 1024 + 4096 + 14336 * 2 + 4096)),
    ],
    ids=[
        "rank 16 on all linear layers matches PEFT's count for Llama 3.1 8B",
        "doubling the rank doubles the adapter",
        "q and v projections only",
        "lm_head as a target adds an adapter on the vocabulary projection",
        "DoRA adds one magnitude per output feature",
    ],
)
def test_adapter_parameters(lora: dict[str, Any], expected_trainable: int) -> None:
    vram = estimate(spec_with(method={"type": "lora", "lora": lora}))
    assert vram.trainable_parameters == expected_trainable
    # PEFT keeps adapters in float32: weights, gradients 4 bytes each, Adam 8 bytes.
    assert part(vram, "adapters") == pytest.approx(gib(expected_trainable * 4), abs=1e-3)
    assert part(vram, "optimizer") == pytest.approx(gib(expected_trainable * 8), abs=1e-3)


def test_fused_projections_of_phi3_get_one_adapter_each() -> None:
    all_linear = estimate(spec_with(model="microsoft/Phi-3-mini-4k-instruct"))
    assert all_linear.trainable_parameters == 25_165_824  # what PEFT reports for r=16 all-linear
    fused = estimate(spec_with(model="microsoft/Phi-3-mini-4k-instruct",
                               method={"type": "lora", "lora": {"targetModules": ["qkv_proj", "gate_up_proj"]}}))
    assert fused.trainable_parameters == 32 * 16 * ((3072 + 9216) + (3072 + 16384))


def test_unrecognised_target_modules_are_named_in_the_assumptions() -> None:
    vram = estimate(spec_with(method={"type": "lora", "lora": {"targetModules": ["q_proj", "my_adapter"]}}))
    assert any("my_adapter" in note for note in vram.assumptions)


@pytest.mark.parametrize(
    ("smaller", "larger"),
    [
        ({"training": {"gradientCheckpointing": True}}, {"training": {"gradientCheckpointing": False}}),
        ({"training": {"batchSize": 1}}, {"training": {"batchSize": 8}}),
        ({"training": {"maxSeqLength": 1024}}, {"training": {"maxSeqLength": 4096}}),
        ({}, {"model": {"name": LLAMA_8B, "attention": "eager"}, "training": {"gradientCheckpointing": False}}),
        ({"method": {"type": "lora", "lora": {"dropout": 0}}, "training": {"gradientCheckpointing": False}},
         {"method": {"type": "lora", "lora": {"dropout": 0.1}}, "training": {"gradientCheckpointing": False}}),
    ],
    ids=[
        "gradient checkpointing keeps only block inputs",
        "activations grow with the batch",
        "activations grow with the sequence length",
        "eager attention stores the score matrix, sdpa does not",
        "LoRA dropout keeps a mask per adapted input",
    ],
)
def test_activation_memory(smaller: dict[str, Any], larger: dict[str, Any]) -> None:
    small, large = estimate(spec_with(**smaller)), estimate(spec_with(**larger))
    assert part(small, "activations") + part(small, "logits") < part(large, "activations") + part(large, "logits")
    assert small.per_gpu_gib < large.per_gpu_gib


@pytest.mark.parametrize(
    ("model", "vocab"),
    [("meta-llama/Llama-2-7b-hf", 32000), (LLAMA_8B, 128256), ("google/gemma-2-9b", 256000)],
    ids=["32k vocabulary", "128k vocabulary", "256k vocabulary"],
)
def test_materialized_logits_are_three_float32_copies_of_tokens_times_vocabulary(model: str, vocab: int) -> None:
    vram = estimate(spec_with(model=model, training={"batchSize": 2, "maxSeqLength": 4096}), loss="materialized")
    assert part(vram, "logits") == pytest.approx(gib(2 * 4096 * vocab * 12), rel=1e-3)


def test_materialized_logits_dominate_small_models_with_large_vocabularies() -> None:
    vram = estimate(spec_with(model="google/gemma-2-2b", training={"batchSize": 8, "maxSeqLength": 4096}),
                    loss="materialized")
    assert part(vram, "logits") == max(vram.breakdown.values())


FUSED_CASES = [
    # (id, model, training, method, expected bytes: tile + head slice + fp32 hidden gradient [+ head gradient])
    ("the kubetune trainer scores a 256k vocabulary in tiles, never the whole logits", "google/gemma-2-2b",
     {"batchSize": 8, "maxSeqLength": 4096}, "lora", 4096 * 32768 * 2 + 32768 * 2304 * 2 + 8 * 4096 * 2304 * 4),
    ("a batch smaller than one tile allocates only what it scores", "meta-llama/Llama-3.1-8B",
     {"batchSize": 1, "maxSeqLength": 1024}, "lora", 1024 * 32768 * 2 + 32768 * 4096 * 2 + 1024 * 4096 * 4),
    ("a full fine-tune also holds the gradient of the head, in float32 and in the weight dtype", "Qwen/Qwen2.5-0.5B",
     {"batchSize": 8, "maxSeqLength": 1024}, "full",
     4096 * 32768 * 2 + 32768 * 896 * 2 + 8 * 1024 * 896 * 4 + 151936 * 896 * (4 + 2)),
]


@pytest.mark.parametrize(("model", "training", "method", "expected"), [c[1:] for c in FUSED_CASES],
                         ids=[c[0] for c in FUSED_CASES])
def test_fused_loss_is_a_tile_not_the_logits(model: str, training: dict[str, Any], method: str,
                                             expected: int) -> None:
    vram = estimate(spec_with(model=model, training=training, method={"type": method}))
    assert part(vram, "logits") == pytest.approx(gib(expected), rel=1e-3)
    materialized = estimate(spec_with(model=model, training=training, method={"type": method}), loss="materialized")
    assert part(vram, "logits") < part(materialized, "logits")


@pytest.mark.parametrize(
    ("resources", "training", "strategy"),
    [
        ({"gpus": 0}, {"optimizer": "adamw_torch"}, "cpu"),
        ({"gpus": 1}, {}, "single"),
        ({"gpus": 4}, {"strategy": "ddp"}, "ddp"),
        ({"gpus": 4}, {"strategy": "fsdp"}, "fsdp"),
        ({"gpus": 2, "nodes": 2}, {"strategy": "fsdp"}, "fsdp"),
    ],
    ids=["no GPUs trains on the CPU", "one GPU", "explicit ddp", "explicit fsdp", "fsdp over two nodes"],
)
def test_strategy_is_reported(resources: dict[str, Any], training: dict[str, Any], strategy: str) -> None:
    vram = estimate(spec_with(model="Qwen/Qwen2.5-0.5B", resources=resources, training=training))
    assert vram.strategy == strategy
    world = max(1, resources["gpus"] * resources.get("nodes", 1))
    assert vram.total_gib == pytest.approx(vram.per_gpu_gib * world, rel=1e-3)


def test_cpu_training_has_no_cuda_context() -> None:
    cpu = estimate(spec_with(model="Qwen/Qwen2.5-0.5B", resources={"gpus": 0}))
    gpu = estimate(spec_with(model="Qwen/Qwen2.5-0.5B"))
    assert gpu.per_gpu_gib - cpu.per_gpu_gib == pytest.approx(CUDA_CONTEXT_GIB, abs=0.01)


def test_fsdp_shards_weights_gradients_and_optimizer_over_every_gpu() -> None:
    full = {"type": "full"}
    single = estimate(spec_with(method=full))
    sharded = estimate(spec_with(method=full, resources={"gpus": 4, "nodes": 2}, training={"strategy": "fsdp"}))
    for component in ("weights", "gradients", "optimizer"):
        assert part(sharded, component) == pytest.approx(part(single, component) / 8, rel=1e-2)
    assert part(sharded, "activations") == part(single, "activations")


def test_ddp_replicates_and_adds_gradient_buckets() -> None:
    single = estimate(spec_with(model="Qwen/Qwen2.5-0.5B", method={"type": "full"}))
    ddp = estimate(spec_with(model="Qwen/Qwen2.5-0.5B", method={"type": "full"}, resources={"gpus": 2},
                             training={"strategy": "ddp"}))
    assert part(ddp, "weights") == part(single, "weights")
    assert part(ddp, "ddpBuckets") == pytest.approx(part(single, "gradients"), rel=1e-3)


@pytest.mark.parametrize(
    ("model", "resources", "strategy", "source"),
    [
        ("Qwen/Qwen2.5-0.5B", {"gpus": 4}, "ddp", "default GPU size"),
        (LLAMA_8B, {"gpus": 4}, "fsdp", "default GPU size"),
        ("Qwen/Qwen2.5-7B", {"gpus": 4, "minGpuMemoryGiB": 16}, "fsdp", "minGpuMemoryGiB"),
        ("Qwen/Qwen2.5-7B", {"gpus": 4, "gpuProduct": "NVIDIA-H200"}, "ddp", "NVIDIA-H200"),
    ],
    ids=[
        "auto picks ddp when a replica fits the default 80 GiB GPU",
        "auto picks fsdp when a full fine-tune replica does not fit",
        "minGpuMemoryGiB is the size auto decides against",
        "gpuProduct's memory is the size auto decides against",
    ],
)
def test_auto_strategy_decides_by_whether_a_replica_fits(
    model: str, resources: dict[str, Any], strategy: str, source: str
) -> None:
    method = {"type": "full"} if strategy == "fsdp" and "minGpuMemoryGiB" not in resources else {"type": "lora"}
    vram = estimate(spec_with(model=model, method=method, resources=resources))
    assert vram.strategy == strategy
    assert any(f"auto chose {strategy}" in note and source in note for note in vram.assumptions)


def test_breakdown_adds_up_to_the_peak() -> None:
    vram = estimate(spec_with(method=QLORA_4BIT))
    assert sum(vram.breakdown.values()) == pytest.approx(vram.per_gpu_gib, abs=0.01)


def test_presets_are_applied_by_the_estimator() -> None:
    default = estimate(spec_with(training={"preset": "default"}))
    low = estimate(spec_with(training={"preset": "low-memory"}))
    assert low.per_gpu_gib < default.per_gpu_gib
    assert any("1024 tokens" in note for note in low.assumptions)


def test_json_and_status_forms() -> None:
    vram = estimate(spec_with(method=QLORA_4BIT))
    body = vram.to_json()
    assert set(body) == {"perGpuGiB", "totalGiB", "strategy", "breakdown", "trainableParameters",
                         "totalParameters", "assumptions", "analyticGiB", "calibrationRecords"}
    assert body["analyticGiB"] == body["perGpuGiB"]  # no calibration: the analytic value is planned with
    assert isinstance(body["assumptions"], list)
    status = vram.to_status()
    assert isinstance(status, EstimateStatus)
    assert status.per_gpu_gib == vram.per_gpu_gib
    assert status.to_wire()["perGpuGiB"] == vram.per_gpu_gib


def test_architecture_in_the_spec_overrides_the_catalog() -> None:
    tiny = {"hiddenSize": 64, "numLayers": 2, "numAttentionHeads": 4, "intermediateSize": 128, "vocabSize": 1000}
    vram = estimate(parse_spec({"model": {"name": LLAMA_8B, "architecture": tiny}, "dataset": {"name": "a/b"}}))
    assert vram.total_parameters < 1_000_000


def test_unknown_model_says_how_to_describe_it() -> None:
    with pytest.raises(UnknownModelError) as error:
        estimate(spec_with(model="acme/secret-model-13b"))
    message = str(error.value)
    assert "spec.model.architecture" in message
    assert "kubetune estimate --help" in message


def test_an_estimate_takes_well_under_a_millisecond() -> None:
    spec = spec_with(method=QLORA_4BIT, resources={"gpus": 4})
    calls = 200
    started = time.perf_counter()
    for _ in range(calls):
        estimate(spec)
    assert (time.perf_counter() - started) / calls < 1e-3


def test_auto_never_picks_fsdp_for_qlora_because_the_trainer_cannot_shard_quantized_weights() -> None:
    spec = spec_with(model="meta-llama/Llama-3.1-70B", method={"type": "qlora", "quantization": {"bits": 4}},
                     resources={"gpus": 4, "minGpuMemoryGiB": 24})
    vram = estimate(spec)
    assert vram.strategy == "ddp"
    assert any("cannot shard qlora" in note for note in vram.assumptions)
