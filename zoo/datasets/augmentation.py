"""Keras' image_data_generator options, built from torchvision's transforms.

    Augmentation(rotation_range=40, width_shift_range=0.2, height_shift_range=0.2,
                 shear_range=0.2, zoom_range=0.2, horizontal_flip=True, fill_mode="nearest")

`rescale` is not here: it is the model's input preprocessing and applies to
validation data too, which is never augmented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torchvision.transforms import v2

__all__ = ["Augmentation", "FILL_MODES", "TUTORIAL_AUGMENTATION"]

# The settings the tutorial passes to image_data_generator, as recipe fields.
TUTORIAL_AUGMENTATION = {
    "rotation_range": 40,
    "width_shift_range": 0.2,
    "height_shift_range": 0.2,
    "shear_range": 0.2,
    "zoom_range": 0.2,
    "horizontal_flip": True,
    "fill_mode": "nearest",
}

# Keras fill_mode -> torchvision padding mode used around the image before the affine warp.
FILL_MODES = {"nearest": "edge", "reflect": "symmetric", "constant": "constant"}


@dataclass(frozen=True)
class Augmentation:
    rotation_range: float = 0.0
    """Degrees: rotate by a random angle in [-r, r]."""
    width_shift_range: float = 0.0
    """Fraction of the width: shift horizontally by up to this much."""
    height_shift_range: float = 0.0
    """Fraction of the height: shift vertically by up to this much."""
    shear_range: float = 0.0
    """Shear angle in degrees, in [-s, s] (Keras' unit)."""
    zoom_range: float = 0.0
    """Scale by a random factor in [1 - z, 1 + z]."""
    horizontal_flip: bool = False
    """Flip half of the images left to right."""
    fill_mode: str = "nearest"
    """How pixels moved in from outside are filled: nearest, reflect or constant (black)."""

    def __post_init__(self) -> None:
        if self.fill_mode not in FILL_MODES:
            raise ValueError(
                f"fill_mode must be one of {sorted(FILL_MODES)}, got {self.fill_mode!r} (wrap is not supported)"
            )
        for name in ("width_shift_range", "height_shift_range", "zoom_range"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.rotation_range <= 180.0 or self.shear_range < 0:
            raise ValueError(
                f"rotation_range must be in [0, 180] and shear_range >= 0, got {self.rotation_range}, {self.shear_range}"
            )

    @property
    def enabled(self) -> bool:
        return any(
            (
                self.rotation_range,
                self.width_shift_range,
                self.height_shift_range,
                self.shear_range,
                self.zoom_range,
                self.horizontal_flip,
            )
        )

    def transform(self, size: tuple[int, int]) -> v2.Transform:
        """Random transforms for float CHW tensors of `size` (height, width)."""
        from torchvision.transforms import v2  # here: importing torchvision costs every command 2 s

        steps: list[v2.Transform] = []
        if any(
            (self.rotation_range, self.width_shift_range, self.height_shift_range, self.shear_range, self.zoom_range)
        ):
            # Pad with the fill rule, warp, crop back: border pixels come from the
            # padding (edge / mirror / black) rather than a constant colour.
            pad = max(size) // 2
            steps += [
                v2.Pad(pad, padding_mode=FILL_MODES[self.fill_mode]),
                v2.RandomAffine(
                    degrees=self.rotation_range,
                    translate=(
                        self.width_shift_range * size[1] / (size[1] + 2 * pad),
                        self.height_shift_range * size[0] / (size[0] + 2 * pad),
                    ),
                    scale=(1 - self.zoom_range, 1 + self.zoom_range) if self.zoom_range else None,
                    shear=self.shear_range or None,
                    interpolation=v2.InterpolationMode.BILINEAR,
                ),
                v2.CenterCrop(size),
            ]
        if self.horizontal_flip:
            steps.append(v2.RandomHorizontalFlip())
        return v2.Compose(steps) if steps else v2.Identity()
