"""Models that take picture files: the server decodes and resizes them with the model's own
preprocessing, off the event loop, and a bad file fails only its own request."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import skimage.data
from PIL import Image

from conftest import TEST_DEVICE
from serving.client import InferenceClient, InferenceServerError
from serving.protocol.generated import model_config_pb2 as mc
from serving.protocol.model_config import read_config
from serving.protocol.preprocessing import ImagePreprocessing
from serving.server.grpc.server import serve_in_thread
from serving.server.settings import ServerSettings
from serving.tasks.classify import classify
from serving.tasks.gradcam import LocalGradCAM, ServedGradCAM

MAX_PIXELS = 1_000_000
"""The test server's limit: a 2000x1000 picture is over it."""


@pytest.fixture(scope="module")
def encoded_repository(catsdogs_repository):
    assert {"catsdogs_convnet_encoded", "catsdogs_convnet_encoded_gradcam"} <= {
        p.name for p in catsdogs_repository.iterdir()
    }
    return catsdogs_repository


@pytest.fixture(scope="module")
def server_url(encoded_repository):
    settings = ServerSettings(
        repository=encoded_repository,
        host="127.0.0.1",
        port=0,
        device=TEST_DEVICE,
        metrics_port=-1,
        http_port=-1,
        max_picture_pixels=MAX_PIXELS,
    )
    with serve_in_thread(settings) as server:
        yield f"127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory) -> list[Path]:
    """scikit-image's photos as the files people have: PNG and JPEG, colour and grey."""
    folder = tmp_path_factory.mktemp("photos")
    files = []
    for name in ("chelsea", "coffee", "astronaut", "camera"):
        picture = Image.fromarray(getattr(skimage.data, name)())
        for suffix in ("png", "jpg"):
            path = folder / f"{name}.{suffix}"
            picture.save(path, quality=90) if suffix == "jpg" else picture.save(path)
            files.append(path)
    return files


def encoded(files) -> np.ndarray:
    return np.array([[Path(f).read_bytes()] for f in files], dtype=np.object_)


def test_the_config_asks_for_picture_files(encoded_repository):
    image = read_config(encoded_repository / "catsdogs_convnet_encoded").input[0]
    assert (image.data_type, list(image.dims)) == (mc.TYPE_STRING, [1])


def test_served_answers_equal_the_float_graph(encoded_repository, server_url, photo_files):
    """The server decodes and resizes a file as the float model's client does (Pillow, the same
    filter), so the graphs see the same pixels: the answers agree to float rounding, 1e-6."""
    float_graph = ort.InferenceSession(
        str(encoded_repository / "catsdogs_convnet" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    config = read_config(encoded_repository / "catsdogs_convnet")
    preprocessing = ImagePreprocessing.from_json(config.parameters["deepr.preprocessing"].string_value)
    expected = float_graph.run(None, {"images": preprocessing(photo_files)})[0]

    with InferenceClient(server_url) as client, ThreadPoolExecutor(len(photo_files)) as pool:
        answers = pool.map(lambda f: client.infer("catsdogs_convnet_encoded", {"images": encoded([f])}), photo_files)
        one_by_one = np.concatenate([a["probability"] for a in answers])
    np.testing.assert_allclose(one_by_one, expected, atol=1e-6)
    together = classify(photo_files, "catsdogs_convnet_encoded", url=server_url, top_k=1)  # sends the files' bytes
    # The classification extension writes scores as text with six decimals: 5e-7 of rounding on top.
    np.testing.assert_allclose([p[0].score for p in together], expected[:, 0], rtol=0, atol=2e-6)
    float_bytes = preprocessing(photo_files[:1]).nbytes
    assert len(photo_files[1].read_bytes()) < float_bytes  # a JPEG is smaller than its float32 pixels


def _bad_files() -> dict[str, tuple[bytes, str]]:
    jpeg = io.BytesIO()
    Image.fromarray(skimage.data.coffee()).save(jpeg, format="JPEG")
    big = io.BytesIO()
    Image.new("L", (2000, 1000)).save(big, format="PNG")  # 2,000,000 pixels in a few kB
    return {
        "text": (b"not a picture at all", "not a picture in a format the server takes"),
        "truncated": (jpeg.getvalue()[: len(jpeg.getvalue()) // 3], "damaged or truncated"),
        "bomb": (big.getvalue(), "2000x1000 picture: 2,000,000 pixels, over the limit of 1,000,000"),
    }


@pytest.mark.parametrize("kind", ["text", "truncated", "bomb"])
def test_a_bad_file_fails_its_own_request_naming_the_item(server_url, photo_files, kind):
    data, message = _bad_files()[kind]
    good = photo_files[0].read_bytes()

    requests = [encoded([photo_files[i]]) for i in range(6)]
    requests.insert(3, np.array([[good], [data]], object))

    def ask(files: np.ndarray):
        try:
            return client.infer("catsdogs_convnet_encoded", {"images": files})
        except InferenceServerError as exc:
            return exc

    # the bad request among good ones, all sent at once so the batcher merges what it can
    with InferenceClient(server_url) as client, ThreadPoolExecutor(len(requests)) as pool:
        outcomes = list(pool.map(ask, requests))
    bad = outcomes.pop(3)
    assert isinstance(bad, InferenceServerError) and bad.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "item 1" in str(bad) and message in str(bad), str(bad)
    assert all(isinstance(o, dict) and o["probability"].shape == (1, 1) for o in outcomes), outcomes


def test_gradcam_from_picture_files(encoded_repository, server_url, photo_files):
    """The Grad-CAM graph behind picture files: served from the files, and run locally (where
    the task decodes them itself), its heatmaps equal the float graph's within 1e-4 of the largest."""
    files = photo_files[:4]
    with InferenceClient(server_url) as client:
        from_files = ServedGradCAM("catsdogs_convnet_encoded_gradcam", url=server_url, client=client)(files)
        from_pixels = ServedGradCAM("catsdogs_convnet_gradcam", url=server_url, client=client)(files)
    local = LocalGradCAM(encoded_repository / "catsdogs_convnet_encoded_gradcam" / "1" / "model.onnx", device="cpu")
    for served, floats, here in zip(from_files, from_pixels, local(files)):
        peak = np.abs(floats.raw_heatmap).max()
        assert np.abs(served.raw_heatmap - floats.raw_heatmap).max() <= 1e-4 * peak
        assert np.abs(here.raw_heatmap - floats.raw_heatmap).max() <= 1e-4 * peak
        assert served.class_index == floats.class_index


def test_export_refusals_for_encoded_pictures(tmp_path, capsys):
    from deepr.cli import main

    for extra, message in (
        (["--warmup", "1,8"], "--warmup writes zero samples"),
        (["--precision", "int8"], "--precision int8 takes --pixels float32 or uint8"),
    ):
        code = main(["export", "catsdogs_convnet", "--pixels", "encoded", "--repository", str(tmp_path), *extra])
        assert code == 2 and message in capsys.readouterr().err
