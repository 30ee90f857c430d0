"""Every zoo model exports to ONNX with a dynamic batch axis and matches PyTorch in onnxruntime."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as triton_config

import zoo
from exporters import (
    ExportConfig,
    ToleranceError,
    UntrainedWeightsWarning,
    ValidationError,
    export_model,
    validate_onnx,
)
from zoo.recipes import load_weights


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    repo = tmp_path_factory.mktemp("export")
    results = {}
    for name in zoo.list_models():
        with pytest.warns(UntrainedWeightsWarning, match="freshly initialised weights"):
            results[name] = export_model(name, repo)
    return repo, results


@pytest.mark.parametrize("name", zoo.list_models())
def test_parity_at_two_batch_sizes(exported, name):
    report = exported[1][name].validation
    assert report.batch_sizes == (1, 7)
    assert report.max_abs_diff < 1e-5


@pytest.mark.parametrize("name", zoo.list_models())
def test_batch_axis_is_dynamic(exported, name):
    repo, _ = exported
    path = repo / name / "1" / "model.onnx"
    graph_input = onnx.load(path).graph.input[0]
    assert graph_input.type.tensor_type.shape.dim[0].dim_param  # symbolic, not a number
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    spec = zoo.get_model_spec(name)
    for batch in (3, 64):
        out = session.run(None, {"images": np.random.rand(batch, *spec.input_shape).astype(np.float32)})[0]
        assert out.shape == (batch, 10)
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", zoo.list_models())
def test_config_is_valid_triton_and_matches_graph(exported, name):
    repo, _ = exported
    config = text_format.Parse((repo / name / "config.pbtxt").read_text(), triton_config.ModelConfig())
    assert config.name == name and config.backend == "onnxruntime" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 256
    graph = onnx.load(repo / name / "1" / "model.onnx").graph
    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]]
    assert list(config.input[0].dims) == dims == list(zoo.get_model_spec(name).input_shape)
    assert config.output[0].name == graph.output[0].name and list(config.output[0].dims) == [10]
    labels = (repo / name / config.output[0].label_filename).read_text().splitlines()
    assert labels == [str(d) for d in range(10)]


def test_metadata_travels_in_the_graph(exported):
    repo, _ = exported
    meta = {p.key: p.value for p in onnx.load(repo / "mnist_convnet" / "1" / "model.onnx").metadata_props}
    assert meta["deepr.model"] == "mnist_convnet"
    assert meta["deepr.weights"] == "untrained"
    assert json.loads(meta["deepr.labels"]) == [str(d) for d in range(10)]
    assert json.loads(meta["deepr.preprocessing"])["size"] == [28, 28]


def test_trained_weights_export_and_keep_predictions(tmp_path, trained_convnet, digits):
    result = export_model("mnist_convnet", tmp_path, weights=trained_convnet.out / "weights.pt")
    session = ort.InferenceSession(str(result.version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    x, y = digits.test.tensors
    probs = session.run(None, {"images": x.numpy()})[0]
    assert (probs.argmax(1) == y.numpy()).mean() == pytest.approx(trained_convnet.test["accuracy"])


def test_versions_increase(tmp_path):
    with pytest.warns(UntrainedWeightsWarning):
        first = export_model("mnist_dense", tmp_path)
        second = export_model("mnist_dense", tmp_path)
    assert (first.version_dir.name, second.version_dir.name) == ("1", "2")
    with pytest.warns(UntrainedWeightsWarning), pytest.raises(FileExistsError, match="already exists"):
        export_model("mnist_dense", tmp_path, version=2)


def test_mismatch_lists_every_batch_size(exported):
    repo, _ = exported
    other = zoo.get_model("mnist_convnet")  # different random weights than the exported graph
    with pytest.raises(ToleranceError) as info:
        validate_onnx(other, repo / "mnist_convnet" / "1" / "model.onnx", ((1, 28, 28),))
    assert isinstance(info.value, ValidationError)
    assert [f.split(",")[0] for f in info.value.failures] == ["batch 1", "batch 7"]
    assert "max |diff|" in str(info.value)


def test_weights_file_must_fit_the_model(tmp_path, trained_convnet):
    with pytest.raises(RuntimeError, match="size mismatch|Missing key"):
        export_model("mnist_dense", tmp_path, weights=trained_convnet.out / "weights.pt")


def test_weights_are_loaded_without_unpickling(tmp_path):
    bad = tmp_path / "evil.pt"
    torch.save({"payload": object()}, bad)  # arbitrary objects need full unpickling
    with pytest.raises(Exception, match="weights_only|Unsupported global"):
        load_weights(zoo.get_model("mnist_dense"), bad)


def test_export_config_rejects_contradictions():
    with pytest.raises(ValueError, match="one tuple per input"):
        ExportConfig(input_names=("a", "b"))
    with pytest.raises(ValueError, match="at least two batch sizes"):
        ExportConfig(validation_batch_sizes=(4,))
