"""What a request through system shared memory costs against the same request in the
message, per batch size; optionally against a server from another checkout of deepr
(a baseline), side by side.

    python scripts/benchmarks/shm_cost.py [--rows 1,16,256] [--repeats 31] [--baseline-checkout DIR] [--out shm_cost.json]

Servers are child processes serving a y = 2x model with 48 KiB rows (`--rows 256` is a
12 MiB request and answer). deepr's InferenceClient sends each batch with and without
`shared_memory=True`; the servers and the two ways take turns call by call, so the
machine's drift falls on all of them alike. Prints median milliseconds per call and
writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from serving.client import InferenceClient  # noqa: E402
from tests.chaos.probes import WIDE, ServerProcess, add_doubling_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1,16,256", help="batch sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument(
        "--baseline-checkout", type=Path, help="another deepr checkout whose server to measure beside this one"
    )
    parser.add_argument("--out", type=Path, default=Path("shm_cost.json"))
    args = parser.parse_args()
    sizes = [int(size) for size in args.rows.split(",")]
    checkouts = {"this checkout": ROOT}
    if args.baseline_checkout:
        checkouts["baseline"] = args.baseline_checkout.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp) / "repository"
        add_doubling_model(repository, "wide", width=WIDE, max_batch_size=max(sizes))
        servers = {name: ServerProcess(repository, cwd=folder) for name, folder in checkouts.items()}
        try:
            clients = {
                (name, way): InferenceClient(server.url, shared_memory=way == "shared memory")
                for name, server in servers.items()
                for way in ("message", "shared memory")
            }
            samples: dict[tuple[str, str, int], list[float]] = {}
            for rows in sizes:
                x = np.random.default_rng(rows).random((rows, WIDE), dtype=np.float32)
                for client in clients.values():
                    np.testing.assert_array_equal(client.infer("wide", {"x": x})["y"], 2 * x)
                for _ in range(args.repeats):
                    for (name, way), client in clients.items():
                        start = time.perf_counter()
                        client.infer("wide", {"x": x})
                        samples.setdefault((name, way, rows), []).append(time.perf_counter() - start)
            for client in clients.values():
                client.close()
        finally:
            for server in servers.values():
                server.stop()
    medians = {key: statistics.median(times) * 1000 for key, times in samples.items()}
    print(f"\nmedian ms per call, {args.repeats} calls each, rows of {WIDE * 4 // 1024} KiB\n")
    print("| server | rows | MiB | message | shared memory | shared / message |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in checkouts:
        for rows in sizes:
            message, shared = medians[(name, "message", rows)], medians[(name, "shared memory", rows)]
            print(
                f"| {name} | {rows} | {rows * WIDE * 4 / 2**20:.2f} | {message:.2f} | {shared:.2f} | {shared / message:.2f} |"
            )
    args.out.write_text(
        json.dumps(
            {
                "repeats": args.repeats,
                "checkouts": {k: str(v) for k, v in checkouts.items()},
                "median_ms": [{"server": n, "way": w, "rows": r, "ms": ms} for (n, w, r), ms in medians.items()],
            },
            indent=2,
        )
    )
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
