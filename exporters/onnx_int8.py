"""int8 for an imported ONNX classifier: the same quantizer and accuracy guard as the zoo's
models (exporters/quantize.py), calibrated and judged on labelled pictures the user gives,
prepared as the import says (its preprocessing)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from serving.protocol.preprocessing import ImagePreprocessing

from .errors import ExportError
from .onnx_graphs import _record, export_imported
from .pipeline import ExportResult
from .quantize import QuantizationReport, quantize_and_add

__all__ = ["export_imported_int8", "labelled_pictures"]

_PICTURES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def labelled_pictures(
    folder: Path, classes: tuple[str, ...], preprocessing: ImagePreprocessing
) -> tuple[np.ndarray, np.ndarray]:
    """Every picture in `folder`'s class folders (named as the model's labels), prepared as the
    model takes them, with its class index."""
    if not folder.is_dir():
        raise ValueError(f"--data {folder}: not a folder of class folders")
    index = {label: i for i, label in enumerate(classes)}
    found = sorted(p for p in folder.iterdir() if p.is_dir())
    strangers = [p.name for p in found if p.name not in index]
    if strangers:
        raise ValueError(f"--data {folder}: class folders {strangers[:5]} are not among the model's labels")
    paths, labels = [], []
    for sub in found:
        for path in sorted(sub.iterdir()):
            if path.suffix.lower() in _PICTURES:
                paths.append(path)
                labels.append(index[sub.name])
    if not paths:
        raise ValueError(f"--data {folder}: no pictures in class folders")
    return preprocessing(paths), np.asarray(labels, np.int64)


def _splits(data: Path, classes: tuple[str, ...], preprocessing: ImagePreprocessing):
    """(calibration pictures, held-out pictures, their labels): DIR/train and DIR/test (or
    DIR/validation), else every other picture of DIR's class folders each way."""
    held_out = next((data / n for n in ("test", "validation") if (data / n).is_dir()), None)
    if (data / "train").is_dir() and held_out is not None:
        train_x, _ = labelled_pictures(data / "train", classes, preprocessing)
        test_x, test_y = labelled_pictures(held_out, classes, preprocessing)
        return train_x, test_x, test_y
    x, y = labelled_pictures(data, classes, preprocessing)
    order = np.random.default_rng(0).permutation(len(x))
    calibration, test = order[::2], order[1::2]
    return x[calibration], x[test], y[test]


def export_imported_int8(
    name: str,
    repository: str | Path,
    data: Path,
    *,
    calibration: int = 256,
    max_accuracy_drop: float | None = 1.0,
    max_batch_size: int = 64,
    version: int | None = None,
) -> tuple[ExportResult, QuantizationReport]:
    """Add `<name>_int8`: static QDQ int8 calibrated on `data`'s pictures, refused when its
    held-out accuracy falls more than `max_accuracy_drop` points below the float graph's."""
    start = time.perf_counter()
    record, _ = _record(name)
    preprocessing = record.picture_preprocessing()
    if preprocessing is None:
        raise ExportError(f"{name} does not take pictures: int8 of an imported graph is calibrated on pictures")
    calibration_x, held_out_x, labels = _splits(data, record.classes, preprocessing)
    calibration_x = calibration_x[:calibration]
    with tempfile.TemporaryDirectory() as tmp:
        float_result = export_imported(name, Path(tmp) / "float", max_batch_size=max_batch_size)
        version_dir, report = quantize_and_add(
            name,
            float_result.version_dir,
            repository,
            f"{name}_int8",
            method="static",
            calibration=calibration_x,
            held_out=(held_out_x, labels),
            task="multiclass",
            max_accuracy_drop=max_accuracy_drop,
            version=version,
        )
    return ExportResult(
        version_dir.parent.name, version_dir, float_result.validation, time.perf_counter() - start
    ), report
