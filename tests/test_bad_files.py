"""Bad files given to the command line and the in-process APIs: one clear line and exit
code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from serving.tasks.gradcam import LocalGradCAM
from serving.tasks.text_generation import LocalStepModel
from zoo.recipes import load_weights


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, repository):
    folder = tmp_path_factory.mktemp("bad")
    onnx_bytes = (repository / "mnist_convnet" / "1" / "model.onnx").read_bytes()
    (folder / "truncated.onnx").write_bytes(onnx_bytes[: len(onnx_bytes) // 3])
    (folder / "text.png").write_text("not a picture")
    (folder / "garbage.pt").write_bytes(b"\x80\x04garbage")
    torch.save({"not": "a state dict of this model"}, folder / "other.pt")
    torch.save(torch.nn.Linear(2, 2), folder / "pickled_module.pt")  # a pickled object: never unpickled
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(folder / "digit.png")
    return folder


def deepr(*args: str):
    return subprocess.run([sys.executable, "-m", "deepr", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["gradcam", "--local", "{bad}/truncated.onnx", "{bad}/digit.png", "--out", "{bad}/x.png"],
            "onnxruntime cannot load",
        ),
        (
            ["gradcam", "--local", "{bad}/truncated.onnx", "{bad}/text.png", "--out", "{bad}/x.png"],
            "is not an image Pillow can read",
        ),
        (["sample", "--local", "{bad}/truncated.onnx", "--prompt", "hi", "--length", "3"], "onnxruntime cannot load"),
        (["sample", "--local", "{bad}/absent.onnx", "--prompt", "hi"], "no generation graph at"),
        (["evaluate", "mnist_convnet", "--weights", "{bad}/garbage.pt"], "is not a weights file deepr reads"),
        (
            ["export", "mnist_convnet", "--weights", "{bad}/pickled_module.pt", "--repository", "{bad}/repo"],
            "never pickled objects",
        ),
        (["export", "mnist_convnet", "--weights", "{bad}/other.pt", "--repository", "{bad}/repo"], "does not fit"),
        (
            ["export", "mnist_convnet", "--weights", "{bad}/absent.pt", "--repository", "{bad}/repo"],
            "no weights file at",
        ),
    ],
)
def test_cli_bad_files(bad_files, args, message):
    result = deepr(*(a.format(bad=bad_files) for a in args))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (bad_files / "repo").exists()  # nothing half-written


def test_in_process_apis_name_the_bad_file(bad_files):
    with pytest.raises(ValueError, match="onnxruntime cannot load .*truncated.onnx"):
        LocalGradCAM(bad_files / "truncated.onnx")
    with pytest.raises(ValueError, match="onnxruntime cannot load"):
        LocalStepModel(bad_files / "truncated.onnx")
    with pytest.raises(ValueError, match="pickled_module.pt is not a weights file"):
        load_weights(torch.nn.Linear(2, 2), bad_files / "pickled_module.pt")


def test_prompts_keep_only_characters_the_model_knows():
    from serving.tasks.text_generation import _prompt_codes
    from zoo.datasets.chars import CHARSET

    assert "".join(CHARSET[i] for i in _prompt_codes(CHARSET, "Héllo ☃\tWörld")) == "hllo  wrld"
    with pytest.raises(ValueError, match="has no character the model knows"):
        _prompt_codes(CHARSET, "☃☃")
