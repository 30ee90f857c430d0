"""How exactly and how fast `deepr import` takes Keras models.

For each tutorial architecture (built in Keras 3 on its PyTorch backend, trained a few steps
on the embedded data, saved as .h5 and .keras): parameter counts, and the largest difference
between onnxruntime and keras_model.predict on held-out inputs as a fraction of the largest
output. Then a VGG16-sized model (keras.applications.VGG16 with random weights, 224x224,
138M parameters) saved as .h5: seconds to read and convert it, and for the whole
`deepr import` (convert, count, export to ONNX, check against PyTorch).

    python scripts/benchmarks/bench_keras_import.py [--out keras_import.json] [--skip-vgg16]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["KERAS_BACKEND"] = "torch"
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("keras_import.json"))
    parser.add_argument("--skip-vgg16", action="store_true")
    args = parser.parse_args()
    import keras
    import onnxruntime as ort

    from exporters import export_model
    from tests.zoo.keras_models import CASES, SEQUENCE_LENGTHS, real_data, trained
    from zoo._registry import unregister_imported
    from zoo.keras import from_keras
    from zoo.keras.store import import_keras

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"{'architecture':<24} {'format':<6} {'Keras params':>13} {'deepr':>11} {'max |ort - keras| / max':>24}")
        for case in CASES:
            data = real_data(case.data)
            model = trained(case, data)
            lengths = SEQUENCE_LENGTHS if case.recurrent else (None,)
            inputs = [data.held_out[:batch, :length] for batch in (1, 7) for length in lengths]
            expected = [model.predict(x, verbose=0) for x in inputs]
            for suffix in ("h5", "keras"):
                path = folder / f"{case.name}.{suffix}"
                keras.saving.save_model(model, path, **({"include_optimizer": False} if suffix == "h5" else {}))
                name = f"bench_{case.name}_{suffix}"
                record = import_keras(path, name, home=folder / "home")
                result = export_model(name, folder / "repository", max_batch_size=8)
                session = ort.InferenceSession(
                    str(result.version_dir / "model.onnx"), providers=["CPUExecutionProvider"]
                )
                feed = session.get_inputs()[0].name
                worst = max(
                    float(np.abs(session.run(None, {feed: x})[0] - want).max() / np.abs(want).max())
                    for x, want in zip(inputs, expected)
                )
                unregister_imported(name)
                row = {
                    "architecture": case.name,
                    "format": suffix,
                    "keras_params": model.count_params(),
                    "deepr_keras_params": record.keras_params,
                    "max_relative_difference": worst,
                }
                rows.append(row)
                print(
                    f"{case.name:<24} {suffix:<6} {row['keras_params']:>13,} {record.keras_params:>11,} {worst:>24.2e}"
                )
        vgg = None
        if not args.skip_vgg16:
            model = keras.applications.VGG16(weights=None)
            path = folder / "vgg16.h5"
            keras.saving.save_model(model, path, include_optimizer=False)
            start = time.perf_counter()
            converted = from_keras(path)
            convert_s = time.perf_counter() - start
            x = np.random.default_rng(0).random((2, 224, 224, 3), dtype=np.float32)
            import torch

            with torch.no_grad():
                torch_difference = float(
                    np.abs(converted(torch.from_numpy(x)).numpy() - model.predict(x, verbose=0)).max()
                )
            del converted
            start = time.perf_counter()
            import_keras(path, "bench_vgg16", home=folder / "home")
            result = export_model("bench_vgg16", folder / "repository", max_batch_size=8)
            import_s = time.perf_counter() - start
            unregister_imported("bench_vgg16")
            vgg = {
                "params": model.count_params(),
                "file_mb": path.stat().st_size / 2**20,
                "read_and_convert_s": convert_s,
                "import_and_export_s": import_s,
                "max_abs_difference_torch_vs_keras": torch_difference,
                "onnx_max_abs_difference": result.validation.max_abs_diff,
            }
            print(
                f"VGG16 ({vgg['params']:,} parameters, {vgg['file_mb']:.0f} MB .h5): read and converted in "
                f"{convert_s:.1f} s; deepr import with the ONNX export and its check {import_s:.1f} s; "
                f"max |torch - keras| {torch_difference:.2g}"
            )
    args.out.write_text(json.dumps({"architectures": rows, "vgg16": vgg}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
