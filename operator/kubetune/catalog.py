"""Model architectures: the dimensions the GPU memory estimator needs.

`resolve_architecture(spec)` finds them, in this order: `spec.model.architecture` (the user's
override), the built-in catalog (by hub id, case-insensitive, tolerant of chat/instruct suffixes),
`config.json` in `spec.model.path` when it is readable here, and optionally config.json fetched
from the hub (`HubConfigSource`). Dimensions below are the models' published config.json values;
`parameters` is the count on the model card (safetensors metadata) where one is published.
"""

from __future__ import annotations

import json
import math
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from kubetune.api import MAX_ASPECT_RATIO, Architecture, FineTuneJobSpec

MlpKind = Literal["gated", "plain"]
# How a vision tower turns an image into language-model tokens:
#   dynamic: the image at its own size (up to spec.vision.maxPixels) in patches, merge x merge patches per token,
#            each side rounded to whole tokens (Qwen2-VL, Qwen2.5-VL);
#   tiled:   the processor scales the image to its own longest edge and cuts tiles of image_size, plus one global
#            tile; patches pixel-shuffled merge x merge per token (Idefics3, SmolVLM);
#   fixed:   every image resized to image_size x image_size (LLaVA, Gemma 3 pools to tokens_per_image);
#   cross:   tiles of image_size read through cross-attention layers: no image tokens in the sequence (Mllama).
ImageTokenRule = Literal["dynamic", "tiled", "fixed", "cross"]
COLOUR_CHANNELS = 3


@dataclass(frozen=True)
class VisionTower:
    """The vision tower (a ViT) and projector of a vision-language model (config.json `vision_config`)."""

    hidden_size: int  # vision_config hidden_size (Qwen2-VL: embed_dim)
    num_layers: int  # num_hidden_layers / depth
    num_heads: int  # num_attention_heads / num_heads
    intermediate_size: int  # intermediate_size (Qwen2-VL: embed_dim x mlp_ratio)
    patch_size: int
    rule: ImageTokenRule
    merge_size: int = 1  # spatial_merge_size (Qwen) / scale_factor (Idefics3): merge x merge patches per token
    image_size: int | None = None  # side of a fixed-size image or tile, in pixels
    tokens_per_image: int | None = None  # tokens after pooling (Gemma 3: mm_tokens_per_image); None: patches/merge^2
    max_tiles: int = 1  # tiles per image (Idefics3: before the global tile; Mllama: max_num_tiles)
    gated_mlp: bool = False  # SwiGLU MLP (Qwen2.5-VL) instead of fc1/fc2
    projector_parameters: int = 0  # the projector's weights (merger, multi_modal_projector, connector)
    fused_qkv: bool = False  # one qkv projection (Qwen) instead of q_proj, k_proj, v_proj (CLIP, SigLIP, Mllama)
    frames: int = 1  # temporal_patch_size: Qwen2-VL's patch embedding reads a still image as 2 frames
    # A LayerNorm before the blocks (CLIP's pre_layrnorm, Mllama's layernorm_pre): CUDA's autocast runs LayerNorm in
    # float32, so the residual stream, and the block inputs checkpointing keeps, are float32 (traced).
    float32_stream: bool = False
    # The model reads a middle block's features (LLaVA's vision_feature_layer, Mllama's intermediate layers): the
    # tower returns every block's output, alive until the forward pass ends.
    keeps_block_outputs: bool = False

    @property
    def key(self) -> str:
        return (f"vh{self.hidden_size}-vl{self.num_layers}-vi{self.intermediate_size}-p{self.patch_size}"
                f"-m{self.merge_size}-{self.rule}{self.image_size or ''}")

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """role -> (in_features, out_features) of one block's linear layers."""
        h, i = self.hidden_size, self.intermediate_size
        attention = {"qkv": (h, 3 * h)} if self.fused_qkv else {"q": (h, h), "k": (h, h), "v": (h, h)}
        shapes = {**attention, "o": (h, h), "up": (h, i), "down": (i, h)}
        if self.gated_mlp:
            shapes["gate"] = (h, i)
        return shapes

    @property
    def patch_values(self) -> int:
        """Pixel values of one patch: 3 colour channels of patch x patch pixels, per frame."""
        return COLOUR_CHANNELS * self.frames * self.patch_size**2

    @property
    def tower_parameters(self) -> int:
        """The blocks' linear weights, the patch embedding and two norms per block."""
        linear = sum(n_in * n_out for n_in, n_out in self.linear_shapes().values())
        return self.num_layers * (linear + 2 * self.hidden_size) + self.patch_values * self.hidden_size

    def tiles(self, max_pixels: int) -> int:
        """Tiles the tower encodes per image, at most. Idefics3: the kubetune trainer bounds the processor's longest
        edge to whole tiles within maxPixels' side (at least one, at most max_tiles); a split image adds a global
        tile."""
        if self.rule == "tiled":
            tile = self.image_size or self.patch_size
            per_side = max(1, min(math.isqrt(self.max_tiles), math.isqrt(max_pixels) // tile))
            return per_side * per_side + 1 if per_side > 1 else 1
        return self.max_tiles if self.rule == "cross" else 1

    def patches_per_image(self, max_pixels: int) -> int:
        """Positions the tower's attention spans per image, at most (all tiles together)."""
        if self.rule == "dynamic":
            # The processor resizes to whole units (merge x merge patches, one token): at most maxPixels' worth, or
            # for a strip thinner than a unit one whole row of units, as long as the aspect ratio allows. The strip
            # is the larger below about 396 x 396 pixels (200 units); at a megapixel the area counts.
            unit = self.patch_size * self.merge_size
            strip = math.ceil(math.sqrt(MAX_ASPECT_RATIO * max_pixels) / unit)
            return max(max_pixels // unit**2, strip) * self.merge_size**2
        side = (self.image_size or self.patch_size) // self.patch_size
        return self.tiles(max_pixels) * side * side

    def image_tokens(self, max_pixels: int) -> int:
        """Language-model tokens one image adds to the sequence, at most."""
        if self.rule == "cross":
            return 0
        if self.tokens_per_image is not None:
            return self.tokens_per_image * self.tiles(max_pixels)
        return self.patches_per_image(max_pixels) // self.merge_size**2



@dataclass(frozen=True)
class ModelArchitecture:
    """Dimensions of a decoder-only transformer (config.json names in the comments)."""

    hidden_size: int  # hidden_size / n_embd
    num_layers: int  # num_hidden_layers / n_layer
    num_attention_heads: int  # num_attention_heads / n_head
    num_key_value_heads: int  # num_key_value_heads (grouped-query attention)
    intermediate_size: int  # intermediate_size / n_inner (per expert for mixture-of-experts)
    vocab_size: int  # vocab_size; the logits are this wide
    tie_word_embeddings: bool = False
    head_dim: int | None = None  # head_dim when it is not hidden_size / num_attention_heads
    mlp: MlpKind = "gated"  # gated: gate/up/down (SwiGLU, GeGLU); plain: fc1/fc2 (GPT-2, Phi-2, Falcon)
    num_experts: int = 1  # num_local_experts (mixture-of-experts MLPs)
    fused: bool = False  # one qkv projection and one gate_up projection (Phi-3/Phi-4, GPT-2, Falcon)
    published_parameters: int | None = None  # model card count; None: counted from the dimensions
    name: str = ""
    # Whether transformers' class for it has sdpa attention; without it `attention: auto` trains with eager
    # attention, which keeps the (heads x seq x seq) scores (Gemma 2: attention soft-capping).
    sdpa: bool = True
    vision: VisionTower | None = None  # vision-language models: the vision tower and projector

    @property
    def key(self) -> str:
        """The dimensions as one string: two models with the same key use memory alike (calibration)."""
        return (f"h{self.hidden_size}-l{self.num_layers}-a{self.num_attention_heads}-kv{self.num_key_value_heads}"
                f"-hd{self.attention_head_dim}-i{self.intermediate_size}-v{self.vocab_size}-e{self.num_experts}"
                f"-{self.mlp}{'-fused' if self.fused else ''}{'-tied' if self.tie_word_embeddings else ''}"
                f"{'-' + self.vision.key if self.vision else ''}")

    @property
    def attention_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def q_width(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def kv_width(self) -> int:
        return self.num_key_value_heads * self.attention_head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int, int]]:
        """role -> (in_features, out_features, copies per layer) of the block's linear layers."""
        h, i = self.hidden_size, self.intermediate_size
        shapes = {
            "q": (h, self.q_width, 1),
            "k": (h, self.kv_width, 1),
            "v": (h, self.kv_width, 1),
            "o": (self.q_width, h, 1),
            "up": (h, i, self.num_experts),
            "down": (i, h, self.num_experts),
        }
        if self.mlp == "gated":
            shapes["gate"] = (h, i, self.num_experts)
        if self.fused:
            del shapes["q"], shapes["k"], shapes["v"]
            shapes["qkv"] = (h, self.q_width + 2 * self.kv_width, 1)
            if self.mlp == "gated":
                del shapes["gate"], shapes["up"]
                shapes["gate_up"] = (h, 2 * i, self.num_experts)
        return shapes

    @property
    def block_linear_parameters(self) -> int:
        """Weights of the linear layers of all blocks (what bitsandbytes quantizes)."""
        per_layer = sum(n_in * n_out * copies for n_in, n_out, copies in self.linear_shapes().values())
        return per_layer * self.num_layers

    @property
    def embedding_parameters(self) -> int:
        """Input embedding plus the output projection when it is not tied to it."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    @property
    def counted_parameters(self) -> int:
        """Parameters counted from the dimensions: linears, embeddings, two norms per block, a router."""
        norms = (2 * self.num_layers + 1) * self.hidden_size
        router = self.num_layers * self.hidden_size * self.num_experts if self.num_experts > 1 else 0
        return self.block_linear_parameters + self.embedding_parameters + norms + router

    @property
    def parameters(self) -> int:
        return self.published_parameters or self.counted_parameters


Dimensions = tuple[int, int, int, int, int, int]  # hidden, layers, heads, kv heads, ffn, vocabulary


def _arch(name: str, dims: Dimensions, params: int | None, **extra: Any) -> ModelArchitecture:
    hidden, layers, heads, kv_heads, ffn, vocab = dims
    return ModelArchitecture(
        hidden_size=hidden,
        num_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=ffn,
        vocab_size=vocab,
        published_parameters=params,
        name=name,
        **extra,
    )


# Qwen2-VL's patch embedding is a 3-D convolution over 2 frames; a still image is repeated over them.
QWEN_TEMPORAL_PATCH = 2


def _qwen_vit(text_width: int, *, gated: bool) -> VisionTower:
    """Qwen2-VL's and Qwen2.5-VL's ViT: 32 blocks of width 1280, patches of 14 merged 2 x 2 (28 x 28 pixels a
    token); the merger projects 4 x 1280 -> 5120 -> the text width. Qwen2.5-VL's MLP is SwiGLU 3420 wide."""
    merged = 4 * 1280
    return VisionTower(1280, 32, 16, 3420 if gated else 5120, 14, "dynamic", merge_size=2, gated_mlp=gated,
                       projector_parameters=merged * merged + merged + merged * text_width + text_width,
                       fused_qkv=True, frames=QWEN_TEMPORAL_PATCH)


def _siglip_896(text_width: int) -> VisionTower:
    """Gemma 3's SigLIP so400m at 896 x 896 (64 x 64 patches of 14), pooled to 256 tokens, projected to the text."""
    return VisionTower(1152, 27, 16, 4304, 14, "fixed", image_size=896, tokens_per_image=256,
                       projector_parameters=1152 * text_width + 1152)


def _clip_336(text_width: int) -> VisionTower:
    """LLaVA-1.5's CLIP ViT-L/14 at 336 x 336 (24 x 24 = 576 tokens) and its two-layer MLP projector (with biases)."""
    return VisionTower(1024, 24, 16, 4096, 14, "fixed", image_size=336,
                       projector_parameters=1024 * text_width + text_width * text_width + 2 * text_width,
                       float32_stream=True, keeps_block_outputs=True)


TIED = {"tie_word_embeddings": True}
PLAIN = {"mlp": "plain"}
FUSED = {"fused": True}
EAGER = {"sdpa": False}

# The families people fine-tune. Keys are lower-case hub ids (chat/instruct variants share dims).
CATALOG: dict[str, ModelArchitecture] = {
    a.name.lower(): a
    for a in (
        # Llama 2 (config.json of meta-llama/Llama-2-*-hf)
        _arch("meta-llama/Llama-2-7b-hf", (4096, 32, 32, 32, 11008, 32000), 6_738_415_616),
        _arch("meta-llama/Llama-2-13b-hf", (5120, 40, 40, 40, 13824, 32000), 13_015_864_320),
        _arch("meta-llama/Llama-2-70b-hf", (8192, 80, 64, 8, 28672, 32000), 68_976_648_192),
        # Llama 3 / 3.1 / 3.2 / 3.3
        _arch("meta-llama/Meta-Llama-3-8B", (4096, 32, 32, 8, 14336, 128256), 8_030_261_248),
        _arch("meta-llama/Meta-Llama-3-70B", (8192, 80, 64, 8, 28672, 128256), 70_553_706_496),
        _arch("meta-llama/Llama-3.1-8B", (4096, 32, 32, 8, 14336, 128256), 8_030_261_248),
        _arch("meta-llama/Llama-3.1-70B", (8192, 80, 64, 8, 28672, 128256), 70_553_706_496),
        _arch("meta-llama/Llama-3.1-405B", (16384, 126, 128, 8, 53248, 128256), 405_853_388_800),
        _arch("meta-llama/Llama-3.2-1B", (2048, 16, 32, 8, 8192, 128256), 1_235_814_400, head_dim=64, **TIED),
        _arch("meta-llama/Llama-3.2-3B", (3072, 28, 24, 8, 8192, 128256), 3_212_749_824, head_dim=128, **TIED),
        _arch("meta-llama/Llama-3.3-70B-Instruct", (8192, 80, 64, 8, 28672, 128256), 70_553_706_496),
        # Mistral / Mixtral
        _arch("mistralai/Mistral-7B-v0.1", (4096, 32, 32, 8, 14336, 32000), 7_241_732_096),
        _arch("mistralai/Mistral-7B-v0.3", (4096, 32, 32, 8, 14336, 32768), 7_248_023_552),
        _arch("mistralai/Mixtral-8x7B-v0.1", (4096, 32, 32, 8, 14336, 32000), 46_702_792_704, num_experts=8),
        # Qwen2 / Qwen2.5
        _arch("Qwen/Qwen2-0.5B", (896, 24, 14, 2, 4864, 151936), 494_032_768, **TIED),
        _arch("Qwen/Qwen2-1.5B", (1536, 28, 12, 2, 8960, 151936), 1_543_714_304, **TIED),
        _arch("Qwen/Qwen2-7B", (3584, 28, 28, 4, 18944, 152064), 7_615_616_512),
        _arch("Qwen/Qwen2-72B", (8192, 80, 64, 8, 29568, 152064), 72_706_203_648),
        _arch("Qwen/Qwen2.5-0.5B", (896, 24, 14, 2, 4864, 151936), 494_032_768, **TIED),
        _arch("Qwen/Qwen2.5-1.5B", (1536, 28, 12, 2, 8960, 151936), 1_543_714_304, **TIED),
        _arch("Qwen/Qwen2.5-3B", (2048, 36, 16, 2, 11008, 151936), 3_085_938_688, **TIED),
        _arch("Qwen/Qwen2.5-7B", (3584, 28, 28, 4, 18944, 152064), 7_615_616_512),
        _arch("Qwen/Qwen2.5-14B", (5120, 48, 40, 8, 13824, 152064), 14_770_033_664),
        _arch("Qwen/Qwen2.5-32B", (5120, 64, 40, 8, 27648, 152064), 32_763_876_352),
        _arch("Qwen/Qwen2.5-72B", (8192, 80, 64, 8, 29568, 152064), 72_706_203_648),
        # Gemma 1 / 2 / 3 (text decoders; head_dim is not hidden/heads)
        _arch("google/gemma-2b", (2048, 18, 8, 1, 16384, 256000), 2_506_172_416, head_dim=256, **TIED),
        _arch("google/gemma-7b", (3072, 28, 16, 16, 24576, 256000), 8_537_680_896, head_dim=256, **TIED),
        _arch("google/gemma-2-2b", (2304, 26, 8, 4, 9216, 256000), 2_614_341_888, head_dim=256, **TIED, **EAGER),
        _arch("google/gemma-2-9b", (3584, 42, 16, 8, 14336, 256000), 9_241_705_984, head_dim=256, **TIED, **EAGER),
        _arch("google/gemma-2-27b", (4608, 46, 32, 16, 36864, 256000), 27_227_128_320, head_dim=128, **TIED, **EAGER),
        _arch("google/gemma-3-1b-pt", (1152, 26, 4, 1, 6912, 262144), 999_885_952, head_dim=256, **TIED),
        # Gemma 3 4B and up are vision-language models (SigLIP at 896 x 896, 256 tokens per image)
        _arch("google/gemma-3-4b-pt", (2560, 34, 8, 4, 10240, 262208), None, head_dim=256, **TIED,
              vision=_siglip_896(2560)),
        _arch("google/gemma-3-12b-pt", (3840, 48, 16, 8, 15360, 262208), None, head_dim=256, **TIED,
              vision=_siglip_896(3840)),
        _arch("google/gemma-3-27b-pt", (5376, 62, 32, 16, 21504, 262208), None, head_dim=128, **TIED,
              vision=_siglip_896(5376)),
        # Phi
        _arch("microsoft/phi-2", (2560, 32, 32, 32, 10240, 51200), 2_779_683_840, **PLAIN),
        _arch("microsoft/Phi-3-mini-4k-instruct", (3072, 32, 32, 32, 8192, 32064), 3_821_079_552, **FUSED),
        _arch("microsoft/Phi-3-medium-4k-instruct", (5120, 40, 40, 10, 17920, 32064), 13_960_238_080, **FUSED),
        _arch("microsoft/Phi-3.5-mini-instruct", (3072, 32, 32, 32, 8192, 32064), 3_821_079_552, **FUSED),
        _arch("microsoft/phi-4", (5120, 40, 40, 10, 17920, 100352), 14_659_507_200, **FUSED),
        _arch("microsoft/Phi-4-mini-instruct", (3072, 32, 24, 8, 8192, 200064), 3_836_021_760, **TIED, **FUSED),
        # Small models
        _arch("TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T", (2048, 22, 32, 4, 5632, 32000), 1_100_048_384),
        _arch("tiiuae/falcon-7b", (4544, 32, 71, 1, 18176, 65024), 6_921_720_704, **PLAIN, **TIED, **FUSED),
        _arch("openai-community/gpt2", (768, 12, 12, 12, 3072, 50257), 124_439_808, **PLAIN, **TIED, **FUSED),
        _arch("openai-community/gpt2-medium", (1024, 24, 16, 16, 4096, 50257), 354_823_168, **PLAIN, **TIED, **FUSED),
        _arch("openai-community/gpt2-large", (1280, 36, 20, 20, 5120, 50257), 774_030_080, **PLAIN, **TIED, **FUSED),
        _arch("openai-community/gpt2-xl", (1600, 48, 25, 25, 6400, 50257), 1_557_611_200, **PLAIN, **TIED, **FUSED),
        _arch("HuggingFaceTB/SmolLM2-135M", (576, 30, 9, 3, 1536, 49152), 134_515_008, **TIED),
        _arch("HuggingFaceTB/SmolLM2-360M", (960, 32, 15, 5, 2560, 49152), 361_821_120, **TIED),
        _arch("HuggingFaceTB/SmolLM2-1.7B", (2048, 24, 32, 32, 8192, 49152), 1_711_376_384, **TIED),
        # Vision-language models: the language model's dimensions here, the vision tower's in `vision`
        # (config.json text_config and vision_config of these hub ids; counts are the language model's only).
        _arch("Qwen/Qwen2-VL-2B-Instruct", (1536, 28, 12, 2, 8960, 151936), None, **TIED,
              vision=_qwen_vit(1536, gated=False)),
        _arch("Qwen/Qwen2-VL-7B-Instruct", (3584, 28, 28, 4, 18944, 152064), None, vision=_qwen_vit(3584, gated=False)),
        _arch("Qwen/Qwen2.5-VL-3B-Instruct", (2048, 36, 16, 2, 11008, 151936), None, **TIED,
              vision=_qwen_vit(2048, gated=True)),
        _arch("Qwen/Qwen2.5-VL-7B-Instruct", (3584, 28, 28, 4, 18944, 152064), None,
              vision=_qwen_vit(3584, gated=True)),
        _arch("Qwen/Qwen2.5-VL-72B-Instruct", (8192, 80, 64, 8, 29568, 152064), None,
              vision=_qwen_vit(8192, gated=True)),
        # SmolVLM (Idefics3): SigLIP so400m at 384 tiles, 3 x 3 pixel shuffle: 81 tokens a tile, 4 x 4 tiles + global
        _arch("HuggingFaceTB/SmolVLM-Instruct", (2048, 24, 32, 32, 8192, 49155), None, vision=VisionTower(
            1152, 27, 16, 4304, 14, "tiled", merge_size=3, image_size=384, max_tiles=16,
            projector_parameters=1152 * 9 * 2048)),
        # SmolVLM-256M: SigLIP base at 512 tiles, 4 x 4 pixel shuffle: 64 tokens a tile, 4 x 4 tiles + global
        _arch("HuggingFaceTB/SmolVLM-256M-Instruct", (576, 30, 9, 3, 1536, 49280), None, **TIED, vision=VisionTower(
            768, 12, 12, 3072, 16, "tiled", merge_size=4, image_size=512, max_tiles=16,
            projector_parameters=768 * 16 * 576)),
        # LLaVA-1.5: CLIP ViT-L/14 at 336 x 336 (576 tokens), a two-layer MLP projector
        _arch("llava-hf/llava-1.5-7b-hf", (4096, 32, 32, 32, 11008, 32064), None, vision=_clip_336(4096)),
        _arch("llava-hf/llava-1.5-13b-hf", (5120, 40, 40, 40, 13824, 32064), None, vision=_clip_336(5120)),
        # Llama 3.2 Vision (Mllama): 40 layers of which 8 cross-attend to up to 4 tiles of 560 x 560; the tower has
        # 32 local and 8 global layers; its 7680-wide output (5 layers' features) is projected to the text width
        _arch("meta-llama/Llama-3.2-11B-Vision", (4096, 40, 32, 8, 14336, 128256), None, vision=VisionTower(
            1280, 40, 16, 5120, 14, "cross", image_size=560, max_tiles=4, projector_parameters=7680 * 4096 + 4096,
            float32_stream=True, keeps_block_outputs=True)),
    )
}

# Other names of the same weights' shapes: chat/instruct variants, older org names, short names.
ALIASES: dict[str, str] = {
    "mistralai/mistral-7b-instruct-v0.3": "mistralai/mistral-7b-v0.3",
    "meta-llama/llama-3-8b": "meta-llama/meta-llama-3-8b",
    "meta-llama/llama-3-70b": "meta-llama/meta-llama-3-70b",
    "meta-llama/meta-llama-3.1-8b": "meta-llama/llama-3.1-8b",
    "meta-llama/meta-llama-3.1-70b": "meta-llama/llama-3.1-70b",
    "meta-llama/meta-llama-3.1-405b": "meta-llama/llama-3.1-405b",
    "meta-llama/llama-3.3-70b": "meta-llama/llama-3.3-70b-instruct",
    "microsoft/phi-3-mini-128k-instruct": "microsoft/phi-3-mini-4k-instruct",
    "microsoft/phi-3-medium-128k-instruct": "microsoft/phi-3-medium-4k-instruct",
    "tinyllama/tinyllama-1.1b-chat-v1.0": "tinyllama/tinyllama-1.1b-intermediate-step-1431k-3t",
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "unsloth/llama-3-8b": "meta-llama/meta-llama-3-8b",
    "unsloth/meta-llama-3.1-8b": "meta-llama/llama-3.1-8b",
    "meta-llama/llama-3.2-11b-vision-instruct": "meta-llama/llama-3.2-11b-vision",
    "qwen/qwen2.5-vl-7b": "qwen/qwen2.5-vl-7b-instruct",
    "qwen/qwen2.5-vl-3b": "qwen/qwen2.5-vl-3b-instruct",
    "huggingfacetb/smolvlm": "huggingfacetb/smolvlm-instruct",
    "huggingfacetb/smolvlm-256m": "huggingfacetb/smolvlm-256m-instruct",
    "llava-hf/llava-1.5-7b": "llava-hf/llava-1.5-7b-hf",
}

# Suffixes of fine-tuned variants with the base model's dimensions, stripped one at a time.
VARIANT_SUFFIX = re.compile(
    r"(-(instruct|chat|it|hf|pt|base|bnb-4bit|unsloth-bnb-4bit|bf16|4k|8k|32k|128k|v0\.\d|\d{4}))$"
)


class UnknownModelError(ValueError):
    """The model's dimensions are not known: not in the catalog, no architecture, no config.json."""

    def __init__(self, model: str) -> None:
        super().__init__(
            f"spec.model: kubetune does not know the dimensions of {model!r}, so it cannot estimate "
            "GPU memory. Set spec.model.architecture (hiddenSize, numLayers, numAttentionHeads, "
            "numKeyValueHeads, intermediateSize, vocabSize: the values of the model's config.json), "
            "or, with the CLI, point spec.model.path at a directory holding config.json "
            "(see `kubetune estimate --help`)."
        )
        self.model = model


def _candidates(repo_id: str) -> list[str]:
    """The lookup keys for a hub id: itself, then with variant suffixes stripped one by one."""
    key = repo_id.lower()
    keys = [key]
    while (match := VARIANT_SUFFIX.search(key)) is not None:
        key = key[: match.start()]
        keys.append(key)
    return keys


def lookup(repo_id: str) -> ModelArchitecture | None:
    """The catalog entry for a hub id (case-insensitive; -Instruct/-chat/-it/-hf variants), or None."""
    for candidate in _candidates(repo_id):
        key = ALIASES.get(candidate, candidate)
        for probe in (key, f"{key}-hf", f"{key}-pt", f"{key}-v0.1", f"{key}-4k-instruct"):
            if probe in CATALOG:
                return CATALOG[probe]
    return None


def from_api(architecture: Architecture, name: str = "spec.model.architecture") -> ModelArchitecture:
    """A catalog record from the spec's user-given dimensions."""
    return ModelArchitecture(
        hidden_size=architecture.hidden_size,
        num_layers=architecture.num_layers,
        num_attention_heads=architecture.num_attention_heads,
        num_key_value_heads=architecture.num_key_value_heads or architecture.num_attention_heads,
        intermediate_size=architecture.intermediate_size,
        vocab_size=architecture.vocab_size,
        tie_word_embeddings=architecture.tie_word_embeddings,
        published_parameters=architecture.parameters,
        name=name,
    )


# config.json key aliases across model families (GPT-2 and Falcon name things their own way).
CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    "hidden_size": ("hidden_size", "n_embd", "d_model"),
    "num_layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "num_attention_heads": ("num_attention_heads", "n_head"),
    "num_key_value_heads": ("num_key_value_heads", "num_kv_heads", "n_head_kv"),
    "intermediate_size": ("intermediate_size", "n_inner", "ffn_hidden_size"),
    "vocab_size": ("vocab_size",),
}
# Plain MLPs of GPT-style configs without an explicit width are 4 x hidden_size wide.
PLAIN_MLP_EXPANSION = 4
PLAIN_MLP_MODEL_TYPES = frozenset({"gpt2", "phi", "falcon", "gpt_neox", "gptj", "opt", "bloom", "starcoder2"})
# Families whose attention has one fused qkv projection (and a fused gate_up MLP when gated).
FUSED_MODEL_TYPES = frozenset({"phi3", "gpt2", "falcon", "gpt_neox", "bloom"})
# Model types whose transformers class has neither sdpa nor flash attention (transformers 5.25).
EAGER_ONLY_MODEL_TYPES = frozenset({"gemma2"})


# Mixture-of-experts models have up to a few hundred experts per layer (DeepSeek-V3: 256).
MAX_EXPERTS = 4096


def _first(config: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    return next((config[k] for k in keys if config.get(k) is not None), None)


# Idefics3 and SmolVLM processors scale an image's longest edge to 4 tiles (size longest_edge = 4 x image_size).
IDEFICS3_TILES_PER_SIDE = 4


def _positive(values: Mapping[str, Any], *keys: str) -> int | None:
    value = _first(values, keys)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


CLIP_VISION = "clip_vision_model"


def vision_from_config(config: Mapping[str, Any]) -> VisionTower | None:
    """The vision tower of a config.json with a vision_config (the families catalog.VisionTower names); None when
    it has none or its dimensions cannot be read."""
    vision = config.get("vision_config")
    text = config.get("text_config") if isinstance(config.get("text_config"), Mapping) else config
    if not isinstance(vision, Mapping) or not isinstance(text, Mapping):
        return None
    model_type = config.get("model_type")
    hidden = _positive(vision, "hidden_size", "embed_dim")
    if model_type == "qwen2_vl":
        hidden = _positive(vision, "embed_dim")
    layers = _positive(vision, "num_hidden_layers", "depth")
    heads = _positive(vision, "num_attention_heads", "num_heads", "attention_heads")
    patch = _positive(vision, "patch_size")
    text_width = _positive(text, "hidden_size")
    if None in (hidden, layers, heads, patch, text_width):
        return None
    assert hidden and layers and heads and patch and text_width  # narrowed for the type checker
    ratio = _positive(vision, "mlp_ratio") or 4
    intermediate = _positive(vision, "intermediate_size") or hidden * ratio
    image = _positive(vision, "image_size")
    if model_type in ("qwen2_vl", "qwen2_5_vl"):
        merge = _positive(vision, "spatial_merge_size") or 2
        merged = hidden * merge * merge
        return VisionTower(hidden, layers, heads, intermediate, patch, "dynamic", merge_size=merge,
                           gated_mlp=model_type == "qwen2_5_vl",
                           projector_parameters=merged * merged + merged + merged * text_width + text_width,
                           fused_qkv=True, frames=_positive(vision, "temporal_patch_size") or QWEN_TEMPORAL_PATCH)
    if image is None:
        return None
    if model_type in ("idefics3", "smolvlm"):
        scale = _positive(config, "scale_factor") or 2
        return VisionTower(hidden, layers, heads, intermediate, patch, "tiled", merge_size=scale, image_size=image,
                           max_tiles=IDEFICS3_TILES_PER_SIDE**2, projector_parameters=hidden * scale**2 * text_width)
    if model_type == "mllama":
        output = _positive(vision, "vision_output_dim") or hidden
        return VisionTower(hidden, layers + (_positive(vision, "num_global_layers") or 0), heads, intermediate, patch,
                           "cross", image_size=image, max_tiles=_positive(vision, "max_num_tiles") or 1,
                           projector_parameters=output * text_width + text_width, float32_stream=True,
                           keeps_block_outputs=True)
    if model_type == "gemma3":
        return VisionTower(hidden, layers, heads, intermediate, patch, "fixed", image_size=image,
                           tokens_per_image=_positive(config, "mm_tokens_per_image"),
                           projector_parameters=hidden * text_width + hidden)
    # LLaVA and other fixed-resolution towers with a two-layer MLP projector (LLaVA's default tower is CLIP's).
    return VisionTower(hidden, layers, heads, intermediate, patch, "fixed", image_size=image,
                       projector_parameters=hidden * text_width + text_width * text_width + 2 * text_width,
                       float32_stream=vision.get("model_type", CLIP_VISION) == CLIP_VISION,
                       keeps_block_outputs=config.get("vision_feature_layer", -2) != -1)


def from_config(config: Mapping[str, Any], name: str) -> ModelArchitecture:
    """A record from a Hugging Face config.json (multimodal configs: their text_config, and their vision tower)."""
    vision = vision_from_config(config)
    if isinstance(config.get("text_config"), Mapping):
        merged = {**config["text_config"]}
        merged.setdefault("tie_word_embeddings", config.get("tie_word_embeddings"))
        config = merged
    values = {field_name: _first(config, keys) for field_name, keys in CONFIG_KEYS.items()}
    if config.get("multi_query") and values["num_key_value_heads"] is None:
        values["num_key_value_heads"] = 1
    if values["num_key_value_heads"] is None:
        values["num_key_value_heads"] = values["num_attention_heads"]
    plain = config.get("model_type") in PLAIN_MLP_MODEL_TYPES
    if values["intermediate_size"] is None and values["hidden_size"] is not None:
        values["intermediate_size"] = PLAIN_MLP_EXPANSION * values["hidden_size"]
    missing = [key for key, value in values.items() if not isinstance(value, int) or value < 1]
    if missing:
        raise UnknownModelError(f"{name} (config.json lacks {', '.join(missing)})")
    head_dim = config.get("head_dim") if isinstance(config.get("head_dim"), int) else None
    experts = config.get("num_local_experts") or config.get("num_experts") or 1
    try:  # a config.json is input too: its sizes must be within spec.model.architecture's physical bounds
        Architecture.model_validate(values)
    except ValidationError as exc:
        fields = ", ".join(str(error["loc"][0]) for error in exc.errors())
        raise UnknownModelError(f"{name} (config.json has out-of-range {fields})") from None
    if not isinstance(experts, int) or not 1 <= experts <= MAX_EXPERTS or (
            head_dim is not None and not 1 <= head_dim <= values["hidden_size"]):
        raise UnknownModelError(f"{name} (config.json has an out-of-range number of experts or head_dim)")
    return ModelArchitecture(
        **values,
        # transformers' PretrainedConfig ties the embeddings unless the config says otherwise.
        tie_word_embeddings=bool(config.get("tie_word_embeddings", True)),
        head_dim=head_dim,
        mlp="plain" if plain else "gated",
        fused=config.get("model_type") in FUSED_MODEL_TYPES,
        sdpa=config.get("model_type") not in EAGER_ONLY_MODEL_TYPES,
        num_experts=experts,
        name=name,
        vision=vision,
    )


# A config.json is a few KiB; a larger file is not one, and is not read whole.
MAX_CONFIG_BYTES = 2**20


def read_local_config(path: str) -> ModelArchitecture | None:
    """The record from `<path>/config.json` when that file is readable here, else None."""
    config_file = Path(path) / "config.json"
    try:
        if not config_file.is_file():  # a FIFO or a device would block or never end
            return None
        with config_file.open("rb") as stream:
            raw = stream.read(MAX_CONFIG_BYTES + 1)
        config = json.loads(raw) if len(raw) <= MAX_CONFIG_BYTES else None
    except (OSError, ValueError, RecursionError):
        return None
    return from_config(config, str(config_file)) if isinstance(config, dict) else None


# The hub answers config.json in well under a second; do not hold a reconcile longer than this.
HUB_TIMEOUT_SECONDS = 5.0
DEFAULT_HUB_ENDPOINT = "https://huggingface.co"
# Hugging Face's own variable for a mirror or a private hub (huggingface_hub reads it too).
HF_ENDPOINT_ENV = "HF_ENDPOINT"


@dataclass
class HubConfigSource:
    """Fetches config.json from the hub (or HF_ENDPOINT) and caches it per (id, revision)."""

    endpoint: str = field(default_factory=lambda: os.environ.get(HF_ENDPOINT_ENV, DEFAULT_HUB_ENDPOINT))
    token: str | None = None
    timeout: float = HUB_TIMEOUT_SECONDS
    cache: dict[tuple[str, str], ModelArchitecture] = field(default_factory=dict)
    last_failure: str | None = None  # why the latest fetch found no config.json, for the user

    def fetch(self, repo_id: str, revision: str) -> ModelArchitecture | None:
        """The record, or None when the hub cannot be reached or answers no valid config.json.
        Only answers are cached: a failure is tried again next time (the network may come back)."""
        key = (repo_id, revision)
        if key not in self.cache:
            fetched = self._download(repo_id, revision)
            if fetched is None:
                return None
            self.cache[key] = fetched
        return self.cache[key]

    def _download(self, repo_id: str, revision: str) -> ModelArchitecture | None:
        # The revision is one path segment of the URL, as huggingface_hub sends it (refs/pr/1 -> refs%2Fpr%2F1).
        url = f"{self.endpoint.rstrip('/')}/{repo_id}/resolve/{urllib.parse.quote(revision, safe='')}/config.json"
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.last_failure = None
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=self.timeout) as r:
                config = json.loads(r.read())
        except (OSError, ValueError) as exc:  # urllib's HTTPError and URLError are OSErrors
            self.last_failure = f"{url}: {fetch_failure(exc, token_given=self.token is not None)}"
            return None
        try:
            if isinstance(config, dict):
                return from_config(config, repo_id)
        except UnknownModelError:
            pass
        self.last_failure = f"{url}: not a config.json kubetune can read the dimensions from"
        return None


def fetch_failure(error: Exception, *, token_given: bool) -> str:
    """Why a config.json download failed, in words that say what to check."""
    if isinstance(error, urllib.error.HTTPError):
        if error.code in (401, 403):
            fix = "the HF_TOKEN given cannot read it" if token_given else "a private or gated model needs HF_TOKEN"
            return f"the hub refused access (HTTP {error.code}): {fix}"
        if error.code == 404:
            return "no such model, revision or file on the hub (HTTP 404): check spec.model.name and revision"
        return f"the hub answered HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return f"cannot reach the hub (no network, or HF_ENDPOINT is wrong): {error.reason}"
    if isinstance(error, TimeoutError):
        return f"the hub did not answer within {HUB_TIMEOUT_SECONDS:.0f} s"
    if isinstance(error, ValueError):
        return "the hub's answer is not JSON"
    return f"cannot read the answer: {error}"


def resolve_architecture(spec: FineTuneJobSpec, hub: HubConfigSource | None = None) -> ModelArchitecture:
    """The dimensions of spec.model, or UnknownModelError saying how to provide them."""
    model = spec.model
    if model.architecture is not None:
        known = lookup(model.name) if model.name else None
        return from_api(model.architecture, known.name if known else "spec.model.architecture")
    if model.name is not None:
        known = lookup(model.name)
        if known is not None:
            return known
        fetched = hub.fetch(model.name, model.revision) if hub is not None else None
        if fetched is not None:
            return fetched
    if model.path is not None:
        local = read_local_config(model.path)
        if local is not None:
            return local
    raise UnknownModelError(model.name or model.path or "(no model)")

