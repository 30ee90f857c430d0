"""The parent of N servers on one port: spawn, reap, watch, drain.

`deepr serve --workers N` starts N `deepr serve` processes that bind the same gRPC and HTTP
ports (SO_REUSEPORT: the kernel spreads new connections over them) and each a private Unix
socket, through which they keep one server's state (serving/server/peers.py). The parent
serves no inference. It checks the ports first, gives each worker its share of the cores
(onnxruntime's threads, the picture decoders), and then, on one event loop:

- spawns the workers, each a child that dies with it (serving/server/worker_process.py);
- reaps them: a worker that exits is started again with a log line and takes the server's
  state from the parent; one that exits three times in a minute stays down alone (a log
  line, and the server is not ready) while the others serve;
- watches them: each is asked for its status every second, and one that has answered once
  and then not for --worker-timeout seconds (hung) is killed and started again;
- coordinates the changes clients ask of the whole server (serving/server/coordinator.py);
- serves /metrics with every worker's statistics summed, those of workers that died
  included, so that no counter goes down;
- on SIGTERM or SIGINT drains them all.
"""

from __future__ import annotations

import asyncio
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
from typing import Any, Iterator

import grpc

from serving.runtime.providers import cuda_usable
from serving.runtime.sessions import usable_cores
from serving.server.coordinator import Coordinator
from serving.server.ports import check_ports
from serving.server.settings import ENV_PREFIX, ServerSettings
from serving.server.statistics import ModelStatistics, at_least, summed
from serving.server.tls import check_tls_files
from serving.server.worker_rpc import (
    CHANNEL_OPTIONS,
    SUPERVISOR_SERVICE,
    WORKER_SERVICE,
    UnixChannels,
    call_json,
    json_service,
    unix_address,
)

__all__ = ["auto_workers", "bind_ports", "intra_op_share", "serve_workers", "worker_environment", "Supervisor"]

logger = logging.getLogger(__name__)

_RESTARTS = 3
"""Deaths of one worker within _RESTART_WINDOW seconds after which it stays down: it cannot run."""
_RESTART_WINDOW = 60.0
_REAP_SECONDS = 0.2
_PING_SECONDS = 1.0
_STATUS_SECONDS = 5.0
"""How long a status question waits for a worker's answer."""


def auto_workers(device: str) -> tuple[int, str]:
    """How many workers `--workers auto` starts, and why: one per core on the CPU; one where
    a GPU serves (N CUDA sessions each hold the model and onnxruntime's arena on the device,
    which docs/gpu.md plans to measure before more are the default)."""
    cores = usable_cores()
    if device != "cpu" and cuda_usable()[0]:
        return 1, f"1 (CUDA: one process owns the GPU; {cores} cores)"
    return cores, f"{cores} (one per core, CPU)"


@dataclasses.dataclass
class BoundPorts:
    """The public ports, bound once by the parent and held for the server's life, so that a
    port the parent checked is the port every worker gets (as gunicorn and uvicorn hand their
    workers one listening socket). HTTP is one listening socket whose descriptor every
    worker accepts on. grpcio cannot take a socket it did not bind, so each worker binds the
    gRPC port itself with SO_REUSEPORT (the kernel spreads connections over them), and the
    parent holds it bound, not listening, in between: no other server takes it while a
    worker restarts."""

    grpc: socket.socket
    http: socket.socket | None

    def close(self) -> None:
        for held in (self.grpc, self.http):
            if held is not None:
                held.close()


def _socket_for(host: str) -> socket.socket:
    return socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)


def bind_ports(settings: ServerSettings) -> tuple[ServerSettings, BoundPorts]:
    """Bind the gRPC and HTTP ports (a free one where a port is 0); the settings with the
    ports bound and the HTTP socket's descriptor."""
    grpc_socket = _socket_for(settings.host)
    http_socket = None
    try:
        grpc_socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        grpc_socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        grpc_socket.bind((settings.host, settings.port))
        if settings.http_port >= 0:
            http_socket = _socket_for(settings.host)
            http_socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            http_socket.bind((settings.host, settings.http_port))
            http_socket.listen(1024)
            http_socket.set_inheritable(True)
    except OSError:
        grpc_socket.close()
        if http_socket is not None:
            http_socket.close()
        raise
    bound = dataclasses.replace(
        settings,
        port=grpc_socket.getsockname()[1],
        http_port=http_socket.getsockname()[1] if http_socket is not None else settings.http_port,
        worker_http_fd=http_socket.fileno() if http_socket is not None else -1,
    )
    return bound, BoundPorts(grpc_socket, http_socket)


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


def worker_environment(settings: ServerSettings, index: int, sockets: list[str], supervisor: str) -> dict[str, str]:
    """Worker `index`'s settings, as the DEEPR_* variables `deepr serve` reads."""
    count = settings.workers
    cores = usable_cores()
    mine = dataclasses.replace(
        settings,
        worker_index=index,
        worker_sockets=",".join(sockets),
        worker_supervisor=supervisor,
        worker_parent=os.getpid(),
        metrics_port=-1,  # the parent serves the whole server's metrics
        intra_op_threads=settings.intra_op_threads or intra_op_share(cores, count),
        decode_threads=settings.decode_threads or max(1, cores // count),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    for field in dataclasses.fields(mine):
        env[ENV_PREFIX + field.name.upper()] = _env_value(getattr(mine, field.name))
    return env


@dataclasses.dataclass(eq=False)
class Slot:
    """One worker's place: the process in it now, and what the parent knows of it."""

    index: int
    socket: str
    process: subprocess.Popen | None = None
    generation: int = 0
    """How many processes have been started in this slot."""
    deaths: list[float] = dataclasses.field(default_factory=list)
    stopped: bool = False
    """Down for good: it died too often."""
    answered_at: float | None = None
    """When the process in it last answered its status (None: not yet)."""
    statistics: list[ModelStatistics] = dataclasses.field(default_factory=list)
    """Its last reported statistics: those of the process before it, until it answers."""
    pending: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)

    answered_recently: bool = False
    """Whether it answered the last status question."""

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class WorkerStatistics:
    """The whole server's statistics: each slot's last report (which carries the counts of the
    processes it replaced), never below what was reported before."""

    def __init__(self, slots: list[Slot]) -> None:
        self.slots = slots
        self._floor: list[ModelStatistics] = []

    def baseline(self, index: int) -> list[dict[str, Any]]:
        """What a process starting in slot `index` counts from: its predecessor's last report."""
        if not 0 <= index < len(self.slots):
            return []
        return [s.to_json() for s in self.slots[index].statistics]

    def total(self) -> tuple[list[ModelStatistics], dict[tuple[str, str], int]]:
        self._floor = at_least(self._floor, summed(slot.statistics for slot in self.slots))
        queued: dict[tuple[str, str], int] = {}
        for slot in self.slots:
            if slot.running():
                for key, count in slot.pending.items():
                    queued[key] = queued.get(key, 0) + count
        return self._floor, queued


class _WorkersCollector:
    """deepr_worker_up: whether each worker answered its last status question (the metrics
    keep a silent worker's last counts; this says which they are)."""

    def __init__(self, slots: list[Slot]) -> None:
        self.slots = slots

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily(
            "deepr_worker_up", "1 where the worker answered its parent's last status question", labels=["worker"]
        )
        for slot in self.slots:
            up.add_metric([str(slot.index)], 1.0 if slot.running() and slot.answered_recently else 0.0)
        yield up


class Supervisor:
    """The parent process of a server of `settings.workers` workers."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.folder = Path(tempfile.mkdtemp(prefix="deepr-workers-"))  # 0700: this user's alone
        self.address = unix_address(self.folder / "parent.sock")
        self.slots = [Slot(i, unix_address(self.folder / f"worker-{i}.sock")) for i in range(settings.workers)]
        self.metadata: tuple = (("authorization", f"Bearer {settings.token}"),) if settings.token else ()
        self.statistics = WorkerStatistics(self.slots)
        self.coordinator = Coordinator(self)
        self.stopping = asyncio.Event()
        self.exit_code = 0
        self.channels = UnixChannels([slot.socket for slot in self.slots])
        self._stale: set[int] = set()

    async def channel(self, index: int, wait: float = 0.0) -> grpc.aio.Channel:
        """The channel to the private socket of the process in slot `index` (waiting up to
        `wait` seconds for it to listen while it runs)."""
        if index in self._stale:
            self._stale.discard(index)
            await self.channels.drop(index)
        return await self.channels.get(index, wait, self.slots[index].running)

    def baseline(self, index: int) -> list[dict[str, Any]]:
        return self.statistics.baseline(index)

    def mark_stale(self, index: int) -> None:
        """A call to slot `index` failed: its next call takes a new channel."""
        self._stale.add(index)

    def serving_slots(self) -> list[Slot]:
        """The slots a change must reach: all but those down for good."""
        return [slot for slot in self.slots if not slot.stopped]

    # -- spawn -----------------------------------------------------------------------------------------------------

    def spawn(self, slot: Slot) -> None:
        env = worker_environment(self.settings, slot.index, [s.socket for s in self.slots], self.address)
        inherited = (self.settings.worker_http_fd,) if self.settings.worker_http_fd >= 0 else ()
        slot.process = subprocess.Popen([sys.executable, "-m", "deepr", "serve"], env=env, pass_fds=inherited)
        slot.generation += 1
        slot.answered_at = None
        self._stale.add(slot.index)  # the channel to its predecessor is dropped before next use
        logger.info("worker %d started, pid %d", slot.index, slot.process.pid)

    # -- reap ------------------------------------------------------------------------------------------------------

    def reap(self) -> None:
        """Restart each worker that exited; a worker that exits too often stays down."""
        for slot in self.slots:
            if slot.stopped or slot.process is None or slot.running():
                continue
            status = slot.process.returncode
            now = time.monotonic()
            slot.deaths = [t for t in slot.deaths if now - t < _RESTART_WINDOW] + [now]
            slot.pending = {}
            if len(slot.deaths) >= _RESTARTS:
                slot.stopped = True
                logger.error(
                    "worker %d exited %d times in %.0f s (last with status %d): it stays down and the server "
                    "is not ready; the other workers serve",
                    slot.index,
                    len(slot.deaths),
                    _RESTART_WINDOW,
                    status,
                )
                if not self.serving_slots():
                    logger.error("every worker is down: stopping the server")
                    self.exit_code = 1
                    self.stopping.set()
                continue
            logger.warning("worker %d exited with status %d; starting it again", slot.index, status)
            self.spawn(slot)

    # -- watch -----------------------------------------------------------------------------------------------------

    async def watch(self) -> None:
        """Ask every running worker for its status; kill one that has stopped answering."""
        slots = [slot for slot in self.slots if slot.running()]
        answers = await asyncio.gather(*(self._status(slot) for slot in slots), return_exceptions=True)
        now = time.monotonic()
        timeout = self.settings.worker_timeout_seconds
        for slot, answer in zip(slots, answers):
            slot.answered_recently = not isinstance(answer, BaseException)
            if slot.answered_recently:
                continue
            self.mark_stale(slot.index)
            if timeout and slot.answered_at is not None and now - slot.answered_at > timeout and slot.running():
                assert slot.process is not None
                logger.error(
                    "worker %d (pid %d) has not answered for %.0f s (%s): killing it",
                    slot.index,
                    slot.process.pid,
                    now - slot.answered_at,
                    answer,
                )
                slot.process.kill()

    async def _status(self, slot: Slot) -> None:
        generation = slot.generation
        status = await call_json(
            await self.channel(slot.index),
            WORKER_SERVICE,
            "Status",
            {},
            timeout=_STATUS_SECONDS,
            metadata=self.metadata,
            wait=False,
        )
        if slot.generation != generation:
            return  # the process that answered has been replaced meanwhile
        slot.answered_at = time.monotonic()
        slot.statistics = [ModelStatistics.from_json(s) for s in status.get("statistics", [])]
        slot.pending = {(name, version): count for name, version, count in status.get("pending", [])}

    async def read_statistics(self) -> tuple[list[ModelStatistics], dict[tuple[str, str], int]]:
        """Every worker's statistics as of now (a silent one: as of its last answer)."""
        await self.watch()
        return self.statistics.total()

    # -- signals ---------------------------------------------------------------------------------------------------

    def handle_signal(self) -> None:
        """SIGTERM or SIGINT: drain. Only a flag here; the loop does the work."""
        self.stopping.set()

    # -- the whole ---------------------------------------------------------------------------------------------------

    async def run(self) -> int:
        """Serve until a signal or until every worker is down; the exit status."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.handle_signal)
        private = await self._serve_private()
        metrics = self._serve_metrics(loop)
        per_worker = self.settings.intra_op_threads or intra_op_share(usable_cores(), self.settings.workers)
        logger.info(
            "starting %d workers on %s:%d (HTTP %d), %d onnxruntime threads each; their sockets in %s",
            self.settings.workers,
            self.settings.host,
            self.settings.port,
            self.settings.http_port,
            per_worker,
            self.folder,
        )
        try:
            for slot in self.slots:
                self.spawn(slot)
            next_watch = time.monotonic()
            while not self.stopping.is_set():
                try:
                    await asyncio.wait_for(self.stopping.wait(), _REAP_SECONDS)
                except TimeoutError:
                    pass
                self.reap()
                if time.monotonic() >= next_watch:
                    next_watch = time.monotonic() + _PING_SECONDS
                    await self.watch()
            logger.info("draining %d workers", self.settings.workers)
            await self.drain()
        finally:
            for slot in self.slots:  # a failure above must not leave workers behind
                if slot.running():
                    assert slot.process is not None
                    slot.process.kill()
            if metrics is not None:
                metrics.shutdown()
                metrics.server_close()
            await private.stop(0)
            await self.channels.close()
            shutil.rmtree(self.folder, ignore_errors=True)
        logger.info("server stopped")
        return self.exit_code

    async def drain(self) -> None:
        """SIGTERM to every worker; those not gone within the grace seconds (and 10 more) are killed."""
        running = [slot for slot in self.slots if slot.running()]
        for slot in running:
            assert slot.process is not None
            slot.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.grace_seconds + 10
        while any(slot.running() for slot in running) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for slot in running:
            if slot.running():
                assert slot.process is not None
                logger.warning("worker %d did not stop in time; killing it", slot.index)
                slot.process.kill()
                slot.process.wait()

    async def _serve_private(self) -> grpc.aio.Server:
        from serving.server.grpc.auth import BearerTokenInterceptor

        interceptors = [BearerTokenInterceptor(self.settings.token)] if self.settings.token else []
        server = grpc.aio.server(options=CHANNEL_OPTIONS, interceptors=interceptors)
        server.add_generic_rpc_handlers(
            (json_service(SUPERVISOR_SERVICE, {"Control": self.coordinator.control, "State": self.coordinator.state}),)
        )
        server.add_insecure_port(self.address)
        await server.start()
        return server

    def _serve_metrics(self, loop: asyncio.AbstractEventLoop) -> Any:
        if self.settings.metrics_port < 0:
            return None
        from serving.server.metrics import StatisticsCollector
        from serving.server.metrics_http import start_metrics_server

        def read() -> tuple[list[ModelStatistics], dict[tuple[str, str], int]]:
            return asyncio.run_coroutine_threadsafe(self.read_statistics(), loop).result(2 * _STATUS_SECONDS)

        return start_metrics_server([StatisticsCollector(read), _WorkersCollector(self.slots)], self.settings)


def serve_workers(settings: ServerSettings) -> int:
    """Run `settings.workers` servers on the settings' ports until SIGTERM or SIGINT; the exit
    status (0 after a drain, 1 when every worker is down)."""
    check_tls_files(settings)
    check_ports(settings)
    settings, ports = bind_ports(settings)
    try:
        with asyncio.Runner(loop_factory=settings.new_event_loop) as runner:
            return runner.run(Supervisor(settings).run())
    finally:
        ports.close()
