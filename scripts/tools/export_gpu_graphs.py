"""Export the graphs the `gpu` tests run, for a GPU host whose PyTorch cannot export them.

    python scripts/tools/export_gpu_graphs.py DIR
    DEEPR_GPU_GRAPHS=DIR python -m pytest -m gpu      # on the GPU host

The tests compare onnxruntime's CUDA provider with its CPU provider on the same graph,
so where the graph was exported does not matter; Grad-CAM's backward translations need a
recent torch.onnx. Weights are freshly initialised with the tests' seeds.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import warnings
from pathlib import Path

import torch


def main() -> None:
    import zoo
    from exporters import UntrainedWeightsWarning
    from exporters.text_generation import export_char_generation, export_char_step
    from exporters.zoo_gradcam import export_gradcam

    parser = argparse.ArgumentParser(description="Export the graphs the gpu tests run into DIR.")
    parser.add_argument("out", nargs="?", type=Path, default=Path("gpu-graphs"), help="folder (default: gpu-graphs)")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWeightsWarning)
        tmp = Path(tmp)
        torch.manual_seed(0)
        torch.save(zoo.get_model("catsdogs_convnet").state_dict(), tmp / "catsdogs.pt")
        gradcam = export_gradcam("catsdogs_convnet", tmp / "repo", weights=tmp / "catsdogs.pt", max_batch_size=128)
        torch.manual_seed(0)
        torch.save(zoo.get_model("char_lstm").state_dict(), tmp / "char.pt")
        step = export_char_step(tmp / "repo", weights=tmp / "char.pt")
        loop = export_char_generation(tmp / "repo", weights=tmp / "char.pt")
        for name, result in (
            ("catsdogs_convnet_gradcam", gradcam),
            ("char_lstm_step", step),
            ("char_lstm_generate", loop),
        ):
            shutil.copyfile(result.version_dir / "model.onnx", out / f"{name}.onnx")
            print(out / f"{name}.onnx")


if __name__ == "__main__":
    main()
