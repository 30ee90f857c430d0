"""A deepr repository written as the python-backend repository Triton serves it from.

Each ONNX model becomes a python-backend model of the same name, config and versions: its
config is completed from the graph as deepr completes it (Triton's python backend cannot read
a graph), platform "onnxruntime_onnx" becomes backend "python", and each version folder holds
a one-line model.py that imports serving/triton_engine/python_model.py. The ONNX files are not
copied: the plan beside each config names them where they are, so external weights stay
beside their graph. Labels and warm-up files are linked. Ensembles are Triton's own and are
written as they are.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import onnxruntime as ort

from serving.protocol.errors import ModelLoadError
from serving.protocol.generated import model_config_pb2 as mc
from serving.protocol.model_config import CONFIG_FILE, config_text, parse_config, read_config_text
from serving.runtime.sessions import usable_cores
from serving.server.autocomplete import CompletionPolicy, complete_config
from serving.server.model import RuntimeOptions
from serving.server.repository import MODEL_FILE, is_model_folder, version_numbers
from serving.triton_engine import PLAN_FILE

__all__ = ["translate_repository", "complete_from_graph", "EngineOptions", "ENSEMBLE_PLATFORM"]

logger = logging.getLogger("deepr.triton_engine")

ENSEMBLE_PLATFORM = "ensemble"

_SHIM = (
    '"""deepr\'s runtime as a Triton python-backend model (serving/triton_engine/python_model.py)."""\n'
    "from serving.triton_engine.python_model import TritonPythonModel  # noqa: F401\n"
)


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """What every translated model runs with (from the server's settings)."""

    runtime: RuntimeOptions
    completion: CompletionPolicy
    max_picture_pixels: int
    instances: int = 1
    """Processes per model instance group entry (`--workers`): Triton runs each instance of a
    python-backend model in a process of its own."""


def complete_from_graph(config: mc.ModelConfig, graph: Path, policy: CompletionPolicy) -> None:
    """Fill what the config leaves out from the graph, as deepr's own server does at load."""
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    complete_config(config, session.get_inputs(), session.get_outputs(), policy)


def _triton_config(config: mc.ModelConfig, instances: int) -> mc.ModelConfig:
    """`config` for Triton's python backend: deepr's runtime loads the graph and runs its own
    warm-up, so Triton's model file name and warm-up are left out; instances run on CPU
    threads of Triton's (onnxruntime inside picks the device)."""
    out = mc.ModelConfig()
    out.CopyFrom(config)
    out.platform = ""
    out.backend = "python"
    out.ClearField("default_model_filename")
    out.ClearField("model_warmup")
    if not out.instance_group:
        out.instance_group.add(count=1)
    for group in out.instance_group:
        group.kind = mc.ModelInstanceGroup.KIND_CPU
        group.count = max(group.count, 1) * instances
        del group.gpus[:]
    return out


def _link_extras(source: Path, target: Path) -> None:
    """Labels, warm-up data and whatever else the model folder holds beside its versions."""
    for entry in source.iterdir():
        if entry.name == CONFIG_FILE or entry.name.isdigit() or entry.name.startswith("."):
            continue
        os.symlink(entry.resolve(), target / entry.name)


def _translate_model(name: str, source: Path, target: Path, options: EngineOptions, single: bool) -> None:
    text = read_config_text(source) if not single else None
    config = parse_config(text, source, name) if text is not None else mc.ModelConfig(name=name)
    target.mkdir(parents=True)
    if config.platform == ENSEMBLE_PLATFORM:
        (target / CONFIG_FILE).write_text(config_text(config))
        for version in _versions_of_ensemble(source):
            (target / version).mkdir()
        _link_extras(source, target)
        return
    filename = config.default_model_filename or MODEL_FILE
    files = (
        {"1": source / filename}
        if single
        else {str(v): source / str(v) / filename for v in version_numbers(source, filename)}
    )
    if not files:
        raise ModelLoadError(f"{source} has no version directory holding {filename} (expected {name}/1/{filename})")
    complete_from_graph(config, files[max(files, key=int)], options.completion)
    instances = sum(max(g.count, 1) for g in config.instance_group) or 1
    runtime = options.runtime
    if not runtime.intra_op_threads:
        # each instance is a process with its own session: the cores are shared out
        threads = max(1, usable_cores() // (instances * options.instances))
        runtime = dataclasses.replace(runtime, intra_op_threads=threads)
    (target / CONFIG_FILE).write_text(config_text(_triton_config(config, options.instances)))
    for version in files:
        (target / version).mkdir()
        (target / version / "model.py").write_text(_SHIM)
    plan = {
        "source": str(source.resolve()),
        "files": {v: str(p.resolve()) for v, p in files.items()},
        "runtime": dataclasses.asdict(runtime),
        "completion": dataclasses.asdict(options.completion),
        "max_picture_pixels": options.max_picture_pixels,
    }
    (target / PLAN_FILE).write_text(json.dumps(plan, indent=1))
    if not single:
        _link_extras(source, target)


def _versions_of_ensemble(source: Path) -> list[str]:
    """An ensemble's version folders (empty ones, as Triton has them); version 1 without any."""
    return sorted((p.name for p in source.iterdir() if p.is_dir() and p.name.isdigit()), key=int) or ["1"]


def _as_it_is(source: Path, target: Path, single: bool) -> None:
    """A folder deepr cannot translate, linked as it is: Triton loads it if it can (a backend
    of its own), and otherwise lists it UNAVAILABLE with its own reason."""
    import shutil

    shutil.rmtree(target, ignore_errors=True)
    if not single:
        os.symlink(source.resolve(), target)


def translate_repository(source: Path, target: Path, options: EngineOptions, model_name: str = "") -> dict[str, str]:
    """Write `source` (a deepr repository, or the folder of one model) as Triton's python-backend
    repository at `target`; each model's name with "" where it runs on deepr's runtime, else
    the reason it does not (that folder is linked as it is, for Triton to judge)."""
    target.mkdir(parents=True, exist_ok=True)
    results: dict[str, str] = {}
    if (source / MODEL_FILE).is_file():  # the files of one model
        models = {model_name or source.resolve().name: (source, True)}
    else:
        models = {p.name: (p, False) for p in sorted(source.iterdir()) if is_model_folder(p)}
    for name, (folder, single) in models.items():
        try:
            _translate_model(name, folder, target / name, options, single)
            results[name] = ""
        except Exception as exc:  # one bad folder must not stop the others from being served
            logger.error("%s cannot run on deepr's runtime: %s", name, exc)
            results[name] = str(exc)
            _as_it_is(folder, target / name, single)
    return results
