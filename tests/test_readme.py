"""The README's Python blocks run as written: each in a fresh interpreter, in a folder
holding what they name (digit.png, cat.jpg, a `models` repository with mnist_convnet,
a trained imdb_lstm and vgg16_features), against a server on that repository."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TEST_DEVICE
from serving.server.grpc.server import serve_in_thread
from serving.server.settings import ServerSettings

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[tuple[int, str]]:
    """(line number, code) of each ```python block, those inside list items too."""
    text = README.read_text()
    return [
        (text.count("\n", 0, m.start()) + 1, textwrap.dedent(m.group(2)))
        for m in re.finditer(r"^( *)```python\n(.*?)^\1```", text, re.DOTALL | re.MULTILINE)
    ]


BLOCKS = python_blocks()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, repository, digits):
    from exporters import UntrainedWeightsWarning, export_model
    from exporters.features import export_features
    from exporters.text_generation import export_char_generation, export_char_step
    from zoo.recipes import TrainConfig, train

    folder = tmp_path_factory.mktemp("readme")
    models = folder / "models"
    shutil.copytree(repository, models)
    lstm = train(TrainConfig.for_model("imdb_lstm", out=folder / "runs" / "lstm", epochs=1, progress=False))
    export_model("imdb_lstm", models, weights=lstm.out / "weights.pt")  # a word model needs its run's vocabulary
    with warnings.catch_warnings():
        # Fresh weights: the blocks are run, not judged (the README's vgg16 export names
        # weights=imagenet, which needs torchvision's file in TORCH_HOME).
        warnings.simplefilter("ignore", UntrainedWeightsWarning)
        export_features(
            "vgg16",
            models,
            layers=["block1_conv1", "block3_conv1", "block5_pool"],
            options={"include_top": False, "input_shape": (150, 150, 3)},
        )
        export_char_step(models)
        export_char_generation(models)
    seven = next(x for x, y in digits.test if y == 7)[0].numpy()  # a held-out digit, light on dark
    Image.fromarray((seven * 255).astype(np.uint8)).resize((112, 112)).save(folder / "digit.png")
    from skimage import data

    Image.fromarray(data.chelsea()).save(folder / "cat.jpg")
    settings = ServerSettings(repository=models, host="127.0.0.1", port=0, device=TEST_DEVICE)
    with serve_in_thread(settings) as server:
        yield folder, f"127.0.0.1:{server.port}"


@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"line{line}" for line, _ in BLOCKS])
def test_python_block_runs_as_written(workspace, line, code):
    folder, url = workspace
    result = subprocess.run(
        [sys.executable, "-c", code.replace("localhost:8001", url)],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"README.md line {line}:\n{code}\n{result.stderr[-3000:]}"


def test_the_blocks_are_found():
    assert len(BLOCKS) >= 3 and all("import" in code for _, code in BLOCKS)
