"""The character model as a step graph: one character and the LSTM state in, the next
character's distribution and the new state out, so generating a character costs one step
instead of re-reading a 60-character window."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from torch.nn import functional as F

from serving.protocol.generated import model_config_pb2 as mc
from serving.protocol.schema import (
    CHARSET_KEY,
    GENERATE_SUFFIX,
    PAD_BATCHES_KEY,
    RAGGED_INPUTS_KEY,
    STEP_SUFFIX,
    TRIM_OUTPUTS_KEY,
    encode_fact,
)
from zoo.datasets.chars import CHARSET

from .config import ExportConfig
from .errors import ToleranceError
from .pipeline import ExportResult, GraphExport, export_graph
from .repository import LABELS_FILE, add_to_repository, serving_config
from .validate import ValidationReport
from .weights import prepared_model

__all__ = ["CharStep", "export_char_generation", "export_char_step", "GENERATE_SUFFIX", "STEP_SUFFIX", "CHARSET_KEY"]


class CharStep(nn.Module):
    """char_lstm advanced by one character: (char_index (B, 1), h (B, H), c (B, H)) ->
    (probabilities (B, chars), h, c). Zero state is the start of a text."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.lstm: nn.LSTM = model.lstm  # type: ignore[assignment]  # the zoo's char_lstm has these two
        self.dense: nn.Module = model.dense  # type: ignore[assignment]

    def forward(self, char_index: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        x = F.one_hot(char_index.reshape(-1), self.lstm.input_size).to(h.dtype).unsqueeze(1)  # (B, 1, chars)
        out, (h_next, c_next) = nn.LSTM.forward(self.lstm, x, (h.unsqueeze(0), c.unsqueeze(0)))
        return self.dense(out[:, -1]), h_next[0], c_next[0]


def export_char_step(
    repository: str | Path,
    *,
    weights: str | Path | None = None,
    name: str = "char_lstm",
    max_batch_size: int = 64,
    version: int | None = None,
) -> ExportResult:
    """Add `<name>_step` to `repository`, checked against PyTorch at batch 1 and 5."""
    start = time.perf_counter()
    model = prepared_model(name, weights, what="step graph", consequence="its text is noise")
    step = CharStep(model).eval()
    units = step.lstm.hidden_size
    rng = np.random.default_rng(0)
    cases = [
        (
            rng.integers(0, len(CHARSET), (b, 1)),
            rng.normal(0, 0.5, (b, units)).astype(np.float32),
            rng.normal(0, 0.5, (b, units)).astype(np.float32),
        )
        for b in (1, 5)
    ]
    config = ExportConfig(
        input_names=("char_index", "h", "c"),
        output_names=("probabilities", "h_out", "c_out"),
        dynamic_axes=((0,), (0,), (0,)),
        max_batch_size=max_batch_size,
        validation_batch_sizes=(1, 5),
    )
    step_name = name + STEP_SUFFIX
    model_config = serving_config(step_name, max_batch_size)
    model_config.input.add(name="char_index", data_type=mc.TYPE_INT64, dims=[1])
    for state in ("h", "c"):
        model_config.input.add(name=state, data_type=mc.TYPE_FP32, dims=[units])
    model_config.output.add(
        name="probabilities", data_type=mc.TYPE_FP32, dims=[len(CHARSET)], label_filename=LABELS_FILE
    )
    for state in ("h_out", "c_out"):
        model_config.output.add(name=state, data_type=mc.TYPE_FP32, dims=[units])
    example = tuple(torch.from_numpy(a[:2] if len(a) > 1 else np.repeat(a, 2, axis=0)) for a in cases[1])
    metadata = {"model": step_name, "charset": CHARSET, "units": units}
    graph = GraphExport(model_config, step, example, config, cases, metadata, labels=tuple(CHARSET))
    return export_graph(graph, repository, version=version, started=start)


def export_char_generation(
    repository: str | Path,
    *,
    weights: str | Path | None = None,
    name: str = "char_lstm",
    max_batch_size: int = 64,
    version: int | None = None,
) -> ExportResult:
    """Add `<name>_generate` (the batched Loop graph: prompts in, sampled texts out) to `repository`.

    The graph is checked against the PyTorch model stepped one character at a time (CharStep,
    what the step graph exports): its per-step distributions on the characters it produced,
    for rows of different prompt lengths in one batch.
    The server merges concurrent requests into one run: prompts of different lengths are
    padded (RAGGED_INPUTS_KEY) and each request's texts cut to its own length (TRIM_OUTPUTS_KEY).
    """
    from .generation_graph import PROMPT_PAD, CharLstmWeights, build_generation_graph

    start = time.perf_counter()
    model = prepared_model(name, weights, what="generation graph", consequence="its text is noise")
    loop = build_generation_graph(CharLstmWeights.from_modules(model.lstm, model.dense))
    batching = {
        RAGGED_INPUTS_KEY: encode_fact({"prompt": PROMPT_PAD}),
        TRIM_OUTPUTS_KEY: encode_fact({"chars": "length", "probabilities": "length"}),
    }
    for key, value in {"deepr.model": name + GENERATE_SUFFIX, CHARSET_KEY: CHARSET, **batching}.items():
        entry = loop.metadata_props.add()
        entry.key, entry.value = key, value
    worst = _check_loop_against_model(loop, model)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = Path(tmp) / "model.onnx"
        onnx.save(loop, onnx_file)
        model_config = serving_config(name + GENERATE_SUFFIX, max_batch_size)
        # Loop runs cost their rows and steps, not a new shape: merge whatever is queued.
        model_config.parameters[PAD_BATCHES_KEY].string_value = "false"
        model_config.input.add(name="prompt", data_type=mc.TYPE_INT64, dims=[-1])
        for input_name, data_type in (
            ("length", mc.TYPE_INT64),
            ("temperature", mc.TYPE_FP32),
            ("top_k", mc.TYPE_INT64),
            ("seed", mc.TYPE_INT64),
        ):
            model_config.input.add(name=input_name, data_type=data_type, dims=[1])
        model_config.output.add(name="chars", data_type=mc.TYPE_INT64, dims=[-1])
        model_config.output.add(name="probabilities", data_type=mc.TYPE_FP32, dims=[-1, len(CHARSET)])
        for key, value in {CHARSET_KEY: CHARSET, **batching}.items():
            model_config.parameters[key].string_value = value
        version_dir = add_to_repository(Path(repository), model_config, onnx_file, version=version)
    report = ValidationReport(((60,),), worst, worst, 1e-5, 0.0)
    return ExportResult(name + GENERATE_SUFFIX, version_dir, report, time.perf_counter() - start)


def _check_loop_against_model(loop: onnx.ModelProto, model: nn.Module, length: int = 40) -> float:
    """Largest difference between the loop's distributions and the PyTorch model's, stepped one
    character at a time, for two rows of different prompt lengths (one padded) run together."""
    import onnxruntime as ort

    from zoo.datasets.chars import encode_text

    from .generation_graph import PROMPT_PAD

    session = ort.InferenceSession(loop.SerializeToString(), providers=["CPUExecutionProvider"])
    prompts = [encode_text("return the first item of the sequence, or raise an error if "), encode_text("the ")]
    padded = np.full((len(prompts), max(map(len, prompts))), PROMPT_PAD, np.int64)
    for row, codes in enumerate(prompts):
        padded[row, : len(codes)] = codes
    chars, probs = session.run(
        None,
        {
            "prompt": padded,
            "length": np.array([[length], [length]]),
            "temperature": np.array([[0.8], [1.2]], np.float32),
            "top_k": np.array([[0], [5]]),
            "seed": np.array([[1], [2]]),
        },
    )
    step = CharStep(model).eval()
    worst = 0.0
    with torch.no_grad():
        for row, prompt in enumerate(prompts):
            h = torch.zeros(1, step.lstm.hidden_size)
            c = torch.zeros_like(h)
            for position, code in enumerate(np.concatenate([prompt, chars[row, :-1]])):
                p, h, c = step(torch.tensor([[int(code)]]), h, c)
                if position >= len(prompt) - 1:
                    got = probs[row, position - len(prompt) + 1]
                    worst = max(worst, float(np.abs(p[0].numpy() - got).max()))
    if worst > 1e-5:
        raise ToleranceError(
            [f"loop graph vs PyTorch: max |diff| {worst:.3g} of the per-step distributions exceeds 1e-5"]
        )
    return worst
