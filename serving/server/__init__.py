"""The V2 inference server: settings, the model repository, models and their warm-up,
dynamic batching, the dataplane that carries a request from decoding to its answer,
statistics, metrics and shared memory; `grpc/` is its gRPC transport."""
