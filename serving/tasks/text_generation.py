"""Sampling text from a served character model's step graph, with temperature and top-k.

    text = sample_text("the meaning of ", model="char_lstm_step", url="localhost:8001",
                       length=400, temperature=0.5, seed=7)

The distribution is reweighted as the tutorial does, p_i^(1/T) / sum_j p_j^(1/T); T -> 0
approaches greedy decoding. Sampling uses numpy's seeded generator, so the same seed gives
the same text on any run. numpy and onnxruntime only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from serving.client import DEFAULT_URL, InferenceClient
from serving.protocol.sampling import sample_next
from serving.protocol.schema import CHARSET_KEY
from serving.tasks.graph import Graph, GraphTask, LocalGraph, ServedGraph

__all__ = [
    "StepModel",
    "GenerationGraph",
    "LocalStepModel",
    "ServedStepModel",
    "generate",
    "generate_in_one_call",
    "sample_text",
]


class StepModel(GraphTask):
    """One step of an exported `<model>_step` graph: a character and the state in, the next
    character's distribution and the new state out."""

    kind = "character step graph"
    export_hint = "deepr export char_lstm --step"

    def __init__(self, graph: Graph) -> None:
        super().__init__(graph)
        if not graph.has(CHARSET_KEY) or graph.inputs[:1] != ["char_index"]:
            raise self.refuse()
        self.charset: str = graph.fact(CHARSET_KEY)
        self.units = graph.item_shape("h")[0]

    def step(self, char_index: int, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = self.graph.run({"char_index": np.array([[char_index]], np.int64), "h": h, "c": c})
        return out["probabilities"][0], out["h_out"], out["c_out"]


class LocalStepModel(StepModel):
    """An exported `<model>_step` graph run in this process."""

    def __init__(self, onnx_file: str | Path, *, device: str = "auto") -> None:
        super().__init__(LocalGraph(onnx_file, device=device, what="step graph"))


class ServedStepModel(StepModel):
    """A `<model>_step` graph on a V2 server: one request per character, state sent along;
    with `stream=True` the requests go over one ModelStreamInfer stream."""

    def __init__(
        self, model: str, *, url: str = DEFAULT_URL, client: InferenceClient | None = None, stream: bool = False
    ) -> None:
        super().__init__(ServedGraph(model, url=url, client=client, stream=stream))


class GenerationGraph(GraphTask):
    """An exported `<model>_generate` graph: the whole text in one run of its Loop."""

    kind = "generation graph"
    export_hint = "deepr export char_lstm --generate"

    def __init__(self, graph: Graph) -> None:
        super().__init__(graph)
        if not graph.has(CHARSET_KEY) or graph.inputs[:1] != ["prompt"]:
            raise self.refuse()
        self.charset: str = graph.fact(CHARSET_KEY)

    def __call__(
        self, prompt: str, length: int, temperature: float, top_k: int | None = None, seed: int | None = None
    ) -> str:
        inputs = _loop_inputs(self.charset, prompt, length, temperature, top_k, seed)
        chars = self.graph.run(inputs, outputs=["chars"])["chars"]
        return "".join(self.charset[i] for i in chars)


def generate(
    model: StepModel,
    prompt: str,
    length: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
) -> Iterator[str]:
    """Characters one at a time, after reading `prompt` into the state."""
    codes = _prompt_codes(model.charset, prompt)
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    rng = np.random.default_rng(seed)
    h = np.zeros((1, model.units), np.float32)
    c = np.zeros((1, model.units), np.float32)
    for code in codes:
        probs, h, c = model.step(code, h, c)
    for _ in range(length):
        code = sample_next(probs, temperature, top_k, rng)
        yield model.charset[code]
        probs, h, c = model.step(code, h, c)


def _prompt_codes(charset: str, prompt: str) -> np.ndarray:
    index = {ch: i for i, ch in enumerate(charset)}
    codes = [index[ch] for ch in prompt.lower().replace("\t", " ") if ch in index]
    if not codes:
        raise ValueError(f"the prompt {prompt!r} has no character the model knows; it knows {charset!r}")
    return np.asarray(codes, dtype=np.int64)


def _loop_inputs(
    charset: str, prompt: str, length: int, temperature: float, top_k: int | None, seed: int | None
) -> dict[str, np.ndarray]:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if top_k is not None and not 1 <= top_k <= len(charset):
        raise ValueError(f"top_k must be in 1..{len(charset)}, got {top_k}")
    if seed is None:
        seed = int(np.random.default_rng().integers(0, 2**62))
    return {
        "prompt": _prompt_codes(charset, prompt),
        "length": np.array([length], np.int64),
        "temperature": np.array([temperature], np.float32),
        "top_k": np.array([top_k or 0], np.int64),
        "seed": np.array([seed], np.int64),
    }


def generate_in_one_call(
    prompt: str,
    *,
    model: str = "char_lstm_generate",
    url: str = DEFAULT_URL,
    local: str | Path | None = None,
    length: int = 400,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
) -> str:
    """`length` characters from the Loop graph (`<model>_generate`): one request for the whole text."""
    graph = LocalGraph(local, what="generation graph") if local else ServedGraph(model, url=url)
    with GenerationGraph(graph) as generation:
        return generation(prompt, length, temperature, top_k, seed)


def sample_text(
    prompt: str,
    *,
    model: str = "char_lstm_step",
    url: str = DEFAULT_URL,
    local: str | Path | None = None,
    length: int = 400,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    on_char: Callable[[str], None] | None = None,
    stream: bool = False,
) -> str:
    """`length` characters after `prompt`, from a served step graph (or a local one);
    `stream` sends the steps over one gRPC stream, `on_char` sees each character as it comes."""
    out = []
    with LocalStepModel(local) if local else ServedStepModel(model, url=url, stream=stream) as step_model:
        for ch in generate(step_model, prompt, length, temperature=temperature, top_k=top_k, seed=seed):
            out.append(ch)
            if on_char is not None:
                on_char(ch)  # may raise (a reader who stops): the stream is closed on the way out
    return "".join(out)
