"""A V2 gRPC client (asyncio and blocking) and its shared-memory regions.

from serving.client import InferenceClient
"""

from serving.client.inference_client import (
    DEFAULT_URL,
    InferenceClient,
    InferenceServerError,
    InferenceStream,
    build_request,
    client_for,
)

__all__ = ["InferenceClient", "InferenceServerError", "InferenceStream", "build_request", "client_for", "DEFAULT_URL"]
