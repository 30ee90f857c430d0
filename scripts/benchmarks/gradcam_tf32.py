"""How far CUDA's Grad-CAM heatmaps move from the CPU's with TF32 on and off.

    python scripts/benchmarks/gradcam_tf32.py [--batch 128] [--out gradcam_tf32.json]

Exports catsdogs_convnet's Grad-CAM graph with freshly initialised weights, runs one
batch of random pictures on the CPU provider and on the CUDA provider with TF32 off
(deepr's default) and on, and reports the largest heatmap difference as a fraction of
that heatmap's maximum.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("gradcam_tf32.json"))
    parser.add_argument(
        "--onnx",
        type=Path,
        help="a catsdogs_convnet Grad-CAM graph already exported (scripts/tools/export_gpu_graphs.py)",
    )
    args = parser.parse_args()

    import zoo
    from exporters import UntrainedWeightsWarning
    from exporters.zoo_gradcam import export_gradcam
    from serving.protocol.preprocessing import ImagePreprocessing

    with tempfile.TemporaryDirectory() as tmp:
        if args.onnx:
            onnx_file = str(args.onnx)
        else:
            torch.manual_seed(0)
            torch.save(zoo.get_model("catsdogs_convnet").state_dict(), Path(tmp) / "weights.pt")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UntrainedWeightsWarning)
                result = export_gradcam(
                    "catsdogs_convnet", Path(tmp) / "repo", weights=Path(tmp) / "weights.pt", max_batch_size=args.batch
                )
            onnx_file = str(result.version_dir / "model.onnx")
        meta = ort.InferenceSession(onnx_file, providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
        preprocess = ImagePreprocessing.from_json(meta["deepr.preprocessing"])
        pictures = [np.random.default_rng(i).integers(0, 256, (150, 150, 3), dtype=np.uint8) for i in range(args.batch)]
        feeds = {"images": preprocess(pictures), "class_index": np.full((args.batch, 1), -1, np.int64)}
        runs = {
            "cpu": ["CPUExecutionProvider"],
            "cuda_tf32_off": [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"],
            "cuda_tf32_on": [("CUDAExecutionProvider", {"use_tf32": "1"}), "CPUExecutionProvider"],
        }
        heatmaps = {}
        for name, providers in runs.items():
            session = ort.InferenceSession(onnx_file, providers=providers)
            wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
            if session.get_providers()[0] != wanted:
                raise SystemExit(
                    f"{name}: onnxruntime fell back to {session.get_providers()[0]}; this comparison needs CUDA"
                )
            heatmaps[name] = session.run(["heatmap"], feeds)[0]
    reference = heatmaps["cpu"]
    peak = np.maximum(reference.reshape(len(reference), -1).max(axis=1), 1e-12)
    report = {}
    for name in ("cuda_tf32_off", "cuda_tf32_on"):
        diff = np.abs(heatmaps[name] - reference).reshape(len(reference), -1).max(axis=1) / peak
        report[name] = {"max_relative_diff": float(diff.max()), "median_relative_diff": float(np.median(diff))}
        print(
            f"{name:<14} heatmap vs CPU: max {diff.max():.2e}, median {np.median(diff):.2e} of each heatmap's maximum"
        )
    args.out.write_text(json.dumps({"batch": args.batch, "onnxruntime": ort.__version__, **report}, indent=2) + "\n")


if __name__ == "__main__":
    main()
