"""Vision-language fine-tuning: model detection, trained parts, image rows, rendered pages, a real LoRA run."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from kubetune.api import FineTuneJobSpec, PageRendering
from kubetune.presets import effective_spec
from kubetune.validation import parse_spec
from kubetune_trainer import data, images, pages, tiny, tiny_vision, train, vision
from kubetune_trainer import model as models
from kubetune_trainer.context import RunContext, with_local_mounts
from kubetune_trainer.errors import ConfigError, DatasetError, ModelLoadError

from .conftest import BASE_SPEC, MOUNT, merged

CAPTIONS = f"{MOUNT}/captions/captions.jsonl"
VISION_SPEC: dict[str, Any] = {"model": {"path": f"{MOUNT}/llava"}, "dataset": {"path": CAPTIONS},
                               "training": {"maxSeqLength": 128}}
FAMILIES = ("llava", "idefics3", "qwen2_vl", "qwen2_5_vl")
FAMILY_IDS = {"llava": "a tiny LLaVA", "idefics3": "a tiny Idefics3 (SmolVLM)", "qwen2_vl": "a tiny Qwen2-VL",
              "qwen2_5_vl": "a tiny Qwen2.5-VL (window attention)"}


def family_model(family: str) -> dict[str, Any]:
    """spec.model of a tiny family: the Qwen ones load their processor stand-in as remote code (tiny_qwen_processor)."""
    return {"path": f"{MOUNT}/{family}", "trustRemoteCode": family.startswith("qwen")}


@pytest.fixture(scope="session")
def vision_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny vision-language models, a caption dataset of drawn shapes, the tiny text model and a
    summarization file."""
    root = tmp_path_factory.mktemp("vision")
    for family in FAMILIES:
        getattr(tiny_vision, f"save_tiny_{family}")(root / family)
    tiny.save_tiny_model(root / "text-model")
    tiny.write_jsonl(root / "captions" / "captions.jsonl", tiny_vision.caption_rows(root / "captions", 64))
    documents = [{"article": f"The {colour} team won the match. " * 20, "highlights": f"{colour} team won"}
                 for colour in tiny.COLOURS[:8]]
    tiny.write_jsonl(root / "documents.jsonl", documents)
    tiny.write_jsonl(root / "instruction.jsonl", tiny.instruction_rows(64))
    return root


def vision_spec(root: Path, changes: dict[str, Any] | None = None) -> FineTuneJobSpec:
    spec = effective_spec(parse_spec(merged(merged(BASE_SPEC, VISION_SPEC), changes or {})))
    return with_local_mounts(spec, {MOUNT: root})


# ------------------------------------------------------------------------------------ trained parts


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (SimpleNamespace(model_type="llava", vision_config=SimpleNamespace()), True),
        (SimpleNamespace(model_type="qwen2_5_vl"), True),
        (SimpleNamespace(model_type="custom_ocr", vision_config={"depth": 2}), True),
        (SimpleNamespace(model_type="llama"), False),
        (SimpleNamespace(model_type="gemma3_text", vision_config=None), False),
    ],
    ids=["a config with a vision_config is a vision model", "a known vision family is one by its type",
         "an unknown type with a vision_config is one (remote code such as DeepSeek-OCR)",
         "a text model is not", "Gemma 3's text-only config (vision_config None) is not"],
)
def test_vision_language_models_are_told_from_their_config(config: Any, expected: bool) -> None:
    assert vision.is_vision_language(config) is expected


@pytest.mark.parametrize(
    ("name", "part"),
    [
        ("model.vision_tower.encoder.layers.0.mlp.fc1", "visionTower"),
        ("model.visual.blocks.3.attn.qkv", "visionTower"),
        ("model.visual.merger.mlp.0", "projector"),
        ("model.multi_modal_projector.linear_1", "projector"),
        ("model.connector.modality_projection.proj", "projector"),
        ("model.vision_model.encoder.layers.0.self_attn.q_proj", "visionTower"),
        ("model.language_model.layers.0.self_attn.q_proj", "languageModel"),
    ],
    ids=["LLaVA's CLIP tower", "Qwen2.5-VL's ViT", "Qwen's merger is the projector, though inside visual",
         "LLaVA and Gemma 3's projector", "Idefics3's connector", "Idefics3 and Mllama's vision model",
         "the language model's layers"],
)
def test_modules_are_assigned_to_their_part(name: str, part: str) -> None:
    assert vision.part_of(name) == part


LINEARS = ["model.vision_tower.layers.0.q_proj", "model.multi_modal_projector.linear_1",
           "model.language_model.layers.0.q_proj", "model.language_model.layers.0.down_proj", "lm_head"]


@pytest.mark.parametrize(
    ("vision_block", "targets", "expected"),
    [
        (None, ["all-linear"], LINEARS[2:4]),
        ({"train": ["projector"]}, ["all-linear"], LINEARS[1:4]),
        ({"train": ["projector", "visionTower"]}, ["all-linear"], LINEARS[0:4]),
        ({"train": ["visionTower"]}, ["q_proj"], [LINEARS[0], LINEARS[2]]),
        (None, ["q_proj", "lm_head"], [LINEARS[2], LINEARS[4]]),
    ],
    ids=["by default only the language model gets adapters, never the output head",
         "train projector adds the projector", "train visionTower too adds the vision tower",
         "named targets are matched within the trained parts", "the output head only when named"],
)
def test_lora_targets_follow_the_trained_parts(vision_root: Path, vision_block: dict[str, Any] | None,
                                               targets: list[str], expected: list[str]) -> None:
    spec = vision_spec(vision_root, {"vision": vision_block, "method": {"lora": {"targetModules": targets}}})
    assert vision.lora_targets(LINEARS, "lm_head", spec) == expected


@pytest.fixture(scope="module")
def loaded_models(vision_root: Path) -> dict[str, Any]:
    """Each tiny family loaded once for the module, as the trainer loads it."""
    return {family: models.load_model(vision_spec(vision_root, {"model": family_model(family)}),
                                      models.Precision("float32"), "sdpa", None, None, vision_language=True)
            for family in ("llava", "qwen2_vl", "qwen2_5_vl")}


@pytest.mark.parametrize(
    ("family", "train_parts", "frozen", "trained"),
    [
        ("llava", [], {"visionTower", "projector"}, {"languageModel"}),
        ("llava", ["projector"], {"visionTower"}, {"languageModel", "projector"}),
        ("llava", ["projector", "visionTower"], set(), {"languageModel", "projector", "visionTower"}),
        ("qwen2_5_vl", ["projector"], {"visionTower"}, {"languageModel", "projector"}),
    ],
    ids=["full fine-tuning freezes the vision tower and projector by default",
         "train projector unfreezes the projector", "both listed: every part trains",
         "Qwen2.5-VL: the merger trains though it sits inside the frozen visual tower"],
)
def test_full_fine_tuning_trains_the_listed_parts(vision_root: Path, family: str, train_parts: list[str],
                                                  frozen: set[str], trained: set[str]) -> None:
    spec = vision_spec(vision_root, {"model": family_model(family), "method": {"type": "full", "lora": None},
                                     "vision": {"train": train_parts}})
    fresh = models.load_model(spec, models.Precision("float32"), "sdpa", None, None, vision_language=True)
    models.add_adapter(fresh, spec, gradient_checkpointing=False)
    by_part: dict[str, set[bool]] = {}
    for name, parameter in fresh.named_parameters():
        by_part.setdefault(vision.part_of(name), set()).add(parameter.requires_grad)
    assert {part for part, flags in by_part.items() if flags == {True}} == trained
    assert {part for part, flags in by_part.items() if flags == {False}} == frozen


def trained(parts: list[str], targets: list[str]) -> dict[str, Any]:
    """The spec changes that train these parts with adapters on these target modules."""
    return {"vision": {"train": parts}, "method": {"lora": {"targetModules": targets}}}


@pytest.mark.parametrize(
    ("family", "changes", "expected"),
    [
        ("llava", trained([], ["all-linear"]), {"model.language_model.layers"}),
        ("qwen2_vl", trained([], ["all-linear"]), {"model.language_model.layers"}),
        ("qwen2_5_vl", trained([], ["down_proj"]), {"model.language_model.layers"}),
        ("qwen2_5_vl", trained(["projector"], ["all-linear"]), {"model.language_model.layers", "model.visual.merger"}),
        ("qwen2_vl", trained(["projector", "visionTower"], ["all-linear"]),
         {"model.language_model.layers", "model.visual.merger", "model.visual.blocks"}),
        ("qwen2_5_vl", trained(["visionTower"], ["down_proj"]), {"model.language_model.layers", "model.visual.blocks"}),
    ],
    ids=["LLaVA: only the language model by default", "Qwen2-VL: only the language model by default",
         "Qwen2.5-VL: a name its vision MLP shares (down_proj) still adapts only the language model",
         "Qwen2.5-VL: train projector adds the merger's linear layers",
         "Qwen2-VL: both listed add the merger and the vision blocks",
         "Qwen2.5-VL: train visionTower adds the vision blocks' down_proj, not the merger"],
)
def test_lora_on_real_models_adapts_the_trained_parts(vision_root: Path, loaded_models: dict[str, Any], family: str,
                                                      changes: dict[str, Any], expected: set[str]) -> None:
    spec = vision_spec(vision_root, {"model": family_model(family), **changes})
    targets = models.lora_targets(spec, loaded_models[family])
    assert {".".join(name.split(".")[:3]) for name in targets} == expected


# -------------------------------------------------------------------------------------------- rows


def _png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels: what a decompression bomb looks like before decoding."""
    buffer = io.BytesIO()
    tiny_vision.draw("square", "red", (1, 1)).save(buffer, format="PNG")
    raw = bytearray(buffer.getvalue())
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(raw[24:29])
    raw[12:29] = header
    raw[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(raw)


def _png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    tiny_vision.draw("circle", "blue", size).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("missing.png", "image missing.png does not exist"),
        (b"this is not a picture", "not an image Pillow can read"),
        (_png_header_claiming(20_000, 20_000), "more than 100,000,000"),
        (42, "an image must be a path, an http(s) URL, bytes or an image"),
        ([_png((8, 8))] * 3, "more than spec.vision.maxImages (2)"),
        ([], "has no image"),
        (_png((402, 2)), "402 x 2 pixels, one side more than 200 times the other"),
    ],
    ids=["a missing file", "bytes that are not an image", "an image too large to decode safely",
         "a number where an image belongs", "more images than maxImages", "an empty image list",
         "a strip longer than 200:1 (Qwen2-VL's processor refuses it mid-training)"],
)
def test_bad_images_are_dataset_errors_naming_the_row(tmp_path: Path, value: Any, fragment: str) -> None:
    with pytest.raises(DatasetError) as raised:
        images.row_images(value, tmp_path, max_pixels=64 * 64, max_images=2, where="train.jsonl: row 7")
    assert raised.value.message.startswith("train.jsonl: row 7")
    assert fragment in raised.value.message


@pytest.mark.parametrize(
    ("size", "max_pixels", "expected"),
    [((100, 50), 10_000, (100, 50)), ((400, 200), 20_000, (200, 100)), ((1990, 10), 900, (398, 2)),
     ((5, 1000), 784, (1, 200))],
    ids=["an image within the bound is kept", "a larger one is scaled down keeping its aspect ratio",
         "a thin strip is never made longer: the long side follows the rounded-down short one (199:1)",
         "a strip keeps at least one pixel across, at its own 200:1"],
)
def test_images_are_bounded_to_max_pixels(size: tuple[int, int], max_pixels: int,
                                          expected: tuple[int, int]) -> None:
    bounded = images.bounded(tiny_vision.draw("square", "red", size), max_pixels)
    assert bounded.size == expected
    assert bounded.size[0] * bounded.size[1] <= max_pixels
    assert max(bounded.size) * min(size) <= max(size) * min(bounded.size)  # never a longer strip than the source


def test_image_values_of_every_kind_decode_to_the_same_picture(tmp_path: Path) -> None:
    encoded = _png((16, 16))
    (tmp_path / "picture.png").write_bytes(encoded)
    values = ["picture.png", str(tmp_path / "picture.png"), encoded, {"bytes": encoded, "path": None},
              tiny_vision.draw("circle", "blue", (16, 16))]
    decoded = [images.row_images(value, tmp_path, 10_000, 1, "row 1")[0] for value in values]
    assert {image.tobytes() for image in decoded} == {decoded[0].tobytes()}


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        (["images", "prompt", "response"], "vision"),
        (["image", "messages"], "vision"),
        (["images", "text"], "text"),
        (["prompt", "response"], "instruction"),
    ],
    ids=["images with prompt and response are vision rows", "one image with messages is a vision row",
         "images with plain text only are not (no prompt to answer)", "no image column: instruction as before"],
)
def test_auto_detects_vision_rows(columns: list[str], expected: str) -> None:
    assert data.detect_format(columns, None) == expected


def test_caption_rows_become_trl_vision_rows(vision_root: Path) -> None:
    train_rows, _ = data.load_training_data(vision_spec(vision_root), None)
    row = train_rows[0]
    assert set(train_rows.column_names) == {"images", "prompt", "completion"}
    assert row["images"][0].size == (tiny_vision.TINY_IMAGE_SIZE, tiny_vision.TINY_IMAGE_SIZE)
    assert row["prompt"] == [{"role": "user", "content": "What is in the picture?"}]
    assert row["completion"][0]["role"] == "assistant" and row["completion"][0]["content"].startswith("a ")


def test_a_missing_image_file_names_the_row_of_the_dataset(vision_root: Path, tmp_path: Path) -> None:
    rows = [{"images": ["gone.png"], "prompt": "What?", "response": "nothing"}]
    tiny.write_jsonl(tmp_path / "bad.jsonl", rows)
    spec = effective_spec(parse_spec(merged(BASE_SPEC, {"dataset": {"path": f"{MOUNT}/bad.jsonl"}})))
    with pytest.raises(DatasetError, match=r"bad.jsonl: row 1: image gone.png does not exist"):
        data.load_training_data(with_local_mounts(spec, {MOUNT: tmp_path}), None)


def test_absolute_image_paths_on_a_volume_read_from_the_local_mount(vision_root: Path, tmp_path: Path) -> None:
    rows = [{"images": [f"{MOUNT}/captions/image-0.png"], "prompt": "What?", "response": "a shape"}]
    tiny.write_jsonl(vision_root / "absolute.jsonl", rows)
    spec = vision_spec(vision_root, {"dataset": {"path": f"{MOUNT}/absolute.jsonl"}})
    train_rows, _ = data.load_training_data(spec, None, {MOUNT: vision_root})
    assert train_rows[0]["images"][0].size == (tiny_vision.TINY_IMAGE_SIZE, tiny_vision.TINY_IMAGE_SIZE)


# ------------------------------------------------------------------------------------------- pages


@pytest.mark.parametrize(
    ("words", "max_pages", "expected_pages"),
    [(5, 4, range(1, 2)), (400, 8, range(2, 8)), (4000, 2, range(2, 3))],
    ids=["a short text fits one page", "a long text runs over several pages", "text beyond maxPages is cut"],
)
def test_text_is_rendered_to_pages(words: int, max_pages: int, expected_pages: range) -> None:
    settings = PageRendering(field="article", font_size=12, page_width=320, page_height=400, max_pages=max_pages)
    rendered = pages.render(" ".join(["summarize"] * words), settings)
    assert len(rendered) in expected_pages
    assert all(page.size == (320, 400) for page in rendered)
    assert rendered[0].getextrema() != ((255, 255), (255, 255), (255, 255))  # ink on the page


def test_wrapped_lines_fit_the_page_width() -> None:
    font = pages.load_font(PageRendering(field="x", font_size=14))
    lines = pages.wrapped_lines("word " * 200, font, 300)
    assert len(lines) > 1 and all(font.getlength(line) <= 300 for line in lines)


def test_a_summarization_dataset_becomes_image_to_text(vision_root: Path) -> None:
    spec = vision_spec(vision_root, {"dataset": {"path": f"{MOUNT}/documents.jsonl",
                                                 "fields": {"response": "highlights"}},
                                     "vision": {"render": {"field": "article", "pageWidth": 256,
                                                           "pageHeight": 256}, "maxPixels": 128 * 128}})
    train_rows, _ = data.load_training_data(spec, None)
    row = train_rows[0]
    assert row["prompt"] == [{"role": "user", "content": "Summarize the document."}]
    assert row["completion"] == [{"role": "assistant", "content": "red team won"}]
    assert 1 <= len(row["images"]) <= 2 and row["images"][0].size == (128, 128)


# ---------------------------------------------------------------------------------------- training


def test_image_rows_with_a_text_model_are_a_config_error(vision_root: Path, tmp_path: Path) -> None:
    spec = vision_spec(vision_root, {"model": {"path": f"{MOUNT}/text-model"}})
    with pytest.raises(ConfigError, match=r"spec\.model\.path: .* is a text-only model"):
        train.build_run(RunContext(spec=spec, output_dir=tmp_path), train.ProgressTracker())


@pytest.mark.parametrize("family", FAMILIES, ids=[FAMILY_IDS[family] for family in FAMILIES])
def test_lora_on_a_tiny_vlm_learns_and_resumes_from_its_checkpoint(vision_root: Path, tmp_path: Path,
                                                                   family: str) -> None:
    output = tmp_path / "output"
    steps = {"learningRate": 1e-2, "saveSteps": 10, "loggingSteps": 5}
    # One tile per image: Idefics3 would otherwise scale the 56-pixel drawings up to 4 x 4 tiles.
    common = {"model": family_model(family), "vision": {"maxPixels": 56 * 56}}
    first = train.run(RunContext(spec=vision_spec(vision_root, {**common, "training": {**steps, "maxSteps": 20}}),
                                 output_dir=output))
    resumed = train.run(RunContext(spec=vision_spec(vision_root, {**common, "training": {**steps, "maxSteps": 30}}),
                                   output_dir=output))

    assert first["final_loss"] < first["first_loss"] * 0.9
    assert resumed["resumed_from"] == str(output / "checkpoint-20")
    assert resumed["steps"] == 30 and resumed["final_loss"] < first["first_loss"]
    assert (output / "final" / "adapter_config.json").is_file()
    assert (output / "final" / "processor_config.json").is_file()


@pytest.mark.parametrize(
    ("family", "size", "max_pixels", "exact"),
    [("llava", (56, 56), 56 * 56, True), ("llava", (300, 120), 10**6, True), ("llava", (20, 90), 10**6, True),
     ("idefics3", (400, 400), 224 * 224, True), ("idefics3", (400, 400), 112 * 112, True),
     ("idefics3", (100, 60), 224 * 224, False),
     ("qwen2_vl", (448, 448), 448 * 448, True), ("qwen2_vl", (1024, 1024), 1024 * 1024, False),
     ("qwen2_vl", (400, 300), 112 * 112, False), ("qwen2_5_vl", (56, 56), 56 * 56, False),
     ("qwen2_5_vl", (10, 313), 56 * 56, False), ("qwen2_5_vl", (1990, 10), 30 * 30, False),
     ("qwen2_5_vl", (100, 100), 28 * 28, False)],
    ids=["LLaVA: an image at the tower's size", "LLaVA: a wide image is resized to the same 16 tokens",
         "LLaVA: a small tall image too", "Idefics3: a large image fills 4 x 4 tiles and the global one",
         "Idefics3: maxPixels bounds the processor to 2 x 2 tiles and the global one",
         "Idefics3: a small image needs fewer tiles than the bound counts",
         "Qwen2-VL: a square of whole tokens at maxPixels is exactly its 256 tokens",
         "Qwen2-VL: a megapixel at the default maxPixels rounds down within it, never up past it",
         "Qwen2-VL: a larger image is scaled within maxPixels",
         "Qwen2.5-VL: a small square within the strip bound of a small maxPixels",
         "Qwen2.5-VL: a strip thinner than a token still takes a whole row of them",
         "Qwen2.5-VL: a 199:1 strip scaled down stays within the processor's 200:1",
         "Qwen2.5-VL: a maxPixels below the checkpoint's min_pixels bounds the upscaling too"],
)
def test_the_estimators_image_tokens_match_the_processors(vision_root: Path, family: str, size: tuple[int, int],
                                                          max_pixels: int, exact: bool) -> None:
    import json

    from kubetune.catalog import from_config

    config = json.loads((vision_root / family / "config.json").read_text())
    tower = from_config(config, f"tiny {family}").vision
    spec = vision_spec(vision_root, {"model": family_model(family), "vision": {"maxPixels": max_pixels}})
    processor = models.load_processor(spec, None)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    image = images.bounded(tiny_vision.draw("circle", "red", size), max_pixels)  # as the data path bounds it
    encoded = processor(images=[image], text=[text], return_tensors="pt")
    image_token = config.get("image_token_index", config.get("image_token_id"))
    real = int((encoded["input_ids"] == image_token).sum())
    assert tower is not None
    estimated = tower.image_tokens(max_pixels)
    assert estimated == real if exact else 0 < real < estimated


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"], ids=["Qwen2-VL", "Qwen2.5-VL"])
def test_the_qwen_stand_in_is_the_familys_processor_without_its_video_half(vision_root: Path, family: str) -> None:
    from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor

    processor = models.load_processor(vision_spec(vision_root, {"model": family_model(family)}), None)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    encoded = processor(images=[tiny_vision.draw("circle", "red", (112, 56))], text=[text], return_tensors="pt")

    assert isinstance(processor, Qwen2VLProcessor if family == "qwen2_vl" else Qwen2_5_VLProcessor)
    assert processor.get_attributes() == ["image_processor", "tokenizer"]
    assert encoded["image_grid_thw"].tolist() == [[1, 4, 8]]  # 56 x 112 pixels: 4 x 8 patches of 14
    assert encoded["pixel_values"].shape == (32, 3 * 2 * 14 * 14)  # one row per patch, 2 frames of 3 colours
    is_image = encoded["input_ids"] == processor.image_token_id
    assert int(is_image.sum()) == 8 and encoded["mm_token_type_ids"].bool().equal(is_image)  # 2 x 2 patches a token


def test_a_model_with_its_own_processor_code_needs_trust_remote_code(vision_root: Path) -> None:
    spec = vision_spec(vision_root, {"model": {"path": f"{MOUNT}/qwen2_vl", "trustRemoteCode": False}})
    with pytest.raises(ModelLoadError, match=r"spec\.model\.path: the processor of .* runs only with "
                                             r"spec\.model\.trustRemoteCode: true"):
        models.load_processor(spec, None)


@pytest.mark.parametrize(
    ("max_pixels", "shortest", "longest"),
    [(1024 * 1024, tiny_vision.QWEN_MIN_PIXELS, 1024 * 1024), (56 * 56, 28 * 28, 56 * 56), (28 * 28, 14 * 14, 28 * 28),
     (64 * 1024 * 1024, tiny_vision.QWEN_MIN_PIXELS, tiny_vision.QWEN_MAX_PIXELS)],
    ids=["the default maxPixels becomes its max_pixels; its min_pixels stays",
         "a small maxPixels lowers min_pixels to a quarter of it", "the smallest maxPixels too",
         "a maxPixels above the checkpoint's own max_pixels leaves both"],
)
def test_max_pixels_bounds_qwens_image_processor(max_pixels: int, shortest: int, longest: int) -> None:
    from transformers import Qwen2VLImageProcessorPil

    image_processor = Qwen2VLImageProcessorPil(min_pixels=tiny_vision.QWEN_MIN_PIXELS,
                                               max_pixels=tiny_vision.QWEN_MAX_PIXELS)
    models.bound_image_processor(image_processor, max_pixels)
    assert (image_processor.size["shortest_edge"], image_processor.size["longest_edge"]) == (shortest, longest)


def test_rendered_documents_train_and_are_scored_with_rouge(vision_root: Path, tmp_path: Path) -> None:
    spec = vision_spec(vision_root, {
        "dataset": {"path": f"{MOUNT}/documents.jsonl", "fields": {"response": "highlights"}, "evalFraction": 0.25},
        "vision": {"render": {"field": "article", "pageWidth": 128, "pageHeight": 128, "maxPages": 1},
                   "maxPixels": 56 * 56},
        "training": {"maxSteps": 4, "batchSize": 2},
        "evaluation": {"metrics": ["loss", "rouge"], "maxNewTokens": 4},
    })
    report = train.run(RunContext(spec=spec, output_dir=tmp_path / "output"))

    assert report["eval_loss"] > 0
    assert set(report["rouge"]) == {"rouge1", "rouge2", "rougeL"}
    assert all(0.0 <= value <= 1.0 for value in report["rouge"].values())


def test_text_rows_train_a_vision_language_model(vision_root: Path, tmp_path: Path) -> None:
    """Gemma 3 4B and up are vision-language models: text data must keep working on them."""
    spec = vision_spec(vision_root, {"dataset": {"path": f"{MOUNT}/instruction.jsonl"},
                                     "training": {"maxSteps": 10, "learningRate": 1e-2, "maxSeqLength": 64}})
    report = train.run(RunContext(spec=spec, output_dir=tmp_path / "output"))
    assert report["final_loss"] < report["first_loss"]


@pytest.mark.parametrize(
    ("family", "train_parts", "tower_in_backward"),
    [("qwen2_vl", [], False), ("llava", [], False), ("qwen2_vl", ["projector"], False),
     ("qwen2_vl", ["visionTower"], True)],
    ids=["a frozen Qwen2-VL tower stays out of the backward pass under checkpointing",
         "a frozen LLaVA tower stays out of it too",
         "training Qwen's merger alone leaves the tower out: the merger's gradients come from its own weights",
         "a tower that trains takes part, as it must"],
)
def test_a_frozen_vision_tower_is_kept_out_of_the_backward_pass(vision_root: Path, tmp_path: Path, family: str,
                                                                train_parts: list[str],
                                                                tower_in_backward: bool) -> None:
    """transformers' enable_input_require_grads (TRL calls it for adapters with checkpointing) hooks the tower's
    patch embedding too; without the trainer taking it off, a frozen tower would be recomputed and
    back-propagated through for nothing."""
    spec = vision_spec(vision_root, {"model": family_model(family),
                                     "vision": {"maxPixels": 56 * 56, "train": train_parts},
                                     "training": {"maxSteps": 2, "gradientCheckpointing": True}})
    built = train.build_run(RunContext(spec=spec, output_dir=tmp_path), train.ProgressTracker())
    tower = next(module for name, module in built.trainer.model.named_modules()
                 if name.endswith(("visual", "vision_tower")))
    tower_outputs: list[bool] = []
    tower.register_forward_hook(lambda _module, _inputs, output: tower_outputs.append(
        (output[0] if isinstance(output, tuple) else getattr(output, "last_hidden_state", output)).requires_grad))

    train.train(built)

    assert tower_outputs and set(tower_outputs) == {tower_in_backward}
