"""Sampling from the character model's step graph: the graph tracks PyTorch step by step,
samples follow softmax(log(p) / T), top-k holds, and a seed fixes the text."""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

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


def test_the_sample_command_prints_several_temperatures_side_by_side(loop_graph):
    repo, _ = loop_graph
    run = subprocess.run(
        [sys.executable, "-m", "deepr", "sample", "--local", str(repo / "char_lstm_generate" / "1" / "model.onnx")]
        + ["--prompt", "the ", "--temperature", "0.2,0.5,1.0,1.2", "--length", "60", "--seed", "4"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].split() == ["T=0.2", "T=0.5", "T=1", "T=1.2"]
    assert max(map(len, lines)) <= 120
    refused = subprocess.run(
        [sys.executable, "-m", "deepr", "sample", "--prompt", "a", "--prompt", "b", "--stream"],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "--stream prints one text as it is made" in refused.stderr


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


def loop_feed(prompts, length, temperatures, top_ks, seeds):
    """The generation graph's inputs for rows of prompts (padded with -1)."""
    codes = [encode_text(p) for p in prompts]
    padded = np.full((len(codes), max(map(len, codes))), -1, np.int64)
    for row, c in enumerate(codes):
        padded[row, : len(c)] = c
    column = lambda values, dtype: np.asarray(values, dtype).reshape(-1, 1)  # noqa: E731
    return {
        "prompt": padded,
        "length": column([length] * len(codes), np.int64),
        "temperature": column(temperatures, np.float32),
        "top_k": column(top_ks, np.int64),
        "seed": column(seeds, np.int64),
    }


def run_loop(session, prompt, length, temperature, top_k, seed):
    """One row: its characters (length,) and distributions (length, classes)."""
    chars, probs = session.run(None, loop_feed([prompt], length, [temperature], [top_k], [seed]))
    return chars[0], probs[0]


@pytest.mark.parametrize("temperature", [0.5, 1.2])
def test_loop_samples_fit_the_reweighted_distribution(loop_graph, temperature):
    _, session = loop_graph
    draws = 3000  # one row per draw, each with its own seed, in one run
    chars, probs = session.run(None, loop_feed(["an "] * draws, 1, [temperature] * draws, [0] * draws, range(draws)))
    np.testing.assert_allclose(probs[:, 0], np.broadcast_to(probs[0, 0], probs[:, 0].shape), atol=1e-6)
    counts = np.bincount(chars[:, 0], minlength=len(CHARSET))
    expected = draws * reweight(probs[0, 0], temperature)
    rare = expected < 5
    observed, wanted = counts[~rare], expected[~rare]
    if rare.any():
        observed, wanted = np.append(observed, counts[rare].sum()), np.append(wanted, expected[rare].sum())
    assert chisquare(observed, wanted).pvalue > 0.001


def test_loop_top_k_and_seeds(loop_graph):
    _, session = loop_graph
    chars, probs = run_loop(session, "the ", 1, 1.2, 3, 0)
    top3 = set(np.argsort(probs[0])[-3:].tolist())
    firsts = session.run(["chars"], loop_feed(["the "] * 300, 1, [1.2] * 300, [3] * 300, range(300)))[0][:, 0]
    assert set(firsts.tolist()) <= top3 and len(set(firsts.tolist())) > 1
    a = run_loop(session, "the value ", 60, 0.7, 0, 42)[0]
    assert np.array_equal(a, run_loop(session, "the value ", 60, 0.7, 0, 42)[0])
    assert not np.array_equal(a, run_loop(session, "the value ", 60, 0.7, 0, 43)[0])
    greedy = run_loop(session, "the value ", 30, 1e-4, 0, 1)[0]
    assert np.array_equal(greedy, run_loop(session, "the value ", 30, 1e-4, 0, 2)[0])


def test_a_row_is_the_same_text_alone_or_beside_others(loop_graph):
    """Rows of different prompt lengths, temperatures, top-k and seeds in one run: each row's
    text equals the text of that row run alone, and a padded prompt reads as the bare one."""
    _, session = loop_graph
    rows = [
        ("the value ", 0.5, 0, 7),
        ("return a list of all the items in ", 1.0, 5, 8),
        ("x", 1.2, 0, 9),
        ("def ", 0.2, 2, 7),
    ]
    feed = loop_feed([r[0] for r in rows], 80, [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows])
    together = session.run(["chars"], feed)[0]
    for row, (prompt, temperature, top_k, seed) in enumerate(rows):
        alone = run_loop(session, prompt, 80, temperature, top_k, seed)[0]
        assert together[row].tolist() == alone.tolist(), prompt
    assert together[0].tolist() != together[3].tolist()  # same seed, other prompt and temperature


def test_texts_from_lists_and_the_step_path_take_rows(loop_graph, step_model):
    from serving.tasks.text_generation import TextRows, generate_in_one_call, generate_rows

    _, local_step = step_model[1], step_model[2]
    repo, _ = loop_graph
    loop_file = repo / "char_lstm_generate" / "1" / "model.onnx"
    texts = generate_in_one_call("the ", local=loop_file, length=40, temperature=[0.2, 0.5, 1.0, 1.2], seed=3)
    assert len(texts) == 4 and all(len(t) == 40 for t in texts) and len(set(texts)) > 1
    assert texts[2] == generate_in_one_call("the ", local=loop_file, length=40, temperature=1.0, seed=3)
    with pytest.raises(ValueError, match="got 2 prompts, 3 temperatures"):
        generate_in_one_call(["a", "b"], local=loop_file, temperature=[0.2, 0.5, 1.0])
    rows = TextRows.of(["the value ", "x"], [0.5, 1.2], [None, 4], [5, 6])
    together = ["".join(chars) for chars in zip(*generate_rows(local_step, rows, 30))]
    assert together[0] == "".join(generate(local_step, "the value ", 30, temperature=0.5, seed=5))
    assert together[1] == "".join(generate(local_step, "x", 30, temperature=1.2, top_k=4, seed=6))


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


def served_concurrently(repo, tmp_path, model, queue_delay_us, call, cases):
    """Serve a copy of `repo` whose `model` waits `queue_delay_us` for requests to gather,
    run `call(url, case)` for every case at once, and return the answers and the model's
    (requests, runs, batch sizes run)."""
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    import tritonclient.grpc as triton

    from serving.protocol.model_config import read_config, write_config
    from serving.server.grpc.server import serve_in_thread
    from serving.server.settings import ServerSettings

    served = tmp_path / "repo"
    shutil.copytree(repo, served)
    config = read_config(served / model)
    config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    write_config(served / model, config)
    settings = ServerSettings(repository=served, host="127.0.0.1", port=0, device=TEST_DEVICE, metrics_port=-1)
    with serve_in_thread(settings) as server:
        url = f"127.0.0.1:{server.port}"
        with ThreadPoolExecutor(len(cases)) as pool:
            answers = list(pool.map(lambda case: call(url, case), cases))
        client = triton.InferenceServerClient(url)
        stats = client.get_inference_statistics(model).model_stats[0]
        client.close()
    return answers, (stats.inference_count, stats.execution_count, {b.batch_size for b in stats.batch_stats})


def test_concurrent_generations_merge_into_one_run(loop_graph, tmp_path):
    """Eight clients at once, each with its own prompt length, text length, temperature, top-k
    and seed: the server runs them as rows of merged Loop runs and each gets exactly its own
    text (the text the local graph gives it alone)."""
    from serving.tasks.text_generation import generate_in_one_call

    repo, _ = loop_graph
    loop_file = repo / "char_lstm_generate" / "1" / "model.onnx"
    cases = [("return the " + "x" * i, 30 + 7 * i, 0.3 + 0.1 * i, (None, 3)[i % 2], i) for i in range(8)]

    def sample(case, **where):
        prompt, length, temperature, top_k, seed = case
        return generate_in_one_call(prompt, length=length, temperature=temperature, top_k=top_k, seed=seed, **where)

    wanted = [sample(case, local=loop_file) for case in cases]
    got, (requests, runs, sizes) = served_concurrently(
        repo, tmp_path, "char_lstm_generate", 300_000, lambda url, case: sample(case, url=url), cases
    )
    assert got == wanted and [len(t) for t in got] == [c[1] for c in cases]
    assert requests == 8 and runs < 8 and max(sizes) > 1, (requests, runs, sizes)


def test_concurrent_streams_advance_in_one_step_run(step_model, tmp_path):
    """Four clients streaming the step graph at once: their steps are merged into shared
    step runs, and each text equals the one sampled alone."""
    from serving.tasks.text_generation import sample_text

    _, repo, local = step_model
    cases = [("the value " * (1 + i % 2), 0.5 + 0.2 * i, i) for i in range(4)]
    wanted = ["".join(generate(local, p, 25, temperature=t, seed=s)) for p, t, s in cases]
    got, (requests, runs, sizes) = served_concurrently(
        repo,
        tmp_path,
        "char_lstm_step",
        20_000,
        lambda url, c: sample_text(c[0], url=url, length=25, temperature=c[1], seed=c[2], stream=True),
        cases,
    )
    assert got == wanted
    assert runs < requests and max(sizes) > 1, (requests, runs, sizes)


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


def test_a_generation_graph_without_rows_is_refused_with_the_command_to_fix_it(loop_graph, tmp_path):
    import onnx

    from serving.tasks.graph import LocalGraph
    from serving.tasks.text_generation import GenerationGraph

    repo, _ = loop_graph
    model = onnx.load(repo / "char_lstm_generate" / "1" / "model.onnx")
    kept = [p for p in model.metadata_props if p.key != "deepr.ragged_inputs"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, tmp_path / "old.onnx")
    with pytest.raises(
        ValueError, match="took rows of prompts: export it again with `deepr export char_lstm --generate`"
    ):
        GenerationGraph(LocalGraph(tmp_path / "old.onnx"))


def test_a_generation_graph_of_fresh_weights_checks_against_the_same_model(tmp_path):
    """Without weights the export checks the loop against the very model it was built from
    (two fresh models would differ)."""
    from exporters import UntrainedWeightsWarning
    from exporters.text_generation import export_char_generation

    with pytest.warns(UntrainedWeightsWarning, match="generation graph with freshly initialised weights"):
        result = export_char_generation(tmp_path)
    assert result.validation.max_abs_diff <= 1e-5


def test_ctrl_c_on_a_stream_always_ends_at_once_with_130(step_model):
    """SIGINT at 50 random moments of `deepr sample --stream` while it prints: exit 130 every
    time, no traceback, no hang. (While the commands' modules load, deepr._entry ends it the
    same way.)"""
    import signal
    import time

    from serving.server.grpc.server import serve_in_thread
    from serving.server.settings import ServerSettings

    _, repo, _ = step_model
    rng = np.random.default_rng(0)
    with serve_in_thread(
        ServerSettings(repository=repo, host="127.0.0.1", port=0, device=TEST_DEVICE, metrics_port=-1)
    ) as server:
        url = f"127.0.0.1:{server.port}"
        command = [sys.executable, "-m", "deepr", "sample", "--graph", "step", "--stream", "--url", url]
        command += ["--prompt", "return the ", "--length", "2000", "--seed", "3"]
        delays = rng.uniform(0.0, 2.0, 50)  # from the first character on, mid-stream

        def interrupted_after(delay: float) -> tuple[object, str]:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert process.stdout is not None
            first = process.stdout.read(1)  # streaming has begun (an interpreter booting is not deepr's)
            time.sleep(delay)
            process.send_signal(signal.SIGINT)
            try:
                _, err = process.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                return "hang", process.communicate()[1][-500:]
            return (process.returncode if first else "no text"), err[-500:] if "Traceback" in err else ""

        with ThreadPoolExecutor(5) as pool:  # five at a time: the 50 tries in a fifth of the time
            outcomes = list(pool.map(interrupted_after, delays))
    assert all(code == 130 and not trace for code, trace in outcomes), [o for o in outcomes if o != (130, "")]
