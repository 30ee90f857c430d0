"""Grad-CAM graphs: onnxruntime alone gives PyTorch autograd's heatmaps, served or in-process."""

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from conftest import TEST_DEVICE
from exporters import UntrainedWeightsWarning
from exporters.gradcam import GradCAM, hook_gradcam, last_conv_layer
from exporters.zoo_gradcam import export_gradcam
from serving.tasks.gradcam import LocalGradCAM, gradcam, overlay

# Every zoo convnet with a classifier, at its last convolution; the MNIST convnet also at
# its first, which has two convolutions and two poolings between it and the output, and
# VGG16 at a layer inside its base.
CASES = [
    ("mnist_convnet", None),
    ("mnist_convnet", "conv2d"),
    ("mnist_convnet_nopool", None),
    ("catsdogs_convnet", None),
    ("catsdogs_vgg16", "vgg16.block5_conv3"),
]


def pictures_for(name, count):
    spec = zoo.get_model_spec(name)
    channels, height, width = spec.input_shape
    if channels == 1:
        from zoo.datasets.digits import load_digits_28x28

        return [Image.fromarray(d) for d in load_digits_28x28()[0][:count]]
    import skimage.data

    return [
        Image.fromarray(getattr(skimage.data, n)()).convert("RGB") for n in ("chelsea", "coffee", "astronaut", "rocket")
    ][:count]


@pytest.mark.parametrize("name, layer", CASES)
def test_exported_heatmaps_equal_autograd(tmp_path, name, layer):
    torch.manual_seed(0)
    model = zoo.get_model(name).eval()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    result = export_gradcam(name, tmp_path / "repo", weights=tmp_path / "weights.pt", layer=layer)
    # random inputs, batch 1 and 5, checked inside the export; float32 error depends on the CPU's
    # kernels (VGG16's graphs: under 1e-6 where this was first run, 1.6e-6 on an AMD EPYC)
    assert result.validation.max_abs_diff < 5e-6
    local = LocalGradCAM(result.version_dir / "model.onnx")
    pictures = pictures_for(name, 4)
    classes = [-1, 0, -1, 0] if zoo.get_model_spec(name).task == "binary" else [-1, 3, 7, -1]
    got = local(pictures, classes)  # real pictures, a batch asking for different classes
    batch = torch.from_numpy(local.preprocess(pictures))
    layer = layer or last_conv_layer(model)
    want = GradCAM(model, layer)(batch, torch.tensor(classes))[3].detach().numpy()
    hooks = hook_gradcam(model, layer, batch, torch.tensor(classes)).numpy()
    for g, w, h in zip(got, want, hooks):
        peak = max(float(w.max()), 1e-12)
        assert np.abs(g.raw_heatmap - w).max() <= 1e-4 * peak
        assert np.abs(h - w).max() <= 1e-4 * peak  # the graph's own reference agrees with hook-based Grad-CAM
    assert got[1].class_index == classes[1]


def test_served_equals_in_process(tmp_path, trained_convnet, digits):
    from serving.server.grpc.server import serve_in_thread
    from serving.server.settings import ServerSettings

    result = export_gradcam("mnist_convnet", tmp_path, weights=trained_convnet.out / "weights.pt")
    pictures = [
        Image.fromarray((digits.test.tensors[0][i, 0].numpy() * 255).round().astype(np.uint8)) for i in range(6)
    ]
    local = LocalGradCAM(result.version_dir / "model.onnx")(pictures, [-1, 2, -1, 5, -1, -1])
    with serve_in_thread(ServerSettings(repository=tmp_path, host="127.0.0.1", port=0, device=TEST_DEVICE)) as server:
        served = gradcam(
            pictures, "mnist_convnet_gradcam", url=f"127.0.0.1:{server.port}", class_index=[-1, 2, -1, 5, -1, -1]
        )
    for a, b in zip(local, served):
        assert (a.class_index, a.label) == (b.class_index, b.label)
        np.testing.assert_allclose(a.raw_heatmap, b.raw_heatmap, rtol=1e-5, atol=1e-6)
        assert a.heatmap.shape == (28, 28) and 0.0 <= a.heatmap.min() and a.heatmap.max() <= 1.0
    labels = digits.test.tensors[1][:6].tolist()
    assert sum(r.class_index == y for r, y in zip(local[::2], labels[::2])) >= 2  # top classes of a trained model
    picture = overlay(pictures[0], local[0].heatmap)
    assert picture.size == (28, 28) and picture.mode == "RGB"


def test_logit_score_and_bad_requests(tmp_path):
    with pytest.warns(UntrainedWeightsWarning):
        result = export_gradcam("mnist_convnet", tmp_path, score="logit")
    local = LocalGradCAM(result.version_dir / "model.onnx")
    with pytest.raises(ValueError, match="class index 12 is out of range: the model has 10 classes"):
        local([np.zeros((28, 28), np.uint8)], 12)
    with pytest.raises(ValueError, match="no layer 'conv9'"):
        GradCAM(zoo.get_model("mnist_convnet"), "conv9")
    with pytest.raises(ValueError, match="has no convolution"):
        last_conv_layer(zoo.get_model("mnist_dense"))


def test_cli_writes_the_overlay(tmp_path):
    import subprocess
    import sys

    with pytest.warns(UntrainedWeightsWarning):
        result = export_gradcam("mnist_convnet", tmp_path)
    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(tmp_path / "d.png")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "deepr",
            "gradcam",
            "--local",
            str(result.version_dir / "model.onnx"),
            str(tmp_path / "d.png"),
            "--out",
            str(tmp_path / "heat.png"),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "heat.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing = subprocess.run(
        [sys.executable, "-m", "deepr", "gradcam", str(tmp_path / "d.png")], capture_output=True, text=True
    )
    assert missing.returncode == 2 and "give --model NAME" in missing.stderr


@pytest.mark.gpu
def test_cuda_heatmaps_equal_cpu_at_batch_128(tmp_path, prebuilt_graphs):
    """With TF32 off (deepr's default), CUDA's heatmaps equal the CPU's within 1e-4 of their maximum."""
    if prebuilt_graphs:
        onnx_file = prebuilt_graphs / "catsdogs_convnet_gradcam.onnx"
    else:
        torch.manual_seed(0)
        torch.save(zoo.get_model("catsdogs_convnet").state_dict(), tmp_path / "weights.pt")
        result = export_gradcam(
            "catsdogs_convnet", tmp_path / "repo", weights=tmp_path / "weights.pt", max_batch_size=128
        )
        onnx_file = result.version_dir / "model.onnx"
    pictures = [np.random.default_rng(i).integers(0, 256, (150, 150, 3), dtype=np.uint8) for i in range(128)]
    cpu = LocalGradCAM(onnx_file, device="cpu")(pictures)
    cuda = LocalGradCAM(onnx_file, device="cuda")(pictures)
    for a, b in zip(cpu, cuda):
        assert np.abs(a.raw_heatmap - b.raw_heatmap).max() <= 1e-4 * max(float(a.raw_heatmap.max()), 1e-12)
