"""The tutorial's small convnet for 150x150 pictures (cats vs dogs): four conv/pool stages,
dropout, dense 512, dense sigmoid; 3,453,121 parameters."""

from __future__ import annotations

from torch import nn

from .._registry import register_model
from ..datasets.augmentation import TUTORIAL_AUGMENTATION
from ..layers import Conv2D, Dense, Dropout, Flatten, MaxPooling2D, keras_sequential

# The tutorial's second recipe: image_data_generator augmentation, rmsprop at 1e-4.
_AUGMENTED_RECIPE = {"epochs": 6, "batch_size": 32, "optimizer": "rmsprop", "lr": 1e-4, **TUTORIAL_AUGMENTATION}


@register_model(
    "catsdogs_convnet",
    section="Data augmentation",
    input_shape=(3, 150, 150),
    dataset="pictures",
    recipe=_AUGMENTED_RECIPE,
    task="binary",
    export={"output_names": ("probability",)},
)
def catsdogs_convnet() -> nn.Sequential:
    """Conv 32-64-128-128 (3x3, relu), each with 2x2 max pooling, dropout 0.5, dense 512, dense 1 sigmoid."""
    # 150 -> 148 -> 74 -> 72 -> 36 -> 34 -> 17 -> 15 -> 7
    return keras_sequential(
        Conv2D(3, 32, 3, activation="relu"),
        MaxPooling2D(2),
        Conv2D(32, 64, 3, activation="relu"),
        MaxPooling2D(2),
        Conv2D(64, 128, 3, activation="relu"),
        MaxPooling2D(2),
        Conv2D(128, 128, 3, activation="relu"),
        MaxPooling2D(2),
        Flatten(),
        Dropout(0.5),
        Dense(128 * 7 * 7, 512, activation="relu"),
        Dense(512, 1, activation="sigmoid"),
    )
