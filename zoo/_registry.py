"""The model registry: every zoo model by name, with what it needs to train and serve."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from torch import nn

__all__ = ["ModelSpec", "register_model", "get_model", "get_model_spec", "list_models"]


@dataclass(frozen=True)
class ModelSpec:
    """What the zoo knows about one registered model."""

    name: str
    builder: Callable[..., nn.Module]
    section: str
    """The tutorial section the model comes from."""
    input_shape: tuple[int | None, ...]
    """One example's shape, without the batch axis (channels first for images); None: any length."""
    dataset: str
    """Dataset the default recipe trains on; it also gives labels and preprocessing."""
    recipe: Mapping[str, Any] = field(default_factory=dict)
    """TrainConfig fields that the default recipe sets for this model."""
    task: str = "multiclass"
    """"multiclass" (softmax over classes, integer labels) or "binary" (one sigmoid probability)."""
    input_dtype: str = "float32"
    """"float32", or "int64" for token ids."""
    export: Mapping[str, Any] = field(default_factory=dict)
    """ExportConfig fields this model needs (input/output names, dynamic axes, exporter)."""
    description: str = ""
    classes: tuple[str, ...] = ()
    """The model's own class names (imported models); else its dataset's."""
    weights_included: bool = False
    """The builder loads trained weights itself (an imported Keras model)."""
    onnx_file: str = ""
    """An imported ONNX graph: no PyTorch module, the graph itself is the model (zoo.onnx)."""
    summarize: Callable[[], Any] | None = None
    """The model's summary where it has no PyTorch module to walk (an imported ONNX graph)."""

    def example_shape(self, length: int = 8) -> tuple[int, ...]:
        """input_shape with every free dimension set to `length`."""
        return tuple(length if d is None else d for d in self.input_shape)


_MODELS: dict[str, ModelSpec] = {}
TASKS = ("multiclass", "binary")


def register_model(
    name: str,
    *,
    section: str,
    input_shape: tuple[int | None, ...],
    dataset: str,
    recipe: Mapping[str, Any] | None = None,
    task: str = "multiclass",
    input_dtype: str = "float32",
    export: Mapping[str, Any] | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model builder under `name`; a name can be registered once."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if task not in TASKS:
            raise ValueError(f"{name}: task must be one of {TASKS}, got {task!r}")
        if name in _MODELS:
            raise ValueError(f"a model named {name!r} is already registered ({_MODELS[name].builder.__module__})")
        doc = (builder.__doc__ or "").strip().splitlines()
        _MODELS[name] = ModelSpec(
            name=name,
            builder=builder,
            section=section,
            input_shape=tuple(input_shape),
            dataset=dataset,
            recipe=dict(recipe or {}),
            task=task,
            input_dtype=input_dtype,
            export=dict(export or {}),
            description=doc[0] if doc else "",
        )
        return builder

    return wrap


def register_spec(spec: ModelSpec, *, replaces_imported: bool = False) -> None:
    """Register a spec made elsewhere (an imported model). With `replaces_imported`, a
    model imported before under the same name gives way; a built-in one never does."""
    existing = _MODELS.get(spec.name)
    if existing is not None and not (replaces_imported and existing.weights_included):
        raise ValueError(f"a model named {spec.name!r} is already registered ({existing.section}); choose another name")
    _MODELS[spec.name] = spec


def unregister_imported(name: str) -> None:
    """Forget an imported model (a built-in one stays)."""
    if name in _MODELS and _MODELS[name].weights_included:
        del _MODELS[name]


def get_model_spec(name: str) -> ModelSpec:
    """The registry entry for `name`; KeyError naming the known models otherwise."""
    try:
        return _MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def get_model(name: str, **options: Any) -> nn.Module:
    """Build the registered model `name` with freshly initialised weights."""
    return get_model_spec(name).builder(**options)


def list_models(include: str | Iterable[str] | None = None, exclude: str | Iterable[str] | None = None) -> list[str]:
    """Registered model names, sorted, filtered by fnmatch patterns."""

    def patterns(p: str | Iterable[str] | None) -> list[str]:
        return [p] if isinstance(p, str) else list(p or [])

    names = sorted(_MODELS)
    if include is not None:
        names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns(include))]
    return [n for n in names if not any(fnmatch.fnmatch(n, p) for p in patterns(exclude))]
