"""Fixtures shared by every test folder: the embedded digits, one trained convnet, a
model repository and a running server built from them (each made once per session)."""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The onnxruntime device of the code under test: servers, local extractors, Grad-CAM.
# CI has no GPU, so the default is the CPU; on a GPU host `DEEPR_TEST_DEVICE=cuda python -m
# pytest` runs the whole suite on the CUDA provider. References computed inside the tests
# (PyTorch, onnxruntime sessions the tests build) stay on the CPU either way.
TEST_DEVICE = os.environ.get("DEEPR_TEST_DEVICE", "cpu")


_SESSION_HOME: str | None = None


def pytest_configure(config) -> None:
    _use_a_session_home()
    if TEST_DEVICE not in ("cpu", "cuda"):
        pytest.exit(f"DEEPR_TEST_DEVICE={TEST_DEVICE!r}: expected cpu or cuda", returncode=4)
    if TEST_DEVICE == "cuda":
        from serving.runtime.providers import cuda_usable

        usable, reason = cuda_usable()
        if not usable:
            pytest.exit(
                f"DEEPR_TEST_DEVICE=cuda, but onnxruntime's CUDA provider cannot run here: {reason}", returncode=4
            )


def _use_a_session_home() -> None:
    """The suite neither reads nor writes the machine user's DEEPR_HOME: models they imported
    would join every test that goes over the zoo, and the default repository would be theirs.
    Every test, and every process a test starts, gets one empty home for the session."""
    global _SESSION_HOME
    _SESSION_HOME = tempfile.mkdtemp(prefix="deepr-test-home-")
    os.environ["DEEPR_HOME"] = _SESSION_HOME


def pytest_unconfigure(config) -> None:
    if _SESSION_HOME is not None:
        shutil.rmtree(_SESSION_HOME, ignore_errors=True)


def pytest_report_header(config) -> str:
    return f"deepr: code under test runs on {TEST_DEVICE} (DEEPR_TEST_DEVICE)"


@pytest.fixture(scope="session")
def digits():
    from zoo.datasets import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def trained_convnet(tmp_path_factory, digits):
    """mnist_convnet trained by its default recipe on the embedded digits."""
    from zoo.recipes import TrainConfig, train

    out = tmp_path_factory.mktemp("runs") / "mnist_convnet"
    return train(TrainConfig.for_model("mnist_convnet", out=out, progress=False), data=digits)


@pytest.fixture(scope="session")
def trained_catsdogs(tmp_path_factory):
    """catsdogs_convnet trained for one epoch on the embedded cat and dog photos."""
    from zoo.recipes import TrainConfig, train

    out = tmp_path_factory.mktemp("runs") / "catsdogs_convnet"
    return train(TrainConfig.for_model("catsdogs_convnet", out=out, epochs=1, progress=False))


@pytest.fixture(scope="session")
def trained_chars(tmp_path_factory):
    """char_lstm trained for one epoch on 60,000 characters of the standard library's
    docstrings; the corpus is docstrings.txt beside the run's folder."""
    from zoo.datasets.stdlib_text import docstrings
    from zoo.recipes import TrainConfig, train

    root = tmp_path_factory.mktemp("runs")
    corpus = root / "docstrings.txt"
    corpus.write_text(docstrings(max_chars=60_000))
    config = TrainConfig.for_model(
        "char_lstm", out=root / "char_lstm", data=str(corpus), epochs=1, sample_temperatures=(), progress=False
    )
    return train(config)


@pytest.fixture(scope="session")
def catsdogs_repository(tmp_path_factory, trained_catsdogs) -> Path:
    """The trained cats-vs-dogs convnet four ways: float32 pixels and picture files, each
    with its Grad-CAM graph (catsdogs_convnet, _encoded, _gradcam, _encoded_gradcam);
    batches of up to 16."""
    from exporters import export_model
    from exporters.zoo_gradcam import export_gradcam

    repo = tmp_path_factory.mktemp("catsdogs")
    weights = trained_catsdogs.out / "weights.pt"
    for pixels in ("float32", "encoded"):
        export_model("catsdogs_convnet", repo, weights=weights, max_batch_size=16, pixels=pixels)
        export_gradcam("catsdogs_convnet", repo, weights=weights, max_batch_size=16, pixels=pixels)
    return repo


@pytest.fixture(scope="session")
def repository(tmp_path_factory, trained_convnet) -> Path:
    """A repository with the trained mnist_convnet and an untrained mnist_dense."""
    from exporters import UntrainedWeightsWarning, export_model

    repo = tmp_path_factory.mktemp("repository")
    export_model("mnist_convnet", repo, weights=trained_convnet.out / "weights.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWeightsWarning)
        export_model("mnist_dense", repo)
    return repo


@pytest.fixture(scope="session")
def server_url(repository) -> Iterator[str]:
    from serving.server.grpc.server import serve_in_thread
    from serving.server.settings import ServerSettings

    with serve_in_thread(ServerSettings(repository=repository, host="127.0.0.1", port=0, device=TEST_DEVICE)) as server:
        yield f"127.0.0.1:{server.port}"


@pytest.fixture(scope="session")
def prebuilt_graphs() -> Path | None:
    """DEEPR_GPU_GRAPHS: graphs made by scripts/tools/export_gpu_graphs.py, for GPU hosts whose
    PyTorch cannot export them; None: the tests export their own."""
    folder = os.environ.get("DEEPR_GPU_GRAPHS")
    return Path(folder) if folder else None


def pytest_collection_modifyitems(config, items):
    """`gpu` tests run only where onnxruntime's CUDA provider can run (never in CI)."""
    from serving.runtime.providers import cuda_usable

    usable, reason = cuda_usable()
    if usable:
        return
    skip = pytest.mark.skip(reason=f"needs CUDA: {reason}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    import trustme

    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    client_cert = ca.issue_cert("client@deepr")
    files = {
        "ca": folder / "ca.pem",
        "cert": folder / "server.pem",
        "key": folder / "server.key",
        "client_cert": folder / "client.pem",
        "client_key": folder / "client.key",
    }
    ca.cert_pem.write_to_path(files["ca"])
    server_cert.private_key_pem.write_to_path(files["key"])
    (files["cert"]).write_bytes(b"".join(blob.bytes() for blob in server_cert.cert_chain_pems))
    client_cert.private_key_pem.write_to_path(files["client_key"])
    (files["client_cert"]).write_bytes(b"".join(blob.bytes() for blob in client_cert.cert_chain_pems))
    return files
