"""Digits as people bring them: dark ink on light paper, 200x200, anywhere on the page and at
any size. Typed in five fonts that ship with matplotlib, and drawn as pen strokes with a
wobbling hand. Made here, from a seed, so every run judges the models on the same pictures;
none of it is tuned to a model.

    python tests/drawn_digits.py OUT_DIR          # writes the set as PNG files, label first
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SIZE = 200
FONTS = ("DejaVuSans.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono.ttf", "STIXGeneral.ttf", "cmss10.ttf")
FONT_DIR = Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf"

# Each digit as pen strokes in a unit box (x right, y down), the way one writes it.
_ARC = np.linspace(0, 2 * np.pi, 33)
STROKES: dict[int, list[list[tuple[float, float]]]] = {
    0: [[(0.5 + 0.32 * np.sin(a), 0.5 - 0.45 * np.cos(a)) for a in _ARC]],
    1: [[(0.35, 0.22), (0.55, 0.05), (0.55, 0.95)]],
    2: [[(0.2, 0.25), (0.35, 0.08), (0.6, 0.05), (0.78, 0.2), (0.75, 0.42), (0.2, 0.95), (0.85, 0.95)]],
    3: [
        [
            (0.2, 0.12),
            (0.5, 0.03),
            (0.78, 0.15),
            (0.72, 0.38),
            (0.45, 0.48),
            (0.78, 0.6),
            (0.8, 0.85),
            (0.5, 0.97),
            (0.18, 0.88),
        ]
    ],
    4: [[(0.62, 0.95), (0.62, 0.05), (0.15, 0.65), (0.88, 0.65)]],
    5: [[(0.8, 0.05), (0.28, 0.05), (0.22, 0.45), (0.55, 0.4), (0.8, 0.55), (0.78, 0.85), (0.5, 0.97), (0.2, 0.88)]],
    6: [
        [
            (0.72, 0.08),
            (0.45, 0.15),
            (0.25, 0.45),
            (0.22, 0.75),
            (0.4, 0.95),
            (0.68, 0.93),
            (0.78, 0.72),
            (0.62, 0.52),
            (0.38, 0.52),
            (0.24, 0.68),
        ]
    ],
    7: [[(0.15, 0.07), (0.85, 0.07), (0.5, 0.55), (0.38, 0.95)]],
    8: [
        [
            (0.5, 0.5),
            (0.25, 0.33),
            (0.3, 0.1),
            (0.5, 0.03),
            (0.7, 0.1),
            (0.75, 0.33),
            (0.5, 0.5),
            (0.2, 0.7),
            (0.28, 0.93),
            (0.5, 0.98),
            (0.72, 0.93),
            (0.8, 0.7),
            (0.5, 0.5),
        ]
    ],
    9: [
        [
            (0.75, 0.35),
            (0.55, 0.5),
            (0.3, 0.45),
            (0.22, 0.25),
            (0.4, 0.05),
            (0.65, 0.07),
            (0.75, 0.3),
            (0.72, 0.65),
            (0.6, 0.95),
        ]
    ],
}


@dataclass(frozen=True)
class DrawnDigit:
    label: int
    how: str
    """The font's file, or "pen"."""
    picture: Image.Image

    @property
    def filename(self) -> str:
        return f"{self.label}_{self.how.replace('.ttf', '')}.png"


def _paper(rng: np.random.Generator) -> Image.Image:
    """White to off-white paper with a faint shade across it."""
    base = rng.uniform(205, 255)
    shade = np.linspace(0, rng.uniform(-15, 15), SIZE)[None, :] + np.linspace(0, rng.uniform(-15, 15), SIZE)[:, None]
    paper = np.clip(base + shade + rng.normal(0, 2, (SIZE, SIZE)), 0, 255)
    return Image.fromarray(paper.astype(np.uint8))


def _ink(rng: np.random.Generator) -> int:
    return int(rng.uniform(0, 70))


def _typed(label: int, font: str, rng: np.random.Generator) -> Image.Image:
    picture = _paper(rng)
    height = int(rng.uniform(50, 150))  # the digit's height on the page
    face = ImageFont.truetype(str(FONT_DIR / font), size=height)
    left, top, right, bottom = face.getbbox(str(label))
    x = rng.uniform(5, SIZE - 5 - (right - left)) - left
    y = rng.uniform(5, SIZE - 5 - (bottom - top)) - top
    ImageDraw.Draw(picture).text((x, y), str(label), fill=_ink(rng), font=face)
    return picture


def _pen(label: int, rng: np.random.Generator) -> Image.Image:
    picture = _paper(rng)
    height = rng.uniform(60, 150)
    width = height * rng.uniform(0.55, 0.8)
    left, top = rng.uniform(5, SIZE - 5 - width), rng.uniform(5, SIZE - 5 - height)
    slant = rng.uniform(-0.25, 0.15)  # most hands lean right
    draw = ImageDraw.Draw(picture)
    stroke = int(rng.uniform(4, 12))
    ink = _ink(rng)
    for line in STROKES[label]:
        points = np.asarray(line) + rng.normal(0, 0.02, (len(line), 2))  # a wobbling hand
        xs = left + (points[:, 0] - slant * (points[:, 1] - 0.5)) * width
        ys = top + points[:, 1] * height
        draw.line(list(zip(xs.tolist(), ys.tolist())), fill=ink, width=stroke, joint="curve")
    return picture.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))


def drawn_digits(seed: int = 2026, typed_per_font: int = 2, pen_per_digit: int = 4) -> list[DrawnDigit]:
    """Every digit in each font `typed_per_font` times and by pen `pen_per_digit` times:
    140 pictures with the defaults."""
    rng = np.random.default_rng(seed)
    digits = []
    for label in range(10):
        for font in FONTS:
            for i in range(typed_per_font):
                digits.append(DrawnDigit(label, f"{font.removesuffix('.ttf')}-{i}", _typed(label, font, rng)))
        for i in range(pen_per_digit):
            digits.append(DrawnDigit(label, f"pen-{i}", _pen(label, rng)))
    return digits


def write_drawn_digits(folder: Path, **options: int) -> list[tuple[Path, int]]:
    """The set as PNG files in `folder`; (path, label) for each."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for digit in drawn_digits(**options):
        path = folder / digit.filename
        digit.picture.save(path)
        written.append((path, digit.label))
    return written


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "drawn_digits")
    print(f"wrote {len(write_drawn_digits(out))} pictures to {out}")
