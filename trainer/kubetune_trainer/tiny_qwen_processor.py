"""Test-environment stand-ins for Qwen2-VL's and Qwen2.5-VL's processors: the image half only.

NOT USED IN PRODUCTION. A real Qwen2-VL / Qwen2.5-VL checkpoint is loaded with its own processor
(AutoProcessor -> Qwen2VLProcessor / Qwen2_5_VLProcessor), in the trainer image, which installs torchvision.

Those processors always hold a video processor, and the video processor imports torchvision, which has no
CPU build beside the pinned torch of the test environment. The classes here are the same processors without
that attribute: image token expansion, image_grid_thw and mm_token_type_ids are the parent class's code,
run with transformers' torchvision-free image processor (Qwen2VLImageProcessorPil). tiny_vision.py saves
this file into a tiny model's directory as remote code (processor_config.json auto_map), so that the trainer
loads it through the same AutoProcessor.from_pretrained call as any model, with spec.model.trustRemoteCode.

Only transformers is imported: transformers copies this file alone into its modules cache to load it.
"""

from __future__ import annotations

from typing import Any

from transformers import ProcessorMixin, Qwen2_5_VLProcessor, Qwen2VLProcessor


class _WithoutVideo(ProcessorMixin):
    """A processor whose sub-processors are the image processor and the tokenizer: transformers reads them
    from this __init__'s parameters, so nothing loads or saves a video processor. The family's __init__ (its
    video_processor left at None) sets the image and video token ids from the tokenizer and hands its
    arguments to ProcessorMixin, which pairs them with these two sub-processors only."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)


class Qwen2VLImageOnlyProcessor(_WithoutVideo, Qwen2VLProcessor):
    """Qwen2VLProcessor for images only (test environment without torchvision)."""


class Qwen25VLImageOnlyProcessor(_WithoutVideo, Qwen2_5_VLProcessor):
    """Qwen2_5_VLProcessor for images only (test environment without torchvision)."""


Qwen2VLImageOnlyProcessor.register_for_auto_class("AutoProcessor")
Qwen25VLImageOnlyProcessor.register_for_auto_class("AutoProcessor")
