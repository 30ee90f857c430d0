"""Filter patterns: the exported input gradients equal PyTorch autograd, gradient ascent
raises each live filter's mean activation at every step, and the served graph gives what
the in-process one gives."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import zoo
from conftest import TEST_DEVICE
from exporters import UntrainedWeightsWarning
from exporters.filters import FilterObjective, export_filters
from serving.client import InferenceClient
from serving.server.grpc.server import serve_in_thread
from serving.server.settings import ServerSettings
from serving.tasks.filters import LocalFilterGradients, ServedFilterGradients, ascend, filter_grid

OPTIONS = {"include_top": False, "input_shape": (48, 48, 3)}
LAYERS = ["block1_conv1", "block3_conv1"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    repo = tmp_path_factory.mktemp("filters")
    torch.manual_seed(0)
    model = zoo.get_model("vgg16", **OPTIONS).eval()
    torch.save(model.state_dict(), repo.parent / "vgg16.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWeightsWarning)
        result = export_filters("vgg16", repo, layers=LAYERS, weights=repo.parent / "vgg16.pt", options=OPTIONS)
    return repo, model, result


def test_input_gradients_equal_pytorch_autograd(exported):
    _, model, result = exported
    gradients = LocalFilterGradients(result.version_dir / "model.onnx", device=TEST_DEVICE)
    assert gradients.layers == LAYERS and gradients.channels == {"block1_conv1": 64, "block3_conv1": 256}
    images = np.random.default_rng(3).normal(size=(3, 3, 48, 48)).astype(np.float32)
    filters = np.array([0, 7, 63])
    for layer in LAYERS:
        loss, gradient = gradients(images, filters, layer)
        x = torch.from_numpy(images).requires_grad_(True)
        activation = FilterObjective(model, [layer]).extractor(x)[layer]
        want_loss = activation[torch.arange(3), torch.from_numpy(filters)].mean(dim=(1, 2))
        (want_gradient,) = torch.autograd.grad(want_loss.sum(), x)
        np.testing.assert_allclose(loss, want_loss.detach().numpy(), rtol=1e-4, atol=1e-7)
        scale = float(want_gradient.abs().max())
        assert np.abs(gradient - want_gradient.numpy()).max() <= 1e-4 * scale, layer


def test_ascent_raises_every_live_filter_at_every_step(exported):
    _, _, result = exported
    gradients = LocalFilterGradients(result.version_dir / "model.onnx", device=TEST_DEVICE)
    for layer in LAYERS:
        run = ascend(gradients, layer, range(12), steps=40)
        gains = np.diff(run.losses, axis=0)  # (40, 12)
        live = run.losses[0] > 0  # a filter dead on the start picture has no gradient to follow
        assert live.sum() >= 6, layer  # fresh weights leave some filters dead on a grey picture
        assert (gains[:, live] > 0).all(), layer
        assert (run.losses[:, ~live] == 0).all(), layer
        grid = filter_grid(run.pictures, columns=4)
        assert grid.size == (4 * 48 + 3 * 4, 3 * 48 + 2 * 4)


def test_served_ascent_equals_in_process(exported):
    repo, _, result = exported
    local = ascend(
        LocalFilterGradients(result.version_dir / "model.onnx", device=TEST_DEVICE), "block1_conv1", range(4), steps=5
    )
    with serve_in_thread(
        ServerSettings(repository=repo, host="127.0.0.1", port=0, device=TEST_DEVICE, metrics_port=-1)
    ) as server:
        with InferenceClient(f"127.0.0.1:{server.port}") as client:
            served = ascend(ServedFilterGradients("vgg16_filters", client=client), "block1_conv1", range(4), steps=5)
        assert list(server.dataplane.model("vgg16_filters")._pruned) == [
            frozenset({"block1_conv1.loss", "block1_conv1.gradient"})
        ]
    np.testing.assert_allclose(served.losses, local.losses, rtol=1e-5)
    np.testing.assert_allclose(served.inputs, local.inputs, rtol=1e-4, atol=1e-5)


def test_filters_command_writes_grids(exported, tmp_path, capsys):
    from deepr.cli import main

    _, _, result = exported
    code = main(
        [
            "filters",
            "--local",
            str(result.version_dir / "model.onnx"),
            "--layers",
            "block1_conv1",
            "--filters",
            "4",
            "--steps",
            "3",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0 and (tmp_path / "block1_conv1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "block1_conv1: filters 0..3, mean activation" in capsys.readouterr().out
    with pytest.raises(ValueError, match="vgg16 has no convolutional layer block1_pool"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWeightsWarning)
        export_filters("vgg16", tmp_path / "repo", layers=["block1_pool"], options=OPTIONS)


def test_one_channel_models_ascend_too(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWeightsWarning)
        result = export_filters("mnist_convnet", tmp_path)
    gradients = LocalFilterGradients(result.version_dir / "model.onnx", device=TEST_DEVICE)
    assert gradients.layers == ["conv2d", "conv2d_1", "conv2d_2"]  # small nets: every convolution
    run = ascend(gradients, "conv2d", range(4), steps=3)
    assert run.inputs.shape == (4, 1, 28, 28) and run.pictures[0].mode == "L"
