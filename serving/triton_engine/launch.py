"""`deepr serve --engine triton`: Triton's server on a translated copy of the repository.

The copy and the backend folder live in a temporary folder for the server's lifetime. The
stub that runs the models is an embedded CPython: it finds deepr and onnxruntime through the
python3 first on PATH (this interpreter), numpy 1.x in the engine's folder ahead of them, and
loads this interpreter's libpython.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from serving.runtime.providers import cuda_usable
from serving.server.settings import ServerSettings
from serving.triton_engine.distribution import TritonDistribution, install_triton, libpython_dir
from serving.triton_engine.repository import EngineOptions, translate_repository

__all__ = ["serve_on_triton", "triton_command", "UNSUPPORTED"]

logger = logging.getLogger("deepr.triton_engine")

UNSUPPORTED = {
    "token": "--token-file (put Triton behind a proxy that checks tokens)",
    "tls_cert": "--tls-cert/--tls-key",
    "tls_client_ca": "--tls-client-ca",
    "shared_memory_remote": "--shared-memory-remote",
    "shared_memory_group": "--shared-memory-group",
}
"""Settings deepr's own server honours and Triton's does not take; refused, not ignored."""

_DEEPR_ROOT = Path(__file__).resolve().parents[2]

RESTARTS_PER_MINUTE = 5


def _refuse_unsupported(settings: ServerSettings) -> None:
    defaults = ServerSettings()
    given = [flag for field, flag in UNSUPPORTED.items() if getattr(settings, field) != getattr(defaults, field)]
    if given:
        raise ValueError(
            f"--engine triton does not take {', '.join(given)}: serve with deepr's own engine (the default) for those"
        )


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host if host not in ("0.0.0.0", "") else "127.0.0.1", 0))
        return s.getsockname()[1]


def _control_flags(settings: ServerSettings) -> list[str]:
    """deepr's model control in Triton's words: deepr's default (explicit, every model loaded)
    is Triton's explicit mode loading '*'."""
    if settings.poll_seconds:
        return ["--model-control-mode", "poll", "--repository-poll-secs", str(max(1, round(settings.poll_seconds)))]
    if not settings.model_control:
        return ["--model-control-mode", "none"]
    if settings.startup_models == "*":
        return ["--model-control-mode", "explicit", "--load-model", "*"]
    names = [n for n in settings.startup_models.split(",") if n]
    return ["--model-control-mode", "explicit", *(f"--load-model={n}" for n in names)]


_CPU_ONLY_NOISE = ("CudaDriverHelper has not been initialized",)
"""What Triton logs as an error on every start without a GPU, after the flags below have
quietened the rest: said once by deepr, in its own words, instead."""


def _cpu_only_flags() -> list[str]:
    """Without CUDA: no pinned or CUDA memory pools and no GPU metrics (each would log its
    failure at start)."""
    return ["--pinned-memory-pool-byte-size=0", "--cuda-memory-pool-byte-size=0:0", "--allow-gpu-metrics=false"]


def _forward_log(stream, cuda: bool) -> None:
    for line in stream:
        if cuda or not any(noise in line for noise in _CPU_ONLY_NOISE):
            sys.stderr.write(line)
            sys.stderr.flush()


def _ports(settings: ServerSettings) -> dict[str, int]:
    """gRPC, HTTP and metrics ports, a free one chosen where the settings say 0 (Triton takes no
    0); -1 turns HTTP or metrics off."""
    return {
        "grpc": settings.port or _free_port(settings.host),
        "http": settings.http_port if settings.http_port != 0 else _free_port(settings.host),
        "metrics": settings.metrics_port if settings.metrics_port != 0 else _free_port(settings.host),
    }


def triton_command(
    triton: TritonDistribution, work: Path, settings: ServerSettings, ports: dict[str, int], cuda: bool = True
) -> list[str]:
    """tritonserver's command line for `settings`, serving `work`/repository on `ports`."""
    command = [
        str(triton.server),
        f"--model-repository={work / 'repository'}",
        f"--backend-directory={work / 'backends'}",
        # one prefix per server: two servers on one machine must not share the stubs' regions
        f"--backend-config=python,shm-region-prefix-name=deepr{os.getpid()}_",
        f"--id={settings.server_id}",
        f"--grpc-address={settings.host}",
        f"--grpc-port={ports['grpc']}",
        f"--exit-timeout-secs={max(1, round(settings.grace_seconds))}",
        f"--strict-readiness={'true' if settings.strict_readiness else 'false'}",
        # a model that fails to load is listed with its reason and the others serve, as in deepr's server
        "--exit-on-error=false",
        "--log-info=false",
        *_control_flags(settings),
        *([] if cuda else _cpu_only_flags()),
    ]
    if settings.strict_model_config:
        command.append("--disable-auto-complete-config")
    for kind in ("http", "metrics"):
        if ports[kind] < 0:
            command.append(f"--allow-{kind}=false")
        else:
            command += [f"--{kind}-address={settings.host}", f"--{kind}-port={ports[kind]}"]
    return command


def _stub_python(triton: TritonDistribution, folder: Path) -> Path:
    """A virtualenv for the stubs, made in `folder`: its own site-packages holds the engine's
    numpy 1.x and ml_dtypes (links), and a .pth file adds this environment's packages and deepr after it.
    The stub's embedded Python takes its prefix from the python3 first on PATH, so this
    environment's bin folder goes first on the server's PATH."""
    import site
    import venv

    venv.create(folder, with_pip=False, symlinks=True)
    packages = folder / "lib" / ("python%d.%d" % sys.version_info[:2]) / "site-packages"
    for entry in triton.site.iterdir():
        if entry.name.startswith(("numpy", "ml_dtypes")):
            os.symlink(entry, packages / entry.name)
    ours = [*site.getsitepackages(), site.getusersitepackages(), str(_DEEPR_ROOT)]
    (packages / "deepr-environment.pth").write_text("\n".join(p for p in ours if Path(p).is_dir()) + "\n")
    return folder / "bin"


def _environment(stub_bin: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{stub_bin}{os.pathsep}{env.get('PATH', '')}"
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libpython_dir()), env.get("LD_LIBRARY_PATH", "")) if p)
    env.pop("PYTHONPATH", None)  # the stub's paths are its environment's
    return env


def serve_on_triton(settings: ServerSettings) -> int:
    """Serve `settings.repository` with Triton until SIGTERM/SIGINT; Triton's exit code."""
    _refuse_unsupported(settings)
    triton = install_triton(log=logger.info)
    with tempfile.TemporaryDirectory(prefix="deepr-triton-") as folder:
        work = Path(folder)
        backend = work / "backends" / "python"
        backend.mkdir(parents=True)
        for file in triton.backend_files:
            os.symlink(file, backend / file.name)
        options = EngineOptions(
            settings.runtime(), settings.completion(), settings.max_picture_pixels, max(1, settings.workers)
        )
        results = translate_repository(settings.repository, work / "repository", options, settings.model_name)
        served = [n for n, why in results.items() if not why]
        ports = _ports(settings)
        cuda = settings.device != "cpu" and cuda_usable()[0]
        logger.info(
            "Triton (nvidia-pytriton %s) on %s: gRPC port %d, HTTP %s, metrics %s; %d model(s) of %s on deepr's "
            "runtime (%s): %s",
            triton.version,
            settings.host,
            ports["grpc"],
            ports["http"] if ports["http"] >= 0 else "off",
            ports["metrics"] if ports["metrics"] >= 0 else "off",
            len(served),
            settings.repository,
            "CUDA" if cuda else "CPU: no usable CUDA device",
            ", ".join(served) or "none",
        )
        command = triton_command(triton, work, settings, ports, cuda)
        environment = _environment(_stub_python(triton, work / "python"))
        return _supervise(lambda: _start(command, environment, work, cuda))


def _start(command: list[str], environment: dict[str, str], work: Path, cuda: bool) -> subprocess.Popen:
    process = subprocess.Popen(
        command, env=environment, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    threading.Thread(target=_forward_log, args=(process.stdout, cuda), name="triton-log", daemon=True).start()
    return process


def _supervise(start: Callable[[], subprocess.Popen]) -> int:
    """Run Triton until SIGTERM/SIGINT (forwarded to it; its exit code is returned), starting it
    again when it dies of anything else, as deepr's own workers are: clients see the port
    refuse for the seconds the models take to load, not a server gone for good. More than
    RESTARTS_PER_MINUTE deaths in a minute is a crash loop, reported and given up."""
    stopping = False
    process = start()

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        process.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    deaths: list[float] = []
    while True:
        code = process.wait()
        if stopping:
            return code
        now = time.monotonic()
        deaths = [t for t in deaths if now - t < 60] + [now]
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        if len(deaths) > RESTARTS_PER_MINUTE:
            logger.error("Triton died (%s) %d times within a minute; giving up", how, len(deaths))
            return code if code > 0 else 1
        logger.error("Triton died (%s); starting it again", how)
        process = start()
