"""The model repository NVIDIA's example clients expect (Triton's docs/examples/model_repository),
written with onnx.helper so that no file has to be downloaded.

Each model computes what Triton's does, under the same name and config:

    simple           INT32 [16] x 2 -> OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1
    simple_int8      the same in INT8
    simple_string    the same on numbers written as strings (BYTES in, BYTES out)
    simple_identity  BYTES [-1] -> the same strings (a Python model in Triton, an Identity here)
    densenet_onnx    FP32 [3, 224, 224] -> 1000 scores, reshaped as Triton's config says
                     (a stand-in with densenet's tensors: the examples print its top classes)

and, so that the repository holds the eight models NVIDIA's model-control examples count, the
configs of its three TensorFlow models (inception_graphdef, simple_sequence and
simple_dyna_sequence) without their graphs: deepr lists them, unavailable, with the reason.

    python tests/triton_example_repository.py DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["write_example_repository", "EXAMPLE_MODELS"]

_OPSET = [helper.make_operatorsetid("", 17)]

_ARITHMETIC_CONFIG = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {{ name: "INPUT0" data_type: {type} dims: [ 16 ] }},
  {{ name: "INPUT1" data_type: {type} dims: [ 16 ] }}
]
output [
  {{ name: "OUTPUT0" data_type: {type} dims: [ 16 ] }},
  {{ name: "OUTPUT1" data_type: {type} dims: [ 16 ] }}
]
"""

_IDENTITY_CONFIG = """name: "simple_identity"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
"""

_DENSENET_CONFIG = """name: "densenet_onnx"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [
  {
    name: "data_0"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 224, 224 ]
    reshape { shape: [ 1, 3, 224, 224 ] }
  }
]
output [
  {
    name: "fc6_1"
    data_type: TYPE_FP32
    dims: [ 1000 ]
    reshape { shape: [ 1, 1000, 1, 1 ] }
    label_filename: "densenet_labels.txt"
  }
]
"""


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    # IR version 8: what every onnxruntime release deepr supports reads
    return helper.make_model(graph, opset_imports=_OPSET, ir_version=8)


_TENSORFLOW_CONFIGS = {
    "inception_graphdef": """name: "inception_graphdef"
platform: "tensorflow_graphdef"
max_batch_size: 128
input [ { name: "input" data_type: TYPE_FP32 format: FORMAT_NHWC dims: [ 299, 299, 3 ] } ]
output [ { name: "InceptionV3/Predictions/Softmax" data_type: TYPE_FP32 dims: [ 1001 ] } ]
""",
    "simple_sequence": """name: "simple_sequence"
platform: "tensorflow_graphdef"
max_batch_size: 8
sequence_batching {
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] }
  ]
}
input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
""",
    "simple_dyna_sequence": """name: "simple_dyna_sequence"
platform: "tensorflow_graphdef"
max_batch_size: 8
sequence_batching {
  max_sequence_idle_microseconds: 10000000
  oldest { max_candidate_sequences: 1024 max_queue_delay_microseconds: 10000 }
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "END" control [ { kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }
  ]
}
input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
""",
}


def _tensor(name: str, elem_type: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def _arithmetic(elem_type: int, *, strings: bool = False) -> onnx.ModelProto:
    """OUTPUT0 = INPUT0 + INPUT1 and OUTPUT1 = INPUT0 - INPUT1 over a free batch of 16-wide rows;
    string models read their numbers with Cast and write them back the same way."""
    io_type = TensorProto.STRING if strings else elem_type
    nodes = []
    a, b = "INPUT0", "INPUT1"
    if strings:
        nodes += [
            helper.make_node("Cast", ["INPUT0"], ["a"], to=elem_type),
            helper.make_node("Cast", ["INPUT1"], ["b"], to=elem_type),
        ]
        a, b = "a", "b"
    total, difference = ("total", "difference") if strings else ("OUTPUT0", "OUTPUT1")
    nodes += [helper.make_node("Add", [a, b], [total]), helper.make_node("Sub", [a, b], [difference])]
    if strings:
        nodes += [
            helper.make_node("Cast", ["total"], ["OUTPUT0"], to=TensorProto.STRING),
            helper.make_node("Cast", ["difference"], ["OUTPUT1"], to=TensorProto.STRING),
        ]
    shape = ["batch", 16]
    graph = helper.make_graph(
        nodes,
        "arithmetic",
        [_tensor("INPUT0", io_type, shape), _tensor("INPUT1", io_type, shape)],
        [_tensor("OUTPUT0", io_type, shape), _tensor("OUTPUT1", io_type, shape)],
    )
    return _model(graph)


def _identity() -> onnx.ModelProto:
    shape = ["batch", "length"]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        "identity",
        [_tensor("INPUT0", TensorProto.STRING, shape)],
        [_tensor("OUTPUT0", TensorProto.STRING, shape)],
    )
    return _model(graph)


def _densenet_stand_in(seed: int = 0) -> onnx.ModelProto:
    """densenet_onnx's tensors (data_0 [1,3,224,224] -> fc6_1 [1,1000,1,1]) around a small
    seeded network: pooled channel statistics through one dense layer."""
    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.normal(size=(1000, 3, 1, 1)).astype(np.float32), "weight")
    bias = numpy_helper.from_array(rng.normal(size=1000).astype(np.float32), "bias")
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["data_0"], ["pooled"]),
            helper.make_node("Conv", ["pooled", "weight", "bias"], ["fc6_1"]),
        ],
        "densenet_stand_in",
        [_tensor("data_0", TensorProto.FLOAT, [1, 3, 224, 224])],
        [_tensor("fc6_1", TensorProto.FLOAT, [1, 1000, 1, 1])],
        initializer=[weight, bias],
    )
    return _model(graph)


EXAMPLE_MODELS = ("simple", "simple_int8", "simple_string", "simple_identity", "densenet_onnx")
"""The models deepr serves; the repository lists the TensorFlow ones too."""


def write_example_repository(root: Path) -> Path:
    """Write the example models under `root` (created); returns it."""
    models = {
        "simple": (_arithmetic(TensorProto.INT32), _ARITHMETIC_CONFIG.format(name="simple", type="TYPE_INT32")),
        "simple_int8": (_arithmetic(TensorProto.INT8), _ARITHMETIC_CONFIG.format(name="simple_int8", type="TYPE_INT8")),
        "simple_string": (
            _arithmetic(TensorProto.INT32, strings=True),
            _ARITHMETIC_CONFIG.format(name="simple_string", type="TYPE_STRING"),
        ),
        "simple_identity": (_identity(), _IDENTITY_CONFIG),
        "densenet_onnx": (_densenet_stand_in(), _DENSENET_CONFIG),
    }
    for name, (model, config) in models.items():
        onnx.checker.check_model(model)
        version = root / name / "1"
        version.mkdir(parents=True, exist_ok=True)
        onnx.save(model, version / "model.onnx")
        (root / name / "config.pbtxt").write_text(config)
    for name, config in _TENSORFLOW_CONFIGS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "config.pbtxt").write_text(config)
    labels = "\n".join(f"CLASS_{i:04d}" for i in range(1000)) + "\n"
    (root / "densenet_onnx" / "densenet_labels.txt").write_text(labels)
    return root


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.rsplit("\n\n", 1)[-1].strip())
    print(write_example_repository(Path(sys.argv[1])))
