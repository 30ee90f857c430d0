"""deepr's serving runtime: a KServe V2 gRPC server and clients on onnxruntime.

This package imports numpy, onnxruntime, grpcio, protobuf and Pillow only, never
PyTorch, so apps can embed it.
"""

__version__ = "0.1.0"
