"""uint8 pixel graphs: the preprocessing inside the graph, a quarter of the bytes per request."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch

from conftest import TEST_DEVICE
from exporters import ExportError, UntrainedWeightsWarning, export_model
from exporters.pixels import PixelInput
from serving.protocol.generated import model_config_pb2 as mc
from serving.protocol.model_config import read_config
from serving.protocol.preprocessing import ImagePreprocessing
from serving.protocol.schema import PREPROCESSING_KEY
from serving.server.grpc.server import serve_in_thread
from serving.server.settings import ServerSettings
from serving.tasks.classify import classify


@pytest.fixture(scope="module")
def pixel_repository(tmp_path_factory, trained_convnet):
    repo = tmp_path_factory.mktemp("pixels")
    weights = trained_convnet.out / "weights.pt"
    export_model("mnist_convnet", repo, weights=weights)
    result = export_model("mnist_convnet", repo, weights=weights, pixels="uint8")
    assert result.name == "mnist_convnet_uint8"
    return repo


def session(repo, name) -> ort.InferenceSession:
    return ort.InferenceSession(str(repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])


def held_out_pictures(digits, n=200) -> np.ndarray:
    return (digits.test.tensors[0][:n, 0].numpy() * 255).round().astype(np.uint8)


def test_config_describes_pixels(pixel_repository):
    config = read_config(pixel_repository / "mnist_convnet_uint8")
    image = config.input[0]
    assert (image.data_type, image.format, list(image.dims)) == (mc.TYPE_UINT8, mc.ModelInput.FORMAT_NHWC, [28, 28, 1])
    preprocessing = json.loads(config.parameters[PREPROCESSING_KEY].string_value)
    assert preprocessing["pixels"] == "uint8" and preprocessing["layout"] == "NHWC"
    assert session(pixel_repository, "mnist_convnet_uint8").get_inputs()[0].type == "tensor(uint8)"


def test_pixel_graph_equals_float_graph_on_held_out_digits(pixel_repository, digits):
    pictures = held_out_pictures(digits)
    float_input = ImagePreprocessing(size=(28, 28))(list(pictures))
    expected = session(pixel_repository, "mnist_convnet").run(None, {"images": float_input})[0]
    got = session(pixel_repository, "mnist_convnet_uint8").run(None, {"images": pictures[..., None]})[0]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    labels = digits.test.tensors[1][:200].numpy()
    assert (got.argmax(1) == labels).mean() >= 0.9  # the trained model, held-out digits
    assert pictures[..., None].nbytes * 4 == float_input.nbytes


def test_classify_reads_the_pixel_form_from_the_config(pixel_repository, digits):
    pictures = list(held_out_pictures(digits, 12))
    settings = ServerSettings(
        repository=pixel_repository, host="127.0.0.1", port=0, device=TEST_DEVICE, metrics_port=-1
    )
    with serve_in_thread(settings) as server:
        url = f"127.0.0.1:{server.port}"
        as_floats = classify(pictures, "mnist_convnet", url=url, top_k=2)
        as_pixels = classify(pictures, "mnist_convnet_uint8", url=url, top_k=2)
    assert [[p.label for p in r] for r in as_pixels] == [[p.label for p in r] for r in as_floats]
    for a, b in zip(as_pixels, as_floats):
        np.testing.assert_allclose([p.score for p in a], [p.score for p in b], atol=1e-6)


def test_normalisation_in_the_graph_is_bit_identical_to_the_clients():
    # ImageNet-style mean/std on RGB: the graph must compute exactly what ImagePreprocessing does.
    preprocessing = ImagePreprocessing(
        size=(9, 7), color_mode="RGB", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
    )
    pictures = np.random.default_rng(0).integers(0, 256, (3, 9, 7, 3), dtype=np.uint8)
    with torch.no_grad():
        inside = PixelInput(torch.nn.Identity(), preprocessing)(torch.from_numpy(pictures)).numpy()
    np.testing.assert_array_equal(inside, preprocessing(list(pictures)))


def test_rgb_model_in_float16_and_uint8(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWeightsWarning)
        result = export_model("catsdogs_convnet", tmp_path, pixels="uint8", precision="fp16")
    assert result.name == "catsdogs_convnet_fp16_uint8" and result.validation.max_abs_diff < 1e-2
    assert list(read_config(tmp_path / result.name).input[0].dims) == [150, 150, 3]


def test_models_without_pictures_have_no_pixel_form(tmp_path):
    with warnings.catch_warnings(), pytest.raises(ExportError, match="does not take pictures"):
        warnings.simplefilter("ignore", UntrainedWeightsWarning)
        export_model("imdb_dense", tmp_path, pixels="uint8")
