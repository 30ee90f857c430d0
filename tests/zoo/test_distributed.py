"""`deepr train` under torchrun with two processes (gloo on the CPU) gives the weights and
history one process gives for the same global batch and seed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from zoo.recipes.distributed import Distributed

# Two processes average two half-batch gradients where one process takes one whole-batch
# gradient: equal up to float32 rounding (about 1e-8 here). With SGD that rounding stays at
# its size. (RMSprop, the default recipe's optimizer, divides each update by the root of its
# running squared gradient, which magnifies the rounding where gradients are near zero: after
# one epoch its largest weight differences were about 3e-3 of a layer's largest weight, the
# median ones about 1e-7.)
WEIGHT_TOLERANCE = 1e-5
HISTORY_TOLERANCE = 1e-5


def train(out, *launcher: str):
    command = [
        *launcher,
        "-m",
        "deepr",
        "train",
        "mnist_convnet",
        "--data",
        "sklearn_digits",  # few steps: float32 rounding has little room to grow
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--device",
        "cpu",
        "--seed",
        "3",
        "--optimizer",
        "sgd",
        "--lr",
        "0.05",
        "--out",
        str(out),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1", **_env()}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out / "weights.pt", weights_only=True), json.loads((out / "history.json").read_text())


def _env():
    import os

    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    single, single_history = train(tmp_path / "one", sys.executable)
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    double, double_history = train(tmp_path / "two", *launcher)
    assert single.keys() == double.keys()
    for name in single:
        difference = (single[name] - double[name]).abs()
        scale = single[name].abs().max().item()
        assert difference.max().item() <= WEIGHT_TOLERANCE * scale, name
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert double_history[key] == pytest.approx(single_history[key], rel=HISTORY_TOLERANCE), key
    assert (tmp_path / "two" / "history.png").stat().st_size > 0


def test_slices_cover_each_batch_once_with_weights_that_restore_the_mean():
    x, y = torch.arange(13.0).unsqueeze(1), torch.arange(13)
    parts = [Distributed(rank=r, world_size=3).shard(x, y) for r in range(3)]
    assert torch.cat([p[0] for p in parts]).squeeze(1).tolist() == x.squeeze(1).tolist()
    # The mean of each slice times its factor, averaged over the processes, is the batch mean.
    assert sum(p[0].mean() * p[2] for p in parts) / 3 == pytest.approx(x.mean().item())
    assert Distributed().shard(x, y)[2] == 1.0 and not Distributed().enabled
