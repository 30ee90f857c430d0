"""`deepr import FILE.onnx`, with a file this project did not write: a torchvision classifier
exported by torch.onnx.export in a process of its own, as a user would. It is then served,
explained (Grad-CAM at named tensors, checked against pytorch-grad-cam on the original
torchvision module), its activations read, and quantized to int8 with its accuracy stated."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from grad_cam_reference import reference_cam
from PIL import Image

import zoo
from conftest import TEST_DEVICE
from deepr.cli import main
from serving.client import InferenceClient
from serving.server.grpc.server import serve_in_thread
from serving.server.settings import ServerSettings
from serving.tasks.classify import classify
from zoo._registry import unregister_imported
from zoo.datasets import load_mnist_10k

SIDE = 28

EXPORT = textwrap.dedent(
    """
    import sys, torch, torchvision
    model = torchvision.models.resnet18(num_classes=10)
    model.load_state_dict(torch.load(sys.argv[1]))
    model.eval()
    torch.onnx.export(
        model, (torch.zeros(1, 3, {side}, {side}),), sys.argv[2], input_names=["input"], output_names=["logits"],
        dynamic_axes={{"input": {{0: "batch"}}, "logits": {{0: "batch"}}}},
    )
    """
).format(side=SIDE)


MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
"""torchvision's normalisation, which the import is told with --mean and --std."""


def prepared(images: np.ndarray) -> torch.Tensor:
    """MNIST digits (N, 28, 28) uint8 as torchvision's models take pictures: (N, 3, 28, 28),
    scaled and normalised."""
    x = torch.from_numpy(images.astype(np.float32) / 255).unsqueeze(1).repeat(1, 3, 1, 1)
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def user_file(tmp_path_factory) -> tuple[Path, torch.nn.Module, np.ndarray, np.ndarray]:
    """A resnet18 of 10 classes trained one epoch on 4,000 real MNIST digits (as RGB 28x28),
    exported to ONNX by another Python process; the module, and 400 held-out digits."""
    folder = tmp_path_factory.mktemp("user")
    images, labels = load_mnist_10k()
    order = np.random.default_rng(0).permutation(len(images))
    train, held_out = order[:4000], order[-400:]
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = prepared(images[train]), torch.from_numpy(labels[train])
    model.train()
    for i in range(0, len(x), 64):
        loss = torch.nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    torch.save(model.state_dict(), folder / "weights.pt")
    done = subprocess.run(
        [sys.executable, "-c", EXPORT, str(folder / "weights.pt"), str(folder / "resnet18.onnx")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return folder / "resnet18.onnx", model, images[held_out], labels[held_out]


@pytest.fixture(scope="module")
def imported(user_file, tmp_path_factory):
    """The file through `deepr import`, its Grad-CAM graphs (default tensor and layer3's output)
    and a feature graph of two tensors exported; a server on the repository."""
    path, model, _, _ = user_file
    home = tmp_path_factory.mktemp("home")
    repository = home / "repository"
    labels = home / "labels.txt"
    labels.write_text("\n".join(str(d) for d in range(10)) + "\n")
    monkey = pytest.MonkeyPatch()
    monkey.setenv("DEEPR_HOME", str(home))
    relus = [n.output[0] for n in onnx.load(str(path)).graph.node if n.op_type == "Relu"]
    layer1, layer2, layer3 = relus[4], relus[8], relus[12]  # the blocks' outputs: 1 + 4 per layer
    try:
        argv = [
            "import",
            str(path),
            "--name",
            "user_resnet18",
            "--labels",
            str(labels),
            "--repository",
            str(repository),
        ]
        assert main([*argv, "--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD))]) == 0
        assert main(["export", "user_resnet18", "--gradcam", "--repository", str(repository)]) == 0
        staging = home / "layer3"
        assert main(["export", "user_resnet18", "--gradcam", "--layer", layer3, "--repository", str(staging)]) == 0
        (staging / "user_resnet18_gradcam").rename(repository / "user_resnet18_gradcam_layer3")
        config = repository / "user_resnet18_gradcam_layer3" / "config.pbtxt"
        config.write_text(config.read_text().replace('"user_resnet18_gradcam"', '"user_resnet18_gradcam_layer3"'))
        layers = f"{layer1},{layer2}"
        assert main(["export", "user_resnet18", "--features", "--layers", layers, "--repository", str(repository)]) == 0
        settings = ServerSettings(repository=repository, host="127.0.0.1", port=0, device=TEST_DEVICE, http_port=-1)
        with serve_in_thread(settings) as server:
            yield {"url": f"127.0.0.1:{server.port}", "home": home, "layers": (layer1, layer2, layer3), "model": model}
    finally:
        unregister_imported("user_resnet18")
        monkey.undo()


def test_the_import_is_a_zoo_model_with_its_summary(imported, capsys):
    spec = zoo.get_model_spec("user_resnet18")
    assert spec.onnx_file and spec.classes == tuple(str(d) for d in range(10))
    summary = zoo.model_summary("user_resnet18")
    assert {r.layer_type for r in summary.rows} >= {"Conv", "Relu", "Gemm"}
    parameters = sum(p.numel() for p in imported["model"].parameters())
    assert abs(summary.total_params - parameters) < 0.01 * parameters  # batch norms folded into the convolutions
    capsys.readouterr()
    assert main(["models", "user_*"]) == 0
    assert "imported from ONNX (resnet18.onnx)" in capsys.readouterr().out


def test_served_classes_equal_onnxruntime_and_the_module(imported, user_file):
    path, model, images, labels = user_file
    pictures = [Image.fromarray(d) for d in images[:32]]
    served = classify(pictures, "user_resnet18", url=imported["url"], top_k=1)
    x = prepared(images[:32]).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": x})[0]
    with InferenceClient(imported["url"]) as client:
        np.testing.assert_array_equal(client.infer("user_resnet18", {"input": x})["logits"], logits)
    assert [p[0].label for p in served] == [str(i) for i in logits.argmax(1)]
    np.testing.assert_allclose(logits, model(torch.from_numpy(x)).detach().numpy(), atol=1e-4 * np.abs(logits).max())


@pytest.mark.parametrize(
    "graph, module", [("user_resnet18_gradcam", "layer4"), ("user_resnet18_gradcam_layer3", "layer3")]
)
def test_gradcam_of_the_imported_graph_equals_pytorch_grad_cam(imported, user_file, graph, module):
    _, model, images, _ = user_file
    x = prepared(images[:6])
    classes = [3, -1, 7, -1, 0, 9]
    with InferenceClient(imported["url"]) as client:
        served = client.infer(graph, {"images": x.numpy(), "class_index": np.array(classes, np.int64).reshape(-1, 1)})
    top = served["scores"].argmax(1)
    chosen = [c if c >= 0 else int(t) for c, t in zip(classes, top)]
    expected = reference_cam(model, getattr(model, module)[-1], x, chosen)
    heat = served["heatmap"]
    assert heat.shape == expected.shape
    assert np.abs(heat - expected).max() <= 1e-4 * np.abs(expected).max(), np.abs(heat - expected).max()


def test_features_at_two_named_tensors_equal_the_modules_outputs(imported, user_file):
    _, model, images, _ = user_file
    x = prepared(images[:4])
    seen = {}
    hooks = [
        getattr(model, m).register_forward_hook(lambda _, __, out, m=m: seen.__setitem__(m, out))
        for m in ("layer1", "layer2")
    ]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    layer1, layer2, _ = imported["layers"]
    with InferenceClient(imported["url"]) as client:
        features = client.infer("user_resnet18_features", {"images": x.numpy()})
    for tensor, module in ((layer1, "layer1"), (layer2, "layer2")):
        expected = seen[module].numpy()
        assert np.abs(features[tensor] - expected).max() <= 1e-4 * np.abs(expected).max()


def test_int8_of_the_import_states_its_accuracy(imported, user_file, tmp_path, capsys, monkeypatch):
    _, _, images, labels = user_file
    monkeypatch.setenv("DEEPR_HOME", str(imported["home"]))
    for split, part in (("train", slice(0, 200)), ("test", slice(200, 400))):
        for i, (digit, label) in enumerate(zip(images[part], labels[part])):
            folder = tmp_path / "data" / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(digit).save(folder / f"{i}.png")
    capsys.readouterr()
    code = main(
        [
            "export",
            "user_resnet18",
            "--precision",
            "int8",
            "--data",
            str(tmp_path / "data"),
            "--max-accuracy-drop",
            "5",
            "--repository",
            str(tmp_path / "repo"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "user_resnet18_int8:" in out and "held-out" in out, out
    assert (tmp_path / "repo" / "user_resnet18_int8" / "1" / "model.onnx").is_file()
    print(out)


@pytest.mark.parametrize("layer", ["no_such_tensor", "x" * 5000, ""])
def test_a_layer_the_graph_lacks_is_bad_input(imported, layer, tmp_path, capsys):
    """Exit 2 naming the layer (at most 80 of its characters) and the graph's own; an empty name
    is refused rather than taken for the default."""
    capsys.readouterr()
    argv = ["export", "user_resnet18", "--gradcam", "--layer", layer, "--repository", str(tmp_path)]
    code, error = main(argv), capsys.readouterr().err
    assert code == 2, error
    assert len(error) < 1200, error
    if layer:
        assert "has no 4-D activation" in error and layer[:80] in error
    else:
        assert "--layer is empty" in error
    assert not (tmp_path / "user_resnet18_gradcam").exists()


def test_logits_are_said_to_be_and_shown_through_a_softmax(imported, user_file, capsys):
    """The exported resnet18 ends in Gemm: its output is logits, written into the config; deepr
    classify shows their softmax (scores in [0, 1]), and says so."""
    path, _, images, _ = user_file
    with InferenceClient(imported["url"]) as client:
        config = client.model_config("user_resnet18")
    assert config.parameters["deepr.outputs"].string_value == "logits"
    picture = imported["home"] / "digit.png"
    Image.fromarray(images[0]).save(picture)
    capsys.readouterr()
    assert main(["classify", "--model", "user_resnet18", "--url", imported["url"], "--top-k", "10", str(picture)]) == 0
    out, err = capsys.readouterr()
    scores = [float(s.strip("()")) for s in out.split()[2::2]]
    x = prepared(images[:1]).numpy()
    logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0][0]
    softmax = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(scores, np.sort(softmax)[::-1], atol=1e-4)
    assert "user_resnet18 answers logits; the scores shown are their softmax" in err


def test_summary_names_the_tensors_layer_takes(imported, capsys):
    capsys.readouterr()
    assert main(["summary", "user_resnet18"]) == 0
    out = capsys.readouterr().out
    layer1, layer2, layer3 = imported["layers"]
    assert "--gradcam --layer T" in out and all(name in out for name in (layer1, layer2, layer3))
    assert "(Identity)" not in out
    widths = {len(line) for line in out.splitlines() if line.startswith(("_", "="))}
    assert len(widths) == 1 and all(len(line) <= max(widths) for line in out.splitlines()[:-8])


def test_importing_again_keeps_labels_and_preprocessing_not_given_anew(imported, user_file, tmp_path, capsys):
    path = user_file[0]
    capsys.readouterr()
    argv = ["import", str(path), "--name", "user_resnet18", "--repository", str(tmp_path / "repository")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    kept_line = next(line for line in out.splitlines() if "kept from its previous import" in line)
    assert "--mean (0.485, 0.456, 0.406)" in kept_line and "--std (0.229, 0.224, 0.225)" in kept_line
    record = zoo.get_model_spec("user_resnet18")
    assert record.classes == tuple(str(d) for d in range(10))
    from zoo.onnx.store import imported_onnx

    kept, _ = imported_onnx("user_resnet18")
    assert kept.picture_preprocessing().mean == MEAN and kept.picture_preprocessing().std == STD


def test_classify_on_a_bare_graph_points_to_deepr_import(user_file, tmp_path, capsys):
    path = user_file[0]
    (tmp_path / "repository" / "bare" / "1").mkdir(parents=True)
    onnx.save(onnx.load(str(path)), str(tmp_path / "repository" / "bare" / "1" / "model.onnx"))  # weights inline
    Image.new("L", (28, 28)).save(tmp_path / "digit.png")
    settings = ServerSettings(repository=tmp_path / "repository", host="127.0.0.1", port=0, device=TEST_DEVICE)
    settings.http_port = settings.metrics_port = -1
    with serve_in_thread(settings) as server:
        capsys.readouterr()
        code = main(["classify", "--model", "bare", "--url", f"127.0.0.1:{server.port}", str(tmp_path / "digit.png")])
    assert code == 2
    assert "deepr import FILE.onnx --name NAME" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("last", "given", "expected"),
    [("Softmax", None, "probabilities"), (None, None, "logits"), (None, "probabilities", "probabilities")],
)
def test_what_the_output_holds_is_read_from_the_graph_unless_given(tmp_path, last, given, expected):
    from onnx import TensorProto, helper

    from zoo.onnx.store import import_onnx

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    w = onnx.numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["z" if last else "y"])]
    if last:
        nodes.append(helper.make_node(last, ["z"], ["y"], axis=1))
    graph = helper.make_graph(nodes, "g", [x], [y], [w])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    record = import_onnx(path, "outputs_probe", outputs=given, home=tmp_path / "home")
    unregister_imported("outputs_probe")
    assert record.outputs == expected
