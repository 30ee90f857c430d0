"""What a new batch size costs: the first run at each size against the runs after it.

    python scripts/benchmarks/shape_cost.py --model resnet50 [--device cuda] [--sizes 1-64] [--out shape_cost.json]

Dynamic batching gives onnxruntime a different batch size on almost every run. If the
first run at a size costs much more than later ones (kernel plans, memory arenas), a
server under batch-1 load keeps paying that price until every size has been seen. This
exports the zoo model with freshly initialised weights (speed does not depend on them),
then for each size runs it three times and reports the first run and the median of the
other two, as a table and JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def sizes(text: str) -> list[int]:
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--sizes", type=sizes, default=sizes("1-64"), help="batch sizes, FIRST-LAST (default 1-64)")
    parser.add_argument("--out", type=Path, default=Path("shape_cost.json"))
    args = parser.parse_args()

    import onnxruntime as ort

    from exporters import UntrainedWeightsWarning, export_model
    from serving.runtime.providers import select_providers

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWeightsWarning)
        onnx_file = export_model(args.model, tmp).version_dir / "model.onnx"
        session = ort.InferenceSession(str(onnx_file), providers=list(select_providers(args.device)))
    spec = session.get_inputs()[0]
    rows = []
    print(f"{'batch':>5} {'first ms':>9} {'later ms':>9} {'first/later':>11}")
    for batch in args.sizes:
        x = np.random.default_rng(batch).random((batch, *spec.shape[1:]), dtype=np.float32)
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            session.run(None, {spec.name: x})
            runs.append((time.perf_counter() - start) * 1e3)
        later = statistics.median(runs[1:])
        rows.append({"batch": batch, "first_ms": runs[0], "later_ms": later})
        print(f"{batch:>5} {runs[0]:>9.2f} {later:>9.2f} {runs[0] / later:>10.1f}x")
    firsts, laters = sum(r["first_ms"] for r in rows), sum(r["later_ms"] for r in rows)
    print(f"all sizes: first runs {firsts:.0f} ms, later runs {laters:.0f} ms ({firsts / laters:.1f}x)")
    settings = {"model": args.model, "provider": session.get_providers()[0], "onnxruntime": ort.__version__}
    args.out.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
