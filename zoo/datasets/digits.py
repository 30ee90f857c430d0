"""scikit-learn's handwritten digits, brought to MNIST's 28x28 format.

The 1,797 8x8 images (UCI optical recognition of handwritten digits, 0..16
ink levels) ship with scikit-learn, so every MNIST recipe runs offline on real
handwriting. Like MNIST, each digit is scaled into a 20x20 box and centred in
a 28x28 frame of background; ink is bright on a dark ground.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["load_digits_28x28"]


def load_digits_28x28() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) for all 1,797 digits."""
    from sklearn.datasets import load_digits  # import here: only this loader needs scikit-learn

    digits = load_digits()
    ink = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)  # (N, 8, 8)
    images = np.zeros((len(ink), 28, 28), dtype=np.uint8)
    for i, small in enumerate(ink):
        box = Image.fromarray(small).resize((20, 20), Image.Resampling.BILINEAR)
        images[i, 4:24, 4:24] = np.asarray(box)
    return images, digits.target.astype(np.int64)
