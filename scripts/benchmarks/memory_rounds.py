"""Does `deepr serve` give memory back after bursts? Rounds of concurrent large requests,
and the server's resident memory after each.

    python scripts/benchmarks/memory_rounds.py [--rounds 5] [--requests 2000] [--batch 256] [--width 784] [--out memory_rounds.json]
    python scripts/benchmarks/memory_rounds.py --repository REPO --model mnist_convnet ...

Each round sends `--requests` ModelInfer calls of `--batch` rows all at once on one
channel, checks every answer, waits eight seconds (the server trims its memory two seconds after
it has finished the work the burst left, even for clients that gave up) and reads the
server's VmRSS. The model is y = 2x over `--width` float32
columns (an MNIST-sized batch of 256 is 0.8 MB), or `--model` of `--repository` with
random inputs of its shape (answers checked for status only); dynamic batching merges
the requests as it would in service. Memory that grows round after round is a leak;
memory that stays at one level is what the allocator keeps for the next burst. Extra
arguments after `--` go to `deepr serve`. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.chaos.probes import ServerProcess, add_doubling_model  # noqa: E402


async def burst(
    url: str, requests: int, model: str, input_name: str, x: np.ndarray, check_double: bool, timeout: float
) -> int:
    """Sends the requests at once; returns how many were answered (with 2x, where checked)."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    limit = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    async with grpc.aio.insecure_channel(url, options=limit) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name=model)
        request.inputs.add(name=input_name, datatype="FP32", shape=list(x.shape))
        request.raw_input_contents.append(x.tobytes())
        expected = (2 * x).tobytes()

        async def call() -> bool:
            try:
                answer = await stub.ModelInfer(request, timeout=timeout)
            except grpc.aio.AioRpcError:
                return False
            return not check_double or answer.raw_output_contents[0] == expected

        return sum(await asyncio.gather(*(call() for _ in range(requests))))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--width", type=int, default=784)
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="client deadline per call; a short one has calls cancelled mid-burst (default 600 s)",
    )
    parser.add_argument("--repository", type=Path, help="serve this repository instead of the y = 2x model")
    parser.add_argument("--model", default="rows", help="model of --repository to send to")
    parser.add_argument("--out", type=Path, default=Path("memory_rounds.json"))
    parser.add_argument("serve_args", nargs="*", help="after --: extra `deepr serve` arguments")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        repository = args.repository or Path(tmp) / "repository"
        if args.repository is None:
            add_doubling_model(repository, "rows", width=args.width, max_batch_size=args.batch)
        server = ServerProcess(repository, *args.serve_args)
        try:
            import tritonclient.grpc as triton

            metadata = triton.InferenceServerClient(server.url).get_model_metadata(args.model).inputs[0]
            shape = [args.batch, *metadata.shape[1:]]
            x = np.random.default_rng(0).random(shape, dtype=np.float32)
            time.sleep(1)
            rows.append({"round": 0, "rss_mb": server.rss_bytes() / 2**20, "ok": 0, "seconds": 0.0})
            for round_ in range(1, args.rounds + 1):
                start = time.perf_counter()
                ok = asyncio.run(
                    burst(
                        server.url, args.requests, args.model, metadata.name, x, args.repository is None, args.timeout
                    )
                )
                seconds = time.perf_counter() - start
                time.sleep(8)
                rows.append({"round": round_, "rss_mb": server.rss_bytes() / 2**20, "ok": ok, "seconds": seconds})
                print(
                    f"round {round_}: {ok}/{args.requests} OK in {seconds:.1f} s, RSS {rows[-1]['rss_mb']:.0f} MB",
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            server.stop()
    print(
        f"\n{args.rounds} rounds of {args.requests} requests to {args.model} of float32 {shape} "
        f"({x.nbytes / 2**20:.2f} MB each) at once; serve args {args.serve_args or 'none'}\n"
    )
    print("| round | answered OK | seconds | server RSS after |")
    print("| ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['round']} | {row['ok']} | {row['seconds']:.1f} | {row['rss_mb']:.0f} MB |")
    args.out.write_text(
        json.dumps(
            {
                "model": args.model,
                "requests": args.requests,
                "shape": shape,
                "serve_args": args.serve_args,
                "rounds": rows,
            },
            indent=2,
        )
    )
    print(f"\nwrote {args.out}")
    return 0 if args.timeout < 600 or all(row["ok"] == args.requests for row in rows[1:]) else 1


if __name__ == "__main__":
    sys.exit(main())
