"""E: a model folder the server cannot read is that model's problem only: it is listed as
UNAVAILABLE with its file and the reason, at start as in poll mode, and the others serve."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import pytest

from .probes import ServerProcess, add_doubling_model, wait_until

BAD_CONFIGS = {
    "not_utf8": b'name: "not_utf8"\nmax_batch_size: 8\xff\xfe\n',
    "deep_unknown": b'name: "deep_unknown"\n' + b"unknown_field { " * 5000 + b"}" * 5000,
    "deep_known": b"dynamic_batching { " * 5000 + b"}" * 5000,
    "not_a_config": b'{ "this": "is json" }',
    "huge": b"# padding\n" * (500_000),
}


def index(server: ServerProcess) -> dict[str, dict]:
    request = urllib.request.Request(f"{server.http_url}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return {entry["name"]: entry for entry in json.loads(answer.read())}


def infer_double(server: ServerProcess) -> list[float]:
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]})
    request = urllib.request.Request(f"{server.http_url}/v2/models/double/infer", data=body.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())["outputs"][0]["data"]


def add_bad_folders(repository: Path, donor: Path) -> None:
    for name, config in BAD_CONFIGS.items():
        shutil.copytree(donor / "1", repository / name / "1")
        (repository / name / "config.pbtxt").write_bytes(config)


@pytest.fixture()
def mixed_repository(tmp_path) -> Path:
    repository = tmp_path / "repository"
    add_doubling_model(repository, "double")
    add_bad_folders(repository, repository / "double")
    return repository


def test_bad_configs_at_start_leave_the_good_models_serving(server_process, mixed_repository):
    server = server_process(repository=mixed_repository)
    assert infer_double(server) == [2, 4, 6, 8]
    models = index(server)
    for name in BAD_CONFIGS:
        entry = models[name]
        assert entry["state"] == "UNAVAILABLE", entry
        assert f"{name}/config.pbtxt" in entry["reason"], entry
    assert "not UTF-8" in models["not_utf8"]["reason"]
    assert "nested too deeply" in models["deep_unknown"]["reason"]
    assert "nested too deeply" in models["deep_known"]["reason"]
    assert "larger than" in models["huge"]["reason"]
    log = server.log_text()
    assert "Traceback" not in log and "RecursionError" not in log


def test_bad_configs_in_poll_mode_show_up_unavailable_and_good_ones_go_on(server_process, tmp_path):
    repository = tmp_path / "repository"
    add_doubling_model(repository, "double")
    server = server_process("--model-control", "poll", "--poll-seconds", "0.2", repository=repository)
    add_bad_folders(repository, repository / "double")
    assert wait_until(lambda: BAD_CONFIGS.keys() <= index(server).keys(), 20), index(server)
    models = index(server)
    assert all(models[name]["state"] == "UNAVAILABLE" for name in BAD_CONFIGS), models
    assert infer_double(server) == [2, 4, 6, 8]
    assert "Traceback" not in server.log_text()


def test_a_folder_that_is_not_a_model_is_logged_once_with_the_reason(server_process, tmp_path):
    repository = tmp_path / "repository"
    add_doubling_model(repository, "double")
    shutil.copytree(repository / "double", repository / "café")
    (repository / "notes").mkdir()
    server = server_process(repository=repository)
    assert infer_double(server) == [2, 4, 6, 8]
    log = server.log_text()
    assert log.count("café is not served: 'café' is not a model name") == 1, log
    assert log.count("notes is not served: no config.pbtxt in it and no version folder holding model.onnx") == 1, log
