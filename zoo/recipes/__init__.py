"""Training recipes: one config dataclass, one loop, one evaluation."""

from .config import TrainConfig
from .evaluate import evaluate
from .train import EpochReport, TrainResult, load_weights, train

__all__ = ["EpochReport", "TrainConfig", "TrainResult", "evaluate", "load_weights", "train"]
