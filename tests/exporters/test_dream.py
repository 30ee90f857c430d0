"""DeepDream: the exported loss and gradient follow the picture's size and equal PyTorch's,
and the ascent raises the loss in every octave, in-process and through the server alike."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

import zoo
from conftest import TEST_DEVICE
from exporters import UntrainedWeightsWarning
from exporters.dream import DreamObjective, export_dream
from serving.client import InferenceClient
from serving.server.grpc.server import serve_in_thread
from serving.server.settings import ServerSettings
from serving.tasks.dream import LocalDreamLoss, ServedDreamLoss, dream

OPTIONS = {"include_top": False, "input_shape": (96, 96, 3)}
# Four layers, as many as the default mixed2..mixed5, ending at the block that halves the size
# (odd sizes go through it), and 30 of the base's convolutions rather than 50: tracing the
# gradient of each one is what the export spends its time on.
LAYERS = ("mixed0", "mixed1", "mixed2", "mixed3")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    repo = tmp_path_factory.mktemp("dream")
    torch.manual_seed(0)
    model = zoo.get_model("inception_v3", **OPTIONS).eval()
    torch.save(model.state_dict(), repo.parent / "inception.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWeightsWarning)
        result = export_dream(
            "inception_v3", repo, layers=LAYERS, weights=repo.parent / "inception.pt", options=OPTIONS
        )
    return repo, model, result


def photo(width: int = 220) -> Image.Image:
    picture = Image.fromarray(data.astronaut())
    return picture.resize((width, round(width * picture.height / picture.width)))


# Odd, even and non-square sizes. (Where a max pool's window holds equal values, often the
# zeros after a ReLU, onnxruntime and PyTorch may send the gradient to different ones of
# them: both are gradients of the same loss, and for some inputs they differ over a patch.)
@pytest.mark.parametrize("size", [(96, 96), (121, 121), (130, 170)])
def test_loss_and_gradient_equal_pytorch_at_any_size(exported, size):
    _, model, result = exported
    loss = LocalDreamLoss(result.version_dir / "model.onnx", device=TEST_DEVICE)
    images = np.random.default_rng(2).random((2, 3, *size), dtype=np.float32)
    coefficients = np.array([[0.2, 3, 2, 1.5], [1, 0, 0, 0]], np.float32)
    value, gradient = loss(images, coefficients)
    want_value, want_gradient = DreamObjective(model, loss.layers)(
        torch.from_numpy(images), torch.from_numpy(coefficients)
    )
    np.testing.assert_allclose(value, want_value.detach().numpy().reshape(-1), rtol=1e-4)
    assert gradient.shape == images.shape
    assert np.abs(gradient - want_gradient.numpy()).max() <= 1e-3 * float(want_gradient.abs().max())


def test_every_octave_raises_the_loss_in_process_and_served(exported):
    repo, _, result = exported
    settings = {"octaves": 3, "steps": 4, "step": 0.01, "max_loss": 1e9}
    local = dream(LocalDreamLoss(result.version_dir / "model.onnx", device=TEST_DEVICE), photo(), **settings)
    assert local.shapes == [(112, 112), (157, 157), (220, 220)]
    for history in local.losses:
        assert history[-1] > history[0], history
    assert local.picture.size == (220, 220)
    with serve_in_thread(
        ServerSettings(repository=repo, host="127.0.0.1", port=0, device=TEST_DEVICE, metrics_port=-1)
    ) as server:
        with InferenceClient(f"127.0.0.1:{server.port}") as client:
            served = dream(ServedDreamLoss("inception_v3_dream", client=client), photo(), **settings)
    np.testing.assert_allclose(np.array(served.losses), np.array(local.losses), rtol=1e-3)


def test_dream_command(exported, tmp_path, capsys):
    from deepr.cli import main

    _, _, result = exported
    photo(160).save(tmp_path / "photo.png")
    code = main(
        [
            "dream",
            str(tmp_path / "photo.png"),
            "--local",
            str(result.version_dir / "model.onnx"),
            "--octaves",
            "2",
            "--steps",
            "2",
            "--coefficients",
            "mixed1=1,mixed3=2",
            "--out",
            str(tmp_path / "dream.png"),
        ]
    )
    assert code == 0
    with Image.open(tmp_path / "dream.png") as dreamt:
        assert dreamt.size == (160, 160)
    assert "octave 160x160: loss" in capsys.readouterr().out
    assert (
        main(
            [
                "dream",
                str(tmp_path / "photo.png"),
                "--local",
                str(result.version_dir / "model.onnx"),
                "--coefficients",
                "mixed9=1",
            ]
        )
        == 2
    )
