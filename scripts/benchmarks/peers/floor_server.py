"""The least a Python gRPC server spends per ModelInfer, for scripts/benchmarks/bench_peers.py: grpc.aio
on uvloop (or grpcio's synchronous server and its thread pool, `--api sync`), the V2 service,
no batching, statistics, checks or logs. `--answer fixed` sends one prepared response without
reading the request; `--answer onnxruntime` runs the request's tensor through the model in the
handler and sends its output.

    python floor_server.py --port P --answer fixed|onnxruntime [--api aio|sync] --model NAME=PATH [--model ...]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from serving.protocol.generated import grpc_predict_v2_pb2 as pb  # noqa: E402
from serving.protocol.generated import grpc_predict_v2_pb2_grpc as pb_grpc  # noqa: E402


class Floor(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, models: dict[str, str], answer: str) -> None:
        self.sessions = {
            name: ort.InferenceSession(path, providers=["CPUExecutionProvider"]) for name, path in models.items()
        }
        self.answer = answer
        self.fixed = pb.ModelInferResponse(model_version="1")
        self.fixed.outputs.add(name="output", datatype="FP32", shape=[1, 10])
        self.fixed.raw_output_contents.append(np.zeros((1, 10), np.float32).tobytes())

    def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)

    def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=request.name in self.sessions)

    def ModelInfer(self, request, context):
        if self.answer == "fixed":
            return self.fixed
        tensor = request.inputs[0]
        x = np.frombuffer(request.raw_input_contents[0], np.float32).reshape(tensor.shape)
        y = self.sessions[request.model_name].run(None, {tensor.name: x})[0]
        response = pb.ModelInferResponse(model_name=request.model_name, model_version="1")
        response.outputs.add(name="output", datatype="FP32", shape=list(y.shape))
        response.raw_output_contents.append(y.tobytes())
        return response


class AsyncFloor(Floor):
    """The same answers from coroutines, for grpc.aio."""

    async def ServerReady(self, request, context):
        return Floor.ServerReady(self, request, context)

    async def ModelReady(self, request, context):
        return Floor.ModelReady(self, request, context)

    async def ModelInfer(self, request, context):
        return Floor.ModelInfer(self, request, context)


async def serve_aio(port: int, models: dict[str, str], answer: str) -> None:
    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(AsyncFloor(models, answer), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def serve_sync(port: int, models: dict[str, str], answer: str) -> None:
    # As many handler threads as the benchmark keeps calls in flight, so none waits for one.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Floor(models, answer), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--answer", choices=["fixed", "onnxruntime"], required=True)
    parser.add_argument("--api", choices=["aio", "sync"], default="aio")
    parser.add_argument("--model", action="append", required=True, help="NAME=PATH")
    args = parser.parse_args()
    models = dict(spec.split("=", 1) for spec in args.model)
    if args.api == "sync":
        serve_sync(args.port, models, args.answer)
    else:
        uvloop.install()
        asyncio.run(serve_aio(args.port, models, args.answer))
