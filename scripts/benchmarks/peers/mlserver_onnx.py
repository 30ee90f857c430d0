"""The MLServer side of scripts/benchmarks/bench_peers.py: an onnxruntime model as an MLServer
custom runtime, the least a user would write. Runs in MLServer's own virtualenv, which
imports it from the model's folder (model-settings.json names `mlserver_onnx.OnnxRuntimeModel`)."""

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntimeModel(MLModel):
    async def load(self) -> bool:
        self._session = ort.InferenceSession(self.settings.parameters.uri, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        outputs = self._session.run(None, {self._input: x})
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output(o.name, y) for o, y in zip(self._session.get_outputs(), outputs)],
        )
