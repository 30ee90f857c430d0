"""Choose onnxruntime execution providers: CUDA when it can really run, else CPU."""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path

import onnxruntime as ort

__all__ = ["select_providers", "open_session", "DEVICES"]

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cuda", "cpu")


@functools.lru_cache(maxsize=None)
def cuda_usable() -> tuple[bool, str]:
    """(usable, reason). Checked before any session exists, because asking
    onnxruntime for CUDA on a machine without it prints a stack of errors."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, "this onnxruntime build has no CUDA provider"
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False, "no NVIDIA driver (libcuda.so.1) on this machine"
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return False, "the NVIDIA driver reports no usable GPU"
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        preload()  # CUDA / cuDNN from the nvidia-* wheels, when they are installed
    return True, f"{count.value} GPU(s)"


# TF32 matmuls and convolutions (the CUDA provider's default on Ampere and later) keep
# about 10 bits of mantissa: enough to move Grad-CAM heatmaps by a few percent of their
# maximum at large batches. deepr turns it off unless asked, so CUDA agrees with the CPU
# to float32 precision.
#
# cuDNN's exhaustive algorithm search (the provider's default) benchmarks every
# convolution again for each new input shape: under dynamic batching, where every run
# may have another batch size, a server spends seconds searching. The heuristic choice
# costs nothing per shape.
_CUDA_OPTIONS = {"use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC"}


@functools.lru_cache(maxsize=None)
def select_providers(device: str = "auto", tf32: bool = False) -> tuple[str | tuple[str, dict[str, str]], ...]:
    """Provider list for a session; logs the choice once per device setting.

    Args:
        device: "auto" (CUDA if usable, else CPU), "cuda" (error if unusable) or "cpu".
        tf32: allow TF32 on CUDA (faster, less precise).
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cpu":
        logger.info("onnxruntime: CPUExecutionProvider (device=cpu)")
        return ("CPUExecutionProvider",)
    usable, reason = cuda_usable()
    if usable:
        logger.info(
            "onnxruntime: CUDAExecutionProvider (%s, TF32 %s), CPU for unsupported ops", reason, "on" if tf32 else "off"
        )
        return (("CUDAExecutionProvider", {**_CUDA_OPTIONS, "use_tf32": "1" if tf32 else "0"}), "CPUExecutionProvider")
    if device == "cuda":
        raise RuntimeError(f"device 'cuda' was asked for, but CUDA cannot be used: {reason}")
    logger.info("onnxruntime: CPUExecutionProvider (CUDA not used: %s)", reason)
    return ("CPUExecutionProvider",)


def open_session(onnx_file: str | Path, device: str = "auto", *, what: str = "ONNX model") -> ort.InferenceSession:
    """An onnxruntime session for a file, with errors that name it: FileNotFoundError when
    it is absent, ValueError when onnxruntime cannot load it (truncated, not ONNX)."""
    if not Path(onnx_file).is_file():
        raise FileNotFoundError(f"no {what} at {onnx_file}")
    try:
        return ort.InferenceSession(str(onnx_file), providers=list(select_providers(device)))
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
        raise ValueError(f"onnxruntime cannot load {onnx_file}: {exc}") from None
