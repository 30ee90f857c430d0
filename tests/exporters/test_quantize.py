"""int8 exports: trained zoo models keep their held-out accuracy within the stated drop
(static QDQ for the convnets, dynamic for the recurrent models), the served int8 model
answers exactly as onnxruntime does in-process on the same file, and what cannot be
quantized is refused with a message."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from exporters import ExportError
from exporters.quantize import QUANTIZATION_KEY, export_quantized
from serving.client import InferenceClient
from serving.server.grpc.server import serve_in_thread
from serving.server.settings import ServerSettings
from zoo.datasets import load_dataset

MAX_DROP = 1.0  # points of held-out accuracy, the export's default


def _ops(onnx_file) -> set[str]:
    return {node.op_type for node in onnx.load(str(onnx_file)).graph.node}


@pytest.fixture(scope="module")
def int8_repository(tmp_path_factory, trained_convnet, trained_catsdogs):
    repository = tmp_path_factory.mktemp("int8")
    reports = {
        "mnist_convnet": export_quantized("mnist_convnet", repository, weights=trained_convnet.out / "weights.pt"),
        "catsdogs_convnet": export_quantized(
            "catsdogs_convnet", repository, weights=trained_catsdogs.out / "weights.pt"
        ),
    }
    return repository, reports


@pytest.mark.parametrize("name", ["mnist_convnet", "catsdogs_convnet"])
def test_convnets_keep_their_held_out_accuracy_as_static_int8(int8_repository, name):
    repository, reports = int8_repository
    result, report = reports[name]
    assert result.name == f"{name}_int8"
    assert report.method.startswith("static QDQ") and report.calibration_samples == 256
    assert report.held_out_samples >= 100
    assert report.float_accuracy > 0.6  # trained: the comparison means something
    assert report.accuracy_drop <= MAX_DROP, report.describe()
    assert report.agreement >= 0.95
    onnx_file = result.version_dir / "model.onnx"
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(onnx_file)
    meta = {p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}
    assert meta["deepr.precision"] == "int8" and json.loads(meta[QUANTIZATION_KEY])["int8_accuracy"] == pytest.approx(
        report.int8_accuracy
    )
    assert "deepr.labels" in meta  # the float graph's facts carried over


def test_served_int8_answers_equal_in_process_onnxruntime(int8_repository, digits):
    repository, reports = int8_repository
    onnx_file = reports["mnist_convnet"][0].version_dir / "model.onnx"
    images = np.stack([x.numpy() for x, _ in list(digits.test)[:64]]).astype(np.float32)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"images": images})[0]
    with serve_in_thread(ServerSettings(repository=repository, host="127.0.0.1", port=0, device="cpu")) as server:
        with InferenceClient(f"127.0.0.1:{server.port}") as client:
            config = client.model_config("mnist_convnet_int8")
            served = client.infer("mnist_convnet_int8", {"images": images})["probabilities"]
    assert config.parameters["deepr.precision"].string_value == "int8"
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-6)


def test_pixel_graphs_quantize_too(trained_convnet, tmp_path):
    result, report = export_quantized(
        "mnist_convnet", tmp_path, weights=trained_convnet.out / "weights.pt", pixels="uint8", calibration=128
    )
    assert result.name == "mnist_convnet_int8_uint8" and report.accuracy_drop <= MAX_DROP
    session = ort.InferenceSession(str(result.version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)"


def test_recurrent_models_quantize_dynamically_within_the_drop(trained_chars, tmp_path):
    from zoo.recipes import TrainConfig, train

    words = train(TrainConfig.for_model("imdb_lstm", out=tmp_path / "imdb", epochs=1, progress=False))
    _, imdb = export_quantized("imdb_lstm", tmp_path / "repo", weights=words.out / "weights.pt")
    corpus = load_dataset(str(trained_chars.out.parent / "docstrings.txt"), like="chars")
    chars_result, chars = export_quantized(
        "char_lstm", tmp_path / "repo", weights=trained_chars.out / "weights.pt", data=corpus
    )
    for report in (imdb, chars):
        assert report.method.startswith("dynamic") and report.calibration_samples == 0
        assert report.accuracy_drop <= MAX_DROP, report.describe()
        assert report.float_accuracy > 0.3  # char_lstm guesses among ~60 characters after one epoch
    assert "DynamicQuantizeLSTM" in _ops(chars_result.version_dir / "model.onnx")


def test_an_export_over_the_drop_is_refused_and_not_added(trained_convnet, tmp_path):
    weights = trained_convnet.out / "weights.pt"
    _, report = export_quantized("mnist_convnet", tmp_path / "first", weights=weights, max_accuracy_drop=None)
    limit = report.accuracy_drop - 0.5  # the same seeded calibration gives the same int8 model: always over
    with pytest.raises(ExportError, match=r"loses .* points of held-out accuracy as int8 .*more than"):
        export_quantized("mnist_convnet", tmp_path / "second", weights=weights, max_accuracy_drop=limit)
    assert not (tmp_path / "second" / "mnist_convnet_int8").exists()


def test_a_model_without_data_to_calibrate_on_is_refused(tmp_path):
    with pytest.raises(ExportError, match="vgg16 has no embedded data to calibrate int8 ranges"):
        export_quantized("vgg16", tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "deepr", "export", "vgg16", "--repository", str(tmp_path), "--precision", "int8"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1 and "no embedded data to calibrate int8 ranges" in done.stderr  # a failed export
    assert "Traceback" not in done.stderr


def test_the_export_command_prints_the_comparison(trained_convnet, tmp_path, capsys):
    from deepr.cli import main

    weights = str(trained_convnet.out / "weights.pt")
    command = ["export", "mnist_convnet", "--weights", weights, "--repository", str(tmp_path), "--precision", "int8"]
    assert main([*command, "--calibration", "64"]) == 0
    out = capsys.readouterr().out
    assert "mnist_convnet_int8: static QDQ" in out and "held-out accuracy" in out and "float vs" in out
    assert (tmp_path / "mnist_convnet_int8" / "1" / "model.onnx").is_file()
    assert main(["export", "mnist_convnet", "--repository", str(tmp_path), "--calibration", "64"]) == 2
    assert "--calibration and --max-accuracy-drop go with --precision int8" in capsys.readouterr().err
