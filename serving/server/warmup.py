"""Model warm-up: the config's model_warmup samples, run when a model loads.

Triton's fields and meaning: each sample names its inputs with zero data, random data
(uniform in [0, 1) for floating point; zeros for integers, which are often indices that
must stay in range) or a file under the model's warmup/ directory holding one example's
raw little-endian bytes, repeated `batch_size` times. A sample that fails fails the load,
so a model whose warm-up cannot run never reports ready.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from serving.protocol.datatypes import CONFIG_TO_V2, V2_TO_NUMPY
from serving.protocol.errors import ModelLoadError
from serving.protocol.generated import model_config_pb2 as mc

__all__ = ["warm_up", "sample_inputs", "WARMUP_DIR"]

logger = logging.getLogger(__name__)

WARMUP_DIR = "warmup"


def sample_inputs(sample: mc.ModelWarmup, model_dir: Path, batched: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """The arrays one warm-up sample describes (ModelLoadError naming what is wrong)."""
    what = f"model_warmup {sample.name or '(unnamed)'!r}"
    if not batched and sample.batch_size > 1:
        raise ModelLoadError(f"{what}: batch_size {sample.batch_size}, but the model takes no batch dimension")
    rows = (max(sample.batch_size, 1),) if batched else ()
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, spec in sample.inputs.items():
        datatype = CONFIG_TO_V2.get(mc.DataType.Name(spec.data_type))
        if datatype is None or datatype == "BYTES":
            raise ModelLoadError(
                f"{what}: input {name!r} has data_type {mc.DataType.Name(spec.data_type)}; warm-up takes numeric types"
            )
        dtype = V2_TO_NUMPY[datatype]
        dims = tuple(spec.dims)
        if any(d < 0 for d in dims):
            raise ModelLoadError(f"{what}: input {name!r} dims {list(dims)} must all be given (no -1)")
        shape = rows + dims
        kind = spec.WhichOneof("input_data_type")
        if kind == "random_data" and dtype.kind == "f":
            arrays[name] = rng.random(shape, dtype=np.float64).astype(dtype)
        elif kind in ("zero_data", "random_data"):
            arrays[name] = np.zeros(shape, dtype)
        elif kind == "input_data_file":
            arrays[name] = _from_file(
                model_dir / WARMUP_DIR, spec.input_data_file, dtype, dims, rows, f"{what}: input {name!r}"
            )
        else:
            raise ModelLoadError(f"{what}: input {name!r} needs zero_data, random_data or input_data_file")
    return arrays


def _from_file(
    folder: Path, name: str, dtype: np.dtype, dims: tuple[int, ...], rows: tuple[int, ...], what: str
) -> np.ndarray:
    path = folder / name
    if path.resolve().parent != folder.resolve():
        raise ModelLoadError(
            f"{what}: input_data_file {name!r} must name a file directly in the model's {WARMUP_DIR}/ directory"
        )
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    want = math.prod(dims) * dtype.itemsize
    if len(raw) != want:
        raise ModelLoadError(f"{what}: {path.name} has {len(raw)} bytes; one example of {list(dims)} {dtype} is {want}")
    example = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(dims)
    return np.ascontiguousarray(np.broadcast_to(example, rows + dims), dtype=dtype)


def warm_up(
    samples: list[mc.ModelWarmup],
    model_dir: Path,
    batched: bool,
    run: Callable[[Mapping[str, np.ndarray]], object],
    model: str,
) -> None:
    """Run every sample `count` times through `run`; ModelLoadError if one fails."""
    if not samples:
        return
    start = time.perf_counter()
    runs = 0
    for sample in samples:
        inputs = sample_inputs(sample, model_dir, batched)
        for _ in range(max(sample.count, 1)):
            try:
                run(inputs)
            except Exception as exc:  # onnxruntime's own types, deepr's checks
                raise ModelLoadError(f"{model}: model_warmup {sample.name or '(unnamed)'!r} failed: {exc}") from None
            runs += 1
    logger.info(
        "warmed up %s: %d sample(s), %d run(s) in %.2fs", model, len(samples), runs, time.perf_counter() - start
    )
