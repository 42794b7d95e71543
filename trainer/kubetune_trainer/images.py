"""Images of vision rows: read from what a dataset holds, checked, and bounded in size.

A row's image is a path on a volume, a path relative to the dataset's directory, an http(s) URL,
bytes, a datasets Image feature (decoded: a PIL image; undecoded: {bytes, path}). Each is opened
with Pillow, refused when it is not an image, too large to decode safely or a strip longer than 200:1,
and scaled down to spec.vision.maxPixels so that the image tokens of a row, and so memory, stay bounded.
"""

from __future__ import annotations

import io
import math
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kubetune.api import MAX_ASPECT_RATIO
from kubetune_trainer.context import local_path
from kubetune_trainer.errors import DatasetError

# 64 MiB: larger than any photo or scanned page a fine-tune needs; more is likely a wrong file.
MAX_IMAGE_BYTES = 64 * 1024 * 1024
# 100 megapixels: decoding more takes gigabytes of host memory (a "decompression bomb"); refused before decoding.
MAX_SOURCE_PIXELS = 100_000_000
# Seconds to wait for an image URL before the row is a dataset error.
URL_TIMEOUT_SECONDS = 30


def _read_url(url: str, where: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=URL_TIMEOUT_SECONDS) as response:
            data: bytes = response.read(MAX_IMAGE_BYTES + 1)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{where}: cannot fetch image {url[:200]}: {exc}") from None
    return data


def _read_path(value: str, base: Path | None, where: str, mounts: Mapping[str, Path]) -> bytes:
    path = Path(local_path(value, mounts))
    if not path.is_absolute() and base is not None:
        path = base / path
    try:
        if path.stat().st_size > MAX_IMAGE_BYTES:
            raise DatasetError(f"{where}: image {value} is larger than {MAX_IMAGE_BYTES >> 20} MiB; "
                               "store a smaller image")
        return path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{where}: image {value} does not exist (looked for {path}); check the path and that "
                           "spec.volumes mounts it") from None
    except OSError as exc:
        raise DatasetError(f"{where}: cannot read image {value}: {exc.strerror or exc}") from None


def image_bytes(value: Any, base: Path | None, where: str, mounts: Mapping[str, Path]) -> bytes | Any:
    """The encoded bytes of an image value, or the PIL image itself when it is one already; absolute paths under a
    local run's --mount read from the mapped directory."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value
    if isinstance(value, Mapping) and ("bytes" in value or "path" in value):  # an undecoded Image feature
        value = value.get("bytes") or value.get("path")
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str) and value.startswith(("http://", "https://")):
        return _read_url(value, where)
    if isinstance(value, str) and value:
        return _read_path(value, base, where, mounts)
    raise DatasetError(f"{where}: an image must be a path, an http(s) URL, bytes or an image; got "
                       f"{type(value).__name__}")


def opened(value: Any, base: Path | None, where: str, mounts: Mapping[str, Path]) -> Any:
    """A decoded RGB image from a row's image value, or DatasetError naming the row."""
    from PIL import Image

    data = image_bytes(value, base, where, mounts)
    if isinstance(data, Image.Image):
        image = data
    else:
        if len(data) > MAX_IMAGE_BYTES:
            raise DatasetError(f"{where}: image is larger than {MAX_IMAGE_BYTES >> 20} MiB; store a smaller image")
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            raise DatasetError(f"{where}: image has more than {MAX_SOURCE_PIXELS:,} pixels; scale it down before "
                               "training") from None
        except OSError as exc:
            raise DatasetError(f"{where}: not an image Pillow can read ({exc}); store PNG, JPEG or WebP") from None
    width, height = image.size
    if width * height > MAX_SOURCE_PIXELS:
        raise DatasetError(f"{where}: image is {width} x {height} pixels, more than {MAX_SOURCE_PIXELS:,}; "
                           "scale it down before training")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise DatasetError(f"{where}: image is {width} x {height} pixels, one side more than {MAX_ASPECT_RATIO} "
                           "times the other, which vision processors refuse (Qwen2-VL) or cannot read; crop or pad it")
    try:
        return image.convert("RGB")
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{where}: the image cannot be decoded ({exc}); the file is damaged") from None


def bounded(image: Any, max_pixels: int) -> Any:
    """The image scaled down to at most max_pixels pixels; unchanged when it is smaller. The aspect ratio is kept,
    never made longer (the long side follows the rounded short side), so an image within MAX_ASPECT_RATIO stays so."""
    from PIL import Image

    width, height = image.size
    if width * height <= max_pixels:
        return image
    scale = math.sqrt(max_pixels / (width * height))
    short, long = sorted((width, height))
    new_short = max(1, math.floor(short * scale))
    new_long = max(1, min(math.floor(long * scale), new_short * long // short))
    size = (new_long, new_short) if width >= height else (new_short, new_long)
    return image.resize(size, Image.Resampling.LANCZOS)


def row_images(value: Any, base: Path | None, max_pixels: int, max_images: int, where: str, *,
               mounts: Mapping[str, Path] | None = None) -> list[Any]:
    """A row's images (one value or a list), decoded and bounded; DatasetError names the row and the image."""
    values = list(value) if isinstance(value, list | tuple) else [value]
    if not values:
        raise DatasetError(f"{where}: has no image; a vision row needs at least one")
    if len(values) > max_images:
        raise DatasetError(f"{where}: has {len(values)} images, more than spec.vision.maxImages ({max_images}); "
                           "raise maxImages or split the row")
    label = (lambda index: f"{where}, image {index + 1}") if len(values) > 1 else (lambda index: where)
    return [bounded(opened(item, base, label(index), mounts or {}), max_pixels) for index, item in enumerate(values)]
