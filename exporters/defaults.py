"""The default model repository: the tutorial's MNIST models trained on embedded data, each
with the graphs that explain it (Grad-CAM and feature graphs for the convnets), so the zoo
page classifies and explains a drawn digit with no other command."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import IO, Callable, Iterator, Sequence

from zoo.datasets import SupervisedData, load_dataset
from zoo.recipes import EpochReport, TrainConfig, train

from .features import export_features
from .zoo_gradcam import export_gradcam
from .zoo_models import export_model

__all__ = [
    "DEFAULT_MODELS",
    "EXPLAINED",
    "build_default_repository",
    "build_default_models",
    "missing_default_models",
    "default_graphs",
]

logger = logging.getLogger(__name__)

DEFAULT_MODELS = ("mnist_dense", "mnist_convnet", "mnist_convnet_nopool")
"""Quickest to train first (about 1, 10 and 46 s on 2 cores): a server building them in the
background answers with the first within seconds."""

EXPLAINED = ("mnist_convnet", "mnist_convnet_nopool")
"""Default models that also get their Grad-CAM (NAME_gradcam) and feature (NAME_features)
graphs: the convnets; the dense net has no convolution to explain."""

_LOCK_POLL_SECONDS = 1.0
"""How often a process waiting for another's build looks for new graphs."""

_BUILT = ".deepr-defaults-built"
"""Written into the repository once the default build has finished, listing what it built:
what is missing from the list (new in a later release) is built on the next start; what a
user removed from the repository stays removed."""


def default_graphs(name: str) -> list[str]:
    """The graphs the default build writes for model `name`: the model, then its explanations."""
    return [name, f"{name}_gradcam", f"{name}_features"] if name in EXPLAINED else [name]


def _built(repository: Path) -> set[str] | None:
    marker = repository / _BUILT
    if not marker.is_file():
        return None
    return {line.strip() for line in marker.read_text().splitlines() if line.strip()}


def missing_default_models(repository: str | Path) -> list[str]:
    """The default models with a graph not yet built into `repository` (all of them for a new
    repository; after a finished build, only those with graphs added to the defaults since)."""
    repository = Path(repository)
    built = _built(repository)
    missing = []
    for name in DEFAULT_MODELS:
        graphs = default_graphs(name)
        if built is None and any(not (repository / g).is_dir() for g in graphs):
            missing.append(name)
        elif built is not None and any(g not in built and not (repository / g).is_dir() for g in graphs):
            missing.append(name)
    return missing


def build_default_models(
    repository: str | Path,
    names: Sequence[str] = DEFAULT_MODELS,
    *,
    runs: Path | None = None,
    progress: bool = True,
    on_built: Callable[[str], None] | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
    on_wait: Callable[[int], None] | None = None,
) -> list[dict[str, object]]:
    """Train each of `names` by its recipe and export it, then its explaining graphs, into
    `repository`, one at a time, calling `on_built(graph)` as each is in place (each version
    folder appears whole, so a server scanning the repository never sees half a model) and
    `on_epoch` after every epoch of training. One process builds a repository at a time: another
    waits (`on_wait(the builder's pid)`), is told of each graph as it appears, and then builds
    only what is still missing. A model already in the repository whose training
    run is kept only gets its missing graphs, from the same weights. Training runs are kept in
    `runs` (default `<repository>.runs/`). Returns one record per model trained: held-out
    accuracy, training seconds, parity error."""
    repository = Path(repository)
    repository.mkdir(parents=True, exist_ok=True)
    graphs = [g for name in names for g in default_graphs(name)]
    with _one_build(repository, graphs, on_built, on_wait):
        return _build(repository, names, runs, progress, on_built, on_epoch)


@contextlib.contextmanager
def _one_build(
    repository: Path,
    graphs: Sequence[str],
    on_built: Callable[[str], None] | None,
    on_wait: Callable[[int], None] | None,
) -> Iterator[None]:
    """Hold the default build of `repository` (an flock on `<repository>.build.lock`, which
    the kernel releases when its holder dies). Where another process holds it, wait, calling
    `on_wait(its pid)` once and `on_built(graph)` for each of `graphs` as it appears: two
    servers on one home serve the same models and never train one twice."""
    lock = repository.with_name(repository.name + ".build.lock").open("a+")
    try:
        if not _locked(lock):
            lock.seek(0)
            holder = int(lock.read().strip() or 0)
            logger.info(
                "another process (pid %d) is building the default models into %s: waiting for it, serving each "
                "model as it is written",
                holder,
                repository,
            )
            if on_wait is not None:
                on_wait(holder)
            waiting = [g for g in graphs if not (repository / g).is_dir()]
            while not _locked(lock, wait=_LOCK_POLL_SECONDS):
                for graph in [g for g in waiting if (repository / g).is_dir()]:
                    waiting.remove(graph)
                    if on_built is not None:
                        on_built(graph)
            for graph in [g for g in waiting if (repository / g).is_dir()]:
                if on_built is not None:
                    on_built(graph)
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        yield
    finally:
        lock.close()  # and with it the lock


def _locked(lock: IO[str], wait: float = 0.0) -> bool:
    """Take the exclusive lock on `lock`'s file: at once, or within `wait` seconds; whether it was taken."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)


def _build(
    repository: Path,
    names: Sequence[str],
    runs: Path | None,
    progress: bool,
    on_built: Callable[[str], None] | None,
    on_epoch: Callable[[EpochReport], None] | None,
) -> list[dict[str, object]]:
    runs = runs or repository.with_name(repository.name + ".runs")
    records = []
    loaded: dict[str, SupervisedData] = {}  # the default models share their dataset
    for name in names:
        weights = runs / name / "weights.pt"
        if (repository / name).is_dir():
            if not weights.is_file():
                logger.warning(
                    "%s is in %s without its training run: its explaining graphs are not built", name, repository
                )
                continue
        else:
            cfg = TrainConfig.for_model(name, out=runs / name, progress=progress)
            if cfg.data not in loaded:
                loaded[cfg.data] = load_dataset(cfg.data)
            result = train(cfg, data=loaded[cfg.data], on_epoch=on_epoch)
            exported = export_model(name, repository, weights=weights)
            records.append(
                {
                    "model": name,
                    "test_accuracy": result.test["accuracy"],
                    "train_seconds": round(result.seconds, 1),
                    "parity_max_abs_diff": exported.validation.max_abs_diff,
                }
            )
            logger.info(
                "%s: held-out accuracy %.4f after %.1fs of training; ONNX parity %.2g",
                name,
                result.test["accuracy"],
                result.seconds,
                exported.validation.max_abs_diff,
            )
            if on_built is not None:
                on_built(name)
        for graph in default_graphs(name)[1:]:
            if (repository / graph).is_dir():
                continue
            if graph.endswith("_gradcam"):
                export_gradcam(name, repository, weights=weights)
            else:
                export_features(name, repository, weights=weights)
            if on_built is not None:
                on_built(graph)
    if not missing_default_models(repository):
        graphs = [g for name in DEFAULT_MODELS for g in default_graphs(name)]
        (repository / _BUILT).write_text("\n".join(graphs) + "\n")
    return records


def build_default_repository(repository: str | Path, *, progress: bool = True) -> list[dict[str, object]]:
    """Train each default model by its recipe and export it, with its explaining graphs, into
    `repository`.

    Everything is built in a staging directory that is renamed into place at
    the end, so an interrupted build leaves no half-made repository. Training
    runs (weights, curves, metrics) are kept in `<repository>.runs/`. Returns
    one record per model: held-out accuracy, training seconds, parity error.
    """
    repository = Path(repository)
    if repository.exists():
        raise FileExistsError(f"{repository} already exists; remove it to rebuild the default models")
    repository.parent.mkdir(parents=True, exist_ok=True)
    runs = repository.with_name(repository.name + ".runs")
    staging = Path(tempfile.mkdtemp(prefix=f".{repository.name}-", dir=repository.parent))
    try:
        records = build_default_models(staging, runs=runs, progress=progress)
        os.replace(staging, repository)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return records
