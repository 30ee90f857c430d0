"""Style transfer: the exported loss and gradient equal PyTorch's, and L-BFGS driving the
graph lowers the loss at every iteration, in-process and through the server alike."""

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
from exporters.style import StyleObjective, export_style
from serving.client import InferenceClient
from serving.server.grpc.server import serve_in_thread
from serving.server.settings import ServerSettings
from serving.tasks.style import LocalStyleLoss, ServedStyleLoss, transfer_style

OPTIONS = {"include_top": False, "input_shape": (48, 48, 3)}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    repo = tmp_path_factory.mktemp("style")
    torch.manual_seed(0)
    model = zoo.get_model("vgg19", **OPTIONS).eval()
    torch.save(model.state_dict(), repo.parent / "vgg19.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWeightsWarning)
        result = export_style("vgg19", repo, weights=repo.parent / "vgg19.pt", options=OPTIONS)
    return repo, model, result


def pictures():
    return Image.fromarray(data.chelsea()), Image.fromarray(data.coffee())


def test_loss_and_gradient_equal_pytorch(exported):
    _, model, result = exported
    loss = LocalStyleLoss(result.version_dir / "model.onnx", device=TEST_DEVICE)
    rng = np.random.default_rng(1)
    combination, content, style = (rng.normal(size=(2, 3, 48, 48)).astype(np.float32) for _ in range(3))
    value, gradient = loss(combination, content, style)
    want_value, want_gradient = StyleObjective(model)(*(torch.from_numpy(a) for a in (combination, content, style)))
    np.testing.assert_allclose(value, want_value.detach().numpy().reshape(-1), rtol=1e-4)
    assert np.abs(gradient - want_gradient.numpy()).max() <= 1e-3 * float(want_gradient.abs().max())


def test_lbfgs_lowers_the_loss_in_process_and_served(exported):
    repo, _, result = exported
    content, style = pictures()
    local = transfer_style(
        LocalStyleLoss(result.version_dir / "model.onnx", device=TEST_DEVICE), content, style, iterations=3
    )
    assert all(b < a for a, b in zip(local.losses, local.losses[1:])), local.losses
    assert local.picture.size == (48, 48)
    with serve_in_thread(
        ServerSettings(repository=repo, host="127.0.0.1", port=0, device=TEST_DEVICE, metrics_port=-1)
    ) as server:
        with InferenceClient(f"127.0.0.1:{server.port}") as client:
            served = transfer_style(ServedStyleLoss("vgg19_style", client=client), content, style, iterations=3)
    np.testing.assert_allclose(served.losses, local.losses, rtol=1e-3)


def test_style_command(exported, tmp_path, capsys):
    from deepr.cli import main

    _, _, result = exported
    content, style = pictures()
    content.save(tmp_path / "content.png")
    style.save(tmp_path / "style.png")
    code = main(
        [
            "style",
            str(tmp_path / "content.png"),
            str(tmp_path / "style.png"),
            "--local",
            str(result.version_dir / "model.onnx"),
            "--iterations",
            "2",
            "--out",
            str(tmp_path / "styled.png"),
        ]
    )
    assert code == 0
    with Image.open(tmp_path / "styled.png") as styled:
        assert styled.size == (48, 48)
    assert "iteration 2/2: loss" in capsys.readouterr().out
