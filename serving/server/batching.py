"""Dynamic batching: concurrent requests for one model merged into one onnxruntime run.

A model whose config.pbtxt has a `dynamic_batching` block gets a DynamicBatcher.
Requests queue per model; a scheduler takes the oldest one, waits for a free
instance (instance_group count), then gathers every queued request whose tensors
can be stacked with it (same non-batch shapes and datatypes) up to its merge limit,
waiting for a preferred batch size at most max_queue_delay_microseconds after the
oldest request arrived. When a batch leaves is decided by one pure function,
BatchingPolicy.wait. The merged run's outputs are split back by row offsets.

Without preferred sizes, a batch also stops waiting once it holds as many requests as
were recently in the batcher at once (queued, gathered or running; the peak over the
last second or so). Clients who wait for each answer before sending again are then
all gathered without waiting out the delay, and a lone client is never kept waiting,
while a server of several busy workers still grows batches that one busy process would
have grown by itself (docs/benchmarks.md, Workers). If a merged run fails, each of
its requests is run alone, so one bad request fails alone.

Triton's semantics are kept: max_queue_size bounds the requests waiting, queued or
being gathered (RESOURCE_EXHAUSTED when full), and a request whose client deadline
passes while it waits is dropped before it runs.

Merged runs take one of a few sizes (serving/server/batch_sizes.py: the preferred batch sizes,
else powers of two and max_batch_size; merging stops at the largest), each warmed when the model loads, so the
runtime never meets a new shape under load: a first run at a new size is 1.5-3x slower
per row on the CPU and costs kernel selection on CUDA, and merging whatever is queued
would make almost every run a new size. A gathered batch either runs padded with zero
rows up to the next size or runs fewer requests at the largest size they fill, the rest
going first into the next batch; the warm-up's timings say which is cheaper per row.
Padding rows' outputs are dropped. The model checks every output of a run against the
rows that ran and the config's dims (OnnxModel.predict) before any row is handed out, so a
graph that answers the wrong number of rows fails each request of its run, never crosses them.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from serving.protocol.errors import DeadlineExceeded, ModelNotReady, ModelOutputError, QueueFull, ServingError
from serving.protocol.generated import model_config_pb2 as mc
from serving.protocol.schema import PAD_BATCHES_KEY, RAGGED_INPUTS_KEY, TRIM_OUTPUTS_KEY, decode_fact
from serving.server.batch_sizes import run_sizes
from serving.server.model import OnnxModel, instance_count, rows_of

__all__ = ["BatchingPolicy", "DynamicBatcher", "BatchTimings", "PAD_BATCHES_KEY"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchingPolicy:
    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_s: float = 0.0
    max_queue_size: int = 0
    """0: unbounded."""
    instances: int = 1
    run_sizes: tuple[int, ...] = ()
    """Sizes merged runs take (ascending); empty: any size."""
    run_seconds: Mapping[int, float] = field(default_factory=dict)
    """Time of a warm run at each warmed size; without it, runs are padded up."""
    ragged_inputs: Mapping[str, float] = field(default_factory=dict)
    """Inputs whose last axis may differ between merged requests -> the value that pads them."""
    trimmed_outputs: Mapping[str, str] = field(default_factory=dict)
    """Outputs whose axis 1 a request gets cut to its largest value of the named input."""

    @property
    def merge_limit(self) -> int:
        """Rows a merged run may hold: the largest run size, or max_batch_size for free sizes.
        A single request over it runs alone, at its own size."""
        return self.run_sizes[-1] if self.run_sizes else self.max_batch_size

    def plan(self, rows: Sequence[int]) -> tuple[int, int]:
        """For gathered requests of `rows` rows (in queue order): how many of them to run
        now, and the run's size (their rows plus padding)."""
        total = sum(rows)
        sizes = self.run_sizes
        if not sizes or total > sizes[-1]:
            return len(rows), total  # a single request larger than every size runs as it is
        up = next(s for s in sizes if s >= total)
        if total in sizes or not self.run_seconds:
            return len(rows), up
        choices = [(self.run_seconds.get(up, float("inf")) / total, len(rows), up)]
        fit = max((s for s in sizes if s <= total), default=0)
        kept = filled = 0
        for n in rows:
            if filled + n > fit:
                break
            kept, filled = kept + 1, filled + n
        if kept:
            size = next(s for s in sizes if s >= filled)
            choices.append((self.run_seconds.get(size, float("inf")) / filled, kept, size))
        _, kept, size = min(choices)
        return kept, size

    @property
    def waits_for_the_recent_peak(self) -> bool:
        """Whether `wait` looks at the recent peak: a queue delay without preferred sizes."""
        return self.max_queue_delay_s > 0 and not self.preferred_batch_sizes

    def wait(self, rows: int, count: int, oldest_enqueued: float, now: float, recent_peak: int = 1) -> float:
        """Every rule of when a gathered batch leaves, in one place: how many seconds a batch
        of `count` requests and `rows` rows, the oldest of them enqueued at `oldest_enqueued`,
        waits for more at `now` (time.monotonic()); 0 runs it now. Without preferred sizes
        it stops waiting once it holds as many requests as were recently in the batcher at
        once (`recent_peak`): a lone client is never held. The delay counts from the oldest
        request's arrival, not from when an instance came free (Triton's rule), so a request
        that waited for an instance does not wait a whole delay more."""
        if rows >= self.merge_limit or rows in self.preferred_batch_sizes:
            return 0.0
        if self.preferred_batch_sizes and rows > self.preferred_batch_sizes[-1]:
            return 0.0
        remaining = oldest_enqueued + self.max_queue_delay_s - now
        if remaining <= 0:
            return 0.0
        if not self.preferred_batch_sizes and count >= recent_peak:
            return 0.0  # everyone recently waiting is here: more would only wait out the delay
        return remaining

    @classmethod
    def from_config(
        cls, config: mc.ModelConfig, run_seconds: Mapping[int, float] | None = None
    ) -> "BatchingPolicy | None":
        """The policy a config asks for, or None when it asks for no dynamic batching.
        `run_seconds`: the sizes the model warmed at load; merged runs keep to them."""
        if config.max_batch_size <= 0 or not config.HasField("dynamic_batching"):
            return None
        batching = config.dynamic_batching
        preferred = tuple(sorted(s for s in batching.preferred_batch_size if 0 < s <= config.max_batch_size))
        sizes = run_sizes(config)
        if run_seconds:  # sizes past the warm-up budget are left out, not run cold
            sizes = tuple(s for s in sizes if s in run_seconds)
        parameters = config.parameters
        ragged, trimmed = (
            decode_fact(key, parameters[key].string_value) if key in parameters else {}
            for key in (RAGGED_INPUTS_KEY, TRIM_OUTPUTS_KEY)
        )
        return cls(
            max_batch_size=config.max_batch_size,
            preferred_batch_sizes=preferred,
            max_queue_delay_s=batching.max_queue_delay_microseconds / 1e6,
            max_queue_size=batching.default_queue_policy.max_queue_size,
            instances=instance_count(config),
            run_sizes=sizes,
            run_seconds=dict(run_seconds or {}),
            ragged_inputs=ragged,
            trimmed_outputs=trimmed,
        )


@dataclass
class BatchTimings:
    """What one request spent: queued, and in the onnxruntime run that served it."""

    queue_ns: int = 0
    infer_ns: int = 0
    batch_size: int = 0
    """The batch size of the run that served it: the rows onnxruntime ran, this request's,
    others' and padding (what Triton's batch statistics and deepr_batch_size count)."""


@dataclass(eq=False)
class _Pending:
    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...]
    rows: int
    signature: tuple
    future: asyncio.Future
    deadline: float | None
    enqueued_ns: int = field(default_factory=time.monotonic_ns)

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now > self.deadline


def _signature(inputs: dict[str, np.ndarray], ragged: Mapping[str, float]) -> tuple:
    """Requests stack only when every input agrees on datatype and non-batch shape (a ragged
    input's last axis aside: it is padded)."""
    return tuple(
        sorted((name, a.dtype.str, a.shape[1:-1] if name in ragged else a.shape[1:]) for name, a in inputs.items())
    )


class DynamicBatcher:
    """Merges concurrent requests for one model version. Use from one event loop."""

    def __init__(
        self,
        model: OnnxModel,
        policy: BatchingPolicy,
        executor: Executor,
        on_execution: Callable[[int, int, bool], None] | None = None,
    ) -> None:
        self.model = model
        self.policy = policy
        self._executor = executor
        self._on_execution = on_execution or (lambda size, infer_ns, cold: None)
        self._sizes_run = set(policy.run_seconds)
        """Batch sizes onnxruntime has run for this model: a run at any other is a cold one."""
        self._queue: collections.deque[_Pending] = collections.deque()
        self._arrived = asyncio.Event()
        self._instances = asyncio.Semaphore(policy.instances)
        self._scheduler: asyncio.Task | None = None
        self._gathering: list[_Pending] = []
        """Requests taken off the queue for the batch being gathered: in neither the queue
        nor a running task, so drain and close must count them on their own."""
        self._running: set[asyncio.Task] = set()
        self._running_requests = 0
        self._changed = asyncio.Event()
        """Set when a run starts or ends: what drain waits on."""
        self._peak = _RecentPeak()
        self._draining = False
        self._closed = False

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def infer(
        self, inputs: dict[str, np.ndarray], outputs: Sequence[str], deadline: float | None = None
    ) -> tuple[dict[str, np.ndarray], BatchTimings]:
        """Queue one request (inputs already validated) and wait for its own rows.
        `deadline` is a time.monotonic() instant after which it must not start."""
        if self._closed:
            raise ModelNotReady(f"model {self.model.name!r} version {self.model.version} is no longer served; retry")
        waiting = len(self._queue) + len(self._gathering)
        if self.policy.max_queue_size and waiting >= self.policy.max_queue_size:
            raise QueueFull(
                f"model {self.model.name!r}: queue is full ({self.policy.max_queue_size} requests waiting); retry later"
            )
        rows = rows_of(inputs)
        pending = _Pending(
            inputs,
            tuple(outputs),
            rows,
            _signature(inputs, self.policy.ragged_inputs),
            asyncio.get_running_loop().create_future(),
            deadline,
        )
        self._queue.append(pending)
        self._peak.add(len(self._queue) + len(self._gathering) + self._running_requests)
        self._arrived.set()
        if self._scheduler is None or self._scheduler.done():
            self._scheduler = asyncio.create_task(self._schedule(), name=f"batcher-{self.model.name}")
        return await pending.future

    @property
    def idle(self) -> bool:
        """Nothing queued, gathered or running."""
        return not (self._queue or self._gathering or self._running)

    async def drain(self) -> None:
        """Answer every request already accepted, then stop. Used when the model is unloaded
        or replaced: the batch being gathered runs at once instead of waiting out the queue
        delay, and nothing accepted is dropped."""
        self._draining = True
        self._arrived.set()
        while not self.idle:
            self._changed.clear()
            if self._running:
                await asyncio.wait(list(self._running), return_when=asyncio.FIRST_COMPLETED)
            else:  # the batch being gathered leaves at once, as a run
                await self._changed.wait()
        await self.close()

    async def close(self) -> None:
        """Stop now (server shutdown): running batches finish, queued and gathered requests
        fail with UNAVAILABLE and a reason."""
        self._closed = True
        if self._scheduler is not None:
            self._scheduler.cancel()
            await asyncio.gather(self._scheduler, return_exceptions=True)
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        self._fail_waiting(
            ModelNotReady(
                f"model {self.model.name!r} version {self.model.version} stopped serving before the request ran; retry"
            )
        )

    def _fail_waiting(self, exc: Exception) -> None:
        for pending in (*self._gathering, *self._queue):
            _fail(pending, exc)
        self._gathering = []
        self._queue.clear()

    async def _schedule(self) -> None:
        try:
            await self._schedule_forever()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug: answer everyone waiting rather than leave them hanging
            logger.exception("model %s: the batch scheduler failed", self.model.name)
            self._fail_waiting(ServingError(f"model {self.model.name!r}: the batch scheduler failed: {exc!r}"))
            raise

    async def _schedule_forever(self) -> None:
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            # Waiting for an instance first lets requests pile up while one runs:
            # under load, batches grow by themselves without any queue delay.
            await self._instances.acquire()
            try:
                batch = await self._gather()
            except BaseException:
                self._instances.release()
                raise
            self._gathering = []
            if not batch:
                self._instances.release()
                continue
            kept, size = self.policy.plan([p.rows for p in batch])
            self._queue.extendleft(reversed(batch[kept:]))  # first into the next batch
            task = asyncio.create_task(self._execute(batch[:kept], size))
            self._running.add(task)
            task.add_done_callback(self._ran)
            self._changed.set()

    def _ran(self, task: asyncio.Task) -> None:
        self._running.discard(task)
        self._changed.set()

    async def _gather(self) -> list[_Pending]:
        """The requests of the next run: the oldest queued one and every queued request that
        stacks with it, for as long as the policy says to wait for more."""
        policy = self.policy
        batch = self._gathering = []
        signature = None
        while True:
            now = time.monotonic()
            self._take_queued(batch, now, signature)
            batch[:] = [p for p in batch if self._still_wanted(p, now)]  # deadlines pass while gathering too
            if not batch:
                return batch
            signature = batch[0].signature
            if self._draining:
                return batch
            peak = self._peak.value() if policy.waits_for_the_recent_peak else 1
            wait = policy.wait(sum(p.rows for p in batch), len(batch), batch[0].enqueued_ns / 1e9, now, peak)
            if wait <= 0:
                return batch
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), wait)
            except TimeoutError:
                pass

    def _take_queued(self, batch: list[_Pending], now: float, signature: tuple | None) -> None:
        """Move queued requests that stack with the batch into it, up to the merge limit."""
        rows = sum(p.rows for p in batch)
        kept: collections.deque[_Pending] = collections.deque()
        while self._queue:
            pending = self._queue.popleft()
            if not self._still_wanted(pending, now):
                continue
            if signature is None:
                signature = pending.signature
            if pending.signature == signature and (not batch or rows + pending.rows <= self.policy.merge_limit):
                batch.append(pending)
                rows += pending.rows
            else:
                kept.append(pending)
        self._queue = kept

    def _still_wanted(self, pending: _Pending, now: float) -> bool:
        """False for a request cancelled by its client, or whose deadline passed (it is
        answered DEADLINE_EXCEEDED, unrun)."""
        if pending.future.done():
            return False
        if pending.expired(now):
            pending.future.set_exception(
                DeadlineExceeded(
                    f"model {self.model.name!r}: the request's deadline passed while it was queued; it was not run"
                )
            )
            return False
        return True

    async def _execute(self, batch: list[_Pending], size: int) -> None:
        loop = asyncio.get_running_loop()
        self._running_requests += len(batch)
        try:
            names = _output_names(batch)

            def merge_and_run() -> dict[str, np.ndarray]:
                # In the worker thread: copying a large batch together would stall the event loop.
                merged = _merged([p.inputs for p in batch], size, self.policy.ragged_inputs)
                return self.model.predict(merged, names)

            started = time.monotonic_ns()
            try:
                results = await loop.run_in_executor(self._executor, merge_and_run)
            except Exception as exc:
                if len(batch) == 1 or isinstance(exc, ModelOutputError):
                    # a model answering the wrong shape is wrong alone too: each request fails
                    for pending in batch:
                        _fail(pending, exc)
                    return
                logger.warning(
                    "model %s: a merged batch of %d requests failed (%s); running them one by one",
                    self.model.name,
                    len(batch),
                    exc,
                )
                for pending in batch:
                    await self._execute_alone(pending)
                return
            self._answer(batch, results, started, time.monotonic_ns(), size)
        finally:
            self._running_requests -= len(batch)
            self._instances.release()
            if self._queue:
                self._arrived.set()

    def _answer(
        self, batch: list[_Pending], results: dict[str, np.ndarray], started: int, finished: int, size: int
    ) -> None:
        """Give each request its own rows of a merged run's outputs."""
        self._record(size, finished - started)
        offset = 0
        for pending in batch:
            own = {
                name: value[offset : offset + pending.rows]
                for name, value in results.items()
                if not pending.outputs or name in pending.outputs
            }
            offset += pending.rows
            for name, length_input in self.policy.trimmed_outputs.items():
                if name in own and length_input in pending.inputs:
                    own[name] = own[name][:, : max(int(pending.inputs[length_input].max()), 0)]
            if not pending.future.done():
                pending.future.set_result((own, BatchTimings(started - pending.enqueued_ns, finished - started, size)))

    def _record(self, size: int, infer_ns: int) -> None:
        cold = size not in self._sizes_run
        self._sizes_run.add(size)
        self._on_execution(size, infer_ns, cold)

    async def _execute_alone(self, pending: _Pending) -> None:
        started = time.monotonic_ns()
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.model.predict, pending.inputs, list(pending.outputs) or None
            )
        except Exception as exc:
            _fail(pending, exc)
            return
        self._answer([pending], result, started, time.monotonic_ns(), pending.rows)


class _RecentPeak:
    """The most requests in a batcher at once over the last one or two windows."""

    def __init__(self, window_s: float = 1.0) -> None:
        self.window_s = window_s
        self._started = time.monotonic()
        self._current = 0
        self._previous = 0

    def _roll(self) -> None:
        now = time.monotonic()
        if now - self._started >= self.window_s:
            # a window with nothing in it leaves nothing to remember
            self._previous = self._current if now - self._started < 2 * self.window_s else 0
            self._current = 0
            self._started = now

    def add(self, requests: int) -> None:
        self._roll()
        self._current = max(self._current, requests)

    def value(self) -> int:
        self._roll()
        return max(self._current, self._previous, 1)


def _output_names(batch: list[_Pending]) -> list[str] | None:
    """Outputs any request of the batch asked for; None (every output) when one asked for all."""
    if any(not p.outputs for p in batch):
        return None
    return list(dict.fromkeys(name for p in batch for name in p.outputs))


def _merged(
    requests: list[dict[str, np.ndarray]], size: int, ragged: Mapping[str, float] | None = None
) -> dict[str, np.ndarray]:
    """The requests' inputs stacked along the batch axis, with zero rows up to `size`; ragged
    inputs padded at the end of their last axis (and in padding rows) with their pad value."""
    if len(requests) == 1 and rows_of(requests[0]) == size:
        return requests[0]
    ragged = ragged or {}
    filled = sum(rows_of(inputs) for inputs in requests)
    merged = {}
    for name, first in requests[0].items():
        pad = ragged.get(name)
        if pad is None:
            out = np.empty((size, *first.shape[1:]), dtype=first.dtype)
            out[filled:] = 0
        else:
            longest = max(inputs[name].shape[-1] for inputs in requests)
            out = np.full((size, *first.shape[1:-1], longest), pad, dtype=first.dtype)
        offset = 0
        for inputs in requests:
            part = inputs[name]
            rows = slice(offset, offset + part.shape[0])
            if pad is None:
                out[rows] = part
            else:
                out[rows, ..., : part.shape[-1]] = part
            offset += part.shape[0]
        merged[name] = out
    return merged


def _fail(pending: _Pending, exc: Exception) -> None:
    if not pending.future.done():
        pending.future.set_exception(exc)
