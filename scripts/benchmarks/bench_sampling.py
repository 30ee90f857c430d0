"""Characters per second from char_lstm, side by side in one run: the tutorial's way
(re-read the 60-character window through the whole model for each character, PyTorch),
the step graph in-process (onnxruntime) and through deepr's gRPC server (one call per
character, or all steps over one ModelStreamInfer stream), and the Loop graph (the whole
text in one call) in-process and through the server.

    python scripts/benchmarks/bench_sampling.py [--length 300] [--out bench_sampling.json]

All three use the same weights (fresh ones: speed does not depend on training).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import onnxruntime as ort
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("bench_sampling.json"))
    args = parser.parse_args()

    import zoo
    from exporters import UntrainedWeightsWarning
    from exporters.text_generation import export_char_generation, export_char_step
    from serving.server.grpc.server import serve_in_thread
    from serving.server.settings import ServerSettings
    from serving.tasks.text_generation import LocalStepModel, ServedStepModel, generate, generate_in_one_call
    from zoo.recipes.text_sampling import window_sample

    prompt = "return a new list containing all items from the iterable in ascending order."
    torch.manual_seed(0)
    model = zoo.get_model("char_lstm").eval()
    rows = []

    def record(way: str, fn) -> None:
        start = time.perf_counter()
        text = fn()
        seconds = time.perf_counter() - start
        rows.append({"way": way, "chars": len(text), "seconds": seconds, "chars_per_s": len(text) / seconds})

    with tempfile.TemporaryDirectory() as tmp:
        torch.save(model.state_dict(), Path(tmp) / "weights.pt")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UntrainedWeightsWarning)
            result = export_char_step(Path(tmp) / "repo", weights=Path(tmp) / "weights.pt")
            loop = export_char_generation(Path(tmp) / "repo", weights=Path(tmp) / "weights.pt")
        record("window re-run, PyTorch (tutorial)", lambda: window_sample(model, prompt, args.length, 0.5, seed=0))
        local = LocalStepModel(result.version_dir / "model.onnx", device="cpu")
        record(
            "step graph, in-process onnxruntime",
            lambda: "".join(generate(local, prompt, args.length, temperature=0.5, seed=0)),
        )
        record(
            "loop graph, in-process onnxruntime",
            lambda: generate_in_one_call(
                prompt, local=loop.version_dir / "model.onnx", length=args.length, temperature=0.5, seed=0
            ),
        )
        with serve_in_thread(
            ServerSettings(repository=Path(tmp) / "repo", host="127.0.0.1", port=0, device="cpu")
        ) as server:
            served = ServedStepModel("char_lstm_step", url=f"127.0.0.1:{server.port}")
            record(
                "step graph, deepr gRPC server",
                lambda: "".join(generate(served, prompt, args.length, temperature=0.5, seed=0)),
            )
            streamed = ServedStepModel("char_lstm_step", url=f"127.0.0.1:{server.port}", stream=True)
            record(
                "step graph, deepr gRPC stream",
                lambda: "".join(generate(streamed, prompt, args.length, temperature=0.5, seed=0)),
            )
            url = f"127.0.0.1:{server.port}"
            record(
                "loop graph, deepr gRPC server",
                lambda: generate_in_one_call(prompt, url=url, length=args.length, temperature=0.5, seed=0),
            )
    base = rows[0]["chars_per_s"]
    print(
        f"char_lstm, {args.length} characters at T=0.5, CPU, torch threads {torch.get_num_threads()}, onnxruntime {ort.__version__}"
    )
    print(f"{'way':<38} {'chars/s':>10} {'x tutorial':>11}")
    for r in rows:
        print(f"{r['way']:<38} {r['chars_per_s']:>10.1f} {r['chars_per_s'] / base:>11.1f}")
    args.out.write_text(json.dumps({"length": args.length, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
