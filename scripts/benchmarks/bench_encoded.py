"""Pictures on the wire as float32, uint8 pixels or their JPEG/PNG files, side by side in one run.

For a picture model (default catsdogs_convnet, 150x150 RGB; resnet50, 224x224, on a GPU;
fresh weights: speed does not depend on training), with scikit-image's photos as the files
clients hold:

- bytes per picture in a request: float32 pixels, uint8 pixels, the JPEG (quality 90) and
  the PNG file;
- decode cost per picture (decode, convert, resize to 150x150), median over the photos:
  Pillow as the server does it, Pillow with JPEG draft mode (decodes at a reduced scale
  first; not bit-equal to the client's float path), and torchvision.io's decoder with its
  resize where torchvision is installed;
- the graph alone on a batch of 16, in-process, for the scale of the decode cost;
- images/s through `deepr serve` (its own process, loopback gRPC), the three forms one after
  another in each round, at batch 1 x 8 clients and batch 16 x 2 clients.

    python scripts/benchmarks/bench_encoded.py [--model catsdogs_convnet] [--device cpu]
        [--seconds 3] [--rounds 2] [--out bench_encoded.json]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import timed  # noqa: E402

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera", "immunohistochemistry")


def photo_files() -> list[tuple[bytes, bytes, Image.Image]]:
    """(JPEG bytes, PNG bytes, picture) for each of scikit-image's photos."""
    import skimage.data

    files = []
    for name in PHOTOS:
        picture = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        jpeg, png = io.BytesIO(), io.BytesIO()
        picture.save(jpeg, format="JPEG", quality=90)
        picture.save(png, format="PNG")
        files.append((jpeg.getvalue(), png.getvalue(), picture))
    return files


def decode_costs(files, preprocessing) -> dict[str, float]:
    size = preprocessing.size[::-1]  # (width, height) as Pillow takes it
    """Median microseconds per picture of each decoder."""

    def median_us(datas, decode) -> float:
        return statistics.median(timed(lambda data=data: decode(data), 20) for data in datas) * 1e6

    jpegs, pngs = [f[0] for f in files], [f[1] for f in files]
    costs = {
        "pillow_jpeg": median_us(jpegs, lambda data: preprocessing.decoded(data, 10**9)),
        "pillow_png": median_us(pngs, lambda data: preprocessing.decoded(data, 10**9)),
    }

    def draft(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", size)
            return np.asarray(img.convert("RGB").resize(size, Image.Resampling.BILINEAR))

    costs["pillow_jpeg_draft"] = median_us(jpegs, draft)
    try:
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg
        from torchvision.transforms.v2 import functional as F

        def torchvision_decode(data: bytes):
            tensor = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
            return F.resize(tensor, list(preprocessing.size), antialias=True).permute(1, 2, 0).numpy()

        costs["torchvision_jpeg"] = median_us(jpegs, torchvision_decode)
    except ImportError:
        pass
    return costs


def served_rate(url: str, model: str, requests: list[np.ndarray], clients: int, seconds: float) -> float:
    """Images per second with `clients` threads each sending `requests` in turn for `seconds`."""
    from serving.client import InferenceClient

    done = [0] * clients
    stop = time.perf_counter() + seconds

    def client_loop(index: int) -> None:
        with InferenceClient(url) as client:
            client.infer(model, {"images": requests[0]})  # connection and first run, untimed
            i = 0
            while time.perf_counter() < stop:
                batch = requests[i % len(requests)]
                client.infer(model, {"images": batch})
                done[index] += len(batch)
                i += 1

    start = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="catsdogs_convnet", help="a zoo picture model taking RGB")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench_encoded.json"))
    args = parser.parse_args()
    from deepr.bench import serve_subprocess
    from exporters import UntrainedWeightsWarning, export_model
    from serving.protocol.model_config import read_config
    from serving.protocol.preprocessing import ImagePreprocessing

    files = photo_files()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWeightsWarning)
        repository = Path(tmp)
        model = args.model
        for pixels in ("float32", "uint8", "encoded"):
            export_model(model, repository, max_batch_size=16, pixels=pixels)
        config = read_config(repository / model)
        preprocessing = ImagePreprocessing.from_json(config.parameters["deepr.preprocessing"].string_value)
        pixel_form = ImagePreprocessing.from_json(
            read_config(repository / f"{model}_uint8").parameters["deepr.preprocessing"].string_value
        )
        pictures = [f[2] for f in files]
        forms = {
            "float32": (model, preprocessing(pictures)),
            "uint8": (f"{model}_uint8", pixel_form(pictures)),
            "jpeg": (f"{model}_encoded", np.array([[f[0]] for f in files], dtype=np.object_)),
        }
        sizes = {
            "float32": forms["float32"][1][0].nbytes,
            "uint8": forms["uint8"][1][0].nbytes,
            "jpeg": statistics.median(len(f[0]) for f in files),
            "png": statistics.median(len(f[1]) for f in files),
        }
        print("bytes per picture in a request (median over the photos):")
        for form, size in sizes.items():
            print(f"  {form:<8} {size:>9,.0f}  {sizes['float32'] / size:5.1f}x fewer than float32")
        costs = decode_costs(
            files,
            ImagePreprocessing.from_json(
                read_config(repository / f"{model}_encoded").parameters["deepr.preprocessing"].string_value
            ),
        )
        height, width = preprocessing.size
        print(f"decode, convert and resize to {width}x{height}, us per picture (median over the photos, 1 thread):")
        for name, us in costs.items():
            print(f"  {name:<20} {us:8.0f}")
        from serving.runtime.providers import select_providers

        graph = ort.InferenceSession(
            str(repository / model / "1" / "model.onnx"), providers=list(select_providers(args.device))
        )
        batch = np.concatenate([forms["float32"][1]] * 3)[:16]
        graph_us = timed(lambda: graph.run(None, {"images": batch}), 10) / 16 * 1e6
        print(f"  the graph in-process at batch 16, per picture: {graph_us:8.0f}")
        points = [(1, 8), (16, 2)]
        rates: dict[str, list[float]] = {}
        with serve_subprocess(repository, device=args.device) as (url, _process):
            for _ in range(args.rounds):
                for batch, clients in points:
                    for form, (served, data) in forms.items():
                        rows = np.concatenate([data] * (-(-batch // len(data))))
                        requests = [np.roll(rows, -i, axis=0)[:batch] for i in range(len(data))]
                        key = f"{form} batch {batch} x {clients}"
                        rates.setdefault(key, []).append(served_rate(url, served, requests, clients, args.seconds))
        print(f"served images/s, median of {args.rounds} rounds (forms alternating in each round):")
        table = {}
        for batch, clients in points:
            base = statistics.median(rates[f"float32 batch {batch} x {clients}"])
            for form in forms:
                rate = statistics.median(rates[f"{form} batch {batch} x {clients}"])
                table[f"{form} batch {batch} x {clients}"] = rate
                print(f"  batch {batch:>2} x {clients} clients  {form:<8} {rate:8.1f}  {rate / base:5.2f}x float32")
    summary = {
        "model": model,
        "device": args.device,
        "bytes": sizes,
        "decode_us": costs,
        "graph_us_per_picture": graph_us,
    }
    args.out.write_text(json.dumps({**summary, "images_per_s": table}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
