"""A V2 inference request as protobuf, decoded against its model; the answer encoded back.

gRPC receives ModelInferRequest as it is; HTTP builds one from its JSON and binary parts, so
both transports check tensors, shared memory and the classification extension the same way.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from serving.protocol.codecs import as_text, decode_inputs, encode_output
from serving.protocol.errors import InvalidInput
from serving.protocol.generated import grpc_predict_v2_pb2 as pb
from serving.server.dataplane import DecodedRequest, RequestedOutput
from serving.server.model import OnnxModel
from serving.server.shared_memory import SharedMemoryRegions

__all__ = ["request_decoder", "response_encoder", "class_count"]


def class_count(output: pb.ModelInferRequest.InferRequestedOutputTensor) -> int:
    param = output.parameters.get("classification")
    if param is None:
        return 0
    if param.WhichOneof("parameter_choice") != "int64_param":
        raise InvalidInput(f"output {output.name!r}: the 'classification' parameter must be an int64 class count")
    return param.int64_param


def request_decoder(
    request: pb.ModelInferRequest, shared_memory: SharedMemoryRegions
) -> Callable[[OnnxModel], DecodedRequest]:
    """How the dataplane decodes `request` once it knows the model: inputs checked against
    it (from the message or shared memory), requested outputs with their class counts and
    shared memory slices."""

    def decode(model: OnnxModel) -> DecodedRequest:
        inputs = decode_inputs(request, model.inputs, shared_memory.tensor_slice, model.max_batch_size)
        for name in model.text_inputs:
            inputs[name] = as_text(inputs[name], name)
        outputs = []
        for output in request.outputs:
            what = f"output {output.name!r}"
            sink = shared_memory.tensor_slice(output.parameters, what)
            if sink is not None and "classification" in output.parameters:
                raise InvalidInput(
                    f"{what}: classification results cannot go to shared memory; ask for one or the other"
                )
            outputs.append(RequestedOutput(output.name, class_count(output), sink))
        return DecodedRequest(inputs, outputs)

    return decode


def response_encoder(
    request_id: str,
) -> Callable[[OnnxModel, dict[str, np.ndarray], list[RequestedOutput]], pb.ModelInferResponse]:
    """How the dataplane encodes the answer: raw contents, or the client's shared memory."""

    def encode(
        model: OnnxModel, outputs: dict[str, np.ndarray], requested: list[RequestedOutput]
    ) -> pb.ModelInferResponse:
        sinks = {r.name: r.sink for r in requested if r.sink is not None}
        response = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=request_id)
        for name, array in outputs.items():
            encode_output(name, array, response, sinks.get(name))
        return response

    return encode
