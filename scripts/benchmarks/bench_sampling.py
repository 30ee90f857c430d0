"""Characters per second from char_lstm, side by side in one run.

In-process: the tutorial's way (re-read the 60-character window through the whole model for
each character, PyTorch), the step graph (onnxruntime, one call per character) and the
generation graph (the whole text in one run of its Loop): one text, the tutorial's four
temperatures in one call against four calls, and 32 texts in one call. Per character: the
Loop's cost per iteration for one row, and a step-graph call.

Served (`deepr serve` in its own process, loopback gRPC): the step graph one call per
character and over one stream, the generation graph one request per text, four temperatures
in one request against four, and 8 and 32 clients at once, each sampling its own texts
(through the generation graph, and over their own step-graph streams): the aggregate.

    python scripts/benchmarks/bench_sampling.py [--length 400] [--out bench_sampling.json]

Every way uses the same weights (fresh ones: speed does not depend on training).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
import torch

PROMPT = "return a new list containing all items from the iterable in ascending order."
TEMPERATURES = [0.2, 0.5, 1.0, 1.2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=400, help="characters per text (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("bench_sampling.json"))
    args = parser.parse_args()

    import zoo
    from deepr.bench import serve_subprocess
    from exporters import UntrainedWeightsWarning
    from exporters.text_generation import export_char_generation, export_char_step

    torch.manual_seed(0)
    model = zoo.get_model("char_lstm").eval()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        torch.save(model.state_dict(), Path(tmp) / "weights.pt")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UntrainedWeightsWarning)
            step_file = export_char_step(repo, weights=Path(tmp) / "weights.pt").version_dir / "model.onnx"
            loop_file = export_char_generation(repo, weights=Path(tmp) / "weights.pt").version_dir / "model.onnx"
        in_process(rows, model, step_file, loop_file, args.length)
        with serve_subprocess(repo, device="cpu") as (url, _):
            served(rows, url, args.length)
    report(rows, args)


def record(rows: list[dict], way: str, fn: Callable[[], list[str] | str], repeats: int = 3) -> None:
    """The median of `repeats` timed calls of `fn` (after one untimed), as characters per second."""
    texts = fn()
    chars = sum(map(len, texts)) if isinstance(texts, list) else len(texts)
    seconds = statistics.median(_times(fn, repeats, warm=False))
    rows.append({"way": way, "chars": chars, "seconds": seconds, "chars_per_s": chars / seconds})
    print(f"  {way}: {chars / seconds:,.0f} chars/s", flush=True)


def in_process(rows: list[dict], model, step_file: Path, loop_file: Path, length: int) -> None:
    from serving.tasks.graph import LocalGraph
    from serving.tasks.text_generation import GenerationGraph, LocalStepModel, TextRows, generate
    from zoo.recipes.text_sampling import window_sample

    record(rows, "window re-run, PyTorch (tutorial)", lambda: window_sample(model, PROMPT, length, 0.5, seed=0), 1)
    step = LocalStepModel(step_file, device="cpu")
    record(rows, "step graph, in-process", lambda: "".join(generate(step, PROMPT, length, temperature=0.5, seed=0)))
    loop = GenerationGraph(LocalGraph(loop_file, device="cpu"))
    record(rows, "loop graph, in-process", lambda: loop(PROMPT, length, 0.5, seed=0))
    four_temperatures(rows, "loop graph, in-process", "call", loop, length)
    many = TextRows.of(PROMPT, [0.5] * 32, None, list(range(32)))
    record(rows, "loop graph, in-process, 32 texts in 1 call", lambda: loop.texts(many, length))
    # per character: the Loop's cost per iteration (two lengths, the prompt's cost cancels) and a step call
    short, long_ = (statistics.median(_times(lambda n=n: loop(PROMPT, n, 0.5, seed=0), 7)) for n in (1, 801))
    rows.append({"way": "loop graph, one iteration (1 row)", "us": (long_ - short) / 800 * 1e6})
    state = np.zeros((1, step.units), np.float32)
    feed = {"char_index": np.array([[3]], np.int64), "h": state, "c": state}
    per_call = statistics.median(_times(lambda: [step.graph.run(feed) for _ in range(200)], 7)) / 200
    rows.append({"way": "step graph, one call (1 row)", "us": per_call * 1e6})


def four_temperatures(rows: list[dict], where: str, call: str, loop, length: int) -> None:
    """The tutorial's four temperatures as rows of one call, and as four calls."""
    from serving.tasks.text_generation import TextRows

    four = TextRows.of(PROMPT, TEMPERATURES, None, 0)
    record(rows, f"{where}, 4 temperatures in 1 {call}", lambda: loop.texts(four, length))
    together = [loop(PROMPT, length, t, seed=0) for t in TEMPERATURES]
    assert together == loop.texts(four, length)  # the same texts either way
    record(
        rows, f"{where}, 4 temperatures in 4 {call}s", lambda: [loop(PROMPT, length, t, seed=0) for t in TEMPERATURES]
    )


def _times(fn: Callable[[], object], repeats: int, warm: bool = True) -> list[float]:
    """Wall times of `repeats` calls, after one untimed call when `warm`."""
    if warm:
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def served(rows: list[dict], url: str, length: int) -> None:
    from serving.tasks.graph import ServedGraph
    from serving.tasks.text_generation import GenerationGraph, ServedStepModel, generate

    with ServedStepModel("char_lstm_step", url=url) as step:
        record(
            rows,
            "step graph, server, a call per character",
            lambda: "".join(generate(step, PROMPT, length, temperature=0.5, seed=0)),
            1,
        )
    with ServedStepModel("char_lstm_step", url=url, stream=True) as streamed:
        record(
            rows,
            "step graph, server, one stream",
            lambda: "".join(generate(streamed, PROMPT, length, temperature=0.5, seed=0)),
            1,
        )
    with GenerationGraph(ServedGraph("char_lstm_generate", url=url)) as loop:
        record(rows, "loop graph, server, 1 request", lambda: loop(PROMPT, length, 0.5, seed=0))
        four_temperatures(rows, "loop graph, server", "request", loop, length)
    for clients in (8, 32):
        record(rows, f"loop graph, server, {clients} clients at once", lambda c=clients: _clients(url, c, length, 3), 1)
    for clients in (8, 32):
        record(rows, f"step graph, server, {clients} streams at once", lambda c=clients: _streams(url, c, length), 1)


def _together(clients: int, work: Callable[[int], list[str]]) -> list[str]:
    """`work(i)` in `clients` threads released at once; every text they made."""
    start = threading.Barrier(clients)
    out: list[list[str]] = [[] for _ in range(clients)]

    def run(i: int) -> None:
        start.wait()
        out[i] = work(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [text for texts in out for text in texts]


def _clients(url: str, clients: int, length: int, texts: int) -> list[str]:
    """Each client its own connection, sampling `texts` texts one request after another."""
    from serving.tasks.graph import ServedGraph
    from serving.tasks.text_generation import GenerationGraph

    graphs = [GenerationGraph(ServedGraph("char_lstm_generate", url=url)) for _ in range(clients)]
    try:
        return _together(clients, lambda i: [graphs[i](PROMPT, length, 0.5, seed=i * texts + k) for k in range(texts)])
    finally:
        for g in graphs:
            g.close()


def _streams(url: str, clients: int, length: int) -> list[str]:
    """Each client its own step-graph stream, one text."""
    from serving.tasks.text_generation import ServedStepModel, generate

    models = [ServedStepModel("char_lstm_step", url=url, stream=True) for _ in range(clients)]
    try:
        return _together(clients, lambda i: ["".join(generate(models[i], PROMPT, length, temperature=0.5, seed=i))])
    finally:
        for m in models:
            m.close()


def report(rows: list[dict], args: argparse.Namespace) -> None:
    base = rows[0]["chars_per_s"]
    print(
        f"\nchar_lstm, {args.length} characters per text at T=0.5, CPU, torch threads {torch.get_num_threads()}, "
        f"onnxruntime {ort.__version__}"
    )
    print(f"{'way':<52} {'chars/s':>10} {'x tutorial':>11}")
    for r in rows:
        if "chars_per_s" in r:
            print(f"{r['way']:<52} {r['chars_per_s']:>10,.0f} {r['chars_per_s'] / base:>11.1f}")
    for r in rows:
        if "us" in r:
            print(f"{r['way']:<52} {r['us']:>8.1f} us")
    args.out.write_text(json.dumps({"length": args.length, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
