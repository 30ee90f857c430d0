"""The batch sizes a dynamically batched model runs merged requests at, warmed at load.

onnxruntime's first run at a new batch size is 1.5-3x slower per row than the runs after
it (memory planning, kernel choice), and a batcher that merges whatever is queued keeps
producing sizes it has never run. So merged runs take one of a few sizes: the config's
`preferred_batch_size` (merging stops at the largest; serving/server/batch_profile.py measures
where it stops paying), else powers of two and `max_batch_size`. Each is run with zero
data when the model loads (twice, the second run timed), within a time budget; the
timings let the batcher choose between padding a merged run up to the next size and
running fewer requests at a smaller one (see BatchingPolicy.plan).

Config parameters: `deepr.pad_batches` "false" lets merged runs take any size (nothing
is warmed beyond model_warmup); `deepr.warmup_budget_seconds` bounds the warm-up
(default 10): sizes it does not reach are not used for merged runs.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Mapping

import numpy as np

from serving.protocol.generated import model_config_pb2 as mc
from serving.protocol.schema import PAD_BATCHES_KEY, WARMUP_BUDGET_KEY
from serving.server.batch_profile import candidate_sizes

__all__ = ["run_sizes", "warm_run_sizes", "PAD_BATCHES_KEY", "WARMUP_BUDGET_KEY", "DEFAULT_BUDGET_S"]

logger = logging.getLogger(__name__)

DEFAULT_BUDGET_S = 10.0


def run_sizes(config: mc.ModelConfig) -> tuple[int, ...]:
    """The sizes merged runs of this model take; () for free sizes or no dynamic batching."""
    if config.max_batch_size <= 0 or not config.HasField("dynamic_batching"):
        return ()
    padding = config.parameters.get(PAD_BATCHES_KEY)
    if padding is not None and padding.string_value.lower() in ("false", "0", "no"):
        return ()
    limit = config.max_batch_size
    preferred = {s for s in config.dynamic_batching.preferred_batch_size if 0 < s <= limit}
    return tuple(sorted(preferred)) if preferred else candidate_sizes(limit)


def _budget(config: mc.ModelConfig) -> float:
    param = config.parameters.get(WARMUP_BUDGET_KEY)
    try:
        return float(param.string_value) if param is not None else DEFAULT_BUDGET_S
    except ValueError:
        return DEFAULT_BUDGET_S


def warm_run_sizes(
    config: mc.ModelConfig,
    example: Callable[[int], Mapping[str, np.ndarray] | None],
    run: Callable[[Mapping[str, np.ndarray]], object],
    model: str,
) -> dict[int, float]:
    """Run each of the config's run sizes twice with `example(size)` (zero inputs; None
    when the inputs have free dimensions), smallest first, while the time budget lasts.
    Returns {size: seconds of its second run}; {} where nothing can be warmed."""
    sizes = run_sizes(config)
    if not sizes or example(1) is None:
        return {}
    budget = _budget(config)
    start = time.perf_counter()
    seconds: dict[int, float] = {}
    for size in sizes:
        if seconds:
            last = max(seconds)
            expected = 2 * seconds[last] * size / last  # runs cost about their rows
            if time.perf_counter() - start + expected > budget:
                break
        inputs = example(size) or {}  # not None: size 1 had fixed dimensions
        run(inputs)
        began = time.perf_counter()
        run(inputs)
        seconds[size] = time.perf_counter() - began
    cold = [s for s in sizes if s not in seconds]
    logger.info(
        "warmed %s at batch sizes %s in %.2fs%s",
        model,
        sorted(seconds),
        time.perf_counter() - start,
        f"; over the {budget:g} s budget, merged runs stay below {cold[0]}" if cold else "",
    )
    return seconds
