"""A repository exported by an earlier deepr (commit f52adea, before serving/ was split into
packages and the deepr.* keys moved into one schema) still serves unchanged: the server
loads it, and the tasks read the keys it carries, locally and over gRPC.

The fixture keeps what that code wrote for two small graphs, as text: each config.pbtxt
and labels.txt as they were, and the ONNX metadata_props (metadata.json) of the MNIST
convnet's Grad-CAM graph (deepr.preprocessing, deepr.labels, deepr.layer; the config has
deepr.gradcam.layer) and of the character LSTM's step graph (deepr.charset, deepr.units).
The graphs themselves are exported here with fresh weights and given exactly those files
and metadata, so only keys, shapes and agreement between the local and the served path
are checked, not predictions."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

from serving.client import InferenceClient
from serving.server.grpc.server import serve_in_thread
from serving.server.settings import ServerSettings
from serving.tasks.gradcam import LocalGradCAM, ServedGradCAM, gradcam
from serving.tasks.text_generation import LocalStepModel, ServedStepModel, generate

FIXTURE = Path(__file__).parent / "fixtures" / "repository_f52adea"


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    """The f52adea repository: today's graphs with that commit's configs, labels and metadata."""
    from exporters import UntrainedWeightsWarning
    from exporters.text_generation import export_char_step
    from exporters.zoo_gradcam import export_gradcam

    exported = tmp_path_factory.mktemp("exported")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWeightsWarning)
        export_gradcam("mnist_convnet", exported)
        export_char_step(exported)
    repository = tmp_path_factory.mktemp("legacy") / "repository"
    shutil.copytree(FIXTURE, repository)
    for model in ("mnist_convnet_gradcam", "char_lstm_step"):
        graph = onnx.load(str(exported / model / "1" / "model.onnx"))
        del graph.metadata_props[:]
        for key, value in json.loads((FIXTURE / model / "metadata.json").read_text()).items():
            graph.metadata_props.add(key=key, value=value)
        (repository / model / "metadata.json").unlink()
        (repository / model / "1").mkdir()
        onnx.save(graph, str(repository / model / "1" / "model.onnx"))
    return repository


@pytest.fixture(scope="module")
def server_url(repository):
    with serve_in_thread(ServerSettings(repository=repository, port=0, device="cpu")) as server:
        yield f"localhost:{server.port}"


def test_every_model_of_the_old_repository_is_ready(server_url):
    with InferenceClient(server_url) as client:
        assert client.is_model_ready("mnist_convnet_gradcam") and client.is_model_ready("char_lstm_step")


def test_gradcam_reads_the_old_keys_alike_locally_and_served(repository, server_url):
    from PIL import Image

    from zoo.datasets.digits import load_digits_28x28

    pictures = [Image.fromarray(d) for d in load_digits_28x28()[0][:3]]
    local = LocalGradCAM(repository / "mnist_convnet_gradcam" / "1" / "model.onnx", device="cpu")
    assert local.layer and len(local.labels) == 10  # deepr.layer and deepr.labels from the ONNX metadata
    served = gradcam(pictures, "mnist_convnet_gradcam", url=server_url)
    with ServedGradCAM("mnist_convnet_gradcam", url=server_url) as cam:
        assert cam.layer == local.layer  # deepr.gradcam.layer, the config key of that time
    for mine, theirs in zip(local(pictures), served):
        assert mine.label == theirs.label and mine.label in local.labels  # deepr.labels from the config
        np.testing.assert_allclose(mine.heatmap, theirs.heatmap, atol=1e-5)


def test_the_step_graph_reads_the_old_charset_alike_locally_and_served(repository, server_url):
    local = LocalStepModel(repository / "char_lstm_step" / "1" / "model.onnx", device="cpu")
    with ServedStepModel("char_lstm_step", url=server_url) as served:
        assert local.charset and served.charset == local.charset and served.units == local.units
        prompt = local.charset[:5]
        mine = "".join(generate(local, prompt, 40, temperature=0.5, seed=3))
        theirs = "".join(generate(served, prompt, 40, temperature=0.5, seed=3))
    assert len(mine) == 40 and mine == theirs
