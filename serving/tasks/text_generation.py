"""Sampling text from a character model, with temperature and top-k: through the whole-
generation graph (one call for every text) or the step graph (one call per character).

    texts = generate_in_one_call("the meaning of ", temperature=[0.2, 0.5, 1.0, 1.2], seed=7)
    text = sample_text("the meaning of ", model="char_lstm_step", length=400, temperature=0.5)

Every argument that describes a text (prompt, temperature, top_k, seed) takes one value or a
list, one per text: the texts are rows of the same runs. A row's text depends on its own
arguments only, so the same seed gives the same text alone or beside others.
The distribution is reweighted as the tutorial does, p_i^(1/T) / sum_j p_j^(1/T); T -> 0
approaches greedy decoding. The step path samples with numpy's seeded generator, the
generation graph with its own seeded noise. numpy and onnxruntime only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np

from serving.client import DEFAULT_URL, InferenceClient
from serving.protocol.sampling import sample_next
from serving.protocol.schema import CHARSET_KEY, RAGGED_INPUTS_KEY
from serving.tasks.graph import Graph, GraphTask, LocalGraph, ServedGraph

__all__ = [
    "StepModel",
    "GenerationGraph",
    "LocalStepModel",
    "ServedStepModel",
    "generate",
    "generate_rows",
    "TextRows",
    "generate_in_one_call",
    "sample_text",
]


T = TypeVar("T")


def _per_row(value: T | Sequence[T], rows: int) -> list[T]:
    return list(value) if isinstance(value, (list, tuple)) else [value] * rows  # type: ignore[list-item]


@dataclass(frozen=True)
class TextRows:
    """The texts of one call: prompt, temperature, top-k (None: all classes) and seed per row."""

    prompts: list[str]
    temperatures: list[float]
    top_ks: list[int | None]
    seeds: list[int | None]

    @classmethod
    def of(
        cls,
        prompt: str | Sequence[str],
        temperature: float | Sequence[float],
        top_k: int | None | Sequence[int | None],
        seed: int | None | Sequence[int | None],
    ) -> "TextRows":
        """One row per list element; single values hold for every row. Lists of different
        lengths are refused, naming them."""
        given = {
            name: len(v)
            for name, v in (("prompt", prompt), ("temperature", temperature), ("top_k", top_k), ("seed", seed))
            if isinstance(v, (list, tuple))
        }
        if len(set(given.values())) > 1:
            counts = ", ".join(f"{n} {name}s" for name, n in given.items())
            raise ValueError(f"got {counts}: give one value per text, or a single value for all of them")
        rows = next(iter(given.values()), 1)
        if rows < 1:
            raise ValueError("no texts asked for: the lists are empty")
        prompts = [prompt] * rows if isinstance(prompt, str) else list(prompt)
        return cls(prompts, _per_row(temperature, rows), _per_row(top_k, rows), _per_row(seed, rows))

    def __len__(self) -> int:
        return len(self.prompts)

    def check(self, charset: str) -> list[np.ndarray]:
        """Each prompt's character codes, after checking every row's settings."""
        for temperature in self.temperatures:
            if not temperature > 0:
                raise ValueError(f"temperature must be > 0, got {temperature}")
        for top_k in self.top_ks:
            if top_k is not None and not 1 <= top_k <= len(charset):
                raise ValueError(f"top_k must be in 1..{len(charset)}, got {top_k}")
        return [_prompt_codes(charset, prompt) for prompt in self.prompts]

    def fixed_seeds(self) -> list[int]:
        """The seeds, a fresh random one where a row has none."""
        fresh = np.random.default_rng()
        return [int(fresh.integers(0, 2**62)) if s is None else s for s in self.seeds]


class StepModel(GraphTask):
    """One step of an exported `<model>_step` graph: characters and the state in, the next
    characters' distributions and the new state out, for one row or several."""

    kind = "character step graph"
    export_hint = "deepr export char_lstm --step"

    def __init__(self, graph: Graph) -> None:
        super().__init__(graph)
        if not graph.has(CHARSET_KEY) or graph.inputs[:1] != ["char_index"]:
            raise self.refuse()
        self.charset: str = graph.fact(CHARSET_KEY)
        self.units = graph.item_shape("h")[0]

    def step(self, char_index: int, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One row: the distribution (classes,) and the state."""
        probs, h, c = self.step_rows(np.array([char_index], np.int64), h, c)
        return probs[0], h, c

    def step_rows(self, codes: np.ndarray, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows (B,) of characters: distributions (B, classes) and the state (B, units) twice."""
        out = self.graph.run({"char_index": codes.reshape(-1, 1).astype(np.int64), "h": h, "c": c})
        return out["probabilities"], out["h_out"], out["c_out"]


class LocalStepModel(StepModel):
    """An exported `<model>_step` graph run in this process."""

    def __init__(self, onnx_file: str | Path, *, device: str = "auto") -> None:
        super().__init__(LocalGraph(onnx_file, device=device, what="step graph"))


class ServedStepModel(StepModel):
    """A `<model>_step` graph on a V2 server: one request per character (all rows in it),
    state sent along; with `stream=True` the requests go over one ModelStreamInfer stream."""

    def __init__(
        self, model: str, *, url: str = DEFAULT_URL, client: InferenceClient | None = None, stream: bool = False
    ) -> None:
        super().__init__(ServedGraph(model, url=url, client=client, stream=stream))


class GenerationGraph(GraphTask):
    """An exported `<model>_generate` graph: every text in one run of its Loop."""

    kind = "generation graph"
    export_hint = "deepr export char_lstm --generate"

    def __init__(self, graph: Graph) -> None:
        super().__init__(graph)
        if not graph.has(CHARSET_KEY) or graph.inputs[:1] != ["prompt"]:
            raise self.refuse()
        self.charset: str = graph.fact(CHARSET_KEY)
        if not graph.has(RAGGED_INPUTS_KEY):
            graph.close()
            raise ValueError(
                f"{graph.name} was exported before generation graphs took rows of prompts: "
                f"export it again with `{self.export_hint}`"
            )
        self.prompt_pad = graph.fact(RAGGED_INPUTS_KEY)["prompt"]

    def __call__(
        self, prompt: str, length: int, temperature: float, top_k: int | None = None, seed: int | None = None
    ) -> str:
        return self.texts(TextRows.of(prompt, temperature, top_k, seed), length)[0]

    def texts(self, rows: TextRows, length: int) -> list[str]:
        """`length` characters after each row's prompt."""
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        codes = rows.check(self.charset)
        inputs: dict[str, np.ndarray] = {
            "prompt": np.full((len(rows), max(map(len, codes))), self.prompt_pad, np.int64),
            "length": np.full((len(rows), 1), length, np.int64),
            "temperature": np.array(rows.temperatures, np.float32).reshape(-1, 1),
            "top_k": np.array([k or 0 for k in rows.top_ks], np.int64).reshape(-1, 1),
            "seed": np.array(rows.fixed_seeds(), np.int64).reshape(-1, 1),
        }
        for row, row_codes in enumerate(codes):
            inputs["prompt"][row, : len(row_codes)] = row_codes
        chars = self.graph.run(inputs, outputs=["chars"])["chars"]
        return ["".join(self.charset[i] for i in row[:length]) for row in chars]


def generate_rows(model: StepModel, rows: TextRows, length: int) -> Iterator[list[str]]:
    """The next character of every row, `length` times, after reading the prompts into the
    state. All rows advance in one step run; shorter prompts wait (their state held) while
    longer ones are read."""
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    codes = rows.check(model.charset)
    generators = [np.random.default_rng(seed) for seed in rows.seeds]
    n = len(rows)
    h = np.zeros((n, model.units), np.float32)
    c = np.zeros((n, model.units), np.float32)
    probs = np.zeros((n, len(model.charset)), np.float32)
    for t in range(max(map(len, codes))):
        reading = np.array([t < len(row) for row in codes])
        step = np.array([row[min(t, len(row) - 1)] for row in codes], np.int64)
        new_probs, new_h, new_c = model.step_rows(step, h, c)
        probs = np.where(reading[:, None], new_probs, probs)
        h = np.where(reading[:, None], new_h, h)
        c = np.where(reading[:, None], new_c, c)
    for _ in range(length):
        step = np.array(
            [
                sample_next(p, temperature, top_k, rng)
                for p, temperature, top_k, rng in zip(probs, rows.temperatures, rows.top_ks, generators)
            ],
            np.int64,
        )
        yield [model.charset[i] for i in step]
        probs, h, c = model.step_rows(step, h, c)


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
    for chars in generate_rows(model, TextRows.of(prompt, temperature, top_k, seed), length):
        yield chars[0]


def _prompt_codes(charset: str, prompt: str) -> np.ndarray:
    index = {ch: i for i, ch in enumerate(charset)}
    codes = [index[ch] for ch in prompt.lower().replace("\t", " ") if ch in index]
    if not codes:
        raise ValueError(f"the prompt {prompt!r} has no character the model knows; it knows {charset!r}")
    return np.asarray(codes, dtype=np.int64)


def _one_or_list(texts: list[str], *arguments: object) -> str | list[str]:
    """A list when any per-text argument was a list, else the one text."""
    return texts if any(isinstance(a, (list, tuple)) for a in arguments) else texts[0]


def generate_in_one_call(
    prompt: str | Sequence[str],
    *,
    model: str = "char_lstm_generate",
    url: str = DEFAULT_URL,
    local: str | Path | None = None,
    length: int = 400,
    temperature: float | Sequence[float] = 1.0,
    top_k: int | None | Sequence[int | None] = None,
    seed: int | None | Sequence[int | None] = None,
) -> str | list[str]:
    """`length` characters per text from the Loop graph (`<model>_generate`): one request
    for every text. Lists give several texts (one per element), as rows of that request."""
    rows = TextRows.of(prompt, temperature, top_k, seed)
    graph = LocalGraph(local, what="generation graph") if local else ServedGraph(model, url=url)
    with GenerationGraph(graph) as generation:
        return _one_or_list(generation.texts(rows, length), prompt, temperature, top_k, seed)


def sample_text(
    prompt: str | Sequence[str],
    *,
    model: str = "char_lstm_step",
    url: str = DEFAULT_URL,
    local: str | Path | None = None,
    length: int = 400,
    temperature: float | Sequence[float] = 1.0,
    top_k: int | None | Sequence[int | None] = None,
    seed: int | None | Sequence[int | None] = None,
    on_char: Callable[[str], None] | None = None,
    stream: bool = False,
) -> str | list[str]:
    """`length` characters per text from a served step graph (or a local one), every text
    advanced in the same step runs; `stream` sends the steps over one gRPC stream, `on_char`
    sees each character of a single text as it comes."""
    rows = TextRows.of(prompt, temperature, top_k, seed)
    if on_char is not None and len(rows) > 1:
        raise ValueError(f"on_char follows one text; {len(rows)} were asked for")
    out: list[list[str]] = [[] for _ in range(len(rows))]
    with LocalStepModel(local) if local else ServedStepModel(model, url=url, stream=stream) as step_model:
        for chars in generate_rows(step_model, rows, length):
            for row, ch in zip(out, chars):
                row.append(ch)
            if on_char is not None:
                on_char(chars[0])  # may raise (a reader who stops): the stream is closed on the way out
    return _one_or_list(["".join(row) for row in out], prompt, temperature, top_k, seed)
