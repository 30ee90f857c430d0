"""One table for tensor element types: KServe V2 names, numpy dtypes, Triton config enums."""

from __future__ import annotations

import numpy as np

__all__ = ["V2_TO_NUMPY", "NUMPY_TO_V2", "V2_TO_CONFIG", "CONFIG_TO_V2", "ONNX_TO_V2", "v2_dtype"]

# V2 datatype -> (numpy dtype, model_config.proto DataType name)
_TABLE: dict[str, tuple[np.dtype, str]] = {
    "BOOL": (np.dtype(np.bool_), "TYPE_BOOL"),
    "UINT8": (np.dtype(np.uint8), "TYPE_UINT8"),
    "UINT16": (np.dtype(np.uint16), "TYPE_UINT16"),
    "UINT32": (np.dtype(np.uint32), "TYPE_UINT32"),
    "UINT64": (np.dtype(np.uint64), "TYPE_UINT64"),
    "INT8": (np.dtype(np.int8), "TYPE_INT8"),
    "INT16": (np.dtype(np.int16), "TYPE_INT16"),
    "INT32": (np.dtype(np.int32), "TYPE_INT32"),
    "INT64": (np.dtype(np.int64), "TYPE_INT64"),
    "FP16": (np.dtype(np.float16), "TYPE_FP16"),
    "FP32": (np.dtype(np.float32), "TYPE_FP32"),
    "FP64": (np.dtype(np.float64), "TYPE_FP64"),
    "BYTES": (np.dtype(np.object_), "TYPE_STRING"),
}

V2_TO_NUMPY = {v2: dtype for v2, (dtype, _) in _TABLE.items()}
NUMPY_TO_V2 = {dtype: v2 for v2, dtype in V2_TO_NUMPY.items()}
V2_TO_CONFIG = {v2: cfg for v2, (_, cfg) in _TABLE.items()}
CONFIG_TO_V2 = {cfg: v2 for v2, cfg in V2_TO_CONFIG.items()}

# onnxruntime's type strings ("tensor(float)") -> V2 datatype
ONNX_TO_V2 = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def v2_dtype(array: np.ndarray) -> str:
    """The V2 datatype of a numpy array; bytes and str arrays are BYTES."""
    if array.dtype.kind in ("O", "S", "U"):
        return "BYTES"
    try:
        return NUMPY_TO_V2[array.dtype]
    except KeyError:
        raise TypeError(
            f"numpy dtype {array.dtype} has no V2 datatype; use one of {sorted(map(str, NUMPY_TO_V2))}"
        ) from None
