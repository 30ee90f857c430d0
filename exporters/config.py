"""ExportConfig: how a model becomes an ONNX graph and how the result is checked."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ExportConfig"]


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 18
    """ONNX opset of the exported graph."""
    input_names: tuple[str, ...] = ("images",)
    """Graph input names, one per model argument."""
    output_names: tuple[str, ...] = ("probabilities",)
    """Graph output names, one per model output."""
    dynamic_axes: tuple[tuple[int, ...], ...] = ((0,),)
    """Per input, the axes that stay symbolic (axis 0: the batch)."""
    max_batch_size: int = 256
    """Largest batch the serving config allows (config.pbtxt max_batch_size)."""
    validation_batch_sizes: tuple[int, ...] = (1, 7)
    """Batch sizes on which onnxruntime is checked against PyTorch."""
    validation_lengths: tuple[int, ...] = (5, 23)
    """Sizes tried for every other dynamic axis (sequence length), with each batch size."""
    dynamo: bool = True
    """Use torch.export (dynamo); False uses the TorchScript exporter, which alone
    keeps nn.RNN's sequence length dynamic (it maps to ONNX's RNN op)."""
    atol: float = 1e-5
    """Absolute tolerance of the validation."""
    rtol: float = 1e-4
    """Relative tolerance of the validation, times the output's largest magnitude."""

    def __post_init__(self) -> None:
        if len(self.dynamic_axes) != len(self.input_names):
            raise ValueError(
                f"dynamic_axes has {len(self.dynamic_axes)} entries for {len(self.input_names)} inputs; give one tuple per input"
            )
        if len(self.validation_batch_sizes) < 2:
            raise ValueError("validation needs at least two batch sizes to show the batch axis is really dynamic")
