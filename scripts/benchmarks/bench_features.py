"""What asking for fewer layers saves: a VGG16 feature graph asked for one shallow layer, one
deep layer, or all 18, in-process and through the server, side by side in one run.

    python scripts/benchmarks/bench_features.py [--batch 8] [--size 150] [--repeats 10] [--out bench_features.json]

Freshly initialised weights (speed does not depend on them). The server computes only what
the requested outputs need, as the in-process extractor does.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
from _timing import timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("bench_features.json"))
    args = parser.parse_args()

    from exporters import UntrainedWeightsWarning
    from exporters.features import export_features
    from serving.client import InferenceClient
    from serving.server.grpc.server import serve_in_thread
    from serving.server.settings import ServerSettings
    from serving.tasks.features import LocalFeatureExtractor, extract_features

    asks = {"block1_conv1": ["block1_conv1"], "block5_pool": ["block5_pool"], "all 18 layers": None}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UntrainedWeightsWarning)
            result = export_features(
                "vgg16", tmp, options={"include_top": False, "input_shape": (args.size, args.size, 3)}
            )
        local = LocalFeatureExtractor(result.version_dir / "model.onnx", device="cpu")
        images = np.random.default_rng(0).random((args.batch, 3, args.size, args.size), dtype=np.float32)
        with serve_in_thread(
            ServerSettings(repository=tmp, host="127.0.0.1", port=0, device="cpu", metrics_port=-1)
        ) as server:
            with InferenceClient(f"127.0.0.1:{server.port}") as client:
                for label, layers in asks.items():
                    in_process = timed(lambda: local(images, layers=layers), args.repeats)
                    served = timed(
                        lambda: extract_features(images, model="vgg16_features", layers=layers, client=client),
                        args.repeats,
                    )
                    rows.append({"asked": label, "in_process_ms": in_process * 1e3, "grpc_ms": served * 1e3})
    full = rows[-1]
    print(f"VGG16 features, {args.size}x{args.size}, batch {args.batch}, CPU; median of {args.repeats}")
    print(f"{'asked for':<16} {'in-process ms':>14} {'vs all':>7} {'gRPC ms':>10} {'vs all':>7}")
    for r in rows:
        print(
            f"{r['asked']:<16} {r['in_process_ms']:>14.1f} {r['in_process_ms'] / full['in_process_ms']:>6.2f}x "
            f"{r['grpc_ms']:>10.1f} {r['grpc_ms'] / full['grpc_ms']:>6.2f}x"
        )
    args.out.write_text(
        json.dumps({"batch": args.batch, "size": args.size, "repeats": args.repeats, "rows": rows}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
