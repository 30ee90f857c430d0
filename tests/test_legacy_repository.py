"""A repository exported by an earlier deepr (commit f52adea, before serving/ was split into
packages and the deepr.* keys moved into one schema) still serves unchanged: the server
loads it, and the tasks read the keys it carries, locally and over gRPC.

The fixture holds two small graphs that earlier code wrote: the MNIST convnet's Grad-CAM
graph (deepr.preprocessing, deepr.labels, deepr.gradcam.layer in the config; the same
facts in the ONNX metadata) and the character LSTM's step graph (deepr.charset in both).
Weights are freshly initialised, so keys, shapes and agreement between the local and the
served path are checked, not predictions."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from serving.client import InferenceClient
from serving.server.grpc.server import serve_in_thread
from serving.server.settings import ServerSettings
from serving.tasks.gradcam import LocalGradCAM, gradcam
from serving.tasks.text_generation import LocalStepModel, ServedStepModel, generate

FIXTURE = Path(__file__).parent / "fixtures" / "repository_f52adea"


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    repository = tmp_path_factory.mktemp("legacy") / "repository"
    shutil.copytree(FIXTURE, repository)
    with serve_in_thread(ServerSettings(repository=repository, port=0, device="cpu")) as server:
        yield f"localhost:{server.port}"


def test_every_model_of_the_old_repository_is_ready(server_url):
    with InferenceClient(server_url) as client:
        assert client.is_model_ready("mnist_convnet_gradcam") and client.is_model_ready("char_lstm_step")


def test_gradcam_reads_the_old_keys_alike_locally_and_served(server_url):
    from PIL import Image

    from zoo.datasets.digits import load_digits_28x28

    pictures = [Image.fromarray(d) for d in load_digits_28x28()[0][:3]]
    local = LocalGradCAM(FIXTURE / "mnist_convnet_gradcam" / "1" / "model.onnx", device="cpu")
    assert local.layer and len(local.labels) == 10  # deepr.layer and deepr.labels from the ONNX metadata
    served = gradcam(pictures, "mnist_convnet_gradcam", url=server_url)
    for mine, theirs in zip(local(pictures), served):
        assert mine.label == theirs.label and mine.label in local.labels  # deepr.labels from the config
        np.testing.assert_allclose(mine.heatmap, theirs.heatmap, atol=1e-5)


def test_the_step_graph_reads_the_old_charset_alike_locally_and_served(server_url):
    local = LocalStepModel(FIXTURE / "char_lstm_step" / "1" / "model.onnx", device="cpu")
    with ServedStepModel("char_lstm_step", url=server_url) as served:
        assert local.charset and served.charset == local.charset and served.units == local.units
        prompt = local.charset[:5]
        mine = "".join(generate(local, prompt, 40, temperature=0.5, seed=3))
        theirs = "".join(generate(served, prompt, 40, temperature=0.5, seed=3))
    assert len(mine) == 40 and mine == theirs
