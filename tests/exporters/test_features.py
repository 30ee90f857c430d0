"""Feature graphs: the named layers of every base and of zoo convnets, equal to PyTorch's
own layer outputs, the same through the server and in-process, and computing only what the
requested layers need."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch

import zoo
from conftest import TEST_DEVICE
from exporters import UntrainedWeightsWarning
from exporters.features import export_features
from serving.client import InferenceClient
from serving.runtime.sessions import pruned_graph
from serving.server.grpc.server import serve_in_thread
from serving.server.settings import ServerSettings
from serving.tasks.features import LocalFeatureExtractor, extract_features

# Bases at small inputs, with fresh weights: the parity is what is tested, not the features.
CASES = {
    "vgg16": (
        {"include_top": False, "input_shape": (64, 64, 3)},
        ["block1_conv1", "block3_conv1", "block4_pool", "block5_pool"],
    ),
    "vgg19": ({"include_top": False, "input_shape": (64, 64, 3)}, ["block2_conv2", "block5_conv4"]),
    "resnet50": ({"include_top": False, "input_shape": (64, 64, 3)}, ["conv1", "layer2", "layer4"]),
    "inception_v3": ({"include_top": False, "input_shape": (96, 96, 3)}, ["mixed2", "mixed5", "mixed10"]),
    "mnist_convnet": ({}, None),  # every layer
}
TOLERANCE = 1e-4
"""Largest difference from PyTorch, as a fraction of the layer's largest magnitude."""


def torch_layer_outputs(model: torch.nn.Module, layers, images: np.ndarray) -> dict[str, np.ndarray]:
    """The reference: forward hooks on the named modules during an ordinary forward pass."""
    captured, hooks = {}, []
    modules = dict(model.named_modules())
    for layer in layers:
        hooks.append(
            modules[layer].register_forward_hook(
                lambda m, i, o, layer=layer: captured.__setitem__(layer, o.detach().numpy())
            )
        )
    with torch.no_grad():
        model(torch.from_numpy(images))
    for hook in hooks:
        hook.remove()
    return captured


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    repo = tmp_path_factory.mktemp("features")
    results = {}
    for name, (options, layers) in CASES.items():
        torch.manual_seed(0)
        model = zoo.get_model(name, **options).eval()
        torch.save(model.state_dict(), repo.parent / f"{name}.pt")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UntrainedWeightsWarning)
            results[name] = (
                model,
                export_features(name, repo, layers=layers, weights=repo.parent / f"{name}.pt", options=options),
            )
    return repo, results


@pytest.mark.parametrize("name", list(CASES))
def test_layers_equal_pytorch(exported, name):
    repo, results = exported
    model, result = results[name]
    extractor = LocalFeatureExtractor(result.version_dir / "model.onnx", device=TEST_DEVICE)
    assert extractor.layers == (CASES[name][1] or extractor.layers)
    shape = extractor.graph.session.get_inputs()[0].shape[1:]
    images = np.random.default_rng(5).random((3, *shape), dtype=np.float32)
    got = extractor(images)
    want = torch_layer_outputs(model, extractor.layers, images)
    for layer in extractor.layers:
        assert got[layer].shape == want[layer].shape, layer
        scale = max(float(np.abs(want[layer]).max()), 1e-12)
        assert np.abs(got[layer] - want[layer]).max() <= TOLERANCE * scale, layer


def test_zoo_convnet_exports_every_layer(exported):
    _, results = exported
    _, result = results["mnist_convnet"]
    extractor = LocalFeatureExtractor(result.version_dir / "model.onnx", device=TEST_DEVICE)
    assert extractor.layers == [
        "conv2d",
        "max_pooling2d",
        "conv2d_1",
        "max_pooling2d_1",
        "conv2d_2",
        "dense",
        "dense_1",
    ]
    maps = extractor(np.zeros((2, 1, 28, 28), np.float32), layers=["conv2d", "dense_1"])
    assert list(maps) == ["conv2d", "dense_1"] and maps["conv2d"].shape == (2, 32, 26, 26)
    np.testing.assert_allclose(maps["dense_1"].sum(axis=1), 1, rtol=1e-5)  # softmax, after its activation


def test_asking_for_a_shallow_layer_computes_only_its_part(exported):
    _, results = exported
    _, result = results["vgg16"]
    onnx_file = result.version_dir / "model.onnx"
    whole = onnx.load(str(onnx_file)).graph
    part = onnx.load_from_string(pruned_graph(onnx_file, ["block1_conv1"])).graph
    convolutions = lambda graph: sum(node.op_type == "Conv" for node in graph.node)  # noqa: E731
    assert (convolutions(whole), convolutions(part)) == (13, 1)
    assert [o.name for o in part.output] == ["block1_conv1"]


def test_server_and_in_process_agree_and_send_only_what_was_asked(exported):
    repo, results = exported
    _, result = results["vgg16"]
    local = LocalFeatureExtractor(result.version_dir / "model.onnx", device=TEST_DEVICE)
    pictures = [np.random.default_rng(i).integers(0, 256, (80, 100, 3), dtype=np.uint8) for i in range(3)]
    with serve_in_thread(
        ServerSettings(repository=repo, host="127.0.0.1", port=0, device=TEST_DEVICE, metrics_port=-1)
    ) as server:
        with InferenceClient(f"127.0.0.1:{server.port}") as client:
            served = extract_features(pictures, model="vgg16_features", layers=["block3_conv1"], client=client)
            everything = extract_features(pictures, model="vgg16_features", client=client)
        parts = server.dataplane.model("vgg16_features")._pruned
        assert list(parts) == [frozenset({"block3_conv1"})]  # one pruned session, for the one layer asked
    assert list(served) == ["block3_conv1"]
    in_process = local(pictures, layers=["block3_conv1"])
    np.testing.assert_allclose(served["block3_conv1"], in_process["block3_conv1"], rtol=1e-5, atol=1e-6)
    assert list(everything) == CASES["vgg16"][1]
    np.testing.assert_allclose(everything["block3_conv1"], in_process["block3_conv1"], rtol=1e-5, atol=1e-6)


def test_bad_layer_names(exported, tmp_path):
    _, results = exported
    _, result = results["vgg16"]
    with pytest.raises(ValueError, match="has no layer block9_conv1; it has block1_conv1"):
        LocalFeatureExtractor(result.version_dir / "model.onnx")(
            np.zeros((1, 3, 64, 64), np.float32), layers=["block9_conv1"]
        )
    with (
        pytest.raises(ValueError, match="vgg16 has no layer 'nope'; its layers are block1_conv1"),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", UntrainedWeightsWarning)
        export_features("vgg16", tmp_path, layers=["nope"], options=CASES["vgg16"][0])


def test_activation_grids_from_the_command_line(exported, tmp_path):
    from PIL import Image

    from deepr.cli import main
    from serving.tasks.activation_grid import activation_grid

    _, results = exported
    _, result = results["mnist_convnet"]
    picture = tmp_path / "digit.png"
    Image.fromarray((np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8)).save(picture)
    code = main(
        [
            "activations",
            str(picture),
            "--local",
            str(result.version_dir / "model.onnx"),
            "--first",
            "3",
            "--columns",
            "8",
            "--out",
            str(tmp_path / "grids"),
        ]
    )
    assert code == 0
    # conv2d: 32 channels in 4 rows of 8 cells of 64 px with 2 px gaps; max_pooling2d likewise; conv2d_1: 64 channels
    sizes = {}
    for path in (tmp_path / "grids").glob("*.png"):
        with Image.open(path) as grid:
            sizes[path.stem] = grid.size
    assert sizes == {
        "conv2d": (8 * 66 - 2, 4 * 66 - 2),
        "max_pooling2d": (8 * 66 - 2, 4 * 66 - 2),
        "conv2d_1": (8 * 66 - 2, 8 * 66 - 2),
    }
    # A dead channel (constant) is drawn flat; a live one spans the colour map.
    activation = np.stack([np.zeros((5, 5)), np.arange(25.0).reshape(5, 5)]).astype(np.float32)
    grid = np.asarray(activation_grid(activation, columns=2, cell=5, gap=0))
    assert (
        len(np.unique(grid[:, :5].reshape(-1, 3), axis=0)) == 1
        and len(np.unique(grid[:, 5:].reshape(-1, 3), axis=0)) == 25
    )
