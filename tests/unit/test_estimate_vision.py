"""The estimate of vision-language models: the catalog's towers, image tokens, and the vision components."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.catalog import VisionTower, from_config, lookup
from kubetune.estimate import estimate
from kubetune.plan import merge_patch
from kubetune.validation import parse_effective_spec, parse_spec

VISION_JOB: dict[str, Any] = {
    "model": {"name": "Qwen/Qwen2.5-VL-7B-Instruct"},
    "dataset": {"name": "acme/captions", "format": "vision"},
    "method": {"type": "qlora", "quantization": {"bits": 4}},
    "training": {"batchSize": 2, "maxSeqLength": 2048},
}


def vision_estimate(*changes: dict[str, Any]) -> Any:
    job = VISION_JOB
    for change in changes:
        job = merge_patch(job, change)
    return estimate(parse_spec(job))


@pytest.mark.parametrize(
    ("hub_id", "tower_millions", "tokens"),
    [
        ("Qwen/Qwen2.5-VL-7B-Instruct", 675, 1337),
        ("Qwen/Qwen2.5-VL-3B-Instruct", 667, 1337),
        ("HuggingFaceTB/SmolVLM-Instruct", 433, 5 * 81),
        ("llava-hf/llava-1.5-7b-hf", 324, 576),
        ("google/gemma-3-4b-it", 415, 256),
        ("google/gemma-3-12b-it", 416, 256),
        ("meta-llama/Llama-3.2-11B-Vision-Instruct", 819, 0),
    ],
    ids=["Qwen2.5-VL-7B: a 0.67B tower, 28 x 28 pixels a token",
         "Qwen2.5-VL-3B: the same tower, a narrower merger",
         "SmolVLM: a megapixel bounds it to 2 x 2 tiles and a global one, 81 tokens each",
         "LLaVA-1.5-7B: CLIP-L at 336, 576 tokens", "Gemma 3 4B: SigLIP pooled to 256 tokens",
         "Gemma 3 12B: the same tower", "Llama 3.2 Vision cross-attends: no image tokens in the sequence"],
)
def test_catalog_vision_towers_have_their_published_size_and_image_tokens(
        hub_id: str, tower_millions: int, tokens: int) -> None:
    architecture = lookup(hub_id)
    assert architecture is not None and architecture.vision is not None
    tower = architecture.vision
    assert (tower.tower_parameters + tower.projector_parameters) / 1e6 == pytest.approx(tower_millions, rel=0.02)
    assert tower.image_tokens(1024 * 1024) == tokens


@pytest.mark.parametrize(
    ("max_pixels", "tokens"),
    [(28 * 28, 15), (56 * 56, 29), (400 * 400, 204), (448 * 448, 256), (1024 * 1024, 1337), (1280 * 28 * 28, 1280)],
    ids=["the smallest maxPixels counts a 200:1 strip: one row of 15 tokens, not the area's one",
         "56 x 56: the strip's 29 tokens, not the square's 4",
         "400 x 400: the area's 204 tokens pass the strip's 203", "448 x 448 is 16 x 16 tokens",
         "a megapixel is 1,337 tokens at most", "Qwen's documented 1280-token budget"],
)
def test_dynamic_resolution_tokens_follow_max_pixels(max_pixels: int, tokens: int) -> None:
    tower = VisionTower(1280, 32, 16, 3420, 14, "dynamic", merge_size=2)
    assert tower.image_tokens(max_pixels) == tokens
    assert tower.patches_per_image(max_pixels) == 4 * tokens


@pytest.mark.parametrize(
    ("max_pixels", "tiles"),
    [(384 * 384, 1), (1024 * 1024, 5), (1536 * 1536, 17), (4096 * 4096, 17)],
    ids=["one tile: no split, no global tile", "2 x 2 tiles and the global one",
         "4 x 4 tiles and the global one", "never more than the processor's 4 x 4"],
)
def test_tiled_towers_count_whole_tiles_within_max_pixels(max_pixels: int, tiles: int) -> None:
    smolvlm = lookup("HuggingFaceTB/SmolVLM-Instruct")
    assert smolvlm is not None and smolvlm.vision is not None
    assert smolvlm.vision.tiles(max_pixels) == tiles
    assert smolvlm.vision.image_tokens(max_pixels) == 81 * tiles


QWEN25_VL_3B_CONFIG: dict[str, Any] = {
    "model_type": "qwen2_5_vl", "hidden_size": 2048, "num_hidden_layers": 36, "num_attention_heads": 16,
    "num_key_value_heads": 2, "intermediate_size": 11008, "vocab_size": 151936,
    "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "patch_size": 14,
                      "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 2048}}
LLAVA_15_7B_CONFIG: dict[str, Any] = {
    "model_type": "llava", "vision_feature_layer": -2,
    "text_config": {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
                    "intermediate_size": 11008, "vocab_size": 32064},
    "vision_config": {"model_type": "clip_vision_model", "hidden_size": 1024, "image_size": 336,
                      "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14}}


@pytest.mark.parametrize(
    ("config", "hub_id"),
    [(QWEN25_VL_3B_CONFIG, "Qwen/Qwen2.5-VL-3B-Instruct"), (LLAVA_15_7B_CONFIG, "llava-hf/llava-1.5-7b-hf")],
    ids=["Qwen2.5-VL: one qkv projection, two frames a patch",
         "LLaVA-1.5: CLIP's separate q/k/v, a float32 stream after its pre-LayerNorm, every block's output kept"],
)
def test_a_vision_config_json_describes_its_tower(config: dict[str, Any], hub_id: str) -> None:
    architecture = from_config(config, "local")
    catalog = lookup(hub_id)
    assert catalog is not None
    assert architecture.vision == catalog.vision


def test_a_text_model_has_no_vision_components() -> None:
    result = estimate(parse_spec({"model": {"name": "Qwen/Qwen2.5-7B"}, "dataset": {"name": "acme/text"}}))
    assert not any(name.startswith("vision") for name in result.breakdown)


NO_CHECKPOINTING: dict[str, Any] = {"training": {"gradientCheckpointing": False}}


@pytest.mark.parametrize(
    ("base", "changes", "grows", "same"),
    [
        ({}, {"vision": {"train": ["visionTower"]}}, {"visionTrainable", "visionActivations"},
         {"weights", "activations"}),
        (NO_CHECKPOINTING, {"vision": {"train": ["visionTower"]}}, {"visionTrainable", "visionActivations"},
         {"weights", "activations"}),
        (NO_CHECKPOINTING, {"training": {"gradientCheckpointing": True}}, {"visionActivations"},
         {"visionWeights", "visionTrainable"}),
        ({}, {"vision": {"train": ["projector"]}}, {"visionTrainable", "visionActivations"}, {"activations"}),
        ({}, {"vision": {"maxPixels": 2048 * 2048}, "training": {"maxSeqLength": 8192}}, {"visionActivations"},
         {"visionWeights", "visionTrainable"}),
        ({}, {"vision": {"maxImages": 4}, "training": {"maxSeqLength": 8192}}, {"visionActivations"},
         {"visionWeights", "visionTrainable"}),
        ({}, {"training": {"batchSize": 4}}, {"visionActivations", "activations"}, {"visionWeights"}),
    ],
    ids=["under checkpointing, training the vision tower adds its adapters and its block inputs: the trainer keeps a "
         "frozen tower out of the backward pass",
         "without checkpointing, training the vision tower keeps every block's activations",
         "checkpointing with adapters hooks the language model's input embeddings: their copies count",
         "training the projector adds its adapters, and the tower's ends it keeps for their backward",
         "a larger pixel bound means more patches", "more images per row mean more patches",
         "a larger micro-batch holds more images"],
)
def test_vision_components_follow_the_spec(base: dict[str, Any], changes: dict[str, Any], grows: set[str],
                                           same: set[str]) -> None:
    before, changed = vision_estimate(base).breakdown, vision_estimate(base, changes).breakdown
    assert {name for name in grows if changed[name] > before[name]} == grows
    assert {name for name in same if changed[name] == before[name]} == same


def test_text_rows_on_a_vision_model_count_its_weights_but_no_images() -> None:
    result = vision_estimate({"dataset": {"format": "instruction"}})
    assert result.breakdown["visionWeights"] > 0
    assert result.breakdown["visionActivations"] == 0


def test_image_tokens_beyond_the_sequence_are_named_in_the_assumptions() -> None:
    """Validation refuses it for catalog models; the estimate says it too (field rules only, as the trainer reads)."""
    too_short = {"vision": {"maxImages": 2}, "training": {"maxSeqLength": 1024}}
    spec = parse_effective_spec(merge_patch(VISION_JOB, too_short))
    assert any("exceed maxSeqLength (1024)" in note for note in estimate(spec).assumptions)


