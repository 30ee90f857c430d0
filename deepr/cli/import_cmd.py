"""deepr import: a saved Keras model (.h5 from R's save_model_hdf5, or .keras) into the zoo and a repository."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

from serving.client import DEFAULT_URL
from serving.server.settings import default_repository

from .arguments import comma_list, integer, number, ratio
from .errors import EXIT_FAILURE, EXIT_USAGE, CLIError

# zoo.keras.files.MAX_UNPACKED_BYTES and _MAX_RATIO (tests/test_bad_files.py holds them equal):
# written out so that the CLI starts without importing PyTorch.
_MAX_UNPACKED_BYTES = 4 * 2**30
_MAX_RATIO = 1000


def _is_keras(path: Path) -> bool:
    """HDF5 or a zip: a Keras file; anything else is taken for ONNX (a protobuf has no signature)."""
    try:
        with open(path, "rb") as file:
            head = file.read(8)
    except OSError:
        return path.suffix in (".h5", ".hdf5", ".keras")
    return head == b"\x89HDF\r\n\x1a\n" or head[:4] == b"PK\x03\x04"


def _labels(args: argparse.Namespace) -> list[str] | None:
    if args.labels is None:
        return None
    try:
        return [line.strip() for line in args.labels.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise CLIError(f"--labels {args.labels}: {exc.strerror}", EXIT_USAGE) from None


def _import(args: argparse.Namespace) -> int:
    if not _is_keras(args.file):
        return _import_onnx(args)
    if args.mean or args.std:
        raise CLIError("--mean and --std are for ONNX imports; a Keras model normalises inside", EXIT_USAGE)
    from exporters import ExportError, export_model
    from zoo import model_summary
    from zoo.keras import KerasImportError
    from zoo.keras.store import forget_import, import_keras

    from .zoo_cmds import tell_whether_served

    labels = _labels(args)
    try:
        record = import_keras(
            args.file,
            args.name,
            labels=labels,
            scale=1 / 255 if args.scale is None else args.scale,
            input_layout=args.input_layout or "nhwc",
            max_unpacked_bytes=args.max_unpacked_bytes,
            framing=None if args.framing == "none" else args.framing,
        )
    except KerasImportError as exc:
        raise CLIError(str(exc), EXIT_USAGE) from None
    except ValueError as exc:  # the name of a built-in model
        raise CLIError(f"--name {args.name}: {exc}", EXIT_USAGE) from None
    summary = model_summary(args.name)
    layout = f", pictures {record.input_layout.upper()}" if len(record.input_shape) == 3 else ""
    print(
        f"{args.name}: {len(summary.rows)} layers, {record.keras_params:,} parameters as Keras counts them, "
        f"input {record.input_shape} {record.input_dtype}{layout}, {record.task} over {len(record.classes)} classes"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *_: print(f"warning: {message}", file=sys.stderr)
        try:
            result = export_model(args.name, args.repository, max_batch_size=args.max_batch_size)
        except (ExportError, OSError) as exc:
            forget_import(args.name)  # a failed import leaves nothing behind
            raise CLIError(str(exc), EXIT_FAILURE) from None
    v = result.validation
    print(
        f"{result.name}: wrote {result.version_dir / 'model.onnx'} in {result.seconds:.1f}s; onnxruntime matches "
        f"the converted model: max |diff| {v.max_abs_diff:.2g} ({v.max_relative_diff:.2g} of the largest output); "
        f"deepr summary {args.name}, deepr export {args.name} --gradcam ... now take it"
    )
    tell_whether_served(result, args.url)
    return 0


def _import_onnx(args: argparse.Namespace) -> int:
    from exporters import ExportError
    from exporters.onnx_graphs import export_imported
    from zoo import model_summary
    from zoo.onnx import OnnxImportError, import_onnx
    from zoo.onnx.store import forget_onnx_import

    from .zoo_cmds import tell_whether_served

    started = time.perf_counter()
    labels = _labels(args)
    before = _record_before(args.name)
    try:
        record = import_onnx(
            args.file,
            args.name,
            labels=labels,
            layout=args.input_layout,
            scale=args.scale,
            mean=args.mean,
            std=args.std,
            framing=args.framing,
            outputs=args.outputs,
        )
    except OnnxImportError as exc:
        raise CLIError(str(exc), EXIT_USAGE) from None
    except ValueError as exc:  # the name of a built-in model
        raise CLIError(f"--name {args.name}: {exc}", EXIT_USAGE) from None
    summary = model_summary(args.name)
    upgrade = f" (converted from opset {record.upgraded_from})" if record.upgraded_from else ""
    pictures = ""
    if record.preprocessing:
        pictures = f", pictures {json.loads(record.preprocessing)['layout']}"
    print(
        f"{args.name}: {len(summary.rows)} operators, {summary.total_params:,} parameters, opset {record.opset}"
        f"{upgrade}, input {record.input_name!r} {record.input_shape}{pictures}, {len(record.classes)} classes, "
        f"output {record.outputs}{'' if args.outputs else ' (from the graph: --outputs says otherwise)'}"
    )
    if before is not None:
        kept = _kept(before, record, args, labels)
        if kept:
            print(f"{args.name}: kept from its previous import: {', '.join(kept)} (give them anew to change them)")
    try:
        result = export_imported(args.name, args.repository, max_batch_size=args.max_batch_size)
    except (ExportError, OSError) as exc:
        forget_onnx_import(args.name)
        raise CLIError(str(exc), EXIT_FAILURE) from None
    print(
        f"{result.name}: wrote {result.version_dir / 'model.onnx'} in {time.perf_counter() - started:.1f}s "
        f"(checked by onnx, run by onnxruntime); deepr summary {args.name}, deepr export {args.name} "
        f"--gradcam|--features|--precision int8 now take it"
    )
    tell_whether_served(result, args.url)
    return 0


def _record_before(name: str):
    """The record of an earlier ONNX import under `name`, or None."""
    from zoo.onnx.store import imported_onnx

    try:
        found = imported_onnx(name)
    except KeyError:  # no model of that name
        return None
    return found[0] if found else None


def _kept(before, record, args: argparse.Namespace, labels: list[str] | None) -> list[str]:
    """What a new import took over from the one before it, unasked."""
    kept = []
    if (
        labels is None
        and record.classes == before.classes
        and before.classes != tuple(map(str, range(len(before.classes))))
    ):
        kept.append("labels")
    old, new = before.picture_preprocessing(), record.picture_preprocessing()
    if old is not None and new is not None:
        for flag, field in (("mean", "mean"), ("std", "std"), ("scale", "scale"), ("framing", "framing")):
            if (
                getattr(args, flag) is None
                and getattr(old, field) is not None
                and getattr(old, field) == getattr(new, field)
            ):
                kept.append(f"--{flag} {getattr(new, field)}")
    return kept


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="import a saved Keras model (.h5 or .keras; no TensorFlow needed) or an ONNX classifier into the zoo, "
        "and export it to a repository",
    )
    p.add_argument(
        "file",
        type=Path,
        help="the model: save_model_hdf5() in R, model.save() in Keras 2 or 3, or an ONNX file (torch.onnx.export, "
        "the ONNX Model Zoo, ...)",
    )
    p.add_argument("--name", required=True, help="the name it is served and exported under")
    p.add_argument(
        "--repository", type=Path, default=default_repository(), help="model repository (default: %(default)s)"
    )
    p.add_argument(
        "--input-layout",
        "--layout",
        choices=("nhwc", "nchw"),
        help="Keras: pictures as Keras takes them, (N, H, W, C), or channels first for clients that send NCHW "
        "(default nhwc); ONNX: where the graph's input has its channels (default: found from its shape)",
    )
    p.add_argument(
        "--mean",
        type=comma_list(number(minimum=-1000, maximum=1000)),
        help="ONNX: per-channel mean taken from the scaled pixels, e.g. 0.485,0.456,0.406 for torchvision's models",
    )
    p.add_argument(
        "--std",
        type=comma_list(number(above=0, maximum=1000)),
        help="ONNX: per-channel standard deviation the pixels are divided by, e.g. 0.229,0.224,0.225",
    )
    p.add_argument("--labels", type=Path, help="a text file with one class name per line (binary: the positive class)")
    p.add_argument(
        "--scale",
        type=ratio,
        help="what a picture's 0-255 pixel values are multiplied by before the model (default: 1/255; importing "
        "again under a name keeps its labels, --scale, --mean, --std and --framing unless given anew)",
    )
    p.add_argument(
        "--outputs",
        choices=("probabilities", "logits"),
        help="ONNX: what the classifier's output holds (default: probabilities where the graph ends in Softmax or "
        "Sigmoid, logits otherwise); logits are shown through a softmax, and said to be",
    )
    p.add_argument(
        "--max-batch-size", type=integer(0), default=256, help="largest batch the server accepts (default: %(default)s)"
    )
    p.add_argument(
        "--framing",
        choices=("mnist", "none"),
        help="mnist: a model of MNIST's digits; its clients invert pictures drawn dark on light and frame them as "
        "MNIST's digits (ink cut out, fitted into 20x20, centred by its mass in 28x28) (default: none)",
    )
    p.add_argument(
        "--url",
        default=DEFAULT_URL,
        help="after the export, say whether the server here serves it and how to load it (default: %(default)s)",
    )
    p.add_argument(
        "--max-unpacked-bytes",
        type=integer(1),
        default=_MAX_UNPACKED_BYTES,
        help="what the file may unpack to: its weights in all, and each member of a .keras zip; a member "
        f"may also inflate at most {_MAX_RATIO} times its compressed size. A file past either is refused before "
        "anything is written (default: %(default)s bytes, 4 GiB)",
    )
    p.set_defaults(run=_import)
