"""Tiny vision-language models (LLaVA, Idefics3/SmolVLM, Qwen2-VL, Qwen2.5-VL) and image datasets, made locally.

Like tiny.py: random-initialised models with a tokenizer trained here and a processor built from
its parts, saved where `model.path` loads them with AutoProcessor and AutoModelForImageTextToText.
The images are Pillow drawings whose colour the caption names, so a model can learn the pattern.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from kubetune_trainer import tiny

# The chat template of tiny.py, with structured content: an image part becomes the processor's image token.
VISION_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}IMAGE_TOKEN{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# 56 x 56 pixels in patches of 14: a 4 x 4 grid, 16 image tokens; small enough for seconds of CPU training.
TINY_IMAGE_SIZE = 56
TINY_PATCH_SIZE = 14
# A tiny ViT: narrower than the language model (64), so the projector really maps between widths.
TINY_VISION_DIMS: dict[str, Any] = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                    "num_attention_heads": 2}
SHAPES = ("square", "circle")


def _tokenizer_with(image_tokens: list[str], image_token: str) -> Any:
    tokenizer = tiny.build_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": image_tokens})
    tokenizer.chat_template = VISION_CHAT_TEMPLATE.replace("IMAGE_TOKEN", image_token)
    return tokenizer


def save_tiny_llava(directory: Path, seed: int = 0) -> Path:
    """A LLaVA (CLIP vision tower, two-layer MLP projector, Llama language model) and its processor."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = _tokenizer_with(["<image>"], "<image>")
    side = {"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size=side),
        tokenizer=tokenizer, chat_template=tokenizer.chat_template, patch_size=TINY_PATCH_SIZE,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )
    torch.manual_seed(seed)
    config = LlavaConfig(
        text_config=LlamaConfig(**tiny.TINY_DIMS, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                eos_token_id=tokenizer.eos_token_id),
        vision_config=CLIPVisionConfig(**TINY_VISION_DIMS, image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    model = LlavaForConditionalGeneration(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


# Idefics3's processor scales the longest edge to 4 tiles (as SmolVLM's does) and merges 2 x 2 patches per token.
IDEFICS3_TILES_PER_SIDE = 4
IDEFICS3_SCALE_FACTOR = 2
IDEFICS3_TOKENS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"] + [
    f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7)]


def save_tiny_idefics3(directory: Path, seed: int = 0) -> Path:
    """An Idefics3 (SmolVLM's architecture: SigLIP-style tower, pixel-shuffle connector, Llama) and its processor."""
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor

    tokenizer = _tokenizer_with(IDEFICS3_TOKENS, "<image>")
    image_processor = Idefics3ImageProcessor(size={"longest_edge": IDEFICS3_TILES_PER_SIDE * TINY_IMAGE_SIZE},
                                             max_image_size={"longest_edge": TINY_IMAGE_SIZE})
    tokens_per_tile = (TINY_IMAGE_SIZE // TINY_PATCH_SIZE) ** 2 // IDEFICS3_SCALE_FACTOR**2
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=tokens_per_tile,
                                  chat_template=tokenizer.chat_template)
    torch.manual_seed(seed)
    text = {**tiny.TINY_DIMS, "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "model_type": "llama"}
    vision = {**TINY_VISION_DIMS, "image_size": TINY_IMAGE_SIZE, "patch_size": TINY_PATCH_SIZE}
    config = Idefics3Config(text_config=text, vision_config=vision, scale_factor=IDEFICS3_SCALE_FACTOR,
                            image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    model = Idefics3ForConditionalGeneration(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


QWEN_TOKENS = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"]
# Qwen2-VL's rotary sections over the head's 16 dimensions (temporal, height, width): 8 frequencies in all.
TINY_MROPE_SECTION = [2, 3, 3]
# Qwen merges 2 x 2 patches of 14 into one token: 28 x 28 pixels a token, the unit its processor resizes to.
QWEN_MERGE_SIZE = 2
QWEN_UNIT = TINY_PATCH_SIZE * QWEN_MERGE_SIZE
# Qwen2.5-VL's window attention: windows of 28 pixels (one merged token) in the first block, full attention in
# the second (fullatt_block_indexes), so a 56-pixel drawing spans 4 windows and both kinds of block run.
TINY_QWEN2_5_WINDOW = QWEN_UNIT
TINY_QWEN2_5_FULL_ATTENTION_BLOCKS = [1]
# The pixel bounds of the published Qwen2-VL and Qwen2.5-VL preprocessor_config.json (min_pixels, max_pixels):
# small images are scaled up to 56 x 56; spec.vision.maxPixels is what bounds the large ones.
QWEN_MIN_PIXELS = 56 * 56
QWEN_MAX_PIXELS = 12_845_056


def _tiny_qwen_text_config(tokenizer: Any) -> dict[str, Any]:
    """The Qwen2 language model of both Qwen families, with multimodal rotary positions (mrope)."""
    return {**{k: v for k, v in tiny.TINY_DIMS.items() if k != "max_position_embeddings"},
            "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": TINY_MROPE_SECTION}}


def _save_tiny_qwen(directory: Path, family: str, seed: int) -> Path:
    """A Qwen2-VL or Qwen2.5-VL and a processor that AutoProcessor loads from the directory as remote code
    (spec.model.trustRemoteCode: true). The processor is tiny_qwen_processor's stand-in, the image half of the
    family's own processor: the test environment has no torchvision, which the real one's video half imports.
    In production the model's own processor is loaded; nothing here is used there."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
    )

    from kubetune_trainer import tiny_qwen_processor

    tokenizer = _tokenizer_with(QWEN_TOKENS, "<|vision_start|><|image_pad|><|vision_end|>")
    image_processor = Qwen2VLImageProcessorPil(min_pixels=QWEN_MIN_PIXELS, max_pixels=QWEN_MAX_PIXELS,
                                               patch_size=TINY_PATCH_SIZE, merge_size=QWEN_MERGE_SIZE)
    processor_class = (tiny_qwen_processor.Qwen2VLImageOnlyProcessor if family == "qwen2_vl"
                       else tiny_qwen_processor.Qwen25VLImageOnlyProcessor)
    processor = processor_class(image_processor=image_processor, tokenizer=tokenizer,
                                chat_template=tokenizer.chat_template)
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in zip(
        ("vision_start_token_id", "image_token_id", "vision_end_token_id", "video_token_id"), QWEN_TOKENS,
        strict=True)}
    shared_vision = {"depth": 2, "num_heads": 2, "patch_size": TINY_PATCH_SIZE, "spatial_merge_size": QWEN_MERGE_SIZE,
                     "temporal_patch_size": 2}
    torch.manual_seed(seed)
    model: Any
    if family == "qwen2_vl":
        vision = {**shared_vision, "embed_dim": TINY_VISION_DIMS["hidden_size"], "mlp_ratio": 2,
                  "hidden_size": tiny.TINY_DIMS["hidden_size"]}
        model = Qwen2VLForConditionalGeneration(Qwen2VLConfig(
            text_config=_tiny_qwen_text_config(tokenizer), vision_config=vision, **ids))
    else:
        vision = {**shared_vision, "hidden_size": TINY_VISION_DIMS["hidden_size"],
                  "intermediate_size": TINY_VISION_DIMS["intermediate_size"],
                  "out_hidden_size": tiny.TINY_DIMS["hidden_size"], "window_size": TINY_QWEN2_5_WINDOW,
                  "fullatt_block_indexes": TINY_QWEN2_5_FULL_ATTENTION_BLOCKS}
        model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
            text_config=_tiny_qwen_text_config(tokenizer), vision_config=vision, **ids))
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def save_tiny_qwen2_vl(directory: Path, seed: int = 0) -> Path:
    """A Qwen2-VL (dynamic-resolution ViT, 2 x 2 patch merger, Qwen2 language model with mrope) and the image-only
    stand-in of its processor; load it with spec.model.trustRemoteCode: true."""
    return _save_tiny_qwen(directory, "qwen2_vl", seed)


def save_tiny_qwen2_5_vl(directory: Path, seed: int = 0) -> Path:
    """A Qwen2.5-VL (ViT with window attention and SwiGLU blocks, RMSNorm merger, Qwen2 language model with mrope)
    and the image-only stand-in of its processor; load it with spec.model.trustRemoteCode: true."""
    return _save_tiny_qwen(directory, "qwen2_5_vl", seed)


def draw(shape: str, colour: str, size: tuple[int, int] = (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)) -> Any:
    """A white image with one shape of one colour."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, "white")
    box = (size[0] // 8, size[1] // 8, size[0] * 7 // 8, size[1] * 7 // 8)
    pen = ImageDraw.Draw(image)
    if shape == "circle":
        pen.ellipse(box, fill=colour)
    else:
        pen.rectangle(box, fill=colour)
    return image


def caption_rows(directory: Path, count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Rows {images: [file name], prompt, response}; the PNGs are written into directory."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    colours = tiny.COLOURS[:4]
    rows = []
    for index in range(count):
        shape, colour = rng.choice(SHAPES), rng.choice(colours)
        name = f"image-{index}.png"
        draw(shape, colour).save(directory / name)
        rows.append({"images": [name], "prompt": "What is in the picture?", "response": f"a {colour} {shape}"})
    return rows
