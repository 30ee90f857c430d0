"""Batch profiles (where merging stops paying, measured on the machine, written into
config.pbtxt and obeyed by the batcher) and instances with their own sessions."""

from __future__ import annotations

import json
import logging
import shutil
import threading

import numpy as np
import pytest

from conftest import TEST_DEVICE
from deepr.cli import main
from serving.protocol.generated import model_config_pb2 as mc
from serving.protocol.model_config import read_config, write_config
from serving.runtime.sessions import usable_cores
from serving.server.batch_profile import BatchProfile, candidate_sizes
from serving.server.batching import BatchingPolicy
from serving.server.model import OnnxModel, RuntimeOptions


@pytest.fixture
def model_dir(tmp_path, repository):
    target = tmp_path / "mnist_convnet"
    shutil.copytree(repository / "mnist_convnet", target)
    return target


def load(model_dir) -> OnnxModel:
    model = OnnxModel(
        "mnist_convnet", "1", model_dir / "1" / "model.onnx", read_config(model_dir), RuntimeOptions(device=TEST_DEVICE)
    )
    model.load()
    return model


@pytest.mark.parametrize(
    "rates, cost, best",
    [
        ({1: 100, 2: 180, 4: 300, 8: 310, 16: 320}, 0.0, 8),  # 4 is 6% short of the best: merging to 8 still pays
        ({1: 300, 2: 330, 4: 340, 8: 338, 16: 335}, 0.0, 2),  # compute-bound: flat from 2 on
        ({1: 50, 2: 90, 4: 160, 8: 200, 16: 150}, 0.0, 8),  # slower past the best size
        ({1: 10}, 0.0, 1),
        # The cats-vs-dogs convnet on 2 cores: flat from 4 on alone, but a served run's 2 ms
        # is 17% of a 2-row run and 4% of a 16-row one.
        ({1: 308, 2: 328, 4: 341, 8: 339, 16: 332, 32: 333, 64: 335, 128: 335, 256: 329}, 0.002, 16),
        ({1: 1000, 2: 2000, 4: 4000}, 0.002, 4),  # a run costs more served than it computes: merge all
    ],
)
def test_preferred_sizes_stop_where_the_served_rate_stops_rising(rates, cost, best):
    profile = BatchProfile("cpu", 2, rates, cost)
    assert profile.best_size == best
    assert profile.preferred_sizes == tuple(s for s in sorted(rates) if s <= best)


def test_the_profile_goes_into_the_config_and_back():
    config = mc.ModelConfig(name="m", max_batch_size=16)
    config.dynamic_batching.preferred_batch_size.extend([1, 16])
    profile = BatchProfile("cpu", 2, {1: 100.0, 2: 190.0, 4: 250.0, 8: 255.0, 16: 251.0}, 0.0)
    profile.write_into(config)
    assert list(config.dynamic_batching.preferred_batch_size) == [1, 2, 4]
    assert BatchProfile.from_config(config) == profile
    assert BatchingPolicy.from_config(config).merge_limit == 4
    table = profile.table()
    assert "preferred sizes: 1, 2, 4" in table and "<- merges stop here" in table
    config.parameters["deepr.batch_profile"].string_value = "{not json"
    assert BatchProfile.from_config(config) is None


def test_candidate_sizes():
    assert candidate_sizes(256) == (1, 2, 4, 8, 16, 32, 64, 128, 256)
    assert candidate_sizes(24) == (1, 2, 4, 8, 16, 24)
    assert candidate_sizes(1) == (1,)


def test_export_profile_batches_writes_what_it_measured(tmp_path, capsys):
    repo = tmp_path / "repo"
    code = main(["export", "mnist_dense", "--repository", str(repo), "--max-batch-size", "8", "--profile-batches"])
    out = capsys.readouterr().out
    assert code == 0, out
    config = read_config(repo / "mnist_dense")
    profile = BatchProfile.from_config(config)
    assert profile is not None and profile.device == "cpu" and profile.cores == usable_cores()
    assert sorted(profile.rows_per_s) == [1, 2, 4, 8] and all(rate > 0 for rate in profile.rows_per_s.values())
    assert tuple(config.dynamic_batching.preferred_batch_size) == profile.preferred_sizes
    assert f"wrote preferred_batch_size {list(profile.preferred_sizes)} and the curve" in out
    assert "rows/s" in out and "<- merges stop here" in out
    # The server keeps to it: merged runs warmed at the preferred sizes only.
    model = OnnxModel(
        "mnist_dense", "1", repo / "mnist_dense" / "1" / "model.onnx", config, RuntimeOptions(device=TEST_DEVICE)
    )
    model.load()
    assert tuple(sorted(model.run_seconds)) == profile.preferred_sizes
    assert BatchingPolicy.from_config(config, model.run_seconds).merge_limit == profile.best_size


def test_export_refuses_to_profile_a_model_without_fixed_inputs(tmp_path, capsys):
    # imdb_lstm is exported more than once in the test session: each export keeps its free length.
    code = main(["export", "imdb_lstm", "--repository", str(tmp_path / "repo"), "--profile-batches"])
    err = capsys.readouterr().err
    assert (
        code == 2 and "imdb_lstm version 1 is exported, without --profile-batches" in err and "free dimensions" in err
    )


def test_a_config_can_ask_to_be_profiled_at_load(model_dir, caplog):
    config = read_config(model_dir)
    config.max_batch_size = 16
    config.parameters["deepr.profile_batches"].string_value = "true"
    write_config(model_dir, config)
    with caplog.at_level(logging.INFO, logger="serving.server.model"):
        model = load(model_dir)
    profile = BatchProfile.from_config(model.config)  # the served config carries the result
    assert profile is not None and sorted(profile.rows_per_s) == [1, 2, 4, 8, 16]
    assert tuple(model.config.dynamic_batching.preferred_batch_size) == profile.preferred_sizes
    assert tuple(sorted(model.run_seconds)) == profile.preferred_sizes
    assert "batch profile on" in caplog.text
    assert json.loads(model.config.parameters["deepr.batch_profile"].string_value)["rows_per_s"]


def test_instances_run_on_their_own_sessions_and_share_the_cores(model_dir, caplog):
    config = read_config(model_dir)
    config.instance_group.add(count=2, kind=mc.ModelInstanceGroup.KIND_CPU)
    write_config(model_dir, config)
    with caplog.at_level(logging.INFO, logger="serving.server.model"):
        model = load(model_dir)
    assert f"2 instances x {max(1, usable_cores() // 2)} threads" in caplog.text
    single = OnnxModel(
        "single",
        "1",
        model_dir / "1" / "model.onnx",
        mc.ModelConfig(max_batch_size=256),
        RuntimeOptions(device=TEST_DEVICE),
    )
    single.load()
    images = np.random.default_rng(0).random((16, 1, 28, 28), dtype=np.float32)
    want = single.predict({"images": images})["probabilities"]
    got, errors = [], []

    def call(i):
        try:
            for _ in range(20):
                got.append(model.predict({"images": images[i : i + 4]})["probabilities"] - want[i : i + 4])
        except Exception as exc:  # surfaces in the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(0, 16, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(got) == 80
    assert max(np.abs(d).max() for d in got) < 1e-6
    model.unload()
    assert not model.ready
