"""Soak run: a `deepr serve` process under high concurrency for minutes, on loopback only.

    python scripts/benchmarks/soak.py --repository REPO [--model mnist_convnet] [--minutes 3] \
        [--concurrency 64] [--shared-memory] [--out soak.json]

tritonclient's asyncio client keeps `concurrency` requests in flight with mixed batch sizes;
every answer is checked against in-process onnxruntime. With --shared-memory the tensors
travel through system shared memory (deepr's InferenceClient, one thread per request in flight). The server's resident memory is
sampled every two seconds. Prints a summary, writes JSON and a PNG of memory and
throughput over time. Exits 1 if any good request failed or got a wrong answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


async def soak(url: str, model: str, specs, expected, seconds: float, concurrency: int, pid: int):
    import tritonclient.grpc.aio as triton

    client = triton.InferenceServerClient(url)
    ((name, datatype, _),) = specs
    batches = sorted(expected)
    tensors = {}
    for batch in batches:
        tensor = triton.InferInput(name, list(expected[batch][0].shape), datatype)
        tensor.set_data_from_numpy(expected[batch][0])
        tensors[batch] = tensor
    counts = {"ok": 0, "failed": 0, "wrong": 0}
    errors: list[str] = []
    samples: list[dict] = []
    end = time.monotonic() + seconds

    async def worker(index: int) -> None:
        n = index
        while time.monotonic() < end:
            batch = batches[n % len(batches)]
            n += 1
            try:
                result = await client.infer(model, [tensors[batch]])
            except Exception as exc:  # every failure of a good request is counted and kept
                counts["failed"] += 1
                errors.append(str(exc)[:200])
                continue
            got = result.as_numpy(expected[batch][2])
            if np.allclose(got, expected[batch][1], rtol=1e-4, atol=1e-5):
                counts["ok"] += 1
            else:
                counts["wrong"] += 1

    async def sampler() -> None:
        start = time.monotonic()
        last = 0
        while time.monotonic() < end:
            await asyncio.sleep(2)
            done = counts["ok"] + counts["failed"] + counts["wrong"]
            samples.append(
                {
                    "t": round(time.monotonic() - start, 1),
                    "rss_mb": round(resident_mb(pid), 1),
                    "requests_per_s": (done - last) / 2,
                }
            )
            last = done
            print(
                f"  t={samples[-1]['t']:6.1f}s  server RSS {samples[-1]['rss_mb']:7.1f} MB  {samples[-1]['requests_per_s']:7.0f} req/s",
                flush=True,
            )

    await asyncio.gather(sampler(), *(worker(i) for i in range(concurrency)))
    await client.close()
    return counts, errors, samples


def soak_shared_memory(url: str, model: str, specs, expected, seconds: float, concurrency: int, pid: int):
    """The same load through deepr's own client with shared_memory=True: `concurrency`
    threads on one client, which keeps a region per request in flight."""
    import threading

    from serving.client import InferenceClient

    ((name, _, _),) = specs
    batches = sorted(expected)
    counts = {"ok": 0, "failed": 0, "wrong": 0}
    errors: list[str] = []
    samples: list[dict] = []
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def worker(client: InferenceClient, index: int) -> None:
        n = index
        while time.monotonic() < end:
            batch = batches[n % len(batches)]
            n += 1
            try:
                got = client.infer(model, {name: expected[batch][0]})[expected[batch][2]]
                outcome = "ok" if np.allclose(got, expected[batch][1], rtol=1e-4, atol=1e-5) else "wrong"
            except Exception as exc:  # every failure of a good request is counted and kept
                outcome = "failed"
                errors.append(str(exc)[:200])
            with lock:
                counts[outcome] += 1

    with InferenceClient(url, shared_memory=True) as client:
        threads = [threading.Thread(target=worker, args=(client, i), daemon=True) for i in range(concurrency)]
        for thread in threads:
            thread.start()
        start, last = time.monotonic(), 0
        while time.monotonic() < end:
            time.sleep(2)
            done = sum(counts.values())
            samples.append(
                {
                    "t": round(time.monotonic() - start, 1),
                    "rss_mb": round(resident_mb(pid), 1),
                    "requests_per_s": (done - last) / 2,
                }
            )
            last = done
            print(
                f"  t={samples[-1]['t']:6.1f}s  server RSS {samples[-1]['rss_mb']:7.1f} MB  {samples[-1]['requests_per_s']:7.0f} req/s",
                flush=True,
            )
        for thread in threads:
            thread.join()
    return counts, errors, samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--model", default="mnist_convnet")
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--batches", default="1,3,8,32")
    parser.add_argument(
        "--shared-memory",
        action="store_true",
        help="send tensors through system shared memory with deepr's own client (threads) instead",
    )
    parser.add_argument("--out", type=Path, default=Path("soak.json"))
    args = parser.parse_args()

    import onnxruntime as ort

    from deepr.bench import example_inputs, serve_subprocess, served_specs

    onnx_file, specs = served_specs(args.repository, args.model)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    output = session.get_outputs()[0].name
    expected = {}
    for batch in map(int, args.batches.split(",")):
        inputs = example_inputs(specs, batch, seed=batch)
        expected[batch] = (next(iter(inputs.values())), session.run([output], inputs)[0], output)
    with serve_subprocess(args.repository, device="cpu", extra=["--metrics-port", "-1"]) as (url, process):
        before = resident_mb(process.pid)
        print(
            f"server pid {process.pid}, RSS at start {before:.1f} MB; {args.concurrency} requests in flight for {args.minutes} min"
        )
        if args.shared_memory:
            counts, errors, samples = soak_shared_memory(
                url, args.model, specs, expected, args.minutes * 60, args.concurrency, process.pid
            )
        else:
            counts, errors, samples = asyncio.run(
                soak(url, args.model, specs, expected, args.minutes * 60, args.concurrency, process.pid)
            )
        after = resident_mb(process.pid)
    settled = samples[len(samples) // 4]["rss_mb"] if samples else before
    report = {
        "model": args.model,
        "minutes": args.minutes,
        "concurrency": args.concurrency,
        "batches": sorted(expected),
        "shared_memory": args.shared_memory,
        "requests": sum(counts.values()),
        **counts,
        "errors": errors[:20],
        "rss_mb_start": round(before, 1),
        "rss_mb_after_first_quarter": settled,
        "rss_mb_end": round(after, 1),
        "samples": samples,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    _plot(args.out.with_suffix(".png"), samples, args.model)
    print(
        f"{report['requests']} requests: {counts['ok']} ok, {counts['failed']} failed, {counts['wrong']} wrong answers; "
        f"server RSS {before:.1f} MB at start, {settled:.1f} MB after the first quarter, {after:.1f} MB at the end"
    )
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0 if counts["failed"] == counts["wrong"] == 0 else 1


def _plot(path: Path, samples: list[dict], model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (memory, rate) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    t = [s["t"] for s in samples]
    memory.plot(t, [s["rss_mb"] for s in samples], color="tab:red")
    memory.set_ylabel("server RSS (MB)")
    memory.set_title(f"deepr serve soak: {model}")
    rate.plot(t, [s["requests_per_s"] for s in samples], color="tab:blue")
    rate.set_ylabel("requests/s")
    rate.set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
