"""deepr: the "Learn deepR" models as an ONNX model zoo with a KServe V2 gRPC server.

The library lives in three packages: `zoo` (models, data, training),
`exporters` (PyTorch -> validated ONNX in a model repository) and `serving`
(onnxruntime, gRPC server and clients). This package holds the `deepr` CLI
(deepr.cli) and the benchmark library it and scripts/benchmarks share (deepr.bench),
which imports no command.
"""

from serving import __version__

__all__ = ["__version__"]
