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
from serving.protocol.labels import read_labels
from zoo.datasets import dataset_info
from zoo.recipes import load_weights

# Bases are exported without their 1000-class tops and at small inputs, to keep the test quick.
EXPORT_OPTIONS = {
    "vgg16": {"include_top": False, "input_shape": (64, 64, 3)},
    "vgg19": {"include_top": False, "input_shape": (64, 64, 3)},
    "inception_v3": {"include_top": False, "input_shape": (96, 96, 3)},
    "resnet50": {"include_top": False, "input_shape": (64, 64, 3)},
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    repo = tmp_path_factory.mktemp("export")
    results = {}
    for name in zoo.list_models():
        with pytest.warns(UntrainedWeightsWarning, match="freshly initialised weights"):
            results[name] = export_model(name, repo, options=EXPORT_OPTIONS.get(name))
    return repo, results


def free_length(name):
    return None in zoo.get_model_spec(name).input_shape


@pytest.mark.parametrize("name", zoo.list_models())
def test_parity_at_two_batch_sizes_and_lengths(exported, name):
    report = exported[1][name].validation
    batches = sorted({shape[0] for shape in report.input_shapes})
    assert batches == [1, 7]
    if free_length(name):
        assert sorted({shape[1] for shape in report.input_shapes}) == [5, 23]
    assert report.max_abs_diff < 2e-5 or report.max_relative_diff < 1e-5  # deep bases: large random activations


def random_input(name, graph_input, batch, length):
    dims = [d.dim_value or length for d in graph_input.type.tensor_type.shape.dim[1:]]
    rng = np.random.default_rng(batch)
    if zoo.get_model_spec(name).input_dtype == "int64":
        return rng.integers(0, 1000, (batch, *dims))
    return rng.random((batch, *dims), dtype=np.float32)


@pytest.mark.parametrize("name", zoo.list_models())
def test_batch_and_length_axes_are_dynamic(exported, name):
    repo, _ = exported
    path = repo / name / "1" / "model.onnx"
    graph_input = onnx.load(path).graph.input[0]
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param  # symbolic, not a number
    if free_length(name):
        assert dims[1].dim_param
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, length in ((3, 9), (64, 40)):
        x = random_input(name, graph_input, batch, length)
        out = session.run(None, {graph_input.name: x})[0]
        assert out.shape[0] == batch
        if name in EXPORT_OPTIONS:  # a base without its top: features
            assert out.ndim == 4
        elif zoo.get_model_spec(name).task == "multiclass":
            np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
        else:
            assert out.shape == (batch, 1) and ((out > 0) & (out < 1)).all()


@pytest.mark.parametrize("name", zoo.list_models())
def test_config_is_valid_triton_and_matches_graph(exported, name):
    repo, _ = exported
    config = text_format.Parse((repo / name / "config.pbtxt").read_text(), triton_config.ModelConfig())
    assert config.name == name and config.backend == "onnxruntime" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 256
    assert config.HasField("dynamic_batching")  # Triton batches requests for it as deepr does
    spec = zoo.get_model_spec(name)
    graph = onnx.load(repo / name / "1" / "model.onnx").graph
    dims = [d.dim_value or -1 for d in graph.input[0].type.tensor_type.shape.dim[1:]]
    expected = EXPORT_OPTIONS[name]["input_shape"] if name in EXPORT_OPTIONS else None
    expected = [3, *expected[:2]] if expected else [-1 if d is None else d for d in spec.input_shape]
    assert list(config.input[0].dims) == dims == expected
    elem_type = graph.input[0].type.tensor_type.elem_type
    assert (elem_type, config.input[0].data_type) in {
        (onnx.TensorProto.FLOAT, triton_config.TYPE_FP32),
        (onnx.TensorProto.INT64, triton_config.TYPE_INT64),
    }
    if name in EXPORT_OPTIONS:  # features: no labels
        assert config.output[0].name == "features" and not config.output[0].label_filename
        return
    labels = read_labels(repo / name / config.output[0].label_filename)
    assert config.output[0].name == graph.output[0].name and list(config.output[0].dims) == [len(labels)]
    classes = list(dataset_info(spec.dataset).classes)
    assert labels == (classes if spec.task == "multiclass" else classes[-1:])


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
    cases = [(np.random.rand(b, 1, 28, 28).astype(np.float32),) for b in (1, 7)]
    with pytest.raises(ToleranceError) as info:
        validate_onnx(other, repo / "mnist_convnet" / "1" / "model.onnx", cases)
    assert isinstance(info.value, ValidationError)
    assert [f.split(", output")[0] for f in info.value.failures] == [
        "input shape (1, 1, 28, 28)",
        "input shape (7, 1, 28, 28)",
    ]
    assert "max |diff|" in str(info.value)


def test_weights_file_must_fit_the_model(tmp_path, trained_convnet):
    with pytest.raises(ValueError, match="does not fit .*size mismatch|does not fit .*Missing key"):
        export_model("mnist_dense", tmp_path, weights=trained_convnet.out / "weights.pt")


def test_weights_are_loaded_without_unpickling(tmp_path):
    bad = tmp_path / "evil.pt"
    torch.save({"payload": object()}, bad)  # arbitrary objects need full unpickling
    with pytest.raises(ValueError, match="evil.pt is not a weights file deepr reads .*never pickled objects"):
        load_weights(zoo.get_model("mnist_dense"), bad)


def test_recurrent_model_trained_weights_match_on_real_sequences(tmp_path):
    from zoo.datasets import load_dataset
    from zoo.recipes import TrainConfig, train

    data = load_dataset("words_sequences")
    result = train(TrainConfig.for_model("imdb_gru", out=tmp_path / "run", epochs=2, progress=False), data=data)
    exported = export_model("imdb_gru", tmp_path / "repo", weights=tmp_path / "run" / "weights.pt")
    session = ort.InferenceSession(str(exported.version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    x, _ = data.test.tensors
    for length in (100, 37):  # the padded length, and a shorter window of the same reviews
        window = x[:50, -length:]
        with torch.no_grad():
            want = result.model(window).numpy()
        np.testing.assert_allclose(session.run(None, {"tokens": window.numpy()})[0], want, atol=1e-5)


def test_export_config_rejects_contradictions():
    with pytest.raises(ValueError, match="one tuple per input"):
        ExportConfig(input_names=("a", "b"))
    with pytest.raises(ValueError, match="at least two batch sizes"):
        ExportConfig(validation_batch_sizes=(4,))


def test_float16_export_keeps_float32_io_and_the_predictions(tmp_path, trained_convnet, digits):
    fp32 = export_model("mnist_convnet", tmp_path, weights=trained_convnet.out / "weights.pt")
    fp16 = export_model("mnist_convnet", tmp_path, weights=trained_convnet.out / "weights.pt", precision="fp16")
    assert fp16.name == "mnist_convnet_fp16" and fp16.validation.max_relative_diff <= 1e-2
    graph = onnx.load(fp16.version_dir / "model.onnx").graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # clients send float32 as before
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.initializer)
    x, y = digits.test.tensors
    predictions = {}
    for result in (fp32, fp16):
        session = ort.InferenceSession(str(result.version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
        predictions[result.name] = session.run(None, {"images": x.numpy()})[0].argmax(1)
    accuracy = {name: float((p == y.numpy()).mean()) for name, p in predictions.items()}
    assert abs(accuracy["mnist_convnet"] - accuracy["mnist_convnet_fp16"]) <= 1 / len(
        y
    )  # at most one held-out digit differs
    assert (predictions["mnist_convnet"] != predictions["mnist_convnet_fp16"]).sum() <= 1
    with pytest.raises(ValueError, match="precision must be one of"):
        export_model("mnist_convnet", tmp_path, precision="int8")


def test_the_translation_table_is_built_once_and_custom_translations_stay_in_their_export(tmp_path):
    """torch.onnx's ATen-to-ONNX table is kept between exports; a gradient graph's own
    translations go into its copy of the table, never into the one kept."""
    from exporters import onnx as exporter
    from exporters.gradients import GRADIENT_TRANSLATIONS
    from exporters.zoo_gradcam import export_gradcam

    with pytest.warns(UntrainedWeightsWarning):
        export_model("mnist_dense", tmp_path)
    tables = dict(exporter._TRANSLATION_TABLES)
    assert len(tables) == 1
    with pytest.warns(UntrainedWeightsWarning):
        result = export_gradcam("mnist_convnet", tmp_path)  # checked against autograd inside
    assert result.validation.max_abs_diff < 1e-5
    assert exporter._TRANSLATION_TABLES == tables  # the same table object, not a second one
    (table,) = tables.values()
    for target in GRADIENT_TRANSLATIONS:
        assert not any(entry.is_custom for entry in table.functions.get(target, []))
