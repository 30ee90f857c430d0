"""Ensembles (Triton's `platform: "ensemble"`): one served name for a pipeline of the
repository's models, steps wired by tensor name as `ensemble_scheduling` says.

A request's inputs are checked against the ensemble's config; each step then runs as its
model runs for any request, through that model's own batcher, so a step is merged with
every other request for the same model, whether it came through the ensemble or not.
Steps whose inputs are all at hand run together; an output is handed on as it is, so a
step model must take the datatype the step before it gives (Triton's rule too). A failing
step fails the request, naming the step and its model.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Mapping, Sequence

import numpy as np

from serving.protocol.codecs import TensorSpec
from serving.protocol.datatypes import CONFIG_TO_V2
from serving.protocol.errors import ModelLoadError, ServingError
from serving.protocol.generated import model_config_pb2 as mc
from serving.server.model import checked_batch

__all__ = ["EnsembleModel", "ENSEMBLE_PLATFORM", "StepFailed"]

ENSEMBLE_PLATFORM = "ensemble"


class StepFailed(ServingError):
    """A step of an ensemble failed; the status is the step's own."""

    def __init__(self, message: str, code: object) -> None:
        super().__init__(message)
        self.code = code  # type: ignore[assignment]


def _specs(name: str, entries: Sequence, batched: bool, kind: str) -> list[TensorSpec]:
    specs = []
    for entry in entries:
        datatype = CONFIG_TO_V2.get(mc.DataType.Name(entry.data_type))
        if datatype is None:
            raise ModelLoadError(f"ensemble {name}: {kind} {entry.name!r} has no datatype deepr serves")
        if not entry.dims:
            raise ModelLoadError(f"ensemble {name}: {kind} {entry.name!r} gives no dims")
        specs.append(TensorSpec(entry.name, datatype, ((-1,) if batched else ()) + tuple(entry.dims)))
    return specs


@dataclass(eq=False)
class EnsembleModel:
    """What the dataplane serves for an ensemble's name: its config's inputs and outputs, and
    the steps between them."""

    name: str
    version: str
    config: mc.ModelConfig
    inputs: list[TensorSpec] = field(init=False)
    outputs: list[TensorSpec] = field(init=False)
    text_inputs: tuple[str, ...] = ()
    encoded_input: None = None
    graph_shapes: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        batched = self.config.max_batch_size > 0
        self.inputs = _specs(self.name, self.config.input, batched, "input")
        self.outputs = _specs(self.name, self.config.output, batched, "output")
        self._check_wiring()

    @property
    def max_batch_size(self) -> int:
        return self.config.max_batch_size

    @property
    def steps(self) -> Sequence[mc.ModelEnsembling.Step]:
        return self.config.ensemble_scheduling.step

    def _check_wiring(self) -> None:
        """Every step input comes from the ensemble's inputs or an earlier step's output, no
        tensor is made twice, and every ensemble output is made (ModelLoadError otherwise)."""
        if not self.steps:
            raise ModelLoadError(f"ensemble {self.name}: ensemble_scheduling has no step")
        made = {s.name for s in self.inputs}
        pending = list(enumerate(self.steps, 1))
        while pending:
            ready = [(i, s) for i, s in pending if set(s.input_map.values()) <= made]
            if not ready:
                i, step = pending[0]
                missing = sorted(set(step.input_map.values()) - made)
                raise ModelLoadError(
                    f"ensemble {self.name}: step {i} ({step.model_name!r}) takes {missing}, which neither the "
                    "ensemble's inputs nor any step's outputs provide"
                )
            for i, step in ready:
                if not step.model_name or step.model_name == self.name:
                    named = "the ensemble itself" if step.model_name else "no model"
                    raise ModelLoadError(f"ensemble {self.name}: step {i} names {named}")
                twice = sorted(set(step.output_map.values()) & made)
                if twice:
                    raise ModelLoadError(f"ensemble {self.name}: step {i} makes {twice} again")
                made |= set(step.output_map.values())
                pending.remove((i, step))
        unmade = sorted({s.name for s in self.outputs} - made)
        if unmade:
            raise ModelLoadError(f"ensemble {self.name}: no step makes the output(s) {unmade}")

    def check_batch(self, inputs: Mapping[str, np.ndarray]) -> int:
        return checked_batch(self.name, self.max_batch_size, inputs)

    async def run(
        self,
        inputs: Mapping[str, np.ndarray],
        wanted: Sequence[str],
        step: Callable[[str, str, dict[str, np.ndarray], list[str]], Awaitable[dict[str, np.ndarray]]],
    ) -> dict[str, np.ndarray]:
        """The ensemble's `wanted` outputs: `step(model, version, inputs, outputs)` runs one
        step's model (through its batcher); steps whose inputs are at hand run together."""
        tensors: dict[str, np.ndarray] = dict(inputs)
        pending = list(enumerate(self.steps, 1))

        async def one(i: int, s: mc.ModelEnsembling.Step) -> None:
            version = str(s.model_version) if s.model_version > 0 else ""
            feed = {model_input: tensors[tensor] for model_input, tensor in s.input_map.items()}
            try:
                made = await step(s.model_name, version, feed, list(s.output_map))
            except ServingError as exc:
                raise StepFailed(f"ensemble {self.name!r} step {i} (model {s.model_name!r}): {exc}", exc.code) from None
            for model_output, tensor in s.output_map.items():
                tensors[tensor] = made[model_output]

        while pending:
            ready = [(i, s) for i, s in pending if all(t in tensors for t in s.input_map.values())]
            await asyncio.gather(*(one(i, s) for i, s in ready))
            pending = [p for p in pending if p not in ready]
        return {name: tensors[name] for name in (wanted or [s.name for s in self.outputs])}
