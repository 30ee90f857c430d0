"""Sampling from the character model's step graph: the graph tracks PyTorch step by step,
samples follow softmax(log(p) / T), top-k holds, and a seed fixes the text."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from torch.nn import functional as F

import zoo
from conftest import TEST_DEVICE
from exporters.text_generation import export_char_step
from serving.protocol.sampling import reweight, sample_next
from serving.tasks.text_generation import LocalStepModel, ServedStepModel, generate
from zoo.datasets.chars import CHARSET, encode_text


@pytest.fixture(scope="module")
def step_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("char")
    torch.manual_seed(0)
    model = zoo.get_model("char_lstm").eval()
    torch.save(model.state_dict(), tmp / "weights.pt")
    result = export_char_step(tmp / "repo", weights=tmp / "weights.pt")
    return model, tmp / "repo", LocalStepModel(result.version_dir / "model.onnx")


def test_step_graph_tracks_pytorch_at_every_step(step_model):
    model, _, local = step_model
    codes = encode_text("Return the number of items; raise ValueError otherwise.")
    h = np.zeros((1, local.units), np.float32)
    c = np.zeros_like(h)
    for t, code in enumerate(codes):
        probs, h, c = local.step(int(code), h, c)
        with torch.no_grad():  # the whole model re-reading the prefix from a zero state
            want = model(F.one_hot(torch.from_numpy(codes[: t + 1]), len(CHARSET)).float().unsqueeze(0))[0].numpy()
        np.testing.assert_allclose(probs, want, atol=1e-5)


@pytest.mark.parametrize("temperature", [0.5, 1.2])
def test_samples_fit_the_reweighted_distribution(step_model, temperature):
    _, _, local = step_model
    h = np.zeros((1, local.units), np.float32)
    probs, _, _ = local.step(int(encode_text("e")[0]), h, h.copy())
    rng = np.random.default_rng(11)
    draws = 5000
    counts = np.bincount([sample_next(probs, temperature, None, rng) for _ in range(draws)], minlength=len(CHARSET))
    expected = draws * reweight(probs, temperature)
    # Chi-square needs expected counts of at least 5: pool the rare characters into one bin.
    rare = expected < 5
    observed, wanted = counts[~rare], expected[~rare]
    if rare.any():
        observed, wanted = np.append(observed, counts[rare].sum()), np.append(wanted, expected[rare].sum())
    assert chisquare(observed, wanted).pvalue > 0.001  # stated significance: 0.1%


def test_temperature_changes_entropy_and_top_k_holds(step_model):
    _, _, local = step_model
    h = np.zeros((1, local.units), np.float32)
    probs, _, _ = local.step(int(encode_text("t")[0]), h, h.copy())

    def entropy(p):
        return float(-(p * np.log(np.clip(p, 1e-30, None))).sum())

    assert entropy(reweight(probs, 0.2)) < entropy(reweight(probs, 1.0)) < entropy(reweight(probs, 1.2))
    np.testing.assert_allclose(reweight(probs, 1.0), probs / probs.sum(), rtol=1e-5)
    top5 = set(np.argsort(probs)[-5:].tolist())
    rng = np.random.default_rng(0)
    assert {sample_next(probs, 1.2, 5, rng) for _ in range(2000)} <= top5
    assert sample_next(probs, 1e-4, None, rng) == int(probs.argmax())  # T -> 0: greedy


def test_same_seed_same_text(step_model):
    _, _, local = step_model
    a = "".join(generate(local, "the value ", 80, temperature=0.8, seed=5))
    b = "".join(generate(local, "the value ", 80, temperature=0.8, seed=5))
    c = "".join(generate(local, "the value ", 80, temperature=0.8, seed=6))
    assert a == b and a != c and len(a) == 80 and set(a) <= set(CHARSET)
    greedy = "".join(generate(local, "the value ", 30, temperature=1e-4, seed=1))
    assert greedy == "".join(generate(local, "the value ", 30, temperature=1e-4, seed=2))


def test_served_equals_local(step_model):
    from serving.server.grpc.server import serve_in_thread
    from serving.server.settings import ServerSettings

    _, repo, local = step_model
    with serve_in_thread(ServerSettings(repository=repo, host="127.0.0.1", port=0, device=TEST_DEVICE)) as server:
        served = ServedStepModel("char_lstm_step", url=f"127.0.0.1:{server.port}")
        assert served.charset == CHARSET
        text = "".join(generate(served, "a list of ", 40, temperature=0.5, seed=9))
        streamed = ServedStepModel("char_lstm_step", url=f"127.0.0.1:{server.port}", stream=True)
        assert "".join(generate(streamed, "a list of ", 40, temperature=0.5, seed=9)) == text
    assert text == "".join(generate(local, "a list of ", 40, temperature=0.5, seed=9))


def test_bad_requests(step_model):
    _, repo, local = step_model
    with pytest.raises(ValueError, match="temperature must be > 0"):
        reweight(np.ones(3) / 3, 0.0)
    with pytest.raises(ValueError, match="top_k must be in 1..3"):
        reweight(np.ones(3) / 3, 1.0, top_k=4)
    with pytest.raises(ValueError, match="has no character the model knows"):
        next(generate(local, "\u00e9\u00e8", 5))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "deepr",
            "sample",
            "--local",
            str(repo / "char_lstm_step" / "1" / "model.onnx"),
            "--prompt",
            "hello",
            "--temperature",
            "0",
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and "argument --temperature: expected a number > 0, got 0" in run.stderr


@pytest.fixture(scope="module")
def loop_graph(step_model, tmp_path_factory):
    import onnxruntime as ort

    from exporters.text_generation import export_char_generation

    tmp = tmp_path_factory.mktemp("loop")
    model, _, _ = step_model
    torch.save(model.state_dict(), tmp / "weights.pt")
    result = export_char_generation(tmp / "repo", weights=tmp / "weights.pt")
    assert result.validation.max_abs_diff <= 1e-5  # per-step distributions equal the step graph's
    return tmp / "repo", ort.InferenceSession(
        str(result.version_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )


def run_loop(session, prompt, length, temperature, top_k, seed):
    return session.run(
        None,
        {
            "prompt": encode_text(prompt),
            "length": np.array([length]),
            "temperature": np.array([temperature], np.float32),
            "top_k": np.array([top_k]),
            "seed": np.array([seed]),
        },
    )


@pytest.mark.parametrize("temperature", [0.5, 1.2])
def test_loop_samples_fit_the_reweighted_distribution(loop_graph, temperature):
    _, session = loop_graph
    draws = 3000
    firsts, probs = [], None
    for seed in range(draws):  # the seed is a graph input: one call per draw
        chars, p = run_loop(session, "an ", 1, temperature, 0, seed)
        firsts.append(int(chars[0]))
        probs = p[0]
    counts = np.bincount(firsts, minlength=len(CHARSET))
    expected = draws * reweight(probs, temperature)
    rare = expected < 5
    observed, wanted = counts[~rare], expected[~rare]
    if rare.any():
        observed, wanted = np.append(observed, counts[rare].sum()), np.append(wanted, expected[rare].sum())
    assert chisquare(observed, wanted).pvalue > 0.001


def test_loop_top_k_and_seeds(loop_graph):
    _, session = loop_graph
    chars, probs = run_loop(session, "the ", 1, 1.2, 3, 0)
    top3 = set(np.argsort(probs[0])[-3:].tolist())
    assert {int(run_loop(session, "the ", 1, 1.2, 3, seed)[0][0]) for seed in range(300)} <= top3
    a = run_loop(session, "the value ", 60, 0.7, 0, 42)[0]
    assert np.array_equal(a, run_loop(session, "the value ", 60, 0.7, 0, 42)[0])
    assert not np.array_equal(a, run_loop(session, "the value ", 60, 0.7, 0, 43)[0])
    greedy = run_loop(session, "the value ", 30, 1e-4, 0, 1)[0]
    assert np.array_equal(greedy, run_loop(session, "the value ", 30, 1e-4, 0, 2)[0])


def test_loop_served_equals_local(loop_graph):
    from serving.server.grpc.server import serve_in_thread
    from serving.server.settings import ServerSettings
    from serving.tasks.text_generation import generate_in_one_call

    repo, session = loop_graph
    local = "".join(CHARSET[i] for i in run_loop(session, "a list of ", 50, 0.5, 5, 9)[0])
    with serve_in_thread(ServerSettings(repository=repo, host="127.0.0.1", port=0, device=TEST_DEVICE)) as server:
        served = generate_in_one_call(
            "a list of ", url=f"127.0.0.1:{server.port}", length=50, temperature=0.5, top_k=5, seed=9
        )
    assert served == local and len(served) == 50


def test_a_reader_who_stops_stops_the_generation(step_model):
    """sample_text over a stream, stopped by its reader after 5 characters: the stream ends,
    the server has stepped only as far as it was asked, and it serves the next stream."""
    import tritonclient.grpc as triton

    from serving.server.grpc.server import serve_in_thread
    from serving.server.settings import ServerSettings
    from serving.tasks.text_generation import sample_text

    class Enough(Exception):
        pass

    def reader(ch, seen=[]):  # noqa: B006 (counts across calls on purpose)
        seen.append(ch)
        if len(seen) == 5:
            raise Enough

    _, repo, _ = step_model
    with serve_in_thread(
        ServerSettings(repository=repo, host="127.0.0.1", port=0, device=TEST_DEVICE, metrics_port=-1)
    ) as server:
        url = f"127.0.0.1:{server.port}"
        with pytest.raises(Enough):
            sample_text("abc", model="char_lstm_step", url=url, length=400, seed=1, on_char=reader, stream=True)
        client = triton.InferenceServerClient(url)
        stats = client.get_inference_statistics("char_lstm_step").model_stats[0].inference_stats
        assert stats.success.count == 3 + 4  # the prompt's 3 steps, then one step after each of the first 4 characters
        assert len(sample_text("abc", model="char_lstm_step", url=url, length=20, seed=1, stream=True)) == 20
        client.close()
