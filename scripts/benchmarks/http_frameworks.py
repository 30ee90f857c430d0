"""Which async HTTP library carries deepr's REST endpoint: aiohttp against uvicorn + starlette.

Each serves the same route, POST /v2/models/m/infer taking a body of BODY_BYTES and answering
a small JSON document, in a process of its own on uvloop; one client process keeps 32
requests in flight over keep-alive connections. Printed and written to JSON: requests per
second and server CPU per request, median of the rounds, the two frameworks alternating.

    python scripts/benchmarks/http_frameworks.py --rounds 3 --seconds 4 --out runs/http_frameworks.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

from deepr.bench import free_port

BODY_BYTES = 12_544  # a 1x1x28x28 float32 digit plus a JSON header, as a binary-data request is

SERVERS = {
    "aiohttp": """
import json, sys, uvloop
from aiohttp import web
async def infer(request):
    body = await request.read()
    return web.json_response({"model_name": "m", "outputs": [{"name": "y", "bytes": len(body)}]})
app = web.Application(client_max_size=2**28)
app.router.add_post("/v2/models/{model}/infer", infer)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None, loop=uvloop.new_event_loop())
""",
    "starlette": """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
async def infer(request):
    body = await request.body()
    return JSONResponse({"model_name": "m", "outputs": [{"name": "y", "bytes": len(body)}]})
app = Starlette(routes=[Route("/v2/models/{model}/infer", infer, methods=["POST"])])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools", log_level="warning", access_log=False)
""",
}


async def load(port: int, seconds: float, concurrency: int) -> int:
    import aiohttp

    body = b"x" * BODY_BYTES
    done = 0
    url = f"http://127.0.0.1:{port}/v2/models/m/infer"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        end = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < end:
                async with session.post(url, data=body) as response:
                    await response.read()
                    done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


def measure(name: str, seconds: float, concurrency: int) -> dict[str, float]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVERS[name], str(port)])
    try:
        deadline = time.monotonic() + 20
        while not any(c.laddr.port == port for c in psutil.Process(server.pid).net_connections()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not listen on {port}")
            time.sleep(0.1)
        asyncio.run(load(port, 1.0, concurrency))  # warm
        before = psutil.Process(server.pid).cpu_times()
        done = asyncio.run(load(port, seconds, concurrency))
        after = psutil.Process(server.pid).cpu_times()
    finally:
        server.terminate()
        server.wait()
    cpu = (after.user - before.user) + (after.system - before.system)
    return {"requests_per_s": done / seconds, "server_cpu_ms_per_request": 1000 * cpu / max(done, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in SERVERS}
    for _ in range(args.rounds):
        for name in SERVERS:
            rounds[name].append(measure(name, args.seconds, args.concurrency))
    summary = {
        name: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for name, results in rounds.items()
    }
    print(f"{'framework':<10} {'requests/s':>11} {'server CPU ms/request':>22}")
    for name, s in summary.items():
        print(f"{name:<10} {s['requests_per_s']:>11.0f} {s['server_cpu_ms_per_request']:>22.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"summary": summary, "rounds": rounds}, indent=2))


if __name__ == "__main__":
    main()
