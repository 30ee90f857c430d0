"""int8 against float32, in-process and served, side by side in one run.

    python scripts/benchmarks/bench_int8.py [--models mnist_convnet,catsdogs_convnet,resnet50,vgg16]
        [--cells 1x4,32x2] [--seconds 4] [--out int8.json]

Each model is exported as float32 and quantized as `deepr export --precision int8` does
(static QDQ for these convolutional nets), into one repository; then `deepr bench` measures
both in one run: in-process onnxruntime at each cell's batch size, and the server under
tritonclient load. Weights are freshly initialised: the figures are speed only (accuracy
is what the export itself measures on trained weights). mnist_convnet and catsdogs_convnet
calibrate on their embedded training pictures; the two ImageNet bases (resnet50 at
224 x 224 with its top, the VGG16 base at 150 x 150) on uniform noise, which sets their
ranges as well as any data does for speed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

BASES = {"resnet50": {}, "vgg16": {"include_top": False, "input_shape": (150, 150, 3)}}


def _export_pair(name: str, repository: Path, calibration: int) -> str:
    """NAME and NAME_int8 in `repository`; returns the int8 model's name."""
    from exporters import UntrainedWeightsWarning, export_model
    from exporters.quantize import add_quantized, export_quantized, quantize_file
    from serving.protocol.model_config import read_config

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWeightsWarning)
        if name not in BASES:
            export_model(name, repository)
            result, report = export_quantized(name, repository, calibration=calibration, max_accuracy_drop=None)
            print(f"{result.name}: {report.method}", file=sys.stderr)
            return result.name
        float_result = export_model(name, repository, options=BASES[name])
    float_file = float_result.version_dir / "model.onnx"
    shape = list(read_config(float_result.version_dir.parent).input[0].dims)
    noise = np.random.default_rng(0).random((calibration, *shape), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        int8_file = Path(tmp) / "model.onnx"
        method = quantize_file(float_file, int8_file, method="static", calibration=noise)
        add_quantized(float_result.version_dir.parent, int8_file, repository, f"{name}_int8")
    print(f"{name}_int8: {method} (uniform noise: speed only)", file=sys.stderr)
    return f"{name}_int8"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mnist_convnet,catsdogs_convnet,resnet50,vgg16")
    parser.add_argument("--cells", default="1x4,32x2", help="deepr bench cells, BATCHxCONCURRENCY")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--calibration", type=int, default=64, help="calibration samples per model")
    parser.add_argument("--out", type=Path, default=Path("int8.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp) / "repo"
        pairs = {}
        for name in args.models.split(","):
            print(f"{name}: exporting float32 and int8 ...", file=sys.stderr, flush=True)
            pairs[name] = _export_pair(name, repository, args.calibration)
        bench_json = Path(tmp) / "bench.json"
        command = [sys.executable, "-m", "deepr", "bench", "--repository", str(repository), "--device", "cpu"]
        for name, int8_name in pairs.items():
            command += ["--model", name, "--model", int8_name]
        command += ["--cells", args.cells, "--seconds", str(args.seconds), "--out", str(bench_json)]
        subprocess.run(command, check=True)
        results = json.loads(bench_json.read_text())

    rows = []
    by_key = {(r["model"], r["mode"], r["batch"], r["concurrency"]): r for r in results["results"]}
    print(
        f"\n{'model':<18} {'mode':<11} {'batch':>5} {'conc':>4} {'fp32 items/s':>13} {'int8 items/s':>13} {'int8/fp32':>9}"
    )
    for name, int8_name in pairs.items():
        for (model, mode, batch, concurrency), row in by_key.items():
            if model != name:
                continue
            quantized = by_key.get((int8_name, mode, batch, concurrency))
            if quantized is None:
                continue
            ratio = quantized["items_per_s"] / row["items_per_s"]
            rows.append(
                {
                    "model": name,
                    "mode": mode,
                    "batch": batch,
                    "concurrency": concurrency,
                    "fp32_items_per_s": row["items_per_s"],
                    "int8_items_per_s": quantized["items_per_s"],
                    "ratio": ratio,
                }
            )
            print(
                f"{name:<18} {mode:<11} {batch:>5} {concurrency:>4} {row['items_per_s']:>13,.1f} "
                f"{quantized['items_per_s']:>13,.1f} {ratio:>8.2f}x"
            )
    args.out.write_text(json.dumps({"settings": results["settings"], "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
