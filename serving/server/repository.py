"""A model repository on disk, in Triton's layout, and the models loaded from it.

    <root>/<model>/config.pbtxt              (optional: completed from the graph when absent)
    <root>/<model>/<version>/model.onnx      (version: a positive integer)
    <root>/<model>/labels.txt                (optional; named by an output's label_filename)

or one model's own files, as KServe hands them over for `modelFormat: onnx`:

    <root>/model.onnx                        (served as version 1 of one model)
    <root>/config.pbtxt                      (optional)

A model that fails to load is kept as UNAVAILABLE with the reason, and the
others serve.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from serving.protocol.errors import InvalidInput, ModelLoadError, ModelNotFound, ModelNotReady, ServingError
from serving.protocol.generated import model_config_pb2 as mc
from serving.protocol.labels import read_labels
from serving.protocol.model_config import CONFIG_FILE, parse_config, read_config_text
from serving.runtime.providers import cuda_usable
from serving.server.autocomplete import CompletionPolicy
from serving.server.config_support import review_config
from serving.server.ensemble import ENSEMBLE_PLATFORM, EnsembleModel
from serving.server.load_override import PreparedOverride
from serving.server.model import OnnxModel, RuntimeOptions

__all__ = [
    "ModelRepository",
    "ModelEntry",
    "READY",
    "UNAVAILABLE",
    "LOADING",
    "UNLOADED",
    "NOT_LOADED",
    "is_model_folder",
    "MODEL_FILE",
    "check_version",
]

logger = logging.getLogger(__name__)

READY = "READY"
UNAVAILABLE = "UNAVAILABLE"
LOADING = "LOADING"
"""A model the server is still making (its default models, trained while it serves)."""
UNLOADED = "unloaded by request"
NOT_LOADED = "not loaded: the server started without it (load it on request)"
_CLOCK_SLACK_NS = 50_000_000
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}$")
"""One path component of at most NAME_MAX (255) bytes."""


MODEL_FILE = "model.onnx"
"""The graph's file in a version folder, unless the config names another (default_model_filename)."""


def _has_a_version(path: Path) -> bool:
    try:
        return any(p.name.isdigit() and (p / MODEL_FILE).is_file() for p in path.iterdir())
    except OSError:
        return False


def _not_a_model(path: Path) -> str | None:
    """Why a folder of the repository is not served ("" for what is not worth a word:
    files, hidden folders), or None for a model folder: one with a config.pbtxt, or a
    version folder holding model.onnx (its config is completed from the graph)."""
    if path.name.startswith(".") or not path.is_dir():
        return ""
    if not _MODEL_NAME.match(path.name):
        return (
            f"{_shown(path.name)} is not a model name: 1 to 255 ASCII letters, digits, '_', '.' and '-', "
            "not starting with '.' or '-'"
        )
    if not (path / CONFIG_FILE).is_file() and not _has_a_version(path):
        return (
            f"no {CONFIG_FILE} in it and no version folder holding {MODEL_FILE} (expected {path.name}/1/{MODEL_FILE})"
        )
    return None


def is_model_folder(path: Path) -> bool:
    """Whether a folder of a repository is served as a model."""
    return _not_a_model(path) is None


def check_version(version: str) -> None:
    """Refuse a version that is not a positive integer, in Triton's words (InvalidInput)."""
    if not (version.isascii() and version.isdigit() and int(version) > 0):
        raise InvalidInput(
            f"failed to get model version from specified version string {_shown(version)}: "
            "version should be an integral value > 0"
        )


def _shown(name: str, limit: int = 80) -> str:
    """A name as messages quote it: a hostile 5,000-character name is cut, not echoed."""
    return repr(name) if len(name) <= limit else f"{name[:limit]!r}... ({len(name)} characters)"


def _inside(folder: Path, relative: str, what: str) -> Path:
    """`folder / relative`, refused if it resolves (through '..' or symbolic links) outside
    `folder`: a config must not make the server read files that are not its model's."""
    path = folder / relative
    if not path.resolve().is_relative_to(folder.resolve()):
        raise ModelLoadError(f"{what} {relative!r} points outside the model's folder {folder}")
    return path


@dataclass
class ModelEntry:
    """What the repository holds for one model name."""

    name: str
    state: str
    reason: str = ""
    config: mc.ModelConfig | None = None
    versions: dict[str, OnnxModel] = field(default_factory=dict)
    """Loaded versions by version string."""
    labels: dict[str, list[str]] = field(default_factory=dict)
    """Class labels by output name."""
    loaded_ns: int = field(default_factory=lambda: time.time_ns() - _CLOCK_SLACK_NS)
    """When the files were read (wall clock, a little early: files record coarser times)."""

    @property
    def latest(self) -> OnnxModel:
        return self.versions[max(self.versions, key=int)]


def _labels(name: str, model_dir: Path, config: mc.ModelConfig) -> dict[str, list[str]]:
    """Class labels by output name, from the files the outputs' label_filename name."""
    labels = {}
    for output in config.output:
        if output.label_filename:
            path = _inside(model_dir, output.label_filename, f"output {output.name!r}: label_filename")
            try:
                labels[output.name] = read_labels(path)
            except OSError as exc:
                raise ModelLoadError(f"{name}: cannot read labels {path}: {exc.strerror or exc}") from None
    return labels


def version_numbers(model_dir: Path, filename: str) -> list[int]:
    """The version folders of `model_dir` that hold `filename` (which may not leave them), in order."""
    return sorted(
        int(p.name)
        for p in model_dir.iterdir()
        if p.name.isdigit()
        and int(p.name) > 0
        and _inside(model_dir, f"{p.name}/{filename}", "default_model_filename").is_file()
    )


def _chosen_versions(config: mc.ModelConfig, available: list[int]) -> list[int]:
    policy = config.version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return available
    if choice == "specific":
        return [v for v in available if v in set(policy.specific.versions)]
    latest = policy.latest.num_versions if choice == "latest" else 1
    return sorted(available)[-max(latest, 1) :]


class ModelRepository:
    def __init__(
        self,
        root: str | Path,
        runtime: RuntimeOptions = RuntimeOptions(),
        completion: CompletionPolicy = CompletionPolicy(),
        model_name: str = "",
    ) -> None:
        """`model_name`: what a repository that is one model's own files (KServe's layout,
        model.onnx at the top) serves it as; default: the folder's name."""
        self.root = Path(root)
        self.runtime = runtime
        self.completion = completion
        self.single = (self.root / MODEL_FILE).is_file()
        """The root is one model's own files, not a folder of models."""
        self.single_name = model_name or self.root.resolve().name
        if self.single and not _MODEL_NAME.match(self.single_name):
            raise ModelLoadError(
                f"{self.root} holds {MODEL_FILE} itself, served as one model named after the folder, but "
                f"{_shown(self.single_name)} is not a model name: give one with --model-name"
            )
        self._models: dict[str, ModelEntry] = {}
        self._lock = threading.Lock()
        self._skipped: dict[str, str] = {}
        """Folders of the repository that are not models, with the reason last logged."""

    def model_names(self) -> list[str]:
        """Model directories on disk (those holding a config.pbtxt). Every other folder is
        logged once with the reason it is not served (again if the reason changes)."""
        if not self.root.is_dir():
            raise ModelLoadError(f"model repository {self.root} does not exist or is not a directory")
        if self.single:
            return [self.single_name]
        names = []
        for path in sorted(self.root.iterdir()):
            reason = _not_a_model(path)
            if reason is None:
                names.append(path.name)
                self._skipped.pop(path.name, None)
            elif reason and self._skipped.get(path.name) != reason:
                self._skipped[path.name] = reason
                logger.warning("%s is not served: %s", path, reason)
        return names

    def load_all(self) -> None:
        for name in self.model_names():
            self.load(name)

    def load_some(self, names: list[str]) -> None:
        """Load `names` (each must be in the repository: ModelNotFound names the first that is
        not), and list every other model of the repository as not loaded."""
        on_disk = self.model_names()
        missing = [n for n in names if n not in on_disk]
        if missing:
            raise ModelNotFound(
                f"failed to load {_shown(missing[0])}: no such model in repository {self.root}; it has {on_disk}"
            )
        for name in on_disk:
            if name in names:
                self.load(name)
            else:
                with self._lock:
                    self._models[name] = ModelEntry(name, UNAVAILABLE, reason=NOT_LOADED)

    def load(self, name: str, override: PreparedOverride | None = None) -> ModelEntry:
        """(Re)load `name` from disk, or from what a load request sent (`override`); a model
        that fails to load is kept as UNAVAILABLE with the reason. The new entry replaces the
        old one only once built."""
        model_dir = self._model_dir(name, override)
        try:
            entry = self._build(name, model_dir, override)
        except ServingError as exc:
            logger.error("model %s is unavailable: %s", name, exc)
            entry = ModelEntry(name, UNAVAILABLE, reason=str(exc))
        except Exception as exc:  # whatever else its files do, the other models serve
            logger.error("model %s is unavailable: %s", name, exc, exc_info=logger.isEnabledFor(logging.DEBUG))
            entry = ModelEntry(name, UNAVAILABLE, reason=f"{model_dir}: {type(exc).__name__}: {exc}")
        with self._lock:
            self._models[name] = entry
        return entry

    def reload(self, name: str, override: PreparedOverride | None = None) -> ModelEntry:
        """Like load, for a request to load: if the new model fails while an older one is
        serving, the older one goes on serving and the error is raised."""
        with self._lock:
            previous = self._models.get(name)
        if previous is None or previous.state != READY:
            entry = self.load(name, override)
            if entry.state != READY:
                raise ModelLoadError(f"failed to load {name!r}: {entry.reason}")
            return entry
        model_dir = self._model_dir(name, override)
        try:
            entry = self._build(name, model_dir, override)
        except ServingError as exc:  # Triton's words first, as for a model that was not loaded
            raise type(exc)(f"failed to load {name!r}: {exc}") from None
        except Exception as exc:
            raise ModelLoadError(f"failed to load {name!r}: {model_dir}: {type(exc).__name__}: {exc}") from None
        with self._lock:
            self._models[name] = entry
        logger.info("model %s reloaded: versions %s", name, sorted(entry.versions, key=int))
        return entry

    def _model_dir(self, name: str, override: PreparedOverride | None = None) -> Path:
        # Names are single path components: no separators, no leading dot, so a request
        # can never reach outside the repository directory.
        if not _MODEL_NAME.match(name):
            raise InvalidInput(
                f"failed to load {_shown(name)}: it is not a model name: 1 to 255 letters, digits, '_', '.' and '-', "
                "not starting with '.' or '-'"
            )
        if override is not None and override.folder is not None:
            return override.folder  # the files the request sent
        if self.single:
            if name != self.single_name:
                raise ModelNotFound(
                    f"failed to load {name!r}: {self.root} is the files of one model, {self.single_name!r}"
                )
            return self.root
        model_dir = self.root / name
        reason = _not_a_model(model_dir) if model_dir.is_dir() else "no such folder"
        if reason is not None:
            # "failed to load" first: Triton's words, which its clients look for
            raise ModelNotFound(
                f"failed to load {name!r}: no model {name!r} in repository {self.root} "
                f"({reason or 'not a model folder'})"
            )
        return model_dir

    def _build(self, name: str, model_dir: Path, override: PreparedOverride | None = None) -> ModelEntry:
        entry = ModelEntry(name, READY)  # stamped before reading: a file written meanwhile is newer
        text = override.config_text if override is not None else read_config_text(model_dir)
        if text is not None:  # judged first: protobuf's lenient parser cannot skip every Triton field
            cuda = self.runtime.device != "cpu" and cuda_usable()[0]
            for warning in review_config(text, model_dir, cuda):
                logger.warning("%s: %s", name, warning)
        config = parse_config(text, model_dir, name) if text is not None else mc.ModelConfig(name=name)
        if config.platform == ENSEMBLE_PLATFORM or config.HasField("ensemble_scheduling"):
            return self._ensemble(entry, model_dir, config)
        filename = config.default_model_filename or MODEL_FILE
        # files a load request sent are in the repository's layout, version folders included
        single = self.single and (override is None or override.folder is None)
        if single:
            if not _inside(model_dir, filename, "default_model_filename").is_file():
                raise ModelLoadError(f"{model_dir} has no {filename}")
            available = [1]
        else:
            available = version_numbers(model_dir, filename)
        if not available:
            raise ModelLoadError(
                f"{model_dir} has no version directory holding {filename} (expected {name}/1/{filename})"
            )
        versions = {}
        for v in _chosen_versions(config, available):
            path = model_dir / filename if single else model_dir / str(v) / filename
            model = OnnxModel(name, str(v), path, config, self.runtime, self.completion)
            model.load()
            versions[str(v)] = model
        if not versions:
            raise ModelLoadError(f"{name}: the version policy selects none of the versions on disk {available}")
        entry.config, entry.versions, entry.labels = config, versions, _labels(name, model_dir, config)
        return entry

    def _ensemble(self, entry: ModelEntry, model_dir: Path, config: mc.ModelConfig) -> ModelEntry:
        """An ensemble's entry: its version folders (empty, as Triton has them; version 1
        without any), each the same pipeline of the repository's models."""
        if config.platform != ENSEMBLE_PLATFORM or not config.HasField("ensemble_scheduling"):
            raise ModelLoadError(
                f'{entry.name}: an ensemble needs both platform "ensemble" and ensemble_scheduling; the config '
                f"has platform {config.platform!r} and {'an' if config.HasField('ensemble_scheduling') else 'no'} "
                "ensemble_scheduling"
            )
        on_disk = [] if self.single else [int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and p.is_dir()]
        chosen = _chosen_versions(config, sorted(v for v in on_disk if v > 0) or [1])
        entry.config, entry.labels = config, _labels(entry.name, model_dir, config)
        entry.versions = {str(v): EnsembleModel(entry.name, str(v), config) for v in chosen}  # type: ignore[misc]
        return entry

    def expect(self, names: list[str], state: str, reason: str) -> None:
        """List `names`, not in the repository yet, as `state` with `reason` (models being
        built, or that failed to build), so the index and their errors say why they do not serve."""
        with self._lock:
            for name in names:
                if name not in self._models or self._models[name].state != READY:
                    self._models[name] = ModelEntry(name, state, reason=reason)

    def unload(self, name: str, *, forget: bool = False) -> None:
        """Stop serving `name`; the index keeps it as unloaded, or drops it with `forget`
        (its folder is gone)."""
        with self._lock:
            entry = self._models.get(name)
            if entry is None:
                raise ModelNotFound(f"model {_shown(name)} is not loaded")
            if forget:
                del self._models[name]
            else:
                self._models[name] = ModelEntry(name, UNAVAILABLE, reason=UNLOADED)

    def is_current(self, model: OnnxModel) -> bool:
        """Whether `model` is still the loaded object for its name and version."""
        with self._lock:
            entry = self._models.get(model.name)
        return entry is not None and entry.versions.get(model.version) is model

    def entries(self) -> list[ModelEntry]:
        with self._lock:
            return [self._models[n] for n in sorted(self._models)]

    def entry(self, name: str) -> ModelEntry:
        with self._lock:
            entry = self._models.get(name)
        if entry is None:
            served = sorted(self._models) or "no models"
            if _MODEL_NAME.match(name) and not self.single and is_model_folder(self.root / name):
                raise ModelNotFound(
                    f"Request for unknown model: {_shown(name)} is not found: it is in the repository but not "
                    f"loaded (added after the server started?); load it with `deepr load {name}` or the "
                    f"RepositoryModelLoad call; served: {served}"
                )
            # Triton's words first: its clients (and NVIDIA's examples) look for them
            raise ModelNotFound(f"Request for unknown model: {_shown(name)} is not found; the repository has {served}")
        return entry

    def get(self, name: str, version: str = "") -> OnnxModel:
        """The ready model `name` at `version` ("" for the latest loaded one)."""
        entry = self.entry(name)
        if entry.state != READY:
            raise ModelNotReady(f"model {name!r} is not ready: {entry.reason}")
        if not version:
            return entry.latest
        model = entry.versions.get(version)
        if model is None:
            check_version(version)
            raise ModelNotFound(
                f"Request for unknown model: {name!r} version {version} is not found; loaded versions: "
                f"{sorted(entry.versions, key=int)}"
            )
        return model
