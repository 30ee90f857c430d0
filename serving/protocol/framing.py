"""Finding a handwritten digit on a page and framing it as MNIST's digits were framed.

The picture arrives as light ink on a dark ground (polarity already settled). Paper is not
the black of MNIST's scans: it has shade, texture, ruled lines and boxes, and pens are far
finer or broader than MNIST's for the size a digit is written at. So, on a copy at most
ANALYSIS_SIDE pixels on its longer side:

1. the ground is flattened: a grey opening (a minimum, then a maximum filter, a window wider
   than any stroke) is the paper's own level at each place, shade and texture included, and
   is taken away (pictures under 64 pixels a side keep the level of their border instead);
2. ink is what rises above a fifth of the strongest rise; a page where nothing rises by
   MIN_RISE grey levels has no digit;
3. ruled lines are not ink: the ink of a row or column that holds ink across four fifths of
   the picture is removed, except where a stroke crosses it (ink on both sides of the line);
4. the digit is the largest connected piece of ink that does not touch the picture's edge
   (page borders, margins; a piece touching it is taken only where nothing of a quarter its
   size lies inside, and never one running across the picture) and is not a drawn box (ink along all four sides
   of its bounding box: the box is taken away and what it held is looked at again), with
   the pieces near it (a stroke the line removal cut, a digit written in two strokes), but
   not lines longer than the digit (a box's side, an underline);
5. a stroke much finer than MNIST's for the digit's size is thickened (a maximum filter) so
   that it is not a faint hairline once the digit is 20 pixels tall.

Then, as MNIST's digits were: the ink's bounding box fitted into 20x20 keeping its aspect
(Pillow's bilinear resize) and placed with its centre of mass at pixel (14, 14) of the frame.
Every step is integers, minima, maxima and counts, so that the zoo page's JavaScript, which
does the same, gets the same pixels (within one grey level, from the resizes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = ["Placement", "mnist_framing", "ANALYSIS_SIDE", "MIN_RISE"]

ANALYSIS_SIDE = 512
"""The longer side of the copy a page is analysed at: ample for a digit that ends 20 pixels tall."""
MIN_RISE = 24
"""Grey levels the ink must rise above the paper: less is a blank page (or a shadow)."""
_FLATTEN_FROM = 64
"""Pictures with a shorter side than this keep their border's level as the ground (a 28x28
digit fills its picture: there is no paper to see past it)."""
_MNIST_BOX = 20
"""MNIST's digits were fitted into 20x20 and centred by their mass in a 28x28 frame."""


def _round(x: np.ndarray | float) -> np.ndarray:
    """Half up, as the page's JavaScript rounds (numpy's round is to even)."""
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5)


@dataclass(frozen=True)
class Placement:
    """Where a framed picture came from: frame pixel (u, v) shows the picture's pixel
    (x0 + (u - left) * kx, y0 + (v - top) * ky). Grad-CAM maps a heatmap back with it."""

    x0: float
    y0: float
    kx: float
    ky: float
    left: int
    top: int

    def frame_to_picture(self, frame: tuple[int, int]) -> tuple[float, float, float, float]:
        """The frame's (0, 0, width, height) as a box in the picture: (left, top, right, bottom)."""
        width, height = frame
        x, y = self.x0 - self.left * self.kx, self.y0 - self.top * self.ky
        return x, y, x + width * self.kx, y + height * self.ky


def _border_median(grey: np.ndarray) -> float:
    ring = max(1, min(grey.shape) // 10)
    inner = grey[ring:-ring]
    border = np.concatenate(
        [grey[:ring].ravel(), grey[-ring:].ravel(), inner[:, :ring].ravel(), inner[:, -ring:].ravel()]
    )
    return float(np.median(border))


def _analysis_copy(grey: np.ndarray) -> np.ndarray:
    height, width = grey.shape
    longer = max(height, width)
    if longer <= ANALYSIS_SIDE:
        return grey
    size = (max(1, int(_round(width * ANALYSIS_SIDE / longer))), max(1, int(_round(height * ANALYSIS_SIDE / longer))))
    return np.asarray(Image.fromarray(grey).resize(size, Image.Resampling.BILINEAR))


def _window(grey: np.ndarray) -> int:
    """The opening's window: an odd width wider than strokes, a sixth of the shorter side."""
    return max(5, min(grey.shape) // 6) | 1


def rise(grey: np.ndarray) -> np.ndarray:
    """How far each pixel rises above the paper under it (int32, >= 0)."""
    if min(grey.shape) < _FLATTEN_FROM:
        ground = np.full(grey.shape, _round(_border_median(grey)), np.int32)
    else:
        k = _window(grey)
        ground = ndimage.maximum_filter(ndimage.minimum_filter(grey, size=k, mode="nearest"), size=k, mode="nearest")
    return np.maximum(grey.astype(np.int32) - ground.astype(np.int32), 0)


def _without_lines(mask: np.ndarray) -> np.ndarray:
    """`mask` without ruled lines: the ink of a row (then a column) holding ink across four
    fifths of the picture, however broken the line is, except where ink lies on both sides
    of it (a stroke crossing the line)."""
    for axis in (0, 1):
        view = mask if axis == 0 else mask.T
        lines = np.zeros_like(view)
        lines[5 * view.sum(axis=1) >= 4 * view.shape[1]] = True
        lines &= view
        if not lines.any():
            continue
        above = np.zeros_like(view)
        below = np.zeros_like(view)
        # ink on each side, past the line's own thickness (up to 4 pixels)
        for step in range(1, 5):
            above[step:] |= view[:-step] & ~lines[:-step]
            below[:-step] |= view[step:] & ~lines[step:]
        kept = view & ~(lines & ~(above & below))
        mask = kept if axis == 0 else kept.T
    return mask


def _bounds(box: tuple[slice, ...]) -> tuple[slice, slice]:
    return box[0], box[1]


def _touches_edge(ys: slice, xs: slice, height: int, width: int) -> bool:
    return ys.start == 0 or xs.start == 0 or ys.stop == height or xs.stop == width


def _frame_band(piece: np.ndarray) -> int:
    """For a piece of ink (cropped to its bounding box) that is a drawn box, the width of the
    band its sides take (ink along four fifths of each side, within its outer three lines);
    0 for anything else."""
    height, width = piece.shape
    if height < 12 or width < 12:
        return 0
    sides = (piece, piece[::-1], piece.T, piece.T[::-1])  # each side as the first rows of a view
    if not all(5 * int(side[:3].any(axis=0).sum()) >= 4 * side.shape[1] for side in sides):
        return 0
    band = 0
    for side in sides:
        rows = 0
        while rows < side.shape[0] // 4 and 2 * int(side[rows].sum()) >= side.shape[1]:
            rows += 1
        band = max(band, rows)
    return band + 2  # and the blur beside it


def _digit(mask: np.ndarray) -> np.ndarray | None:
    """The pixels of the digit: the largest piece of ink away from the edge that is not a box,
    with the pieces near it; None when there is none."""
    height, width = mask.shape
    for _ in range(3):  # a box taken away: look again at what it held
        labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
        if not count:
            return None
        boxes = ndimage.find_objects(labels)
        areas = np.bincount(labels.ravel(), minlength=count + 1)
        # never a piece running across the picture (a page border, a margin, noise grown into
        # one piece); one touching the edge only where nothing of a quarter its size lies inside
        candidates = [
            i
            for i, (ys, xs) in enumerate(boxes, start=1)
            if 10 * (ys.stop - ys.start) < 9 * height and 10 * (xs.stop - xs.start) < 9 * width
        ]
        if not candidates:
            return None
        largest = max(areas[i] for i in candidates)
        inside = [
            i
            for i in candidates
            if 4 * areas[i] >= largest and not _touches_edge(*_bounds(boxes[i - 1]), height, width)
        ]
        best = max(inside or candidates, key=lambda i: (areas[i], -i))
        ys, xs = boxes[best - 1]
        band = _frame_band(labels[ys, xs] == best)
        if not band:
            break
        inner = np.zeros_like(mask)
        inner[ys.start + band : ys.stop - band, xs.start + band : xs.stop - band] = True
        mask = mask & ~((labels == best) & ~inner)  # the box's sides go, what it held stays
    else:
        return None
    ys, xs = boxes[best - 1]
    digit_tall, digit_wide = ys.stop - ys.start, xs.stop - xs.start
    reach = max(digit_tall, digit_wide) // 4
    top, bottom, left, right = ys.start - reach, ys.stop + reach, xs.start - reach, xs.stop + reach
    digit = labels == best
    for index, box in enumerate(boxes, start=1):
        if index == best or 20 * areas[index] < areas[best]:
            continue
        by, bx = box
        tall, wide = by.stop - by.start, bx.stop - bx.start
        if _touches_edge(by, bx, height, width):
            continue
        if (wide >= 8 * tall and 5 * wide >= 6 * digit_wide) or (tall >= 8 * wide and 5 * tall >= 6 * digit_tall):
            continue  # a line longer than the digit is wide or tall: a box's side, an underline
        if _frame_band(labels[by, bx] == index):
            continue  # a box beside the digit
        if by.start < bottom and by.stop > top and bx.start < right and bx.stop > left:
            digit |= labels == index
    return digit


def _stroke_width(digit: np.ndarray) -> float:
    """About twice the ink's area over its outline: a stroke's width."""
    inner = ndimage.binary_erosion(digit, structure=np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool))
    outline = int(digit.sum()) - int(inner.sum())
    return 2.0 * int(digit.sum()) / max(outline, 1)


def mnist_framing(grey: np.ndarray, size: tuple[int, int] = (28, 28)) -> tuple[np.ndarray, Placement | None]:
    """A grey picture of light ink on a dark ground (HxW uint8, after polarity) framed as
    MNIST's digits were, and where the frame's pixels came from; with no digit found, the
    picture resized whole and None."""
    height, width = size
    page = _analysis_copy(grey)
    level = rise(page)
    peak = int(level.max(initial=0))
    digit = None
    if peak >= MIN_RISE:
        mask = 5 * level >= peak
        if min(page.shape) >= _FLATTEN_FROM:  # paper, which may be ruled
            mask = _without_lines(mask)
        digit = _digit(mask)
    if digit is None:
        return np.asarray(Image.fromarray(grey).resize((width, height), Image.Resampling.BILINEAR)), None
    ink = np.clip(_round(level * (255.0 / peak)), 0, 255)
    ink[~digit] = 0
    rows, cols = np.flatnonzero(digit.any(axis=1)), np.flatnonzero(digit.any(axis=0))
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.uint8)
    longer = max(crop.shape)
    stroke = _stroke_width(digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])
    grow = int(_round((longer / 10 - stroke) / 2))  # MNIST's strokes are about a tenth of the digit's height
    if 4 * stroke < longer / 10 * 2 and grow > 0:  # finer than half of that: thicken it
        crop = np.pad(crop, grow)
        crop = ndimage.maximum_filter(crop, size=2 * grow + 1, mode="constant")
    box = _MNIST_BOX * min(height, width) / 28
    scale = box / max(crop.shape)
    fit = (max(1, int(_round(crop.shape[1] * scale))), max(1, int(_round(crop.shape[0] * scale))))  # (w, h)
    fitted = np.asarray(Image.fromarray(crop).resize(fit, Image.Resampling.BILINEAR))
    mass = fitted.astype(np.int64)  # integer sums: exact, so the page's JavaScript gets the same centre
    total = int(mass.sum())
    cy = int((mass.sum(axis=1) * np.arange(fitted.shape[0])).sum()) / total if total else (fitted.shape[0] - 1) / 2
    cx = int((mass.sum(axis=0) * np.arange(fitted.shape[1])).sum()) / total if total else (fitted.shape[1] - 1) / 2
    # MNIST's digits have their centre of mass at pixel (14, 14) of 28x28 (13.99 and 14.00 on
    # average over the embedded 10,000), not at the frame's middle, 13.5.
    top, left = int(_round(height / 2 - cy)), int(_round(width / 2 - cx))
    frame = np.zeros((height, width), np.uint8)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + fitted.shape[0], height), min(left + fitted.shape[1], width)
    frame[y0:y1, x0:x1] = fitted[y0 - top : y1 - top, x0 - left : x1 - left]
    grown = crop.shape[0] - (rows[-1] - rows[0] + 1)  # padding added to each side, twice
    fx, fy = grey.shape[1] / page.shape[1], grey.shape[0] / page.shape[0]  # analysis copy -> picture
    placement = Placement(
        (cols[0] - grown // 2) * fx,
        (rows[0] - grown // 2) * fy,
        crop.shape[1] / fit[0] * fx,
        crop.shape[0] / fit[1] * fy,
        left,
        top,
    )
    return frame, placement
