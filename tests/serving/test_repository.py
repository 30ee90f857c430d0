"""A repository with broken or multi-version models: bad models are UNAVAILABLE with a reason, the rest serve."""

import shutil

import pytest

from conftest import TEST_DEVICE
from serving.protocol.errors import ModelNotFound, ModelNotReady
from serving.server.dataplane import DataPlane
from serving.server.model import RuntimeOptions
from serving.server.repository import READY, UNAVAILABLE, ModelRepository
from serving.server.settings import ServerSettings


@pytest.fixture
def repo(tmp_path, repository):
    target = tmp_path / "repo"
    shutil.copytree(repository, target)
    return target


def load(path, **settings):
    plane = DataPlane(
        ModelRepository(path, RuntimeOptions(device=TEST_DEVICE)), ServerSettings(repository=path, **settings)
    )
    plane.start()
    return plane


def test_corrupt_onnx_leaves_other_models_serving(repo):
    (repo / "mnist_dense" / "1" / "model.onnx").write_bytes(b"\x08\x01garbage")
    plane = load(repo)
    dense = plane.repository.entry("mnist_dense")
    assert dense.state == UNAVAILABLE and "onnxruntime cannot load" in dense.reason
    assert plane.repository.entry("mnist_convnet").state == READY
    assert not plane.model_ready("mnist_dense") and plane.model_ready("mnist_convnet")
    assert not plane.ready()  # strict readiness: every model must be ready
    assert load(repo, strict_readiness=False).ready()
    with pytest.raises(ModelNotReady, match="mnist_dense' is not ready"):
        plane.model("mnist_dense")


def test_config_that_contradicts_the_graph(repo):
    config = repo / "mnist_convnet" / "config.pbtxt"
    config.write_text(config.read_text().replace("dims: 28\n  dims: 28", "dims: 32\n  dims: 32"))
    entry = load(repo).repository.entry("mnist_convnet")
    assert entry.state == UNAVAILABLE and "dims [1, 32, 32], the graph has FP32 dims [1, 28, 28]" in entry.reason


def test_config_naming_another_model(repo):
    config = repo / "mnist_convnet" / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "mnist_convnet"', 'name: "other"'))
    assert "names the model 'other'" in load(repo).repository.entry("mnist_convnet").reason


def test_unparsable_config(repo):
    (repo / "mnist_convnet" / "config.pbtxt").write_text("max_batch_size: lots")
    assert "is not a valid model configuration" in load(repo).repository.entry("mnist_convnet").reason


def test_missing_version_directory(repo):
    shutil.rmtree(repo / "mnist_dense" / "1")
    assert "no version directory holding model.onnx" in load(repo).repository.entry("mnist_dense").reason


def test_version_policy(repo):
    shutil.copytree(repo / "mnist_dense" / "1", repo / "mnist_dense" / "2")
    plane = load(repo)
    assert plane.model_versions("mnist_dense") == ["2"]  # default: latest 1
    assert plane.model("mnist_dense").version == "2"
    with pytest.raises(ModelNotFound, match=r"'mnist_dense' version 1 is not found; loaded versions: \['2'\]"):
        plane.model("mnist_dense", "1")
    config = repo / "mnist_dense" / "config.pbtxt"
    config.write_text(config.read_text() + "version_policy { all { } }\n")
    assert load(repo).model_versions("mnist_dense") == ["1", "2"]
    config.write_text(config.read_text().replace("all { }", "specific { versions: 1 }"))
    assert load(repo).model_versions("mnist_dense") == ["1"]


def test_missing_repository(tmp_path):
    from serving.protocol.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="does not exist"):
        load(tmp_path / "nowhere")


@pytest.mark.parametrize("how", ["dot-dot", "symbolic link"])
def test_label_files_outside_the_model_folder_are_refused(repo, tmp_path, how):
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0\n" * 10)
    config = repo / "mnist_convnet" / "config.pbtxt"
    if how == "dot-dot":
        config.write_text(
            config.read_text().replace('label_filename: "labels.txt"', f'label_filename: "../../{secret.name}"')
        )
    else:
        (repo / "mnist_convnet" / "labels.txt").unlink()
        (repo / "mnist_convnet" / "labels.txt").symlink_to(secret)
    entry = load(repo).repository.entry("mnist_convnet")
    assert (
        entry.state == UNAVAILABLE and "label_filename" in entry.reason and "outside the model's folder" in entry.reason
    )


def test_model_files_outside_the_model_folder_are_refused(repo, tmp_path):
    shutil.copy(repo / "mnist_convnet" / "1" / "model.onnx", tmp_path / "elsewhere.onnx")
    config = repo / "mnist_convnet" / "config.pbtxt"
    config.write_text(config.read_text() + 'default_model_filename: "../../elsewhere.onnx"\n')
    entry = load(repo).repository.entry("mnist_convnet")
    assert entry.state == UNAVAILABLE and "default_model_filename" in entry.reason and "outside" in entry.reason


def test_overlong_names_are_invalid_and_not_echoed_whole(repo):
    from serving.protocol.errors import InvalidInput

    plane = load(repo)
    name = "m" * 5000
    with pytest.raises(InvalidInput, match=r"is not a model name: 1 to 255") as caught:
        plane.repository.reload(name)
    assert "(5000 characters)" in str(caught.value) and len(str(caught.value)) < 300
    with pytest.raises(ModelNotFound) as caught:
        plane.model(name)
    assert len(str(caught.value)) < 400


def test_an_unloaded_model_answers_unavailable_not_a_failed_precondition(repo):
    """A request that reaches a model after its unload (a reload replaced it) may retry."""
    import grpc
    import numpy as np

    repository = ModelRepository(repo, RuntimeOptions(device=TEST_DEVICE))
    model = repository.load("mnist_convnet").latest
    model.unload()
    with pytest.raises(ModelNotReady, match="is not loaded") as raised:
        model.predict({"images": np.zeros((1, 1, 28, 28), np.float32)})
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
