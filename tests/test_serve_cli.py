"""`deepr serve` as a user runs it: first start builds the default models, SIGTERM drains and exits 0."""

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as triton
from drawn_digits import write_drawn_digits

from exporters.defaults import DEFAULT_MODELS, default_graphs


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


def read_until(proc, pattern, timeout, lines):
    """Read the server's log into `lines` until a line matches `pattern`; that match."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if match := re.search(pattern, line):
            return match
    raise AssertionError(f"no line matching {pattern!r}:\n" + "".join(lines[-30:]))


def classify_drawn(url: str, model: str, folder) -> float:
    """`deepr classify` on the drawn digits, as a user runs it: the share it gets right."""
    written = write_drawn_digits(folder)
    done = subprocess.run(
        [sys.executable, "-m", "deepr", "classify", "--model", model, "--url", url, "--top-k", "1"]
        + [str(path) for path, _ in written],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    answers = [line.split()[1] for line in done.stdout.splitlines()]
    return float(np.mean([answer == str(label) for answer, (_, label) in zip(answers, written)]))


@pytest.mark.slow
def test_first_serve_answers_at_once_and_builds_the_defaults_meanwhile(tmp_path):
    """No --repository on a fresh machine: the server answers first; the default models are
    trained on the embedded MNIST digits and loaded one by one behind it, quickest first, each
    convnet with its Grad-CAM and feature graphs; every epoch is a log line; the convnet reads
    digits drawn on paper; SIGTERM does not wait for the rest."""
    env = {**os.environ, "DEEPR_HOME": str(tmp_path / "home")}
    repo = tmp_path / "home" / "repository"
    started = time.monotonic()
    proc = start_server(["--host", "127.0.0.1", "--port", "0"], env)  # no --repository: the default one
    try:
        port, log = wait_for_port(proc, timeout=60)
        url = f"127.0.0.1:{port}"
        with triton.InferenceServerClient(url) as client:
            assert client.is_server_live() and not client.is_model_ready("mnist_convnet")  # answering, not built yet
            seconds = {}
            graphs = [g for name in DEFAULT_MODELS for g in default_graphs(name)]
            for name in graphs:  # quickest first, each model followed by its explanations
                ready = read_until(proc, rf"{name} is ready, (\d+) s after the server started", 600, log)
                seconds[name] = int(ready.group(1))
                assert client.is_model_ready(name)
                if name == "mnist_convnet":
                    drawn = classify_drawn(url, "mnist_convnet", tmp_path / "drawn")
            assert seconds["mnist_dense"] < 30, seconds  # a model answers within 30 s of `deepr serve`
            text = "".join(log)
            assert re.search(r"mnist_convnet: epoch 1/5, loss [\d.]+, held-out accuracy [\d.]+, \d+ s in, about", text)
            for name in DEFAULT_MODELS:
                assert (repo / name / "1" / "model.onnx").is_file()
                accuracy = float(re.search(rf"{name}: held-out accuracy ([\d.]+) after", text).group(1))
                assert accuracy > 0.94, text  # real MNIST digits held out
            assert drawn >= 0.9, f"mnist_convnet read {drawn:.1%} of the drawn digits"
            x = triton.InferInput("images", [2, 1, 28, 28], "FP32")
            x.set_data_from_numpy(np.zeros((2, 1, 28, 28), dtype=np.float32))
            assert client.infer("mnist_convnet_nopool", [x]).as_numpy("probabilities").shape == (2, 10)
        assert set((repo / ".deepr-defaults-built").read_text().split()) == set(graphs)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        rest = proc.stderr.read()
        proc.stderr.close()
    assert code == 0 and "draining in-flight requests" in rest, rest
    print(f"ready after {seconds} s; {time.monotonic() - started:.0f} s in all; drawn digits: {drawn:.1%}")


def test_models_being_built_are_listed_and_sigterm_does_not_wait_for_them(tmp_path, capsys):
    from deepr.cli import main

    env = {**os.environ, "DEEPR_HOME": str(tmp_path / "home")}
    proc = start_server(["--host", "127.0.0.1", "--port", "0"], env)
    try:
        port, log = wait_for_port(proc, timeout=60)
        read_until(proc, r"building the default models in .* while serving, quickest first", 30, log)
        assert main(["models", "--url", f"127.0.0.1:{port}"]) == 0
        listing = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
        assert set(listing) == {g for name in DEFAULT_MODELS for g in default_graphs(name)}, listing
        assert all("LOADING" in line and "being trained" in line for line in listing.values())
        read_until(proc, r"mnist_convnet: epoch [1-3]/5", 120, log)
        assert main(["repository", "--url", f"127.0.0.1:{port}"]) == 0
        listing = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
        assert re.search(r"LOADING .*epoch [1-5]/5, about \d+ s left", listing["mnist_convnet"]), listing
        with triton.InferenceServerClient(f"127.0.0.1:{port}") as client:
            # live, and not ready until every model it means to serve is (strict readiness), on both transports
            assert client.is_server_live() and not client.is_server_ready()
            http = int(re.search(r"HTTP/REST on [\d.]+:(\d+)", "".join(log)).group(1))
            for path, status in (("live", 200), ("ready", 400)):
                try:
                    answer = urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/{path}", timeout=10).status
                except urllib.error.HTTPError as error:
                    answer = error.code
                assert answer == status, (path, answer)
            x = triton.InferInput("images", [1, 1, 28, 28], "FP32")
            x.set_data_from_numpy(np.zeros((1, 1, 28, 28), dtype=np.float32))
            with pytest.raises(triton.InferenceServerException, match="not ready: being trained and exported"):
                client.infer("mnist_convnet_nopool", [x])
        # stopped while PyTorch trains the next model: it must still exit cleanly, at once
        read_until(proc, r"mnist_convnet_features is ready", 120, log)
        time.sleep(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        code = proc.wait(timeout=30)
        proc.stderr.close()
    assert code == 0 and time.monotonic() - stopped < 15
    assert not (tmp_path / "home" / "repository" / ".deepr-defaults-built").exists()


def test_explicit_missing_repository_is_refused(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "deepr", "serve", "--repository", str(tmp_path / "none")], capture_output=True, text=True
    )
    assert result.returncode == 2 and "does not exist" in result.stderr and "--build-defaults" in result.stderr


def test_bad_environment_setting_is_named(tmp_path):
    env = {**os.environ, "DEEPR_PORT": "eighty"}
    result = subprocess.run([sys.executable, "-m", "deepr", "serve"], capture_output=True, text=True, env=env)
    assert result.returncode == 2 and "DEEPR_PORT='eighty' is not a valid int" in result.stderr


def test_poll_seconds_without_poll_mode_is_refused():
    result = subprocess.run(
        [sys.executable, "-m", "deepr", "serve", "--poll-seconds", "2"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "--poll-seconds needs --model-control poll" in result.stderr


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--model-control", "poll", "--model-control-mode", "poll"], "say the same thing: give one"),
        (["--model-control-mode", "none", "--load-model", "simple"], "--load-model needs explicit model control"),
        (["--model-control-mode", "explicit", "--load-model", "nope"], "--load-model 'nope': no such model in"),
    ],
)
def test_triton_model_control_flags_are_checked(tmp_path, flags, words):
    (tmp_path / "simple").mkdir()
    command = [sys.executable, "-m", "deepr", "serve", "--repository", str(tmp_path), "--port", "0", *flags]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and words in result.stderr, result.stderr


def test_busy_and_doubled_ports_are_named_in_a_moment(tmp_path):
    """Before PyTorch or any model is loaded: in a moment (0.3 s here), where loading takes five seconds or more."""
    import socket

    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "DEEPR_HOME": str(tmp_path / "home")}
        for flags, words, code in (
            (["--port", str(port)], f"gRPC port {port} (--port) is in use", 1),
            (["--port", "18123", "--http-port", "18123"], "--port and --http-port are both 18123", 2),
        ):
            started = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-m", "deepr", "serve", "--host", "127.0.0.1", "--metrics-port", "-1", *flags],
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
            )
            assert done.returncode == code and words in done.stderr, done.stderr
            assert time.monotonic() - started < 3.0
    assert not (tmp_path / "home" / "repository").exists()  # nothing built, nothing written
