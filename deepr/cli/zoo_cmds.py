"""deepr models | summary | train | evaluate | export"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings
from pathlib import Path
from typing import Iterator

from serving.client import DEFAULT_URL
from serving.server.settings import default_repository, default_runs

from .arguments import int_list, integer, number
from .errors import EXIT_USAGE, CLIError


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Turn the library's input errors into one-line CLI errors."""
    from zoo.datasets import DatasetError
    from zoo.pretrained import PretrainedWeightsError

    try:
        yield
    except KeyError as exc:  # unknown model name
        raise CLIError(str(exc.args[0]), EXIT_USAGE) from None
    except (DatasetError, PretrainedWeightsError, FileNotFoundError, ValueError, TypeError) as exc:
        raise CLIError(str(exc), EXIT_USAGE) from None


def _parse_option(text: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE true/false, an integer, integers separated by commas, or text."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    value: object = raw
    if raw.lower() in ("true", "false"):
        value = raw.lower() == "true"
    elif raw.lstrip("-").isdigit():
        value = int(raw)
    elif "," in raw and all(p.strip().isdigit() for p in raw.split(",")):
        value = tuple(int(p) for p in raw.split(","))
    return key.replace("-", "_"), value


def _models(args: argparse.Namespace) -> int:
    if args.url is not None:
        from .repository_cmd import show_repository

        return show_repository(args.url)
    import torch

    import zoo
    from exporters.quantize import quantization_method

    print(f"{'model':<24} {'parameters':>12}  {'precisions (deepr export --precision)':<38} tutorial section")
    for name in zoo.list_models(args.include or None):
        spec = zoo.get_model_spec(name)
        if spec.onnx_file:  # an imported graph: its initializers are its parameters
            import onnx

            from zoo.onnx.files import parameter_count

            params = parameter_count(onnx.load(spec.onnx_file))
            print(f"{name:<24} {params:>12,}  {'fp32, int8 (static, with --data)':<38} {spec.section}")
            continue
        with torch.device("meta"):  # shapes only: counting needs no memory and no initialisation
            model = zoo.get_model(name)
        params = sum(p.numel() for p in model.parameters())
        precisions = f"fp32, fp16, int8 ({quantization_method(model, spec.input_dtype)})"
        print(f"{name:<24} {params:>12,}  {precisions:<38} {spec.section}")
    return 0


def _summary(args: argparse.Namespace) -> int:
    import zoo

    with _user_errors():
        print(zoo.model_summary(args.model, **dict(args.option)))
    return 0


AUGMENTATION_FLAGS = (
    "rotation_range",
    "width_shift_range",
    "height_shift_range",
    "shear_range",
    "zoom_range",
    "horizontal_flip",
    "fill_mode",
)


def _train(args: argparse.Namespace) -> int:
    from zoo.recipes import TrainConfig, train

    with _user_errors():
        cfg = TrainConfig.for_model(
            args.model,
            out=args.out or Path("runs") / args.model,
            data=args.data,
            epochs=args.epochs,
            batch_size=args.batch_size,
            optimizer=args.optimizer,
            lr=args.lr,
            lr_schedule=args.lr_schedule,
            seed=args.seed,
            device=args.device,
            base_weights=args.base_weights,
            unfreeze_from=args.unfreeze_from,
            sample_temperatures=args.sample_temperatures,
            sample_length=args.sample_length,
            **{key: getattr(args, key) for key in AUGMENTATION_FLAGS},
        )
        result = train(cfg)
    from zoo.recipes.distributed import from_environment

    if not from_environment().is_main:  # under torchrun, the first process reports for all
        return 0
    print(
        f"{args.model}: held-out accuracy {result.test['accuracy']:.4f}, loss {result.test['loss']:.4f}, "
        f"trained in {result.seconds:.1f}s; weights {result.out / 'weights.pt'}, curves {result.out / 'history.png'}"
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import zoo
    from zoo.datasets import load_dataset
    from zoo.recipes import evaluate, load_weights

    with _user_errors():
        spec = zoo.get_model_spec(args.model)
        model = load_weights(zoo.get_model(args.model), args.weights)
        data = load_dataset(args.data or spec.dataset, like=spec.dataset)
        metrics = evaluate(model, data.test, task=spec.task, input_shape=spec.input_shape)
    print(json.dumps({"model": args.model, "dataset": data.description, **metrics}, indent=2))
    return 0


def _export_graph(kind: str, args: argparse.Namespace):
    """The export of one --KIND graph, with the options that kind takes."""
    from exporters.dream import export_dream
    from exporters.features import export_features
    from exporters.filters import export_filters
    from exporters.style import export_style
    from exporters.text_generation import export_char_generation, export_char_step
    from exporters.zoo_gradcam import export_gradcam

    common = {"weights": args.weights, "version": args.version}
    if kind in ("step", "generate"):
        if args.model != "char_lstm":
            raise CLIError(f"--step and --generate apply to char_lstm, not {args.model}", EXIT_USAGE)
        return (export_char_step if kind == "step" else export_char_generation)(args.repository, **common)
    common["options"] = dict(args.option)
    if kind == "gradcam":
        return export_gradcam(
            args.model, args.repository, layer=args.layer, score=args.score, pixels=args.pixels, **common
        )
    if kind == "style":
        return export_style(args.model, args.repository, **common)
    layers = [layer for layer in (args.layers or "").split(",") if layer] or None
    exporter = {"dream": export_dream, "filters": export_filters, "features": export_features}[kind]
    return exporter(args.model, args.repository, layers=layers, **common)


def _export_int8(args: argparse.Namespace):
    import zoo
    from exporters.quantize import export_quantized
    from zoo.datasets import load_dataset

    spec = zoo.get_model_spec(args.model)
    print(f"{args.model}: exporting, then quantizing to int8 and comparing on held-out data ...", file=sys.stderr)
    result, report = export_quantized(
        args.model,
        args.repository,
        weights=args.weights,
        data=load_dataset(args.data, like=spec.dataset) if args.data else None,
        calibration=args.calibration or 256,
        max_accuracy_drop=1.0 if args.max_accuracy_drop is None else args.max_accuracy_drop,
        pixels=args.pixels,
        max_batch_size=args.max_batch_size,
        version=args.version,
        options=dict(args.option),
    )
    print(f"{result.name}: {report.describe()}")
    return result


def _default_weights(args: argparse.Namespace) -> None:
    """Without --weights, the weights the default build trained for the model, where it
    trained it: a Grad-CAM or feature graph then explains the model the server serves."""
    if args.weights is not None or args.step or args.generate:
        return
    built = default_runs() / args.model / "weights.pt"
    if built.is_file():
        args.weights = built
        print(f"{args.model}: using the weights the default build trained, {built}", file=sys.stderr)


def _export(args: argparse.Namespace) -> int:
    from exporters import ExportError, export_model
    from exporters.repository import tune_serving

    for flag, value in (("--layer", args.layer), ("--layers", args.layers)):
        if value is not None and not value.replace(",", "").strip():
            raise CLIError(
                f"{flag} is empty: name a layer (`deepr summary {args.model}` lists them), or leave {flag} out for "
                "the default",
                EXIT_USAGE,
            )
    with _user_errors():
        from zoo import get_model_spec

        if get_model_spec(args.model).onnx_file:
            return _export_imported_onnx(args)
    _default_weights(args)
    if args.framing is not None:
        args.option.append(("framing", args.framing))
    kinds = [
        flag for flag in ("step", "generate", "dream", "style", "filters", "features", "gradcam") if getattr(args, flag)
    ]
    if len(kinds) > 1:
        raise CLIError(f"choose one kind of graph per export, not --{' and --'.join(kinds)}", EXIT_USAGE)
    if kinds and (args.precision != "fp32" or (args.pixels != "float32" and kinds[0] != "gradcam")):
        raise CLIError(
            f"--precision applies to the model's own graph and --pixels to it and --gradcam, not to --{kinds[0]}: gradient and feature "
            "graphs stay float32 (their backward operators and many outputs are outside what onnxruntime quantizes)",
            EXIT_USAGE,
        )
    if args.warmup and args.pixels == "encoded":
        raise CLIError(
            "--warmup writes zero samples, which are no picture files; a model that takes encoded pictures "
            "is warmed at load at the sizes its batcher runs, with zero pixels",
            EXIT_USAGE,
        )
    if args.precision == "int8" and args.pixels == "encoded":
        raise CLIError("--precision int8 takes --pixels float32 or uint8, not encoded", EXIT_USAGE)
    if args.precision != "int8" and (args.calibration is not None or args.max_accuracy_drop is not None):
        raise CLIError("--calibration and --max-accuracy-drop go with --precision int8", EXIT_USAGE)
    with _user_errors(), warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *_: print(f"warning: {message}", file=sys.stderr)
        try:
            if kinds:
                result = _export_graph(kinds[0], args)
            elif args.precision == "int8":
                result = _export_int8(args)
            else:
                result = export_model(
                    args.model,
                    args.repository,
                    weights=args.weights,
                    max_batch_size=args.max_batch_size,
                    options=dict(args.option),
                    version=args.version,
                    precision=args.precision,
                    pixels=args.pixels,
                )
        except ExportError as exc:
            raise CLIError(str(exc)) from None
    if args.warmup or args.pad_batches or args.max_queue_delay_us is not None:
        try:
            tune_serving(
                result.version_dir.parent,
                warmup_batch_sizes=args.warmup or (),
                pad_batches=args.pad_batches,
                max_queue_delay_us=args.max_queue_delay_us,
            )
        except ValueError as exc:
            raise CLIError(
                f"{result.name} version {result.version_dir.name} is exported, without "
                f"--warmup/--pad-batches/--max-queue-delay-us: {exc}",
                EXIT_USAGE,
            ) from None
    v = result.validation
    if args.generate:
        print(
            f"{result.name}: wrote {result.version_dir / 'model.onnx'} in {result.seconds:.1f}s; its per-step distributions "
            f"match PyTorch's, step by step: max |diff| {v.max_abs_diff:.2g}"
        )
        return _profile_batches(result) if args.profile_batches else 0
    if args.precision == "int8":
        print(
            f"{result.name}: wrote {result.version_dir / 'model.onnx'} in {result.seconds:.1f}s; the float graph it "
            f"was quantized from matches PyTorch: max |diff| {v.max_abs_diff:.2g}"
        )
    else:
        print(
            f"{result.name}: wrote {result.version_dir / 'model.onnx'} in {result.seconds:.1f}s; onnxruntime matches "
            f"PyTorch on input shapes {', '.join(map(str, v.input_shapes))}: max |diff| {v.max_abs_diff:.2g}, "
            f"{v.max_relative_diff:.2g} of the largest output (tolerance: atol {v.atol:g} + rtol {v.rtol:g} x "
            "largest output)"
        )
    tell_whether_served(result, args.url)
    return _profile_batches(result) if args.profile_batches else 0


def _export_imported_onnx(args: argparse.Namespace) -> int:
    """deepr export for a model imported from ONNX: the graph, its Grad-CAM graph at a named
    tensor, its feature graph of named tensors, or int8 calibrated on --data."""
    from exporters import ExportError, UnknownLayerError
    from exporters.onnx_graphs import export_imported, export_imported_features, export_imported_gradcam
    from exporters.onnx_int8 import export_imported_int8

    refused = [f"--{k}" for k in ("step", "generate", "dream", "style", "filters") if getattr(args, k)]
    refused += [f"--pixels {args.pixels}"] if args.pixels != "float32" else []
    refused += ["--precision fp16"] if args.precision == "fp16" else []
    refused += ["--weights"] if args.weights is not None else []
    if refused:
        raise CLIError(
            f"{args.model} is an imported ONNX graph: deepr exports it as it is, its --gradcam and --features "
            f"graphs and --precision int8, not {', '.join(refused)}",
            EXIT_USAGE,
        )
    try:
        if args.gradcam:
            result, tensor = export_imported_gradcam(
                args.model, args.repository, layer=args.layer, max_batch_size=args.max_batch_size, version=args.version
            )
            chosen = "named" if args.layer else "the last 4-D activation before the graph pools or flattens it"
            print(f"{args.model}: Grad-CAM at tensor {tensor!r} ({chosen})")
        elif args.features:
            layers = [layer for layer in (args.layers or "").split(",") if layer] or None
            result = export_imported_features(
                args.model, args.repository, layers=layers, max_batch_size=args.max_batch_size, version=args.version
            )
        elif args.precision == "int8":
            if not args.data:
                raise CLIError(
                    f"{args.model} is an imported ONNX graph with no data of its own: give --data DIR, labelled "
                    "pictures in class folders named as its labels (DIR/train/ and DIR/test/, or DIR/CLASS/)",
                    EXIT_USAGE,
                )
            result, report = export_imported_int8(
                args.model,
                args.repository,
                Path(args.data),
                calibration=args.calibration or 256,
                max_accuracy_drop=1.0 if args.max_accuracy_drop is None else args.max_accuracy_drop,
                max_batch_size=args.max_batch_size,
                version=args.version,
            )
            print(f"{result.name}: {report.describe()}")
        else:
            result = export_imported(
                args.model, args.repository, max_batch_size=args.max_batch_size, version=args.version
            )
    except UnknownLayerError as exc:
        raise CLIError(str(exc), EXIT_USAGE) from None
    except ExportError as exc:
        raise CLIError(str(exc)) from None
    except ValueError as exc:  # data that cannot be read
        raise CLIError(str(exc), EXIT_USAGE) from None
    v = result.validation
    print(
        f"{result.name}: wrote {result.version_dir / 'model.onnx'} in {result.seconds:.1f}s; its outputs equal the "
        f"imported graph's within {v.max_relative_diff:.2g} of the largest"
    )
    tell_whether_served(result, args.url)
    return 0


def tell_whether_served(result, url: str) -> None:
    """Whether a server running at `url` serves what was just written, and if not, how to load
    it (a server does not watch its repository)."""
    from serving.client import InferenceClient, InferenceServerError

    version = result.version_dir.name
    try:
        with InferenceClient(url, timeout=2) as client:
            if client.is_model_ready(result.name, version):
                print(f"{result.name}: the server at {url} serves version {version}")
                return
            client.is_server_live()
    except InferenceServerError:
        return  # no server there: nothing to tell
    print(
        f"{result.name}: the server at {url} does not serve version {version} yet; if it serves "
        f"{result.version_dir.parent.parent}, `deepr load {result.name} --url {url}` loads it"
    )


def _profile_batches(result) -> int:
    from serving.server.tuning import profile_batches_into_config

    print(f"{result.name}: measuring rows/s per batch size on this machine ...", file=sys.stderr)
    try:
        profile = profile_batches_into_config(
            result.version_dir, progress=lambda line: print(f"  {line}", file=sys.stderr)
        )
    except ValueError as exc:
        raise CLIError(
            f"{result.name} version {result.version_dir.name} is exported, without --profile-batches: {exc}", EXIT_USAGE
        ) from None
    print(profile.table())
    print(
        f"{result.name}: wrote preferred_batch_size {list(profile.preferred_sizes)} and the curve into "
        f"{result.version_dir.parent / 'config.pbtxt'}"
    )
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the zoo's models: name, parameters, tutorial section")
    p.add_argument("include", nargs="*", help="fnmatch patterns, e.g. 'mnist_*'")
    p.add_argument("--url", help="list the models a running server has instead: state, and why one does not serve yet")
    p.set_defaults(run=_models)

    p = sub.add_parser("summary", help="print a model's Keras-style summary table")
    p.add_argument("model")
    p.add_argument(
        "--option",
        type=_parse_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="builder option, e.g. include_top=false input_shape=150,150,3 (repeatable)",
    )
    p.set_defaults(run=_summary)

    p = sub.add_parser("train", help="train a model by its default recipe (flags override it)")
    p.add_argument("model")
    p.add_argument(
        "--data", help="dataset: digits (embedded), mnist (cached/downloaded) or a directory of MNIST IDX files"
    )
    p.add_argument("--epochs", type=integer(1))
    p.add_argument("--batch-size", type=integer(1))
    p.add_argument("--optimizer", choices=("rmsprop", "adam", "sgd"))
    p.add_argument("--lr", type=number(above=0), help="learning rate")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"))
    p.add_argument("--seed", type=integer(0))
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", type=Path, help="run directory (default: runs/MODEL)")
    p.add_argument(
        "--sample-temperatures",
        type=lambda v: tuple(float(t) for t in v.split(",")),
        help="char_lstm: after each epoch, generate text at these temperatures, e.g. 0.2,0.5,1.0,1.2",
    )
    p.add_argument("--sample-length", type=integer(1), help="characters per temperature (default 400)")
    p.add_argument(
        "--base-weights", help="pretrained base for transfer models: imagenet (TORCH_HOME or download) or a file"
    )
    p.add_argument(
        "--unfreeze-from", help="fine-tuning: unfreeze the pretrained base from this layer on, e.g. block5_conv1"
    )
    augment = p.add_argument_group("augmentation (picture data; as image_data_generator)")
    augment.add_argument("--rotation-range", type=number(minimum=0), help="degrees")
    augment.add_argument("--width-shift-range", type=number(minimum=0, maximum=1), help="fraction of the width")
    augment.add_argument("--height-shift-range", type=number(minimum=0, maximum=1), help="fraction of the height")
    augment.add_argument("--shear-range", type=number(minimum=0), help="degrees")
    augment.add_argument("--zoom-range", type=number(minimum=0, maximum=1), help="zoom in [1 - z, 1 + z]")
    augment.add_argument("--horizontal-flip", action=argparse.BooleanOptionalAction, default=None)
    augment.add_argument("--fill-mode", choices=("nearest", "reflect", "constant"))
    p.set_defaults(run=_train)

    p = sub.add_parser("evaluate", help="held-out loss and accuracy of trained weights")
    p.add_argument("model")
    p.add_argument("--weights", type=Path, required=True, help="weights.pt written by deepr train")
    p.add_argument("--data", help="dataset (default: the model's)")
    p.set_defaults(run=_evaluate)

    p = sub.add_parser("export", help="export a model to ONNX, validate it, add it to a model repository")
    p.add_argument("model")
    p.add_argument(
        "--weights",
        type=Path,
        help="weights.pt from deepr train (default: the weights the default build trained for the model, "
        f"{default_runs()}/NAME/weights.pt, where they exist; else untrained weights, with a warning)",
    )
    p.add_argument(
        "--repository", type=Path, default=default_repository(), help="model repository (default: %(default)s)"
    )
    p.add_argument("--version", type=integer(1), help="version number (default: the next free one)")
    p.add_argument(
        "--framing",
        choices=("mnist", "none"),
        help="how pictures are framed before the model sees them, written into the config: mnist (ink cut out, "
        "fitted into 20x20, centred by its mass in 28x28) or none (the whole picture resized) (default: the "
        "model's own; the MNIST models frame as mnist)",
    )
    p.add_argument(
        "--url",
        default=DEFAULT_URL,
        help="after writing, say whether the server here serves the export (default: %(default)s)",
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16", "int8"),
        default="fp32",
        help="fp16: float16 weights and arithmetic, float32 inputs and outputs, as NAME_fp16; int8: onnxruntime's "
        "quantizer (static with calibration for convolutional and dense picture models, dynamic for recurrent and "
        "word models), checked against the float model on held-out data, as NAME_int8 (default: %(default)s)",
    )
    p.add_argument(
        "--calibration",
        type=integer(1),
        metavar="N",
        help="int8: training samples that calibrate the activation ranges (default: 256)",
    )
    p.add_argument(
        "--max-accuracy-drop",
        type=number(minimum=0, maximum=100),
        metavar="POINTS",
        help="int8: refuse the export when held-out accuracy falls by more than this many points (default: 1)",
    )
    p.add_argument("--data", help="int8: dataset to calibrate and compare on (default: the model's embedded one)")
    p.add_argument(
        "--pixels",
        choices=("float32", "uint8", "encoded"),
        default="float32",
        help="uint8: the graph takes resized pixels as they are (N, H, W, C) and scales and normalises them "
        "itself, as NAME_uint8: a quarter of the bytes per request; encoded: that graph behind a BYTES input of "
        "picture files (JPEG, PNG...) the server decodes and resizes, as NAME_encoded; with --gradcam, the "
        "Grad-CAM graph of that form, NAME_uint8_gradcam or NAME_encoded_gradcam (default: %(default)s)",
    )
    p.add_argument(
        "--max-batch-size", type=integer(0), default=256, help="largest batch the server accepts (default: %(default)s)"
    )
    p.add_argument(
        "--warmup",
        type=int_list,
        metavar="SIZES",
        help="batch sizes to run with zero data when the server loads the model, before it is ready, e.g. 1,8,32",
    )
    p.add_argument(
        "--pad-batches",
        action="store_true",
        help="write deepr.pad_batches true into the config: merged runs at fixed sizes warmed at load "
        "(what the server does anyway unless the config says false)",
    )
    p.add_argument(
        "--max-queue-delay-us",
        type=integer(0),
        metavar="MICROSECONDS",
        help="write dynamic_batching.max_queue_delay_microseconds: how long a merged run may wait for more "
        "requests. 0 (the default) runs at once; a few milliseconds keeps batches large when several "
        "workers share the load (docs/benchmarks.md, Workers)",
    )
    p.add_argument(
        "--profile-batches",
        action="store_true",
        help="measure rows/s at batch sizes 1, 2, 4, ... max on this machine and write the sizes worth merging "
        "to (preferred_batch_size) and the curve into the config",
    )
    p.add_argument("--gradcam", action="store_true", help="export the Grad-CAM graph instead, as NAME_gradcam")
    p.add_argument(
        "--features",
        action="store_true",
        help="export the named layers' outputs as one graph, as NAME_features (bases: --option weights=imagenet)",
    )
    p.add_argument(
        "--dream",
        action="store_true",
        help="inception_v3: export the DeepDream loss and its gradient (any picture size), as NAME_dream",
    )
    p.add_argument(
        "--style",
        action="store_true",
        help="vgg19: export the style-transfer loss and its gradient, as vgg19_style (pictures of --option input_shape)",
    )
    p.add_argument(
        "--filters",
        action="store_true",
        help="export input-gradient graphs for filter patterns (mean activation of one filter per layer), as NAME_filters",
    )
    p.add_argument(
        "--layers",
        help="--features / --filters / --dream: comma-separated Keras layer names (default: every layer), e.g. block3_conv1,block5_pool",
    )
    p.add_argument(
        "--step", action="store_true", help="char_lstm: export the one-character step graph, as char_lstm_step"
    )
    p.add_argument(
        "--generate",
        action="store_true",
        help="char_lstm: export the whole-generation Loop graph, as char_lstm_generate",
    )
    p.add_argument("--layer", help="Grad-CAM: the convolutional layer to explain (default: the last convolution)")
    p.add_argument(
        "--score",
        choices=("probability", "logit"),
        default="probability",
        help="Grad-CAM: differentiate the model's output (default) or its pre-activation value",
    )
    p.add_argument(
        "--option",
        type=_parse_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="builder option, e.g. include_top=false input_shape=150,150,3 (repeatable)",
    )
    p.set_defaults(run=_export)
