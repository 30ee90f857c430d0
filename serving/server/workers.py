"""The parent of N servers on one port: start, restart, drain.

`deepr serve --workers N` starts N `deepr serve` processes that bind the same gRPC and HTTP
ports (SO_REUSEPORT: the kernel spreads new connections over them) and each a private Unix
socket, through which they keep one server's state (serving/server/peers.py). The parent
serves nothing itself. It checks the ports first, gives each worker its share of the cores
(onnxruntime's threads, the picture decoders), restarts a worker that dies with a log line
(the new one takes its siblings' models and shared memory regions), and on SIGTERM or
SIGINT drains them all. Worker 0 also serves /metrics, with every worker's statistics summed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from serving.runtime.providers import cuda_usable
from serving.runtime.sessions import usable_cores
from serving.server.ports import check_ports
from serving.server.settings import ENV_PREFIX, ServerSettings

__all__ = ["auto_workers", "intra_op_share", "serve_workers", "worker_environment"]

logger = logging.getLogger(__name__)

_RESTARTS = 3
"""Deaths of one worker within _RESTART_WINDOW seconds that end the server: it cannot run."""
_RESTART_WINDOW = 60.0


def auto_workers(device: str) -> tuple[int, str]:
    """How many workers `--workers auto` starts, and why: one per core on the CPU; one where
    a GPU serves (N CUDA sessions each hold the model and onnxruntime's arena on the device,
    which docs/gpu.md plans to measure before more are the default)."""
    cores = usable_cores()
    if device != "cpu" and cuda_usable()[0]:
        return 1, f"1 (CUDA: one process owns the GPU; {cores} cores)"
    return cores, f"{cores} (one per core, CPU)"


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _env_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def intra_op_share(cores: int, workers: int) -> int:
    """onnxruntime threads per worker: twice an even share, at most every core. An even
    share leaves a core idle whenever the kernel gives one worker more connections than its
    sibling, and a batch of 32 then runs on half the machine: catsdogs_convnet at batch 32
    on 2 cores, 2 workers, gave 0.68x one worker's requests/s with 1 thread each and 0.97x
    with 2, while mnist_convnet at batch 1 was within the noise either way
    (scripts/benchmarks/bench_workers.py --server-option=--intra-op-threads=N). Idle
    onnxruntime threads yield rather than spin, so the overlap costs little."""
    return min(cores, max(1, 2 * cores // workers))


def worker_environment(settings: ServerSettings, index: int, sockets: list[str], restarted: bool) -> dict[str, str]:
    """Worker `index`'s settings, as the DEEPR_* variables `deepr serve` reads."""
    count = settings.workers
    cores = usable_cores()
    mine = dataclasses.replace(
        settings,
        worker_index=index,
        worker_sockets=",".join(sockets),
        worker_restarted=restarted,
        metrics_port=settings.metrics_port if index == 0 else -1,
        intra_op_threads=settings.intra_op_threads or intra_op_share(cores, count),
        decode_threads=settings.decode_threads or max(1, cores // count),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    for field in dataclasses.fields(mine):
        env[ENV_PREFIX + field.name.upper()] = _env_value(getattr(mine, field.name))
    return env


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.process: subprocess.Popen | None = None
        self.deaths: list[float] = []


def serve_workers(settings: ServerSettings) -> int:
    """Run `settings.workers` servers on the settings' ports until SIGTERM or SIGINT; the exit
    status (0 after a drain, 1 when a worker cannot stay up)."""
    check_ports(settings)
    if settings.port == 0 or settings.http_port == 0 or settings.metrics_port == 0:
        # every worker must bind the same ports: the parent picks the free ones
        settings = dataclasses.replace(
            settings,
            port=settings.port or _free_port(settings.host),
            http_port=_free_port(settings.host) if settings.http_port == 0 else settings.http_port,
            metrics_port=_free_port(settings.host) if settings.metrics_port == 0 else settings.metrics_port,
        )
    folder = Path(tempfile.mkdtemp(prefix="deepr-workers-"))
    sockets = [f"unix:{folder / f'worker-{i}.sock'}" for i in range(settings.workers)]
    workers = [_Worker(i) for i in range(settings.workers)]
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}

    def start(worker: _Worker, restarted: bool) -> None:
        env = worker_environment(settings, worker.index, sockets, restarted)
        worker.process = subprocess.Popen([sys.executable, "-m", "deepr", "serve"], env=env)
        logger.info("worker %d started, pid %d", worker.index, worker.process.pid)

    per_worker = settings.intra_op_threads or intra_op_share(usable_cores(), settings.workers)
    logger.info(
        "starting %d workers on %s:%d (HTTP %d), %d onnxruntime threads each; their sockets in %s",
        settings.workers,
        settings.host,
        settings.port,
        settings.http_port,
        per_worker,
        folder,
    )
    code = 0
    try:
        for worker in workers:
            start(worker, restarted=False)
        while not stopping:
            time.sleep(0.2)
            for worker in workers:
                assert worker.process is not None
                status = worker.process.poll()
                if status is None or stopping:
                    continue
                now = time.monotonic()
                worker.deaths = [t for t in worker.deaths if now - t < _RESTART_WINDOW] + [now]
                if len(worker.deaths) >= _RESTARTS:
                    logger.error(
                        "worker %d exited %d times in %.0f s (last with status %d): stopping the server",
                        worker.index,
                        len(worker.deaths),
                        _RESTART_WINDOW,
                        status,
                    )
                    stopping, code = True, 1
                    break
                logger.warning("worker %d exited with status %d; starting it again", worker.index, status)
                start(worker, restarted=True)
        logger.info("draining %d workers", settings.workers)
    finally:
        for worker in workers:
            if worker.process is not None and worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + settings.grace_seconds + 10
        for worker in workers:
            if worker.process is None:
                continue
            try:
                worker.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("worker %d did not stop in time; killing it", worker.index)
                worker.process.kill()
                worker.process.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(folder, ignore_errors=True)
    logger.info("server stopped")
    return code
