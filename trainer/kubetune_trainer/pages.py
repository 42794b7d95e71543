"""Text drawn as page images (Pillow), so that a text dataset becomes image-to-text: the model reads the
document from pixels, as OCR-style vision-language fine-tunes of summarization data do.

Words are wrapped to the page width with the font's real glyph widths; lines go on to the next page
when one is full; text beyond spec.vision.render.maxPages pages is cut.
"""

from __future__ import annotations

from typing import Any

from kubetune.api import PageRendering
from kubetune_trainer.errors import DatasetError

# Margin around the text, as a fraction of the page width: a page-like frame the model sees in every row.
MARGIN_FRACTION = 0.05
# Line height as a multiple of the font size: single spacing with room for ascenders and descenders.
LINE_SPACING = 1.25


def load_font(render: PageRendering) -> Any:
    """The font to draw with: the file render.font names, or Pillow's built-in scalable font."""
    from PIL import ImageFont

    if render.font is None:
        return ImageFont.load_default(size=render.font_size)
    try:
        return ImageFont.truetype(render.font, render.font_size)
    except OSError as exc:
        raise DatasetError(f"spec.vision.render.font: cannot load {render.font} ({exc}); give a TrueType or "
                           "OpenType file on one of spec.volumes, or leave it out") from None


def wrapped_lines(text: str, font: Any, width: float) -> list[str]:
    """The text's lines, each at most `width` pixels wide (a word longer than a line gets its own line)."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if line and font.getlength(candidate) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def render(text: str, settings: PageRendering) -> list[Any]:
    """The text on at most settings.maxPages white pages of settings.pageWidth x pageHeight pixels."""
    from PIL import Image, ImageDraw

    font = load_font(settings)
    margin = round(settings.page_width * MARGIN_FRACTION)
    line_height = round(settings.font_size * LINE_SPACING)
    lines_per_page = max(1, (settings.page_height - 2 * margin) // line_height)
    lines = wrapped_lines(text, font, settings.page_width - 2 * margin)
    pages = []
    for first in range(0, min(len(lines), lines_per_page * settings.max_pages), lines_per_page):
        page = Image.new("RGB", (settings.page_width, settings.page_height), "white")
        pen = ImageDraw.Draw(page)
        for number, line in enumerate(lines[first:first + lines_per_page]):
            pen.text((margin, margin + number * line_height), line, fill="black", font=font)
        pages.append(page)
    return pages
