"""Serving speed, side by side in one run: in-process onnxruntime against deepr's server over
gRPC and HTTP/REST, driven by tritonclient (a client that is not deepr's own).

For each model and batch size, in-process onnxruntime runs the ONNX file in a loop
(one caller, the best a single app gets); then a `deepr serve` process serves the
same file, and tritonclient's asyncio client keeps `concurrency` requests in flight
from one or more client processes. Each cell reports items/s, requests/s and
client-side p50/p99 latency; gRPC rows also give their ratio to in-process items/s
at the same batch size. Before each gRPC cell the server reloads the model (its load-time
warm-up included), so no cell inherits a warm state from the one before; the items/s of
the first 2 s after the reload are reported as "cold 2 s", and the cell is measured once
its rate is steady (two 0.5 s windows within 5%, after at most --warmup seconds).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import multiprocessing
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "BenchResult",
    "run_benchmark",
    "in_process",
    "over_grpc",
    "serve_subprocess",
    "server_subprocess",
    "free_port",
    "write_plot",
    "copy_with_configs",
    "without_batching",
    "with_free_sizes",
    "with_instances",
    "batch_profiles",
    "reload",
    "perf_analyzer",
]


@dataclass
class BenchResult:
    model: str
    mode: str
    """"in-process", "grpc" (tensors in the messages) or "grpc+shm" (tensors in system shared memory)."""
    batch: int
    concurrency: int
    requests: int
    seconds: float
    items_per_s: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    ratio: float | None = None
    """gRPC items/s over in-process items/s at the same batch size."""
    cold_items_per_s: float | None = None
    """items/s over the first FIRST_SECONDS after the model loaded (gRPC: the server's reload
    before the cell; in-process: a new session): how fast it serves from its first request."""
    load_s: float | None = None
    """gRPC: how long the reload before the cell took, its warm-up of batch sizes included."""
    warmup_s: float | None = None
    """How long the warm-up took to reach a steady rate (at most the --warmup bound)."""


WINDOW_S = 0.5
STEADY_WITHIN = 0.05
MIN_WINDOW_COUNT = 20
"""A window is at least WINDOW_S long and holds at least this many completions, so that
5% is a difference a window can show."""
FIRST_SECONDS = 2.0


class SteadyRate:
    """Decides when a cell's warm-up is over: two consecutive windows whose completion
    rates agree within STEADY_WITHIN, or `bound` seconds, whichever is first.
    Also counts the completions of the first FIRST_SECONDS."""

    def __init__(self, bound: float, began: float | None = None) -> None:
        self.began = time.perf_counter() if began is None else began
        self.bound = bound
        self.completed = 0
        self.first = 0
        self._window_start, self._window_count = self.began, 0
        self._previous: float | None = None
        self.steady_at: float | None = None

    def complete(self, at: float) -> None:
        self.completed += 1
        if at - self.began <= FIRST_SECONDS:
            self.first += 1
        if self.steady_at is not None:
            return
        if at - self.began >= self.bound:
            self.steady_at = at
            return
        self._window_count += 1
        if at - self._window_start >= WINDOW_S and self._window_count >= MIN_WINDOW_COUNT:
            current, previous = self._window_count / (at - self._window_start), self._previous
            if previous and abs(current - previous) <= STEADY_WITHIN * previous:
                self.steady_at = at
            self._window_start, self._window_count, self._previous = at, 0, current

    def first_rate(self) -> float:
        """Completions per second over the first FIRST_SECONDS (or the warm-up, if shorter)."""
        span = min(FIRST_SECONDS, (self.steady_at or time.perf_counter()) - self.began)
        return self.first / span if span > 0 else float("nan")


def _summarise(
    model: str, mode: str, batch: int, concurrency: int, latencies: Sequence[float], seconds: float
) -> BenchResult:
    lat = np.asarray(latencies) * 1e3
    count = len(lat)
    return BenchResult(
        model,
        mode,
        batch,
        concurrency,
        count,
        round(seconds, 3),
        items_per_s=count * batch / seconds,
        requests_per_s=count / seconds,
        p50_ms=float(np.percentile(lat, 50)) if count else float("nan"),
        p99_ms=float(np.percentile(lat, 99)) if count else float("nan"),
    )


def example_inputs(specs: Sequence[tuple[str, str, Sequence[int]]], batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for (name, V2 datatype, shape with -1 for the batch) specs."""
    from serving.protocol.datatypes import V2_TO_NUMPY

    rng = np.random.default_rng(seed)
    arrays = {}
    for name, datatype, shape in specs:
        dims = [batch if i == 0 and d == -1 else (d if d > 0 else 8) for i, d in enumerate(shape)]
        dtype = V2_TO_NUMPY[datatype]
        arrays[name] = (
            rng.random(dims, dtype=np.float32).astype(dtype)
            if dtype.kind == "f"
            else rng.integers(0, 2, dims).astype(dtype)
        )
    return arrays


def in_process(
    model: str, onnx_file: Path, batch: int, specs, *, device: str, seconds: float, warmup: float, tf32: bool = False
) -> BenchResult:
    import onnxruntime as ort

    from serving.runtime.providers import select_providers

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_file), options, providers=list(select_providers(device, tf32)))
    inputs = example_inputs(specs, batch)
    latencies = []
    rate = SteadyRate(warmup)
    while rate.steady_at is None:
        session.run(None, inputs)
        rate.complete(time.perf_counter())
    start = time.perf_counter()
    while (now := time.perf_counter()) - start < seconds:
        session.run(None, inputs)
        latencies.append(time.perf_counter() - now)
    result = _summarise(model, "in-process", batch, 1, latencies, time.perf_counter() - start)
    result.cold_items_per_s, result.warmup_s = rate.first_rate() * batch, rate.steady_at - rate.began
    return result


def _client_process(
    url: str,
    model: str,
    specs,
    batch: int,
    concurrency: int,
    seconds: float,
    warmup: float,
    shared_memory: bool = False,
    transport: str = "grpc",
) -> tuple[list[float], float, float]:
    """One client process: `concurrency` coroutines each sending requests back to back, over
    `transport` (grpc; http: binary tensor data; http-json: JSON tensors).
    With `shared_memory` the inputs (one region for all) and each coroutine's outputs (a
    region each) live in system shared memory; only metadata crosses the socket.
    Returns the latencies of requests started after the warm-up (which lasts until the
    rate is steady, at most `warmup` seconds), the requests/s of the first seconds, and
    how long the warm-up took."""
    from serving.protocol.datatypes import v2_dtype

    if transport == "grpc":
        import tritonclient.grpc.aio as triton
    else:
        import tritonclient.http.aio as triton  # type: ignore[no-redef]
    binary = transport != "http-json"
    inputs = example_inputs(specs, batch)

    async def drive() -> tuple[list[float], float, float]:
        # JSON tensors of a large batch queue for minutes at high concurrency: beyond
        # tritonclient.http's 60 s default, which would end the cell instead of measuring it
        client = (
            triton.InferenceServerClient(url)
            if transport == "grpc"
            else triton.InferenceServerClient(url, conn_timeout=900)
        )
        tensors = []
        for name, array in inputs.items():
            tensor = triton.InferInput(name, list(array.shape), v2_dtype(array))
            tensor.set_data_from_numpy(array, **({} if transport == "grpc" else {"binary_data": binary}))
            tensors.append(tensor)
        outputs_of: Sequence[list[Any] | None] = [None] * concurrency
        if transport != "grpc":  # every output, as binary data or as JSON
            metadata = await client.get_model_metadata(model)
            outputs_of = [
                [triton.InferRequestedOutput(o["name"], binary_data=binary) for o in metadata["outputs"]]
            ] * concurrency
        try:
            async with contextlib.AsyncExitStack() as regions:
                if shared_memory:
                    outputs_of = await _into_shared_memory(client, model, inputs, tensors, concurrency, regions)
                measured: list[float] = []
                rate = SteadyRate(warmup)

                async def worker(outputs) -> None:
                    while True:
                        sent = time.perf_counter()
                        if rate.steady_at is not None and sent >= rate.steady_at + seconds:
                            return
                        await client.infer(model, tensors, outputs=outputs)
                        done = time.perf_counter()
                        if rate.steady_at is None:
                            rate.complete(done)
                        elif sent >= rate.steady_at:
                            measured.append(done - sent)

                await asyncio.gather(*(worker(outputs) for outputs in outputs_of))
        finally:
            await client.close()
        assert rate.steady_at is not None  # every worker returns only after it
        return measured, rate.first_rate(), rate.steady_at - rate.began

    try:
        return asyncio.run(drive())
    except Exception as exc:  # tritonclient's exceptions do not survive the trip back to the parent process
        raise RuntimeError(f"{model} batch {batch}: {type(exc).__name__}: {exc}") from None


async def _into_shared_memory(
    client, model: str, inputs: dict[str, np.ndarray], tensors, concurrency: int, regions: contextlib.AsyncExitStack
) -> list[list]:
    """Point `tensors` at one shared memory region holding the inputs, and give each worker
    an output region, sized by a first request answered in the message; returns each
    worker's requested outputs. `regions` unregisters and frees them all on exit."""
    from multiprocessing import shared_memory

    import tritonclient.grpc.aio as triton

    answer = await client.infer(model, tensors)
    sizes = {
        o.name: len(raw) for o, raw in zip(answer.get_response().outputs, answer.get_response().raw_output_contents)
    }

    async def region(name: str, size: int) -> shared_memory.SharedMemory:
        shm = shared_memory.SharedMemory(create=True, size=max(size, 1))
        regions.callback(shm.unlink)
        regions.callback(shm.close)
        await client.register_system_shared_memory(name, "/" + shm.name, shm.size)
        regions.push_async_callback(client.unregister_system_shared_memory, name)
        return shm

    tag = f"bench-{os.getpid()}-"  # other client processes register theirs on the same server
    shm_in = await region(f"{tag}in", sum(a.nbytes for a in inputs.values()))
    offset = 0
    for tensor, array in zip(tensors, inputs.values()):
        shm_in.buf[offset : offset + array.nbytes] = np.ascontiguousarray(array).tobytes()  # type: ignore[index]
        tensor.set_shared_memory(f"{tag}in", array.nbytes, offset)
        offset += array.nbytes
    outputs_of, shm_outs = [], []
    for worker in range(concurrency):
        shm_outs.append(await region(f"{tag}out{worker}", sum(sizes.values())))
        outputs, offset = [], 0
        for name, size in sizes.items():
            output = triton.InferRequestedOutput(name)
            output.set_shared_memory(f"{tag}out{worker}", size, offset)
            outputs.append(output)
            offset += size
        outputs_of.append(outputs)
    await _check_shared_answer(client, model, tensors, outputs_of[0], answer, shm_outs[0])
    return outputs_of


async def _check_shared_answer(client, model: str, tensors, outputs, answer, shm_out) -> None:
    """The benchmark measures the shared memory path only once it gives the message path's answer."""
    shared = await client.infer(model, tensors, outputs=outputs)
    if any(shared.get_response().raw_output_contents):
        raise RuntimeError(f"{model}: outputs came back in the message although shared memory was asked for")
    offset = 0
    for output in answer.get_response().outputs:
        expected = answer.as_numpy(output.name)
        got = np.ndarray(expected.shape, expected.dtype, buffer=shm_out.buf, offset=offset)
        if not np.allclose(got, expected, rtol=1e-5, atol=1e-6):
            raise RuntimeError(f"{model}: output {output.name!r} read from shared memory differs from the message's")
        offset += expected.nbytes


def over_grpc(
    url: str,
    model: str,
    specs,
    batch: int,
    concurrency: int,
    *,
    seconds: float,
    warmup: float,
    processes: int = 1,
    shared_memory: bool = False,
    transport: str = "grpc",
) -> BenchResult:
    """A cell against a running server at `url` (its gRPC or HTTP address, as `transport` says)."""
    processes = max(1, min(processes, concurrency))
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no GIL shared with the caller
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
        futures = [
            pool.submit(_client_process, url, model, specs, batch, share, seconds, warmup, shared_memory, transport)
            for share in shares
        ]
        answers = [f.result() for f in futures]
    result = _summarise(
        model,
        transport + ("+shm" if shared_memory else ""),
        batch,
        concurrency,
        [lat for latencies, _, _ in answers for lat in latencies],
        seconds,
    )
    result.cold_items_per_s = sum(first for _, first, _ in answers) * batch
    result.warmup_s = max(took for _, _, took in answers)
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_subprocess(
    repository: Path,
    *,
    device: str,
    extra: Sequence[str] = (),
    timeout: float = 300,
    http_port: int = -1,
    cwd: Path | None = None,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`deepr serve` in its own process on a free loopback port; yields its address and process.
    HTTP is off unless `http_port` is given (0: a free one is chosen, and is `process.http_url`).
    `cwd`: a deepr checkout to run instead of this one (`python -m deepr` imports from there)."""
    port = free_port()
    command = [sys.executable, "-m", "deepr", "serve", "--repository", str(repository)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--device", device]
    http_port = free_port() if http_port == 0 else http_port
    command += ["--http-port", str(http_port)]
    # a free metrics port too, unless told otherwise: a `deepr serve` already running holds 8002
    command += [*([] if any(a.startswith("--metrics-port") for a in extra) else ["--metrics-port", "0"]), *extra]
    with server_subprocess("deepr serve", command, f"127.0.0.1:{port}", timeout=timeout, cwd=cwd) as process:
        process.http_url = f"127.0.0.1:{http_port}"  # type: ignore[attr-defined]
        yield f"127.0.0.1:{port}", process


@contextlib.contextmanager
def server_subprocess(
    name: str,
    command: Sequence[str],
    url: str,
    *,
    models: Sequence[str] = (),
    timeout: float = 300,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[subprocess.Popen]:
    """Any V2 gRPC server started by `command`, once it answers ServerReady (and ModelReady
    for each of `models`) at `url`; stopped on exit. Its output goes to a log file that
    errors name."""
    import tritonclient.grpc as triton

    log = tempfile.NamedTemporaryFile(prefix=f"{name.replace(' ', '-')}-", suffix=".log", delete=False)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    try:
        client = triton.InferenceServerClient(url)
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with code {process.returncode}; its log: {log.name}")
            with contextlib.suppress(Exception):
                if client.is_server_ready() and all(client.is_model_ready(m) for m in models):
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not ready after {timeout:.0f} s; its log: {log.name}")
            time.sleep(0.2)
        client.close()
        yield process
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def perf_analyzer() -> tuple[str, dict[str, str]] | None:
    """NVIDIA's perf_analyzer from the tritonclient wheel, and the environment it starts in
    (libcudart from the nvidia-cuda-runtime-cu12 wheel on LD_LIBRARY_PATH); None where it
    cannot start (scripts/tools/install_perf_analyzer.sh installs what it links)."""
    binary = shutil.which("perf_analyzer", path=str(Path(sys.executable).parent)) or shutil.which("perf_analyzer")
    if binary is None:
        return None
    env = dict(os.environ)
    with contextlib.suppress(ImportError):
        import nvidia.cuda_runtime as cuda_runtime

        lib = str(Path(list(cuda_runtime.__path__)[0]) / "lib")
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [lib, env.get("LD_LIBRARY_PATH")]))
    try:
        done = subprocess.run([binary, "--help"], capture_output=True, text=True, env=env, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (binary, env) if "error while loading shared libraries" not in done.stderr else None


def served_specs(repository: Path, model: str) -> tuple[Path, list[tuple[str, str, list[int]]]]:
    """The latest ONNX file of `model` and its inputs as (name, V2 datatype, shape)."""
    from serving.protocol.model_config import read_config
    from serving.server.model import OnnxModel, RuntimeOptions

    model_dir = repository / model
    config = read_config(model_dir)
    version = max(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
    served = OnnxModel(
        model,
        str(version),
        model_dir / str(version) / (config.default_model_filename or "model.onnx"),
        config,
        RuntimeOptions(device="cpu"),
    )
    served.load()
    return served.path, [(s.name, s.datatype, list(s.shape)) for s in served.inputs]


def reload(url: str, model: str) -> float:
    """Have the server load `model` afresh (model control); returns the seconds it took."""
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(url)
    try:
        began = time.perf_counter()
        client.load_model(model)
        return time.perf_counter() - began
    finally:
        client.close()


def batch_profiles(repository: Path, models: Sequence[str]) -> dict[str, str]:
    """The batch profile each model's config carries (deepr export --profile-batches), as tables."""
    from serving.protocol.model_config import read_config
    from serving.server.batch_profile import BatchProfile

    profiles = {m: BatchProfile.from_config(read_config(repository / m)) for m in models}
    return {m: p.table() for m, p in profiles.items() if p is not None}


def run_benchmark(
    repository: Path,
    models: Sequence[str],
    *,
    cells: Sequence[tuple[int, int]],
    device: str = "auto",
    seconds: float = 5.0,
    warmup: float = 1.0,
    client_processes: int = 1,
    server_args: Sequence[str] = (),
    tf32: bool = False,
    shared_memory: bool = False,
    transports: Sequence[str] = ("grpc",),
    progress=print,
) -> list[BenchResult]:
    """Every (batch, concurrency) cell over each of `transports` (grpc, http, http-json), after
    in-process onnxruntime at each batch size; with `shared_memory`, each gRPC cell again with
    the tensors in system shared memory."""
    results: list[BenchResult] = []
    baseline: dict[tuple[str, int], float] = {}
    batches = sorted({batch for batch, _ in cells})
    specs = {m: served_specs(repository, m) for m in models}
    for model in models:
        onnx_file, inputs = specs[model]
        for batch in batches:
            r = in_process(model, onnx_file, batch, inputs, device=device, seconds=seconds, warmup=warmup, tf32=tf32)
            baseline[model, batch] = r.items_per_s
            results.append(r)
            progress(format_row(r))
    http = any(t != "grpc" for t in transports)
    variants = [(t, False) for t in transports] + ([("grpc", True)] if shared_memory else [])
    with serve_subprocess(
        repository, device=device, extra=[*server_args, "--tf32" if tf32 else "--no-tf32"], http_port=0 if http else -1
    ) as (url, server):
        for model in models:
            for batch, concurrency in cells:
                for transport, shm in variants:
                    load_s = reload(url, model)
                    try:
                        r = over_grpc(
                            url if transport == "grpc" else server.http_url,  # type: ignore[attr-defined]
                            model,
                            specs[model][1],
                            batch,
                            concurrency,
                            seconds=seconds,
                            warmup=warmup,
                            processes=client_processes,
                            shared_memory=shm,
                            transport=transport,
                        )
                    except RuntimeError as exc:  # one cell failing must not lose the others
                        progress(f"{model:<24} {transport:<10} {batch:>5} {concurrency:>4} failed: {exc}")
                        continue
                    r.ratio, r.load_s = r.items_per_s / baseline[model, batch], load_s
                    results.append(r)
                    progress(format_row(r))
    return results


HEADER = (
    f"{'model':<24} {'mode':<10} {'batch':>5} {'conc':>4} {'items/s':>10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
    f"{'vs in-proc':>10} {'cold 2 s':>10} {'load s':>6} {'warm-up s':>9}"
)


def format_row(r: BenchResult) -> str:
    ratio = f"{r.ratio:.2f}x" if r.ratio is not None else ""
    return (
        f"{r.model:<24} {r.mode:<10} {r.batch:>5} {r.concurrency:>4} {r.items_per_s:>10.1f} {r.requests_per_s:>9.1f} "
        f"{r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {ratio:>10} {r.cold_items_per_s or float('nan'):>10.1f} "
        f"{'' if r.load_s is None else f'{r.load_s:.2f}':>6} {r.warmup_s or 0.0:>9.1f}"
    )


def environment(device: str, tf32: bool = False) -> dict:
    import onnxruntime as ort

    from serving.runtime.providers import select_providers

    return {
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "provider": select_providers(device, tf32)[0],
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_json(path: Path, results: Sequence[BenchResult], settings: dict) -> None:
    path.write_text(json.dumps({"settings": settings, "results": [asdict(r) for r in results]}, indent=2) + "\n")


MODE_LABELS = {"grpc": "gRPC", "grpc+shm": "gRPC+shm", "http": "HTTP", "http-json": "HTTP JSON"}
MODE_COLORS = {
    "in-process": "tab:grey",
    "grpc": "tab:blue",
    "grpc+shm": "tab:green",
    "http": "tab:orange",
    "http-json": "tab:red",
}


def write_plot(path: Path, results: Sequence[BenchResult]) -> None:
    """One panel per model: items/s of every configuration, in-process bars beside served ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r.model for r in results))
    fig, axes = plt.subplots(
        len(models), 1, figsize=(9, 2.2 + 0.35 * len(results) / max(len(models), 1)), squeeze=False
    )
    for ax, model in zip(axes[:, 0], models):
        rows = [r for r in results if r.model == model]
        labels = [
            f"in-process b{r.batch}" if r.mode == "in-process" else f"{MODE_LABELS[r.mode]} b{r.batch} c{r.concurrency}"
            for r in rows
        ]
        colors = [MODE_COLORS[r.mode] for r in rows]
        ax.barh(labels, [r.items_per_s for r in rows], color=colors)
        for y, r in enumerate(rows):
            note = f"{r.items_per_s:,.0f}/s  p99 {r.p99_ms:.1f} ms" + (
                f"  {r.ratio:.2f}x" if r.ratio is not None else ""
            )
            ax.text(r.items_per_s, y, " " + note, va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set_title(model)
        ax.set_xlabel("items per second")
        ax.margins(x=0.45)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def copy_with_configs(
    repository: Path, models: Sequence[str], target: Path, edit: Callable[[Any], None], suffix: str = ""
) -> list[str]:
    """Copies of `models` in `target`, named NAME + `suffix`, whose config.pbtxt files `edit`
    changed, for side-by-side runs; returns their names."""
    from serving.protocol.model_config import read_config, write_config

    names = []
    for model in models:
        name = model + suffix
        config = read_config(repository / model)
        shutil.copytree(repository / model, target / name)
        config.name = name
        edit(config)
        write_config(target / name, config)
        names.append(name)
    return names


def without_batching(config) -> None:
    """Each request runs alone."""
    config.ClearField("dynamic_batching")


def with_free_sizes(config) -> None:
    """Merged runs at whatever size the queue gives (deepr.pad_batches false), no size
    warmed beyond the config's own samples: how deepr batched before its run sizes."""
    from serving.protocol.schema import PAD_BATCHES_KEY

    config.parameters[PAD_BATCHES_KEY].string_value = "false"


def with_instances(count: int) -> Callable[[Any], None]:
    """A config edit: `count` instances, each its own session with cores/count threads."""

    def edit(config) -> None:
        del config.instance_group[:]
        config.instance_group.add(count=count)

    return edit
