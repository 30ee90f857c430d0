"""`deepr serve` as a user runs it: first start builds the default models, SIGTERM drains and exits 0."""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tritonclient.grpc as triton


def start_server(args, env):
    return subprocess.Popen(
        [sys.executable, "-m", "deepr", "serve", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def wait_for_port(proc, timeout):
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r"serving .* on [\d.]+:(\d+)", line)
        if match:
            return int(match.group(1)), lines
    proc.kill()
    raise AssertionError("server did not start:\n" + "".join(lines[-30:]))


@pytest.mark.slow
def test_first_serve_builds_default_models_then_stops_on_sigterm(tmp_path):
    env = {**os.environ, "DEEPR_HOME": str(tmp_path / "home")}
    repo = tmp_path / "home" / "repository"
    proc = start_server(["--host", "127.0.0.1", "--port", "0"], env)  # no --repository: the default one
    try:
        port, log = wait_for_port(proc, timeout=600)
        text = "".join(log)
        for name in ("mnist_dense", "mnist_convnet", "mnist_convnet_nopool"):
            assert (repo / name / "1" / "model.onnx").is_file()
            accuracy = float(re.search(rf"{name}: held-out accuracy ([\d.]+)", text).group(1))
            assert accuracy > 0.9, text
        with triton.InferenceServerClient(f"127.0.0.1:{port}") as client:
            assert client.is_server_ready()
            x = triton.InferInput("images", [2, 1, 28, 28], "FP32")
            x.set_data_from_numpy(np.zeros((2, 1, 28, 28), dtype=np.float32))
            assert client.infer("mnist_convnet_nopool", [x]).as_numpy("probabilities").shape == (2, 10)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        rest = proc.stderr.read()
        proc.stderr.close()
    assert code == 0 and "draining in-flight requests" in rest


def test_explicit_missing_repository_is_refused(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "deepr", "serve", "--repository", str(tmp_path / "none")], capture_output=True, text=True
    )
    assert result.returncode == 2 and "does not exist" in result.stderr and "--build-defaults" in result.stderr


def test_bad_environment_setting_is_named(tmp_path):
    env = {**os.environ, "DEEPR_PORT": "eighty"}
    result = subprocess.run([sys.executable, "-m", "deepr", "serve"], capture_output=True, text=True, env=env)
    assert result.returncode == 2 and "DEEPR_PORT='eighty' is not a valid int" in result.stderr
