"""deepr import against Keras itself: the tutorial's architectures built and trained in Keras 3
(PyTorch backend), saved as .h5 and .keras, imported without Keras, and compared with
keras_model.predict on held-out real data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from serving.protocol.model_config import read_config  # noqa: E402
from tests.zoo.keras_models import CASES, SEQUENCE_LENGTHS, Case, keras, real_data, trained  # noqa: E402
from zoo import model_summary  # noqa: E402
from zoo._registry import unregister_imported  # noqa: E402
from zoo.keras import KerasImportError, from_keras  # noqa: E402
from zoo.keras.store import import_keras  # noqa: E402

PARITY = 1e-5
"""onnxruntime (and the converted module) within this fraction of the largest Keras output."""


class Saved:
    """One case trained in Keras and saved both ways, with Keras' answers on held-out inputs."""

    def __init__(self, case: Case, folder: Path) -> None:
        self.case = case
        data = real_data(case.data)
        self.model = trained(case, data)
        self.h5, self.keras = folder / f"{case.name}.h5", folder / f"{case.name}.keras"
        keras.saving.save_model(self.model, self.h5, include_optimizer=False)  # as save_model_hdf5 writes it
        self.model.save(self.keras)
        held_out = data.held_out[:7]
        lengths = SEQUENCE_LENGTHS if case.recurrent else (None,)
        # batch 1 and 7, at each sequence length of a recurrent model
        self.inputs = [held_out[:batch, :length] for batch in (1, 7) for length in lengths]
        self.expected = [self.model.predict(x, verbose=0) for x in self.inputs]

    def close_to_keras(self, outputs: list[np.ndarray]) -> float:
        """The largest difference from Keras, as a fraction of Keras' largest output."""
        worst = 0.0
        for got, want in zip(outputs, self.expected):
            assert got.shape == want.shape
            worst = max(worst, float(np.abs(got - want).max() / np.abs(want).max()))
        return worst


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Saved]:
    folder = tmp_path_factory.mktemp("keras")
    return {case.name: Saved(case, folder) for case in CASES}


@pytest.fixture(scope="module")
def imported(saved, tmp_path_factory):
    """Every case imported (from .h5 for even cases, .keras for odd ones) and exported to ONNX."""
    from exporters import export_model

    home, repository = tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("repository")
    names = []
    try:
        for i, (name, case) in enumerate(saved.items()):
            import_keras(case.h5 if i % 2 == 0 else case.keras, f"k_{name}", home=home)
            names.append(f"k_{name}")
            export_model(f"k_{name}", repository, max_batch_size=16)
        yield repository
    finally:
        for name in names:
            unregister_imported(name)


@pytest.mark.parametrize("name", [case.name for case in CASES])
def test_converted_module_equals_keras_from_both_files(saved, name):
    case = saved[name]
    for path in (case.h5, case.keras):
        model = from_keras(path)
        with torch.no_grad():
            outputs = [model(torch.from_numpy(x)).numpy() for x in case.inputs]
        assert case.close_to_keras(outputs) < PARITY, path.name


@pytest.mark.parametrize("name", [case.name for case in CASES])
def test_parameter_counts_equal_keras(saved, imported, name):
    summary = model_summary(f"k_{name}")
    assert summary.keras_total_params == saved[name].model.count_params()
    keras_names = {layer.name for layer in saved[name].model.layers}
    assert keras_names <= {row.name for row in summary.rows}  # the Keras layer names, as --layer takes them


@pytest.mark.parametrize("name", [case.name for case in CASES])
def test_onnxruntime_equals_keras(saved, imported, name):
    import onnxruntime as ort

    session = ort.InferenceSession(str(imported / f"k_{name}" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    outputs = [session.run(None, {feed: x})[0] for x in saved[name].inputs]
    assert saved[name].close_to_keras(outputs) < PARITY


def test_served_model_answers_tritonclient_with_keras_classes(saved, imported):
    import tritonclient.grpc as triton

    from serving.server.grpc.server import serve_in_thread
    from serving.server.settings import ServerSettings
    from tests.conftest import TEST_DEVICE

    case = saved["mnist_convnet"]
    pictures = case.inputs[-1]  # 7 held-out digits, NHWC as Keras takes them
    settings = ServerSettings(repository=imported, host="127.0.0.1", port=0, device=TEST_DEVICE)
    with serve_in_thread(settings) as server:
        client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
        config = client.get_model_config("k_mnist_convnet").config
        assert config.input[0].format == config.input[0].FORMAT_NHWC and list(config.input[0].dims) == [28, 28, 1]
        request = triton.InferInput("images", list(pictures.shape), "FP32")
        request.set_data_from_numpy(pictures)
        answer = client.infer("k_mnist_convnet", [request]).as_numpy("probabilities")
    assert answer.argmax(1).tolist() == case.expected[-1].argmax(1).tolist()
    assert np.abs(answer - case.expected[-1]).max() < PARITY * np.abs(case.expected[-1]).max()


def test_gradcam_of_an_imported_convnet_equals_autograd(saved, imported):
    """The Grad-CAM graph's heatmaps against hooks and a full backward pass on the converted model."""
    import onnxruntime as ort

    from exporters.gradcam import hook_gradcam
    from exporters.zoo_gradcam import export_gradcam

    case = saved["catsdogs_convnet"]
    layer = [layer.name for layer in case.model.layers if isinstance(layer, keras.layers.Conv2D)][-1]
    result = export_gradcam("k_catsdogs_convnet", imported, layer=layer)  # by its Keras name
    photos = case.inputs[-1]
    session = ort.InferenceSession(str(result.version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    top = np.full((len(photos), 1), -1, np.int64)
    heatmap = session.run(["heatmap"], {"images": photos, "class_index": top})[0]
    model = from_keras(case.h5)
    reference = hook_gradcam(model, layer, torch.from_numpy(photos), torch.from_numpy(top[:, 0])).numpy()
    assert heatmap.shape == reference.shape == (7, 15, 15)
    assert np.abs(heatmap - reference).max() <= 1e-4 * np.abs(reference).max()


# -- files deepr cannot use: each a clear error naming the file and the problem ------------------------------------


def test_a_file_that_is_not_a_keras_model(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("layer_dense(units = 10)\n")
    with pytest.raises(KerasImportError, match=r"notes\.h5: not a saved Keras model"):
        from_keras(text)


@pytest.mark.parametrize("suffix", ["h5", "keras"])
def test_a_truncated_file(saved, tmp_path, suffix):
    whole = getattr(saved["mnist_convnet"], suffix).read_bytes()
    cut = tmp_path / f"cut.{suffix}"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(KerasImportError, match=rf"cut\.{suffix}: cannot read .*complete"):
        from_keras(cut)


def test_an_unsupported_layer_is_named_with_the_supported_ones(tmp_path):
    model = keras.Sequential([keras.Input((12, 4)), keras.layers.Conv1D(3, 2), keras.layers.Flatten()])
    path = tmp_path / "conv1d.keras"
    model.save(path)
    with pytest.raises(KerasImportError) as error:
        from_keras(path)
    message = str(error.value)
    assert "conv1d.keras" in message and "(Conv1D)" in message and "does not convert Conv1D" in message
    assert "SeparableConv2D" in message and "GRU" in message  # the supported list


def test_weights_that_do_not_fit_the_config(saved, tmp_path):
    path = tmp_path / "edited.h5"
    path.write_bytes(saved["mnist_dense"].h5.read_bytes())
    with h5py.File(path, "r+") as file:
        config = json.loads(file.attrs["model_config"])
        first_dense = next(layer for layer in config["config"]["layers"] if layer["class_name"] == "Dense")
        first_dense["config"]["units"] = 256  # its kernel is still (784, 512)
        file.attrs["model_config"] = json.dumps(config)
    with pytest.raises(KerasImportError, match=r"edited\.h5: layer dense\w* \(Dense\): the weights do not fit"):
        from_keras(path)


def test_cli_import_exits_2_naming_the_problem(tmp_path, monkeypatch, capsys):
    from deepr.cli import main

    monkeypatch.setenv("DEEPR_HOME", str(tmp_path / "home"))
    bad = tmp_path / "model.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)  # an HDF5 signature and nothing after it
    code = main(["import", str(bad), "--name", "broken", "--repository", str(tmp_path / "repository")])
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    assert "model.h5" in stderr and "cannot read this HDF5 file" in stderr
    assert not (tmp_path / "home" / "keras" / "broken").exists()  # nothing kept of a failed import


def test_cli_import_of_an_mnist_model_frames_its_pictures_and_says_how_to_load_it(saved, tmp_path, monkeypatch, capsys):
    """`deepr import m.h5 --framing mnist` makes a model whose clients invert and frame pictures
    as the zoo's MNIST models do; with a server answering at --url, the import says the server
    needs `deepr load`."""
    from deepr.cli import main
    from serving.server.grpc.server import serve_in_thread
    from serving.server.settings import ServerSettings
    from serving.tasks.classify import served_preprocessing
    from tests.conftest import TEST_DEVICE

    monkeypatch.setenv("DEEPR_HOME", str(tmp_path / "home"))
    repository = tmp_path / "repository"
    repository.mkdir()
    settings = ServerSettings(repository=repository, host="127.0.0.1", port=0, device=TEST_DEVICE, metrics_port=-1)
    try:
        with serve_in_thread(settings) as server:
            url = f"127.0.0.1:{server.port}"
            argv = ["import", str(saved["mnist_convnet"].h5), "--name", "k_framed", "--repository", str(repository)]
            code = main([*argv, "--framing", "mnist", "--url", url])
            out = capsys.readouterr().out
            assert code == 0 and f"`deepr load k_framed --url {url}` loads it" in out, out
            assert main(["load", "k_framed", "--url", url]) == 0
            preprocessing = served_preprocessing("k_framed", url=url)
        assert preprocessing.framing == "mnist" and preprocessing.background == "dark"
        assert preprocessing.layout == "NHWC"
        code = main(
            [
                "import",
                str(saved["catsdogs_convnet"].h5),
                "--name",
                "k_photo",
                "--framing",
                "mnist",
                "--repository",
                str(repository),
            ]
        )
        assert code == 2 and "--framing mnist is for models of grey pictures" in capsys.readouterr().err
    finally:
        unregister_imported("k_framed")
        unregister_imported("k_photo")


# -- Keras 2's spellings, and reading without Keras ---------------------------------------------------------------


def _as_keras2(config: dict) -> dict:
    """A Keras 3 config in Keras 2's spelling: class Model, batch_input_shape, inbound nodes as
    [[layer, node, tensor, kwargs], ...] lists, no InputLayer in a Sequential model."""
    config = json.loads(json.dumps(config))
    if config["class_name"] == "Functional":
        config["class_name"] = "Model"
        for layer in config["config"]["layers"]:
            history = [
                arg["config"]["keras_history"]
                for node in layer["inbound_nodes"]
                for value in node["args"]
                for arg in (value if isinstance(value, list) else [value])
            ]
            layer["inbound_nodes"] = [[[name, node, tensor, {}] for name, node, tensor in history]] if history else []
            if layer["class_name"] == "InputLayer":
                layer["config"]["batch_input_shape"] = layer["config"].pop("batch_shape")
    else:
        inputs, first, *rest = config["config"]["layers"]
        first["config"]["batch_input_shape"] = inputs["config"]["batch_shape"]
        config["config"]["layers"] = [first, *rest]
    return config


@pytest.fixture(scope="module")
def keras2_files(saved, tmp_path_factory) -> list[tuple[Path, list[np.ndarray], list[np.ndarray]]]:
    """.h5 files in Keras 2's spelling, written by Keras 3's legacy HDF5 writer and rewritten,
    with their held-out inputs and Keras' outputs."""
    folder = tmp_path_factory.mktemp("keras2")
    files = []
    for name in ("branches", "imdb_gru_reset_before", "catsdogs_convnet"):
        path = folder / f"{name}.h5"
        path.write_bytes(saved[name].h5.read_bytes())
        with h5py.File(path, "r+") as file:
            file.attrs["model_config"] = json.dumps(_as_keras2(json.loads(file.attrs["model_config"])))
            file.attrs["keras_version"] = "2.15.0"
        files.append((path, saved[name].inputs, saved[name].expected))
    return files


def test_keras2_spellings(keras2_files):
    for path, inputs, expected in keras2_files:
        model = from_keras(path)
        with torch.no_grad():
            for x, want in zip(inputs, expected):
                got = model(torch.from_numpy(x)).numpy()
                assert np.abs(got - want).max() < PARITY * np.abs(want).max(), path.name


def test_read_with_keras_and_tensorflow_absent(keras2_files, tmp_path):
    """What an R user has: a Keras 2 .h5 and no Keras in Python."""
    path, inputs, expected = keras2_files[0]
    np.save(tmp_path / "x.npy", inputs[-1])
    np.save(tmp_path / "want.npy", expected[-1])
    script = (
        "import sys\n"
        "sys.modules['keras'] = sys.modules['tensorflow'] = None  # any import of them fails\n"
        "import numpy as np, torch\n"
        "from zoo.keras import from_keras\n"
        f"model = from_keras({str(path)!r})\n"
        f"x, want = np.load({str(tmp_path / 'x.npy')!r}), np.load({str(tmp_path / 'want.npy')!r})\n"
        "got = model(torch.from_numpy(x)).detach().numpy()\n"
        "print(float(np.abs(got - want).max() / np.abs(want).max()), 'keras' in sys.modules and sys.modules['keras'] is not None)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    difference, keras_loaded = done.stdout.split()
    assert float(difference) < PARITY and keras_loaded == "False"


def test_what_an_imported_model_does_not_take(imported, tmp_path):
    """It comes trained, and int8 would calibrate on data in the zoo's layouts: both refused, saying why."""
    from exporters import ExportError
    from exporters.quantize import export_quantized
    from zoo.recipes import TrainConfig

    with pytest.raises(ValueError, match="imported Keras model: it comes trained"):
        TrainConfig.for_model("k_mnist_convnet", out=tmp_path)
    with pytest.raises(ExportError, match="imported Keras model: int8"):
        export_quantized("k_mnist_convnet", tmp_path)


@pytest.mark.parametrize("name", ["separable_block", "branches"])
def test_feature_graphs_of_imported_models(imported, name):
    """Every layer's output as one graph (torch.fx traces the converted model): batch norm,
    separable and depthwise convolutions, Add, Concatenate, Reshape, Flatten; checked against
    the converted model by the export itself."""
    from exporters.features import export_features, feature_layers
    from zoo import get_model

    layers = feature_layers(get_model(f"k_{name}"))
    result = export_features(f"k_{name}", imported, max_batch_size=4)
    assert result.validation.max_relative_diff < 1e-4
    assert [o.name for o in read_config(result.version_dir.parent).output] == layers
