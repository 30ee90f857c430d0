"""model_warmup: samples run at load, before the model is ready; a failing sample fails the load."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

from conftest import TEST_DEVICE
from serving.protocol.generated import model_config_pb2 as mc
from serving.protocol.model_config import read_config, write_config
from serving.server.model import OnnxModel, RuntimeOptions
from serving.server.repository import READY, UNAVAILABLE, ModelRepository
from serving.server.warmup import sample_inputs


@pytest.fixture
def model_dir(tmp_path, repository):
    target = tmp_path / "mnist_convnet"
    shutil.copytree(repository / "mnist_convnet", target)
    return target


def add_warmup(model_dir, **inputs_and_fields) -> mc.ModelConfig:
    config = read_config(model_dir)
    data = inputs_and_fields.pop("data", {"zero_data": True})
    dims = inputs_and_fields.pop("dims", [1, 28, 28])
    sample = config.model_warmup.add(**inputs_and_fields)
    entry = sample.inputs["images"]
    entry.data_type = mc.TYPE_FP32
    entry.dims.extend(dims)
    for key, value in data.items():
        setattr(entry, key, value)
    write_config(model_dir, config)
    return config


def load(model_dir) -> OnnxModel:
    model = OnnxModel(
        "mnist_convnet", "1", model_dir / "1" / "model.onnx", read_config(model_dir), RuntimeOptions(device=TEST_DEVICE)
    )
    model.load()
    return model


def test_samples_run_at_load(model_dir, caplog):
    add_warmup(model_dir, name="zeros", batch_size=8, count=3)
    add_warmup(model_dir, name="noise", batch_size=1, data={"random_data": True})
    with caplog.at_level(logging.INFO, logger="serving.server.warmup"):
        model = load(model_dir)
    assert model.ready
    assert "warmed up mnist_convnet version 1: 2 sample(s), 4 run(s)" in caplog.text


def test_file_samples_repeat_one_example(model_dir):
    digit = np.random.default_rng(0).random((1, 28, 28), dtype=np.float32)
    (model_dir / "warmup").mkdir()
    (model_dir / "warmup" / "digit").write_bytes(digit.tobytes())
    config = add_warmup(model_dir, name="file", batch_size=4, data={"input_data_file": "digit"})
    arrays = sample_inputs(config.model_warmup[0], model_dir, batched=True)
    assert arrays["images"].shape == (4, 1, 28, 28) and all(np.array_equal(row, digit) for row in arrays["images"])
    assert load(model_dir).ready


@pytest.mark.parametrize(
    "fields, reason",
    [
        ({"dims": [1, 32, 32]}, "model_warmup 'bad' failed"),
        ({"dims": [1, -1, 28]}, "must all be given"),
        ({"data": {"input_data_file": "missing"}}, "cannot read"),
        ({"data": {"input_data_file": "../config.pbtxt"}}, "directly in the model's warmup/ directory"),
        ({"data": {}}, "needs zero_data, random_data or input_data_file"),
    ],
)
def test_a_failing_sample_leaves_the_model_unavailable(model_dir, fields, reason):
    add_warmup(model_dir, name="bad", batch_size=2, **fields)
    repository = ModelRepository(model_dir.parent, RuntimeOptions(device=TEST_DEVICE))
    repository.load_all()
    entry = repository.entry("mnist_convnet")
    assert entry.state == UNAVAILABLE and reason in entry.reason, entry.reason


def test_without_warmup_nothing_runs(model_dir, caplog):
    with caplog.at_level(logging.INFO, logger="serving.server.warmup"):
        repository = ModelRepository(model_dir.parent, RuntimeOptions(device=TEST_DEVICE))
        repository.load_all()
    assert repository.entry("mnist_convnet").state == READY and "warmed up" not in caplog.text


def test_tritonclient_reads_the_warmup_config(model_dir):
    import tritonclient.grpc as triton

    from serving.server.grpc.server import serve_in_thread
    from serving.server.settings import ServerSettings

    add_warmup(model_dir, name="zeros", batch_size=8, count=2)
    settings = ServerSettings(
        repository=model_dir.parent, host="127.0.0.1", port=0, device=TEST_DEVICE, metrics_port=-1
    )
    with serve_in_thread(settings) as server, triton.InferenceServerClient(f"127.0.0.1:{server.port}") as client:
        (sample,) = client.get_model_config(
            "mnist_convnet"
        ).config.model_warmup  # Triton's own message, same field numbers
    assert (sample.name, sample.batch_size, sample.count) == ("zeros", 8, 2)
    assert list(sample.inputs["images"].dims) == [1, 28, 28] and sample.inputs["images"].zero_data


def test_export_asks_for_warmup_and_padding(tmp_path, trained_convnet, caplog):
    from deepr.cli import main

    repo = tmp_path / "repo"
    code = main(
        [
            "export",
            "mnist_convnet",
            "--weights",
            str(trained_convnet.out / "weights.pt"),
            "--repository",
            str(repo),
            "--warmup",
            "1,8,32",
            "--pad-batches",
            "--max-queue-delay-us",
            "3000",
        ]
    )
    assert code == 0
    config = read_config(repo / "mnist_convnet")
    assert [s.batch_size for s in config.model_warmup] == [1, 8, 32] and config.parameters[
        "deepr.pad_batches"
    ].string_value == "true"
    assert config.dynamic_batching.max_queue_delay_microseconds == 3000
    with caplog.at_level(logging.INFO, logger="serving.server.warmup"):
        repository = ModelRepository(repo, RuntimeOptions(device=TEST_DEVICE))
        repository.load_all()
    assert repository.entry("mnist_convnet").state == READY and "3 sample(s), 3 run(s)" in caplog.text


def test_export_refuses_warmup_it_cannot_write(tmp_path, capsys):
    from deepr.cli import main

    code = main(["export", "imdb_lstm", "--repository", str(tmp_path / "repo"), "--warmup", "4"])
    err = capsys.readouterr().err
    assert (
        code == 2
        and "imdb_lstm version 1 is exported, without --warmup/--pad-batches" in err
        and "free dimensions" in err
    )
    code = main(["export", "mnist_dense", "--repository", str(tmp_path / "repo"), "--warmup", "512"])
    assert code == 2 and "exceed its max_batch_size 256" in capsys.readouterr().err
    code = main(
        ["export", "mnist_dense", "--repository", str(tmp_path / "unbatched"), "--max-batch-size", "0"]
        + ["--max-queue-delay-us", "3000"]
    )
    assert code == 2 and "has no dynamic batching to tune (max_batch_size 0)" in capsys.readouterr().err


def test_merged_run_sizes_are_warmed_at_load(model_dir, caplog):
    with caplog.at_level(logging.INFO, logger="serving.server.batch_sizes"):
        model = load(model_dir)
    assert sorted(model.run_seconds) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert all(seconds > 0 for seconds in model.run_seconds.values())
    assert "warmed mnist_convnet version 1 at batch sizes [1, 2, 4, 8, 16, 32, 64, 128, 256]" in caplog.text


def test_the_warm_up_budget_bounds_load_time_and_the_sizes_used(model_dir, caplog):
    import time

    from serving.server.batching import BatchingPolicy

    config = read_config(model_dir)
    config.parameters["deepr.warmup_budget_seconds"].string_value = "0.005"
    write_config(model_dir, config)
    start = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="serving.server.batch_sizes"):
        model = load(model_dir)
    assert time.perf_counter() - start < 5
    warmed = sorted(model.run_seconds)
    assert warmed and warmed == [1, 2, 4, 8, 16, 32, 64, 128, 256][: len(warmed)] and len(warmed) < 9
    assert BatchingPolicy.from_config(model.config, model.run_seconds).run_sizes == tuple(warmed)
    assert "merged runs stay below" in caplog.text


def test_a_model_that_fails_at_a_batch_size_is_not_ready(model_dir, monkeypatch):
    """A model that runs one row but not two (a graph with a hidden fixed batch, say)."""
    from serving.protocol.errors import ModelLoadError

    model = OnnxModel(
        "mnist_convnet", "1", model_dir / "1" / "model.onnx", read_config(model_dir), RuntimeOptions(device=TEST_DEVICE)
    )
    predict = model.predict

    def one_row_only(inputs, outputs=None):
        if len(inputs["images"]) > 1:
            raise RuntimeError("Reshape: the input has 1568 elements, the shape asks for 784")
        return predict(inputs, outputs)

    monkeypatch.setattr(model, "predict", one_row_only)
    with pytest.raises(ModelLoadError, match="warming up batch sizes failed: Reshape: the input has 1568"):
        model.load()
    assert not model.ready
