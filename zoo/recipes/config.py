"""TrainConfig: every knob of a training run, with the model's default recipe applied."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._registry import get_model_spec
from ..datasets.augmentation import Augmentation

__all__ = ["TrainConfig", "OPTIMIZERS", "LR_SCHEDULES"]

OPTIMIZERS = ("rmsprop", "adam", "sgd")
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig:
    model: str
    """Registered model name."""
    out: Path
    """Run directory: weights.pt, history.json, history.png, metrics.json."""
    data: str = ""
    """Dataset name or path; empty: the model's default dataset."""
    epochs: int = 5
    """Passes over the training split."""
    batch_size: int = 128
    """Examples per optimizer step."""
    optimizer: str = "rmsprop"
    """rmsprop (Keras' defaults: rho 0.9, epsilon 1e-7), adam or sgd."""
    lr: float = 1e-3
    """Learning rate (the peak, when a schedule decays it)."""
    lr_schedule: str = "constant"
    """"constant", or "cosine": decay to zero over the run, per step."""
    validation_split: float = 0.1
    """Fraction of the training split held back to validate after each epoch."""
    seed: int = 0
    """Seeds weight initialisation, the validation split and batch order."""
    rotation_range: float = 0.0
    """Augmentation (picture data): degrees of random rotation, as image_data_generator."""
    width_shift_range: float = 0.0
    """Augmentation: horizontal shift, fraction of the width."""
    height_shift_range: float = 0.0
    """Augmentation: vertical shift, fraction of the height."""
    shear_range: float = 0.0
    """Augmentation: shear angle in degrees."""
    zoom_range: float = 0.0
    """Augmentation: zoom by a factor in [1 - z, 1 + z]."""
    horizontal_flip: bool = False
    """Augmentation: flip half of the pictures left to right."""
    fill_mode: str = "nearest"
    """Augmentation: how uncovered pixels are filled (nearest, reflect, constant)."""
    base_weights: str | None = None
    """Pretrained base weights for transfer models: "imagenet" (TORCH_HOME or a download) or a file."""
    unfreeze_from: str | None = None
    """Fine-tuning: unfreeze the pretrained base from this layer on (e.g. block5_conv1)."""
    sample_temperatures: tuple[float, ...] = ()
    """Character models: after each epoch, generate text at these temperatures (the tutorial's loop)."""
    sample_length: int = 400
    """Characters generated per temperature after each epoch."""
    device: str = "auto"
    """"cpu", "cuda" or "auto" (cuda when available)."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; expected one of {', '.join(LR_SCHEDULES)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        if not 0.0 <= self.validation_split < 1.0:
            raise ValueError(f"validation_split must be in [0, 1), got {self.validation_split}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        self.augmentation()  # raises on invalid augmentation settings

    @classmethod
    def for_model(cls, model: str, out: Path | str, **overrides: Any) -> "TrainConfig":
        """The model's default recipe, with `overrides` (None values ignored) on top."""
        spec = get_model_spec(model)
        if spec.weights_included:
            raise ValueError(
                f"{model} is an imported Keras model: it comes trained; deepr exports and serves it (train it in Keras)"
            )
        fields = {"data": spec.dataset, **spec.recipe}
        fields.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise TypeError(f"unknown TrainConfig fields: {', '.join(unknown)}")
        return cls(model=model, out=Path(out), **fields)

    def augmentation(self) -> Augmentation:
        """The augmentation fields as one object (validated there)."""
        return Augmentation(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Augmentation)})

    def model_options(self) -> dict[str, Any]:
        """Builder options this config sets (only for the models that take them)."""
        options: dict[str, Any] = {}
        if self.unfreeze_from is not None:
            options["unfreeze_from"] = self.unfreeze_from
        if self.base_weights is not None and get_model_spec(self.model).dataset == "pictures":
            options["weights"] = self.base_weights  # end-to-end transfer models build their base with them
        return options

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}
