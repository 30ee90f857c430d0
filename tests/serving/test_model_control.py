"""RepositoryModelLoad / RepositoryModelUnload through tritonclient: load, reload a new
version without dropping requests in flight, unload, and names that try to leave the
repository."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import threading
import time
import warnings
from typing import Iterator

import numpy as np
import pytest
import tritonclient.grpc as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from conftest import TEST_DEVICE
from serving.server.grpc.server import serve_in_thread
from serving.server.settings import ServerSettings


def images(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, 1, 28, 28), dtype=np.float32)


def infer(client, model="mnist_convnet", batch=2):
    tensor = triton.InferInput("images", [batch, 1, 28, 28], "FP32")
    tensor.set_data_from_numpy(images(batch))
    return client.infer(model, [tensor])


@dataclasses.dataclass
class Outcome:
    answered: int = 0
    failures: list[Exception] = dataclasses.field(default_factory=list)


@contextlib.contextmanager
def requests_in_flight(client, threads: int = 4) -> Iterator[Outcome]:
    """Infer on mnist_convnet from `threads` threads for as long as the block runs: every
    request must be answered, before, during and after what the block does to the model."""
    outcome = Outcome()
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            try:
                infer(client)
                outcome.answered += 1
            except Exception as exc:
                outcome.failures.append(exc)

    workers = [threading.Thread(target=hammer) for _ in range(threads)]
    for t in workers:
        t.start()
    try:
        yield outcome
    finally:
        stop.set()
        for t in workers:
            t.join()


@pytest.fixture()
def own_repository(repository, tmp_path):
    """A copy of the session repository that these tests may change."""
    copy = tmp_path / "repo"
    shutil.copytree(repository, copy)
    return copy


@pytest.fixture()
def client_for(own_repository):
    servers = []

    def start(**settings):
        context = serve_in_thread(
            ServerSettings(repository=own_repository, host="127.0.0.1", port=0, device=TEST_DEVICE, **settings)
        )
        server = context.__enter__()
        servers.append(context)
        client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
        client.address = f"127.0.0.1:{server.port}"  # for tests that drive the CLI
        return client

    yield start
    for context in servers:
        context.__exit__(None, None, None)


def test_unload_then_load(client_for):
    client = client_for()
    assert client.is_model_ready("mnist_convnet")
    client.unload_model("mnist_convnet")
    assert not client.is_model_ready("mnist_convnet")
    assert client.is_server_ready()  # an unload asked for does not make the server unready
    with pytest.raises(InferenceServerException, match="not ready: unloaded by request") as err:
        infer(client)
    assert err.value.status() == "StatusCode.UNAVAILABLE"
    index = {m.name: (m.state, m.reason) for m in client.get_model_repository_index().models}
    assert index["mnist_convnet"] == ("UNAVAILABLE", "unloaded by request")
    client.load_model("mnist_convnet")
    assert client.is_model_ready("mnist_convnet")
    assert infer(client).as_numpy("probabilities").shape == (2, 10)


def test_reload_picks_up_a_new_version_without_dropping_requests(client_for, own_repository):
    client = client_for()
    before = infer(client).as_numpy("probabilities")
    with requests_in_flight(client) as outcome:
        # Version 2: the same graph under a new version directory, as `deepr export` writes it.
        shutil.copytree(own_repository / "mnist_convnet" / "1", own_repository / "mnist_convnet" / "2")
        client.load_model("mnist_convnet")
    assert outcome.failures == [] and outcome.answered > 0
    assert client.get_model_metadata("mnist_convnet").versions == ["2"]
    response = infer(client)
    assert response.get_response().model_version == "2"
    np.testing.assert_allclose(response.as_numpy("probabilities"), before, rtol=1e-6)


def test_failed_reload_keeps_the_old_model_serving(client_for, own_repository):
    client = client_for()
    (own_repository / "mnist_convnet" / "2").mkdir()
    (own_repository / "mnist_convnet" / "2" / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(InferenceServerException, match="onnxruntime cannot load") as err:
        client.load_model("mnist_convnet")
    assert err.value.status() == "StatusCode.FAILED_PRECONDITION"
    assert client.is_model_ready("mnist_convnet")
    assert infer(client).get_response().model_version == "1"


@pytest.mark.parametrize("name", ["../mnist_convnet", "..", "/etc", "mnist_convnet/1", ".hidden"])
def test_names_cannot_leave_the_repository(client_for, name):
    client = client_for()
    with pytest.raises(InferenceServerException, match="is not a model name") as err:
        client.load_model(name)
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_unknown_models_and_disabled_control(client_for):
    client = client_for()
    with pytest.raises(InferenceServerException, match="no model 'nope' in repository") as err:
        client.load_model("nope")
    assert err.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException, match="'nope' is not loaded"):
        client.unload_model("nope")
    with pytest.raises(InferenceServerException, match="failed to load 'nope'"):
        client.load_model("nope")
    locked = client_for(model_control=False)
    for call in (locked.load_model, locked.unload_model):
        with pytest.raises(InferenceServerException, match="model control is disabled") as err:
            call("mnist_convnet")
        assert err.value.status() == "StatusCode.FAILED_PRECONDITION"
    assert locked.is_model_ready("mnist_convnet")


def test_load_adds_a_model_exported_after_start(client_for, own_repository):
    from exporters import UntrainedWeightsWarning, export_model

    client = client_for()
    with pytest.raises(InferenceServerException, match="unknown model: 'mnist_convnet_nopool' is not found"):
        infer(client, "mnist_convnet_nopool")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWeightsWarning)
        export_model("mnist_convnet_nopool", own_repository)
    client.load_model("mnist_convnet_nopool")
    assert infer(client, "mnist_convnet_nopool").as_numpy("probabilities").shape == (2, 10)


def test_model_control_from_the_cli(client_for, own_repository, capsys):
    """A model exported while the server runs: the error says how to load it, `deepr load`
    does, `deepr repository` shows it, `deepr unload` stops it."""
    from deepr.cli import main

    url = client_for().address
    assert main(["export", "mnist_convnet_nopool", "--repository", str(own_repository), "--url", url]) == 0
    told = capsys.readouterr().out
    assert f"the server at {url} does not serve version 1 yet" in told and "deepr load mnist_convnet_nopool" in told
    picture = own_repository.parent / "digit.png"
    Image.fromarray((images(1)[0, 0] * 255).astype(np.uint8)).save(picture)
    assert main(["classify", "--url", url, "--model", "mnist_convnet_nopool", str(picture)]) == 2
    err = capsys.readouterr().err
    assert "is in the repository but not loaded" in err and "deepr load mnist_convnet_nopool" in err, err

    assert main(["load", "--url", url, "mnist_convnet_nopool"]) == 0
    assert "mnist_convnet_nopool: loaded, ready" in capsys.readouterr().out
    assert main(["repository", "--url", url]) == 0
    listing = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "READY" in listing["mnist_convnet_nopool"] and "READY" in listing["mnist_convnet"]
    assert main(["classify", "--url", url, "--model", "mnist_convnet_nopool", str(picture)]) == 0

    assert main(["unload", "--url", url, "mnist_convnet_nopool"]) == 0
    capsys.readouterr()
    main(["repository", "--url", url])
    listing = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "UNAVAILABLE" in listing["mnist_convnet_nopool"]
    assert main(["load", "--url", url, "no_such_model"]) == 2  # NOT_FOUND: the user's input
    assert "no model 'no_such_model' in repository" in capsys.readouterr().err


def wait_for(condition, timeout=20.0, what="the poller"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not act within {timeout} s"
        time.sleep(0.05)


def test_poll_mode_follows_the_repository_without_failing_requests(client_for, own_repository, caplog):
    """--model-control poll: a new version is served, a removed model unloaded, a model put
    back loaded, a broken version leaves the old one serving; meanwhile every request to
    the model is answered."""
    client = client_for(poll_seconds=0.2)
    with requests_in_flight(client) as outcome:
        convnet, dense = own_repository / "mnist_convnet", own_repository / "mnist_dense"
        shutil.copytree(convnet / "1", convnet / "2", copy_function=shutil.copy2)  # old file times kept
        wait_for(lambda: client.get_model_metadata("mnist_convnet").versions == ["2"])

        shutil.move(dense, own_repository.parent / "dense-aside")
        wait_for(lambda: "mnist_dense" not in {m.name for m in client.get_model_repository_index().models})
        assert client.is_server_ready()
        shutil.move(own_repository.parent / "dense-aside", dense)
        wait_for(lambda: client.is_model_ready("mnist_dense"))

        (convnet / "3").mkdir()
        (convnet / "3" / "model.onnx").write_bytes(b"not an onnx file")
        wait_for(lambda: "mnist_convnet changed on disk but does not load" in caplog.text)
        assert client.get_model_metadata("mnist_convnet").versions == ["2"]
    assert outcome.failures == [] and outcome.answered > 0
    assert infer(client).get_response().model_version == "2"


def test_a_config_sent_with_the_load_replaces_the_one_on_disk(client_for):
    """Triton's model repository extension: `config` (JSON) overrides config.pbtxt for that load;
    what it leaves out is completed from the graph, and a plain load goes back to the disk."""
    client = client_for()
    assert client.get_model_config("mnist_convnet").config.max_batch_size != 16
    client.load_model("mnist_convnet", config='{"max_batch_size": "16"}')
    assert client.get_model_config("mnist_convnet").config.max_batch_size == 16
    assert infer(client, batch=16).as_numpy("probabilities").shape == (16, 10)
    refusals = {
        '"parameters": {"config": {{"max_batch_size": "16"}}}': "is not a model configuration in JSON",
        '{"name": "mnist_dense"}': "names another model, 'mnist_dense'",
        '{"max_batch_size": "sixteen"}': "is not a model configuration in JSON",
    }
    for config, reason in refusals.items():
        with pytest.raises(
            InferenceServerException, match=f"failed to load 'mnist_convnet': the config .*{reason}"
        ) as err:
            client.load_model("mnist_convnet", config=config)
        assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert client.get_model_config("mnist_convnet").config.max_batch_size == 16  # a refused load changes nothing
    client.load_model("mnist_convnet")
    assert client.get_model_config("mnist_convnet").config.max_batch_size != 16


def test_files_sent_with_the_load_serve_a_model_not_on_disk(client_for, own_repository):
    client = client_for()
    graph = (own_repository / "mnist_dense" / "1" / "model.onnx").read_bytes()
    config = '{"max_batch_size": 4}'  # the rest is completed from the graph
    client.load_model("sent_dense", config=config, files={"file:1/model.onnx": graph})
    (spec,) = client.get_model_metadata("sent_dense").inputs
    assert client.get_model_config("sent_dense").config.max_batch_size == 4
    shape = [3, *spec.shape[1:]]
    tensor = triton.InferInput(spec.name, shape, "FP32")
    tensor.set_data_from_numpy(np.random.default_rng(0).random(shape, dtype=np.float32))
    scores = client.infer("sent_dense", [tensor]).as_numpy("probabilities")
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)
    assert not (own_repository / "sent_dense").exists()  # the files went to a private folder
    refusals = {
        "../escape.onnx": "is not a path inside the model's folder",
        "1/../../escape.onnx": "is not a path inside the model's folder",
        "/etc/passwd": "is not a path inside the model's folder",
        ".hidden/model.onnx": "is not a path inside the model's folder",
        "config.pbtxt": "send the configuration in the 'config' parameter",
    }
    for path, reason in refusals.items():
        with pytest.raises(InferenceServerException, match=reason) as err:
            client.load_model("sent_dense", config=config, files={f"file:{path}": graph})
        assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException, match="need the 'config' parameter too"):
        client.load_model("sent_dense", files={"file:1/model.onnx": graph})
    with pytest.raises(InferenceServerException, match="failed to load 'sent_dense': .*holding model.onnx"):
        client.load_model("sent_dense", config=config, files={"file:2/other.onnx": graph})
    assert not list(own_repository.parent.glob("escape*")) and not (own_repository / "escape.onnx").exists()
    assert client.is_model_ready("sent_dense")  # the refused loads left the served one alone
    client.unload_model("sent_dense")
    assert not client.is_model_ready("sent_dense")


def test_explicit_mode_starts_with_what_load_model_names(client_for):
    """Triton's --model-control-mode explicit with --load-model: only those load at startup;
    the others are listed, not loaded, and load on request; readiness counts the loaded ones."""
    client = client_for(startup_models="mnist_dense")
    assert client.is_model_ready("mnist_dense") and not client.is_model_ready("mnist_convnet")
    assert client.is_server_ready()
    index = {m.name: m.reason for m in client.get_model_repository_index().models}
    assert index["mnist_convnet"].startswith("not loaded")
    with pytest.raises(InferenceServerException, match="'mnist_convnet' is not ready: not loaded"):
        infer(client)
    client.load_model("mnist_convnet")
    assert infer(client).as_numpy("probabilities").shape == (2, 10)
    nothing = client_for(startup_models="")
    assert not any(m.state == "READY" for m in nothing.get_model_repository_index().models)
    assert nothing.is_server_ready()
