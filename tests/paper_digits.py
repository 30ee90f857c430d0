"""Digits written on the papers people have at hand: plain, ruled notebook paper, inside a
drawn box, grey or yellowish paper with a texture and uneven light, and with strokes far
thinner or thicker than MNIST's for the digit's size; and pages with no digit at all (blank,
or noise). Ten pictures of each kind, one per digit, pen strokes with a wobbling hand on a
400x400 page. Made here from a seed, so that every run judges the framing on the same
pictures; none of it is tuned to a model.

    python tests/paper_digits.py OUT_DIR          # writes the set as PNG files: KIND_LABEL.png
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from drawn_digits import STROKES
from PIL import Image, ImageDraw, ImageFilter

SIZE = 400
KINDS = ("plain", "ruled", "boxed", "textured", "thin", "thick")
"""The kinds with a digit, ten pictures each."""
EMPTY_KINDS = ("blank", "noise")
"""Pages with no digit, five each."""


@dataclass(frozen=True)
class PaperDigit:
    kind: str
    label: int | None
    """None: no digit on the page."""
    picture: Image.Image

    @property
    def filename(self) -> str:
        return f"{self.kind}_{'none' if self.label is None else self.label}.png"


def _page(
    rng: np.random.Generator, tint: tuple[float, float, float] = (1.0, 1.0, 1.0), texture: float = 2.0
) -> np.ndarray:
    """Paper: a light ground, a shade across it, a texture of `texture` grey levels; (H, W, 3) float."""
    base = rng.uniform(215, 250)
    shade = np.linspace(0, rng.uniform(-20, 20), SIZE)[None, :] + np.linspace(0, rng.uniform(-20, 20), SIZE)[:, None]
    grain = rng.normal(0, texture, (SIZE, SIZE))
    if texture > 4:  # a fibrous texture: grain smeared along the page, not salt and pepper
        grain = (
            np.asarray(
                Image.fromarray(((grain + 64) * 2).clip(0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.2)),
                np.float64,
            )
            / 2
            - 64
        )
    grey = base + shade + grain
    return np.stack([grey * t for t in tint], axis=-1)


def _pen(
    draw: ImageDraw.ImageDraw,
    label: int,
    rng: np.random.Generator,
    box: tuple[float, float, float, float],
    stroke: int,
    ink: tuple[int, int, int],
) -> None:
    """Digit `label` as pen strokes inside `box` (left, top, width, height)."""
    left, top, width, height = box
    slant = rng.uniform(-0.25, 0.15)
    for line in STROKES[label]:
        points = np.asarray(line) + rng.normal(0, 0.02, (len(line), 2))
        xs = left + (points[:, 0] - slant * (points[:, 1] - 0.5)) * width
        ys = top + points[:, 1] * height
        draw.line(list(zip(xs.tolist(), ys.tolist())), fill=ink, width=stroke, joint="curve")


def _ink(rng: np.random.Generator) -> tuple[int, int, int]:
    """Black, blue-black or pencil-grey ink."""
    kind = rng.integers(3)
    if kind == 0:
        v = int(rng.uniform(0, 50))
        return (v, v, v)
    if kind == 1:
        return (int(rng.uniform(10, 40)), int(rng.uniform(20, 50)), int(rng.uniform(90, 140)))
    v = int(rng.uniform(70, 110))
    return (v, v, v)


def _digit_box(rng: np.random.Generator, height: float) -> tuple[float, float, float, float]:
    width = height * rng.uniform(0.55, 0.8)
    left = rng.uniform(15, SIZE - 15 - width)
    top = rng.uniform(15, SIZE - 15 - height)
    return left, top, width, height


def _finish(page: np.ndarray, rng: np.random.Generator) -> Image.Image:
    picture = Image.fromarray(np.clip(page, 0, 255).astype(np.uint8))
    return picture.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))


def _drawn(page: np.ndarray, draw_on: Callable[[ImageDraw.ImageDraw], None], rng: np.random.Generator) -> Image.Image:
    picture = Image.fromarray(np.clip(page, 0, 255).astype(np.uint8))
    draw_on(ImageDraw.Draw(picture))
    return picture.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))


def plain(label: int, rng: np.random.Generator) -> Image.Image:
    box = _digit_box(rng, rng.uniform(150, 300))
    stroke = int(box[3] * rng.uniform(0.04, 0.07))
    return _drawn(_page(rng), lambda d: _pen(d, label, rng, box, stroke, _ink(rng)), rng)


def ruled(label: int, rng: np.random.Generator) -> Image.Image:
    """Notebook paper: blue-grey lines every 30-40 px, a red margin; the digit across lines."""
    page = _page(rng)
    spacing = rng.uniform(30, 40)
    line_colour = np.array([rng.uniform(120, 170), rng.uniform(150, 190), rng.uniform(200, 235)])
    thickness = int(rng.integers(1, 3))
    for y in np.arange(rng.uniform(10, spacing), SIZE, spacing):
        row = int(y)
        page[row : row + thickness] = page[row : row + thickness] * 0.3 + line_colour * 0.7
    margin = int(rng.uniform(40, 70))
    page[:, margin : margin + 2] = page[:, margin : margin + 2] * 0.3 + np.array([220, 90, 90]) * 0.7
    box = _digit_box(rng, rng.uniform(80, 160))
    box = (max(box[0], margin + 10), *box[1:])
    stroke = max(2, int(box[3] * rng.uniform(0.05, 0.08)))
    return _drawn(page, lambda d: _pen(d, label, rng, box, stroke, _ink(rng)), rng)


def boxed(label: int, rng: np.random.Generator) -> Image.Image:
    """The digit inside a rectangle drawn in the same ink (a form's field)."""
    box = _digit_box(rng, rng.uniform(110, 220))
    ink = _ink(rng)
    stroke = max(2, int(box[3] * rng.uniform(0.05, 0.08)))
    pad_x, pad_y = box[2] * rng.uniform(0.3, 0.6), box[3] * rng.uniform(0.15, 0.3)
    frame = [
        max(2, box[0] - pad_x),
        max(2, box[1] - pad_y),
        min(SIZE - 3, box[0] + box[2] + pad_x),
        min(SIZE - 3, box[1] + box[3] + pad_y),
    ]

    def draw_on(draw: ImageDraw.ImageDraw) -> None:
        draw.rectangle(frame, outline=ink, width=int(rng.integers(2, 5)))
        _pen(draw, label, rng, box, stroke, ink)

    return _drawn(_page(rng), draw_on, rng)


def textured(label: int, rng: np.random.Generator) -> Image.Image:
    """Grey or yellowish paper with a fibrous texture and uneven light."""
    tint = (1.0, 0.97, 0.78) if rng.random() < 0.5 else (0.82, 0.82, 0.82)
    page = _page(rng, tint, texture=rng.uniform(8, 14))
    light = np.linspace(rng.uniform(-40, 0), rng.uniform(0, 25), SIZE)
    page += (light[None, :] if rng.random() < 0.5 else light[:, None])[..., None]
    box = _digit_box(rng, rng.uniform(130, 280))
    stroke = int(box[3] * rng.uniform(0.04, 0.07))
    return _drawn(page, lambda d: _pen(d, label, rng, box, stroke, _ink(rng)), rng)


def thin(label: int, rng: np.random.Generator) -> Image.Image:
    """A fine pen: 2-3 px strokes on a digit about 300 px tall."""
    box = _digit_box(rng, rng.uniform(270, 330))
    return _drawn(_page(rng), lambda d: _pen(d, label, rng, box, int(rng.integers(2, 4)), _ink(rng)), rng)


def thick(label: int, rng: np.random.Generator) -> Image.Image:
    """A marker: 20-25 px strokes on a digit about 300 px tall."""
    box = _digit_box(rng, rng.uniform(270, 330))
    return _drawn(_page(rng), lambda d: _pen(d, label, rng, box, int(rng.integers(20, 26)), _ink(rng)), rng)


def blank(rng: np.random.Generator) -> Image.Image:
    return _finish(_page(rng, texture=rng.uniform(2, 10)), rng)


def noise(rng: np.random.Generator) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


MAKERS: dict[str, Callable[[int, np.random.Generator], Image.Image]] = {
    "plain": plain,
    "ruled": ruled,
    "boxed": boxed,
    "textured": textured,
    "thin": thin,
    "thick": thick,
}


def paper_digits(seed: int = 43, empty_per_kind: int = 5) -> list[PaperDigit]:
    """Ten pictures of each kind in KINDS (digits 0-9), then `empty_per_kind` of each of EMPTY_KINDS."""
    rng = np.random.default_rng(seed)
    pictures = [PaperDigit(kind, label, MAKERS[kind](label, rng)) for kind in KINDS for label in range(10)]
    for i in range(empty_per_kind):
        pictures.append(PaperDigit("blank", None, blank(rng)))
        pictures.append(PaperDigit("noise", None, noise(rng)))
    return pictures


def write_paper_digits(folder: Path, **options: int) -> list[tuple[Path, str, int | None]]:
    """The set as PNG files in `folder`; (path, kind, label) for each (empty pages numbered)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    counts: dict[str, int] = {}
    for digit in paper_digits(**options):
        name = digit.filename
        if digit.label is None:
            counts[digit.kind] = counts.get(digit.kind, 0) + 1
            name = f"{digit.kind}_none{counts[digit.kind]}.png"
        path = folder / name
        digit.picture.save(path)
        written.append((path, digit.kind, digit.label))
    return written


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "paper_digits")
    print(f"wrote {len(write_paper_digits(out))} pictures to {out}")
