"""The parent's side of a server of several workers: changes applied in one order everywhere,
and the state a starting worker takes over.

Every change a client asks of the server as a whole (load, unload, register, unregister)
reaches the parent from the worker that received it. The parent takes the changes to one
name one at a time: it writes the change into its ledger, then has every worker apply it
over the worker's private socket, and answers once all have. Two clients loading and
unloading one model at the same moment thus leave every worker in the state of whichever
change came second, as one process would. The ledger is what a worker starting late (or
again, after a crash) is given before it serves: the models loaded or unloaded on request and
the registered regions, besides the statistics of the process it replaces.

A region that cannot be registered in every worker is registered in none (the workers that
took it let it go); a name already registered is refused before any worker is asked, so the
live region stays. A worker that dies while a change is under way is not a failure of the
change: the worker that replaces it takes the change from the ledger.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol, Sequence

import grpc

from serving.protocol.errors import InvalidInput, ServingError
from serving.protocol.generated import grpc_predict_v2_pb2 as pb
from serving.protocol.generated import grpc_predict_v2_pb2_grpc as pb_grpc
from serving.server.load_override import LoadOverride
from serving.server.peers import CONTROL_SECONDS
from serving.server.shared_memory import already_registered

__all__ = ["Coordinator", "Ledger", "WorkerFailed", "Workers"]

logger = logging.getLogger(__name__)


class WorkerFailed(ServingError):
    """Some workers did not do what the call asked; the message names each, with its reason."""

    code = grpc.StatusCode.INTERNAL


@dataclass
class Ledger:
    """The server's state that requests changed, as the workers must all have it."""

    models: dict[str, str] = field(default_factory=dict)
    """Model name -> "load" or "unload": the last change asked of it."""
    regions: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Registered region name -> its key, offset and byte_size."""
    overrides: dict[str, dict[str, str]] = field(default_factory=dict)
    """Model name -> the config and files its last load sent (LoadOverride.to_json), if any."""


class Slot(Protocol):
    index: int
    generation: int
    """How many processes have been started in this place."""

    def running(self) -> bool: ...


class Workers(Protocol):
    """What the coordinator needs of the parent (serving.server.workers.Supervisor)."""

    metadata: tuple

    def serving_slots(self) -> Sequence[Slot]:
        """The workers a change must reach."""
        ...

    async def channel(self, index: int, wait: float = 0.0) -> grpc.aio.Channel: ...

    def mark_stale(self, index: int) -> None: ...

    def baseline(self, index: int) -> list[dict[str, Any]]:
        """The statistics a process starting in place `index` counts from."""
        ...


def _reason(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc) if isinstance(exc, ServingError) else f"{type(exc).__name__}: {exc}"


def _code(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code()
    return exc.code if isinstance(exc, ServingError) else grpc.StatusCode.INTERNAL


class Coordinator:
    """Answers the workers' Control and State calls for `supervisor`'s workers."""

    def __init__(self, supervisor: Workers) -> None:
        self.supervisor = supervisor
        self.ledger = Ledger()
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    # -- the private service ---------------------------------------------------------------------------------------

    async def control(self, request: dict[str, Any]) -> dict[str, Any]:
        op, name = request.get("op"), request.get("name")
        if not isinstance(name, str):
            raise InvalidInput("a change names a model or region")
        if op in ("load", "unload"):
            parameters = request.get("parameters") or {}
            await self._model(
                op, name, LoadOverride.from_json(name, parameters if isinstance(parameters, dict) else {})
            )
        elif op == "register":
            await self._register(name, request)
        elif op == "unregister":
            await self._unregister(name)
        else:
            raise InvalidInput(f"unknown change {op!r}")
        return {}

    async def state(self, request: dict[str, Any]) -> dict[str, Any]:
        worker = request.get("worker")
        return {
            "models": dict(self.ledger.models),
            "regions": dict(self.ledger.regions),
            "overrides": dict(self.ledger.overrides),
            "statistics": self.supervisor.baseline(worker) if isinstance(worker, int) else [],
        }

    # -- changes ---------------------------------------------------------------------------------------------------

    async def _model(self, op: str, name: str, override: LoadOverride) -> None:
        async with self._lock(f"model:{name}"):
            before, overridden = self.ledger.models.get(name), self.ledger.overrides.pop(name, None)
            self.ledger.models[name] = op
            if override:
                self.ledger.overrides[name] = override.to_json()
            if op == "load":
                message = pb.RepositoryModelLoadRequest(model_name=name, parameters=override.grpc_parameters())
                call = "RepositoryModelLoad"
            else:
                call, message = "RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name=name)
            failed, asked = await self._everywhere(call, message)
            if failed and len(failed) == asked:  # refused by every worker: nothing changed
                self.ledger.overrides.pop(name, None)
                if overridden is not None:
                    self.ledger.overrides[name] = overridden
                if before is None:
                    self.ledger.models.pop(name, None)
                else:
                    self.ledger.models[name] = before
            _raise_for(failed, asked, f"{'loading' if op == 'load' else 'unloading'} {name!r}")

    async def _register(self, name: str, request: dict[str, Any]) -> None:
        region = {k: request.get(k) for k in ("key", "offset", "byte_size")}
        async with self._lock("regions"):
            if name in self.ledger.regions:
                raise already_registered(name)
            self.ledger.regions[name] = region
            failed, asked = await self._everywhere(
                "SystemSharedMemoryRegister", pb.SystemSharedMemoryRegisterRequest(name=name, **region)
            )
            if failed:  # all or nothing: the workers that took it let it go
                del self.ledger.regions[name]
                await self._everywhere(
                    "SystemSharedMemoryUnregister", pb.SystemSharedMemoryUnregisterRequest(name=name)
                )
            _raise_for(failed, asked, f"registering region {name!r}")

    async def _unregister(self, name: str) -> None:
        async with self._lock("regions"):
            if name:
                self.ledger.regions.pop(name, None)
            else:
                self.ledger.regions.clear()
            failed, asked = await self._everywhere(
                "SystemSharedMemoryUnregister", pb.SystemSharedMemoryUnregisterRequest(name=name)
            )
            _raise_for(failed, asked, "unregistering")

    async def _everywhere(self, method: str, message: Any) -> tuple[dict[int, BaseException], int]:
        """`method` on every worker that is not stopped (one restarting is waited for); the
        failures by worker, leaving out the workers that died meanwhile, and how many were asked."""
        slots = self.supervisor.serving_slots()
        generations = {slot.index: slot.generation for slot in slots}
        metadata = self.supervisor.metadata

        async def apply(index: int) -> Any:
            stub = pb_grpc.GRPCInferenceServiceStub(await self.supervisor.channel(index, wait=CONTROL_SECONDS))
            rpc: Callable[..., Awaitable[Any]] = getattr(stub, method)
            return await rpc(message, timeout=CONTROL_SECONDS, metadata=metadata, wait_for_ready=True)

        results = await asyncio.gather(*(apply(slot.index) for slot in slots), return_exceptions=True)
        failed = {}
        for slot, result in zip(slots, results):
            if not isinstance(result, BaseException):
                continue
            self.supervisor.mark_stale(slot.index)
            if slot.generation != generations[slot.index] or not slot.running():
                logger.info(
                    "worker %d went away during %s; it takes the change over when it starts", slot.index, method
                )
                continue
            failed[slot.index] = result
        return failed, len(slots)


def _raise_for(failed: dict[int, BaseException], asked: int, what: str) -> None:
    """WorkerFailed naming each failed worker; the workers' own status where all refused alike."""
    if not failed:
        return
    codes = {_code(e) for e in failed.values()}
    reasons = "; ".join(f"worker {w}: {_reason(e)}" for w, e in sorted(failed.items()))
    error = WorkerFailed(f"{what} failed in {len(failed)} of {asked} workers: {reasons}")
    if len(codes) == 1 and len(failed) == asked:  # the same refusal everywhere: that refusal
        error.code = codes.pop()
    raise error
