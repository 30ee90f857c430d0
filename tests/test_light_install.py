"""The runtime without PyTorch: an app that serves exported graphs, classifies against a
server, or runs Grad-CAM and feature graphs in-process needs only `pip install deepr`. Each
check runs in a subprocess where importing torch (or torchvision) fails."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
BLOCKED = ("torch", "torchvision", "onnxscript", "sklearn", "skimage", "tqdm")


@pytest.fixture(scope="module")
def without_zoo(tmp_path_factory) -> dict[str, str]:
    """An environment in which the zoo's packages cannot be imported."""
    blocker = tmp_path_factory.mktemp("blocked")
    for name in BLOCKED:
        (blocker / name).mkdir()
        (blocker / name / "__init__.py").write_text(
            f"raise ModuleNotFoundError('{name} is blocked: the runtime must not need it', name='{name}')\n"
        )
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(ROOT)])}


@pytest.fixture(scope="module")
def runtime_repository(repository, trained_convnet, tmp_path_factory) -> Path:
    from exporters import UntrainedWeightsWarning
    from exporters.features import export_features
    from exporters.zoo_gradcam import export_gradcam

    repo = tmp_path_factory.mktemp("runtime") / "repository"
    shutil.copytree(repository, repo)
    weights = trained_convnet.out / "weights.pt"
    export_gradcam("mnist_convnet", repo, weights=weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWeightsWarning)
        export_features("mnist_convnet", repo, weights=weights)
    return repo


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=180)


def test_serve_classify_gradcam_and_features_without_torch(without_zoo, runtime_repository, held_out_digit):
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        import numpy as np
        from PIL import Image
        from serving.server.grpc.server import serve_in_thread
        from serving.server.settings import ServerSettings
        from serving.tasks.classify import classify
        from serving.tasks.features import LocalFeatureExtractor
        from serving.tasks.gradcam import LocalGradCAM

        repo, digit = Path(sys.argv[1]), Image.open(sys.argv[2])
        settings = ServerSettings(repository=repo, host="127.0.0.1", port=0, device="cpu", metrics_port=-1)
        with serve_in_thread(settings) as server:
            top = classify([digit], "mnist_convnet", url=f"127.0.0.1:{server.port}")[0][0]
        heat = LocalGradCAM(repo / "mnist_convnet_gradcam" / "1" / "model.onnx", device="cpu")([digit])[0]
        extractor = LocalFeatureExtractor(repo / "mnist_convnet_features" / "1" / "model.onnx", device="cpu")
        features = extractor([digit])
        assert "torch" not in sys.modules
        print(top.label, heat.class_index, heat.heatmap.shape, len(features))
        """
    )
    done = run(without_zoo, "-c", script, str(runtime_repository), str(held_out_digit[0]))
    assert done.returncode == 0, done.stderr[-3000:]
    label, gradcam_class, *_ = done.stdout.split()
    assert label == gradcam_class == str(held_out_digit[1])


def test_the_cli_serves_and_classifies_without_torch_and_says_what_training_needs(
    without_zoo, runtime_repository, held_out_digit, tmp_path
):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve = [sys.executable, "-m", "deepr", "serve", "--repository", str(runtime_repository), "--port", str(port)]
    log = tmp_path / "serve.log"
    with log.open("w") as sink:
        server = subprocess.Popen(
            [*serve, "--http-port", "0", "--metrics-port", "-1", "--device", "cpu"], env=without_zoo, stderr=sink
        )
    try:
        for _ in range(300):
            done = run(
                without_zoo,
                "-m",
                "deepr",
                "classify",
                "--url",
                f"127.0.0.1:{port}",
                "--model",
                "mnist_convnet",
                str(held_out_digit[0]),
            )
            if "no deepr server reachable" not in done.stderr:
                break
        assert done.returncode == 0, done.stderr + log.read_text()
        assert done.stdout.split()[1] == str(held_out_digit[1])
        http_port = re.search(r"HTTP/REST on [\d.]+:(\d+)", log.read_text()).group(1)  # the REST endpoint too
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=10) as ready:
            assert ready.status == 200
    finally:
        server.terminate()
        server.wait(30)
    done = run(without_zoo, "-m", "deepr", "train", "mnist_dense", "--out", str(tmp_path / "run"))
    assert done.returncode == 1
    assert "pip install 'deepr[zoo]'" in done.stderr and "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def held_out_digit(digits, trained_convnet, tmp_path_factory) -> tuple[Path, int]:
    """A held-out digit the trained convnet gets right (with PyTorch, here), as a PNG."""
    import torch

    x, y = digits.test.tensors
    with torch.no_grad():
        right = (trained_convnet.model(x[:20]).argmax(1) == y[:20]).nonzero()
    i = int(right[0])
    path = tmp_path_factory.mktemp("digit") / "digit.png"
    Image.fromarray((x[i, 0].numpy() * 255).round().astype(np.uint8)).save(path)
    return path, int(y[i])
