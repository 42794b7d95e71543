"""GPU check of the vision-language path: tiny LLaVA, Idefics3, Qwen2-VL and Qwen2.5-VL trained with LoRA in
bfloat16 on CUDA, and Qwen2-VL's processor's image tokens against the estimator's. The Qwen models are the tests'
(tiny_vision: the image-only processor stand-in, loaded as remote code), so no torchvision is needed. Not part
of the test run; writes its results as JSON to argv[1].

    PYTHONPATH=operator:trainer python tests/benchmarks/vision_gpu_check.py results.json
"""

from __future__ import annotations

import json
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

BUILDERS = ("llava", "idefics3", "qwen2_vl", "qwen2_5_vl")


def run_family(root: Path, family: str) -> dict[str, Any]:
    import torch

    from kubetune.presets import effective_spec
    from kubetune.validation import parse_spec
    from kubetune_trainer import tiny, tiny_vision, train
    from kubetune_trainer.context import RunContext, with_local_mounts

    getattr(tiny_vision, f"save_tiny_{family}")(root / family)
    if not (root / "captions").exists():
        tiny.write_jsonl(root / "captions" / "captions.jsonl", tiny_vision.caption_rows(root / "captions", 64))
    spec = {
        "model": {"path": f"/data/{family}", "dtype": "bfloat16", "trustRemoteCode": family.startswith("qwen")},
        "dataset": {"path": "/data/captions/captions.jsonl"},
        "vision": {"maxPixels": 56 * 56, "train": ["projector"]},
        "method": {"type": "lora", "lora": {"rank": 8, "dropout": 0.0}},
        "training": {"maxSteps": 30, "batchSize": 8, "gradientAccumulationSteps": 1, "learningRate": 1e-2,
                     "lrScheduler": "constant", "warmupRatio": 0.0, "maxSeqLength": 128,
                     "gradientCheckpointing": True, "loggingSteps": 5, "saveSteps": 15},
        "resources": {"gpus": 1},
        "volumes": [{"claimName": "data", "mountPath": "/data"}],
    }
    effective = with_local_mounts(effective_spec(parse_spec(spec)), {"/data": root})
    torch.cuda.reset_peak_memory_stats()
    report = train.run(RunContext(spec=effective, output_dir=root / f"out-{family}"))
    keys = ("first_loss", "final_loss", "steps", "trainable_parameters", "total_parameters", "peak_gpu_memory_gib",
            "estimated_gpu_memory_gib", "runtime_seconds")
    return {key: report.get(key) for key in keys}


def qwen_image_tokens(root: Path) -> list[dict[str, Any]]:
    from kubetune.catalog import VisionTower, from_config
    from kubetune.presets import effective_spec
    from kubetune.validation import parse_spec
    from kubetune_trainer import images, tiny_vision
    from kubetune_trainer import model as models
    from kubetune_trainer.context import with_local_mounts

    config = json.loads((root / "qwen2_vl" / "config.json").read_text())
    tower = from_config(config, "tiny qwen2_vl").vision
    rows = []
    for size, max_pixels in (((56, 56), 56 * 56), ((400, 300), 112 * 112), ((300, 90), 224 * 224)):
        spec = with_local_mounts(effective_spec(parse_spec({
            "model": {"path": "/data/qwen2_vl", "trustRemoteCode": True},
            "dataset": {"path": "/data/x.jsonl", "format": "vision"},
            "vision": {"maxPixels": max_pixels}, "volumes": [{"claimName": "d", "mountPath": "/data"}]})),
            {"/data": root})
        processor = models.load_processor(spec, None)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}]
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        image = images.bounded(tiny_vision.draw("square", "red", size), max_pixels)
        encoded = processor(images=[image], text=[text], return_tensors="pt")
        real = int((encoded["input_ids"] == config["image_token_id"]).sum())
        assert isinstance(tower, VisionTower)
        rows.append({"size": size, "maxPixels": max_pixels, "bounded": image.size, "real": real,
                     "estimated": tower.image_tokens(max_pixels)})
    return rows


def main() -> None:
    import torch

    results: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    root = Path(tempfile.mkdtemp())
    for family in BUILDERS:
        try:
            results[family] = run_family(root, family)
        except Exception as exc:  # a report per family: one failing must not hide the others
            results[family] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]}
    try:
        results["qwen2_vl_image_tokens"] = qwen_image_tokens(root)
    except Exception as exc:
        results["qwen2_vl_image_tokens"] = {"error": f"{type(exc).__name__}: {exc}",
                                            "trace": traceback.format_exc()[-3000:]}
    text = json.dumps(results, indent=2, default=str)
    print(text)
    Path(sys.argv[1]).write_text(text)


if __name__ == "__main__":
    main()
