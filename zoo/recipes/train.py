"""Fit a zoo classifier with validation, then evaluate it on the held-out test split.

    result = train(TrainConfig.for_model("mnist_convnet", out="runs/mnist_convnet"))

A run directory receives weights.pt (the state dict), history.json and
history.png (loss and accuracy per epoch), metrics.json (held-out test loss and
accuracy, training time) and config.json.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from .._registry import get_model, get_model_spec
from ..datasets import SupervisedData, load_dataset
from ..datasets.chars import CHARSET
from ..layers import regularization_loss
from .config import TrainConfig
from .distributed import from_environment
from .evaluate import count_correct, evaluate, fit_input, task_loss
from .plot import plot_history

__all__ = ["EpochReport", "TrainResult", "train", "load_weights"]


@dataclass
class TrainResult:
    model: nn.Module
    history: dict[str, list[float]]
    test: dict[str, float]
    """Held-out test metrics: loss and accuracy."""
    seconds: float
    """Wall time of the fit, without data loading and evaluation."""
    out: Path


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but PyTorch sees no CUDA device")
    return name


def _optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, alpha=0.9, eps=1e-7)  # Keras' rho and epsilon
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, eps=1e-7)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9)


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a state dict saved by `train` (tensors only: nothing is unpickled, so a
    weights file from elsewhere cannot run code). ValueError names what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError, RuntimeError (zip), EOFError: not a file of tensors
        raise ValueError(
            f"{path} is not a weights file deepr reads ({type(exc).__name__}): deepr reads only tensors "
            "saved with torch.save(model.state_dict(), path), never pickled objects"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict (save model.state_dict())")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        details = " ".join(line.strip() for line in str(exc).splitlines()[1:] if line.strip())
        raise ValueError(f"{path} does not fit {type(model).__name__}: {details[:400]}") from None
    return model


def _epoch_samples(
    cfg: TrainConfig, model: nn.Module, data: SupervisedData, epoch: int, bar: tqdm
) -> dict[str, object]:
    """The tutorial's loop body: a random 60-character seed from the text, then text at each temperature."""
    from .text_sampling import window_sample

    windows = data.train
    count = len(windows)  # type: ignore[arg-type]  # torch's Dataset declares no __len__; every zoo dataset has one
    start = int(torch.randint(count, (1,), generator=torch.Generator().manual_seed(cfg.seed + epoch)))
    seed_text = "".join(CHARSET[i] for i in windows[start][0].argmax(1).tolist())
    texts = {
        str(t): window_sample(model, seed_text, cfg.sample_length, t, seed=cfg.seed + epoch)
        for t in cfg.sample_temperatures
    }
    model.train()
    for t, text in texts.items():
        bar.write(f"--- epoch {epoch + 1}, temperature {t}, seed {seed_text!r}\n{text}")
    return {"epoch": epoch + 1, "seed": seed_text, "texts": texts}


@dataclass(frozen=True)
class EpochReport:
    """Where a run stands after an epoch, for whoever watches it (a server's log, its index)."""

    model: str
    epoch: int
    """Epochs done, from 1."""
    epochs: int
    loss: float
    val_accuracy: float | None
    """Accuracy on the validation split; None without one."""
    seconds: float
    """Since training began."""

    @property
    def seconds_left(self) -> float:
        return self.seconds / self.epoch * (self.epochs - self.epoch)

    def line(self) -> str:
        held_out = f", held-out accuracy {self.val_accuracy:.3f}" if self.val_accuracy is not None else ""
        return (
            f"{self.model}: epoch {self.epoch}/{self.epochs}, loss {self.loss:.3f}{held_out}, "
            f"{self.seconds:.0f} s in, about {self.seconds_left:.0f} s left"
        )


def train(
    cfg: TrainConfig, data: SupervisedData | None = None, on_epoch: Callable[[EpochReport], None] | None = None
) -> TrainResult:
    """Train `cfg.model` by its recipe; `data` skips loading `cfg.data` again; `on_epoch` is
    told after every epoch."""
    spec = get_model_spec(cfg.model)
    parallel = from_environment()
    device = parallel.device(_device(cfg.device))
    parallel.start(device)
    data = data or load_dataset(
        cfg.data, like=spec.dataset, augmentation=cfg.augmentation(), base_weights=cfg.base_weights
    )

    torch.manual_seed(cfg.seed)
    try:
        model = get_model(cfg.model, **cfg.model_options()).to(device)
    except TypeError as exc:
        raise ValueError(f"{cfg.model} does not take {sorted(cfg.model_options())}: {exc}") from None

    # Validation: the dataset's own (never augmented), or a seeded slice of the training split.
    if data.validation is not None:
        train_set, val_set = data.train, data.validation
    else:
        count = len(data.train)  # type: ignore[arg-type]
        order = torch.randperm(count, generator=torch.Generator().manual_seed(cfg.seed)).tolist()
        n_split = int(round(cfg.validation_split * len(order)))
        train_set, val_set = Subset(data.train, order[n_split:]), Subset(data.train, order[:n_split])
    n_val = len(val_set)  # type: ignore[arg-type]
    loader = DataLoader(
        train_set, batch_size=cfg.batch_size, shuffle=True, generator=torch.Generator().manual_seed(cfg.seed + 1)
    )

    optimizer = _optimizer(cfg, [p for p in model.parameters() if p.requires_grad])  # frozen layers stay as they are
    trained = parallel.wrap(model)  # the DDP wrapper under torchrun, else the model itself
    total_steps = cfg.epochs * len(loader)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
        if cfg.lr_schedule == "cosine"
        else None
    )
    history: dict[str, list[float]] = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
    samples: list[dict[str, object]] = []
    bar = tqdm(
        total=total_steps,
        desc=cfg.model,
        unit="batch",
        # None: tqdm draws the bar on a terminal only; a log (a service, CI) gets one line per epoch
        disable=None if cfg.progress and parallel.is_main else True,
        dynamic_ncols=True,
    )
    epoch_lines = cfg.progress and parallel.is_main and bar.disable
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        seen, loss_sum, correct = 0.0, 0.0, 0.0
        for x, y in loader:
            x, y, share = parallel.shard(x, y)  # the whole batch in one process
            x, y = fit_input(x.to(device), spec.input_shape), y.to(device)
            probs = trained(x)  # (B, classes) softmax or (B, 1) sigmoid
            # Weight penalties join the loss, and the reported loss, as in Keras.
            penalty = regularization_loss(model)
            task = (
                task_loss(spec.task, probs, y) if len(y) else probs.sum() * 0.0
            )  # an empty slice still joins DDP's sync
            loss = task * share + penalty
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            seen += len(y)
            loss_sum += (task.item() + (penalty.detach().item() if torch.is_tensor(penalty) else float(penalty))) * len(
                y
            )
            correct += count_correct(spec.task, probs, y)
            bar.update()
        seen, loss_sum, correct = parallel.sum(seen, loss_sum, correct)
        history["loss"].append(loss_sum / seen)
        history["accuracy"].append(correct / seen)
        if n_val:
            val = evaluate(model, val_set, task=spec.task, input_shape=spec.input_shape, device=device)
            history["val_loss"].append(val["loss"])
            history["val_accuracy"].append(val["accuracy"])
        if cfg.sample_temperatures and parallel.is_main:
            samples.append(_epoch_samples(cfg, model, data, epoch, bar))
        summary = f"epoch {epoch + 1}/{cfg.epochs} loss {history['loss'][-1]:.3f} acc {history['accuracy'][-1]:.3f}"
        summary += f" val_acc {history['val_accuracy'][-1]:.3f}" if n_val else ""
        bar.set_postfix_str(summary)
        if epoch_lines:
            print(f"{cfg.model}: {summary} ({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)
        if on_epoch is not None and parallel.is_main:
            val_accuracy = history["val_accuracy"][-1] if n_val else None
            on_epoch(
                EpochReport(
                    cfg.model, epoch + 1, cfg.epochs, history["loss"][-1], val_accuracy, time.perf_counter() - start
                )
            )
    seconds = time.perf_counter() - start
    bar.close()

    test = evaluate(model, data.test, task=spec.task, input_shape=spec.input_shape, device=device)
    model = model.cpu().eval()
    parallel.stop()
    result = TrainResult(model=model, history=history, test=test, seconds=seconds, out=cfg.out)
    if not parallel.is_main:  # every process holds the same weights; one writes them
        return result
    cfg.out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), cfg.out / "weights.pt")
    (cfg.out / "history.json").write_text(json.dumps(history, indent=2))
    (cfg.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    metrics = {
        "model": cfg.model,
        "dataset": data.description,
        "classes": list(data.classes),
        "test": test,
        "train_seconds": round(seconds, 2),
    }
    (cfg.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_history(history, cfg.out / "history.png", title=f"{cfg.model} on {data.name}")
    if samples:
        (cfg.out / "samples.json").write_text(json.dumps(samples, indent=2))
    if data.info.text is not None:  # the vocabulary the weights were trained with, for export
        (cfg.out / "text_encoding.json").write_text(data.info.text.to_json())
    return result
