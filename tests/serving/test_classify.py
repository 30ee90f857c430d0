"""classify() and `deepr classify` on held-out digits, through the server."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TEST_DEVICE
from serving.client import InferenceClient, InferenceServerError
from serving.tasks.classify import classify


@pytest.fixture(scope="module")
def held_out(digits):
    x, y = digits.test.tensors
    pictures = [(img[0].numpy() * 255).round().astype(np.uint8) for img in x[:40]]
    return pictures, y[:40].numpy()


def test_classify_agrees_with_the_trained_model(server_url, held_out, trained_convnet, digits):
    pictures, labels = held_out
    results = classify(pictures, "mnist_convnet", url=server_url, top_k=3)
    assert all(len(r) == 3 and r[0].score >= r[1].score >= r[2].score for r in results)
    predicted = np.array([r[0].index for r in results])
    with torch.no_grad():
        expected = trained_convnet.model(digits.test.tensors[0][:40]).argmax(1).numpy()
    assert np.array_equal(predicted, expected)
    assert (predicted == labels).mean() >= 0.9
    assert [r[0].label for r in results] == [str(i) for i in predicted]


def test_dense_model_gets_flattened_input(server_url, held_out):
    results = classify(held_out[0][:3], "mnist_dense", url=server_url, top_k=10)
    assert [len(r) for r in results] == [10, 10, 10]
    assert all(abs(sum(p.score for p in r) - 1.0) < 1e-4 for r in results)


def test_client_reports_server_errors(server_url):
    expected = "NOT_FOUND: Request for unknown model: 'nope'"
    with InferenceClient(server_url) as client, pytest.raises(InferenceServerError, match=expected):
        client.model_config("nope")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "deepr", *args], capture_output=True, text=True, timeout=120)


def test_cli_prints_top_k_per_image(server_url, held_out, tmp_path):
    pictures, labels = held_out
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"digit{i}.png")
        Image.fromarray(pictures[i]).save(paths[-1])
    result = run_cli("classify", "--model", "mnist_convnet", "--url", server_url, "--top-k", "2", *map(str, paths))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3
    for line, path in zip(lines, paths):
        name, first, _score1, second, _score2 = line.split()
        assert name == str(path) and first != second


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--model", "mnist_convnet", "missing.png"], 2, "no image file at missing.png"),
        (
            ["--model", "nope", "DIGIT"],
            2,
            "NOT_FOUND: Request for unknown model: 'nope' is not found",
        ),  # bad input: 2, as the README says
        (["--model", "mnist_convnet", "NOTIMAGE"], 2, "is not an image Pillow can read"),
    ],
)
def test_cli_errors(server_url, held_out, tmp_path, args, code, message):
    digit, not_image = tmp_path / "d.png", tmp_path / "n.png"
    Image.fromarray(held_out[0][0]).save(digit)
    not_image.write_text("hello")
    args = [{"DIGIT": str(digit), "NOTIMAGE": str(not_image)}.get(a, a) for a in args]
    result = run_cli("classify", "--url", server_url, *args)
    assert result.returncode == code and message in result.stderr, result.stderr


def test_cli_unreachable_server(tmp_path, held_out):
    digit = tmp_path / "d.png"
    Image.fromarray(held_out[0][0]).save(digit)
    result = run_cli("classify", "--model", "mnist_convnet", "--url", "127.0.0.1:1", str(digit))
    assert result.returncode == 1 and "no deepr server reachable at 127.0.0.1:1" in result.stderr


def test_served_word_model_classifies_text(tmp_path):
    """The vocabulary travels from the training run into the repository; a client sends text."""
    from exporters import export_model
    from serving.server.grpc.server import serve_in_thread
    from serving.server.settings import ServerSettings
    from serving.tasks.classify import classify_text
    from zoo.datasets import load_dataset
    from zoo.recipes import TrainConfig, train

    data = load_dataset("words_sequences")
    result = train(TrainConfig.for_model("imdb_lstm", out=tmp_path / "run", progress=False), data=data)
    export_model("imdb_lstm", tmp_path / "repo", weights=tmp_path / "run" / "weights.pt")
    texts = [
        "Return the number of items in the queue, or raise an error when it is closed.",
        "if not isinstance(value, int): raise TypeError(f'bad value {value!r}') return value + 1",
    ]
    with serve_in_thread(
        ServerSettings(repository=tmp_path / "repo", host="127.0.0.1", port=0, device=TEST_DEVICE)
    ) as server:
        served = classify_text(texts, "imdb_lstm", url=f"127.0.0.1:{server.port}")
    encode = data.info.text
    with torch.no_grad():
        want = result.model(torch.from_numpy(encode(texts))).numpy()[:, 0]
    assert [p[0].label for p in served] == ["prose", "prose"]
    np.testing.assert_allclose([p[0].score for p in served], want, atol=1e-5)
    assert want[0] > 0.5 > want[1]  # prose reads as prose, code does not


def test_digits_written_dark_on_light_are_inverted_and_classified(server_url, held_out, tmp_path):
    """Held-out digits as a person writes and scans them: dark ink on white paper, at 4x the
    size. `auto` sees the light border and inverts them, and says so; without it the model
    sees the negative of what it learned."""
    pictures, labels = held_out
    paths = []
    for i, picture in enumerate(pictures):
        paths.append(tmp_path / f"scan{i}.png")
        Image.fromarray(255 - picture).resize((112, 112), Image.Resampling.BICUBIC).save(paths[-1])
    accuracy = {}
    for invert in ("auto", "no"):
        result = run_cli(
            "classify", "--model", "mnist_convnet", "--url", server_url, "--invert", invert, *map(str, paths)
        )
        assert result.returncode == 0, result.stderr
        lines = result.stdout.strip().splitlines()
        assert all(("[inverted: dark on light]" in line) == (invert == "auto") for line in lines), lines
        predicted = np.array([int(line.split()[1]) for line in lines])
        accuracy[invert] = (predicted == labels).mean()
    assert accuracy["auto"] >= 0.9, accuracy
    assert accuracy["no"] <= 0.5, accuracy


def test_pictures_already_light_on_dark_are_left_as_they_are(server_url, held_out):
    from serving.tasks.classify import served_preprocessing

    preprocess = served_preprocessing("mnist_convnet", url=server_url)
    assert preprocess.background == "dark"
    assert not any(preprocess.inverts(p) for p in held_out[0])
    assert all(preprocess.inverts(255 - p) for p in held_out[0])
    with pytest.raises(ValueError, match="invert must be one of"):
        preprocess.inverts(held_out[0][0], "maybe")
