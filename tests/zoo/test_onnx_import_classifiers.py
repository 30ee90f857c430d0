"""Grad-CAM of common classifiers from elsewhere: torchvision's MobileNetV3-small (HardSwish,
HardSigmoid in squeeze-and-excitation, Mul) and EfficientNet-B0 (SiLU as Sigmoid and Mul,
squeeze-and-excitation) exported by torch.onnx.export, imported by `deepr import`, and their
Grad-CAM graphs at the default tensor and inside a squeeze-and-excitation block held to
pytorch-grad-cam at the same tensor. Random weights (no download): the backward pass is what
is under test, not the classes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from grad_cam_reference import reference_cam

from zoo._registry import unregister_imported

SIDE = 64

EXPORT = textwrap.dedent(
    """
    import sys, torch, torchvision
    model = getattr(torchvision.models, sys.argv[1])(num_classes=10)
    model.load_state_dict(torch.load(sys.argv[2]))
    model.eval()
    torch.onnx.export(
        model, (torch.zeros(1, 3, {side}, {side}),), sys.argv[3], input_names=["input"], output_names=["logits"],
        dynamic_axes={{"input": {{0: "batch"}}, "logits": {{0: "batch"}}}},
    )
    """
).format(side=SIDE)

CASES = {
    "mobilenet_v3_small": torchvision.models.mobilenet_v3_small,
    "efficientnet_b0": torchvision.models.efficientnet_b0,
}


def _first_excitation(path) -> str:
    """The tensor the first squeeze-and-excitation block writes: a Mul of a (N, C, H, W) map by
    a (N, C, 1, 1) scale."""
    from zoo.onnx.files import tensor_shapes

    model = onnx.load(str(path))
    shapes = tensor_shapes(model)
    for node in model.graph.node:
        if node.op_type != "Mul" or len(node.input) != 2:
            continue
        kinds = [shapes.get(i, []) for i in node.input]
        out = shapes.get(node.output[0], [])
        if len(out) == 4 and out[2:] != [1, 1] and any(len(k) == 4 and k[2:] == [1, 1] for k in kinds):
            return node.output[0]
    raise AssertionError("no squeeze-and-excitation block in the graph")


@pytest.fixture(scope="module", params=sorted(CASES))
def classifier(request, tmp_path_factory):
    from zoo.onnx.store import import_onnx

    name = request.param
    torch.manual_seed(0)
    model = CASES[name](num_classes=10).eval()
    folder = tmp_path_factory.mktemp(name)
    weights, path = folder / "weights.pt", folder / f"{name}.onnx"
    torch.save(model.state_dict(), weights)
    # as a user's own script exports it: torch.onnx.export with its defaults
    done = subprocess.run([sys.executable, "-c", EXPORT, name, str(weights), str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    imported = f"user_{name}"
    home = folder / "home"
    import_onnx(path, imported, home=home)
    excitation = next(m for m in model.modules() if isinstance(m, torchvision.ops.SqueezeExcitation))
    yield {"name": imported, "model": model, "path": path, "inner": (excitation, _first_excitation(path))}
    unregister_imported(imported)


def _gradcam(name: str, repository, layer: str | None, x: np.ndarray, classes: list[int]) -> dict[str, np.ndarray]:
    from exporters.onnx_graphs import export_imported_gradcam

    result, _ = export_imported_gradcam(name, repository, layer=layer, max_batch_size=8)
    session = ort.InferenceSession(str(result.version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = session.run(names, {"images": x, "class_index": np.array(classes, np.int64).reshape(-1, 1)})
    return dict(zip(names, outputs))


@pytest.mark.parametrize("where", ["default", "inner"])
def test_gradcam_equals_pytorch_grad_cam(classifier, tmp_path, where):
    model = classifier["model"]
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((3, 3, SIDE, SIDE)).astype(np.float32))
    classes = [2, -1, 7]
    module, tensor = classifier["inner"] if where == "inner" else (model.features[-1], None)
    served = _gradcam(classifier["name"], tmp_path, tensor, x.numpy(), classes)
    chosen = [c if c >= 0 else int(t) for c, t in zip(classes, served["scores"].argmax(1))]
    expected = reference_cam(model, module, x, chosen)
    heat = served["heatmap"]
    assert heat.shape == expected.shape
    assert np.abs(heat - expected).max() <= 1e-4 * np.abs(expected).max(), np.abs(heat - expected).max()
