"""The KServe side of scripts/benchmarks/bench_peers.py: KServe's Python model server with
onnxruntime models, the least a user would write. Runs in KServe's own virtualenv:

    python kserve_onnx.py --model cnn=/path/cnn.onnx --model mlp=/path/mlp.onnx --grpc_port P --http_port Q
"""

import argparse

import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server


class OnnxRuntimeModel(Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        self.session = ort.InferenceSession(self.path, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.ready = True
        return self.ready

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        outputs = self.session.run(None, {self.input: payload.inputs[0].as_numpy()})
        tensors = []
        for spec, array in zip(self.session.get_outputs(), outputs):
            tensor = InferOutput(name=spec.name, shape=list(array.shape), datatype="FP32")
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        return InferResponse(response_id=payload.id, model_name=self.name, infer_outputs=tensors)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--model", action="append", required=True, help="NAME=PATH of an ONNX file")
    args, _ = parser.parse_known_args()
    models = [OnnxRuntimeModel(*spec.split("=", 1)) for spec in args.model]
    ModelServer(http_port=args.http_port, grpc_port=args.grpc_port).start(models)
