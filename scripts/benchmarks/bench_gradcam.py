"""Heatmaps per second: an exported Grad-CAM graph on onnxruntime vs PyTorch with hooks
(the way pytorch-grad-cam computes it), side by side in one run.

    python scripts/benchmarks/bench_gradcam.py [--model catsdogs_convnet] [--repeats 15] [--out bench_gradcam.json]

Both sides use the same freshly initialised weights; speed does not depend on training.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from _timing import timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="catsdogs_convnet")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("bench_gradcam.json"))
    args = parser.parse_args()

    import zoo
    from exporters import UntrainedWeightsWarning
    from exporters.gradcam import hook_gradcam, last_conv_layer
    from exporters.zoo_gradcam import export_gradcam

    torch.manual_seed(0)
    model = zoo.get_model(args.model).eval()
    layer = last_conv_layer(model)
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(model.state_dict(), Path(tmp) / "weights.pt")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UntrainedWeightsWarning)
            result = export_gradcam(args.model, Path(tmp) / "repo", weights=Path(tmp) / "weights.pt")
        session = ort.InferenceSession(str(result.version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
        shape = zoo.get_model_spec(args.model).input_shape
        rows = []
        for batch in map(int, args.batches.split(",")):
            images = np.random.default_rng(batch).random((batch, *shape), dtype=np.float32)
            classes = np.full((batch, 1), -1, dtype=np.int64)
            onnx_s = timed(lambda: session.run(["heatmap"], {"images": images, "class_index": classes}), args.repeats)
            torch_s = timed(
                lambda: hook_gradcam(model, layer, torch.from_numpy(images), torch.from_numpy(classes[:, 0])),
                args.repeats,
            )
            rows.append(
                {
                    "batch": batch,
                    "onnxruntime_heatmaps_per_s": batch / onnx_s,
                    "pytorch_hooks_heatmaps_per_s": batch / torch_s,
                    "ratio": torch_s / onnx_s,
                }
            )
    print(f"Grad-CAM of {args.model} at {layer}, CPU, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'batch':>6} {'onnxruntime/s':>15} {'pytorch hooks/s':>16} {'ratio':>7}")
    for r in rows:
        print(
            f"{r['batch']:>6} {r['onnxruntime_heatmaps_per_s']:>15.1f} {r['pytorch_hooks_heatmaps_per_s']:>16.1f} {r['ratio']:>7.2f}"
        )
    args.out.write_text(
        json.dumps(
            {
                "model": args.model,
                "layer": layer,
                "device": "cpu",
                "machine": platform.processor() or platform.machine(),
                "onnxruntime": ort.__version__,
                "torch": torch.__version__,
                "repeats": args.repeats,
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
