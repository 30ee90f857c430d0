"""Picture files into pixels, for models that take encoded pictures.

A model exported with `--pixels encoded` declares a BYTES input of picture files and
carries the preprocessing that turns one into its uint8 graph's (H, W, C) pixels. Each
request's files are decoded here, by a few threads beside the event loop (Pillow releases
the GIL while it decodes and resizes), before the request joins the batcher: a file that
is not a picture, is truncated, or is too large fails its own request with
INVALID_ARGUMENT naming the item, never the batch it would have been merged into.

The threads share out the work fairly between requests, one picture at a time: the next
picture decoded is always one of the request that has had the fewest pixels decoded so
far (a request arriving starts level with the least served one). A request of a few small
pictures therefore waits for the pictures being decoded at that moment, not for every
picture of the requests of large ones that came before it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import warnings

import numpy as np
from PIL import Image

from serving.protocol.errors import InvalidInput
from serving.protocol.preprocessing import ImagePreprocessing, PictureError

__all__ = ["PictureDecoder"]


class _Job:
    """One request's pictures: which are handed out, which are done, what they have cost."""

    def __init__(
        self,
        files: np.ndarray,
        name: str,
        preprocessing: ImagePreprocessing,
        cost: int,
        order: int,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        height, width = preprocessing.size
        self.files = files
        self.name = name
        self.preprocessing = preprocessing
        self.out = np.empty((len(files), height, width, preprocessing.channels), np.uint8)
        self.cost = cost
        """Pixels decoded for this request so far, counted from where it started."""
        self.order = order
        self.handed_out = 0
        self.done = 0
        self.error: BaseException | None = None
        self.loop = loop
        self.finished: asyncio.Future[None] = loop.create_future()

    @property
    def has_work(self) -> bool:
        return self.error is None and self.handed_out < len(self.files)

    def settle(self) -> None:
        """Resolve the request's future (on its loop) once no picture of it is being decoded."""
        if self.done < self.handed_out or self.has_work:
            return

        def resolve() -> None:
            if self.finished.done():  # the request was cancelled
                return
            if self.error is not None:
                self.finished.set_exception(self.error)
            else:
                self.finished.set_result(None)

        self.loop.call_soon_threadsafe(resolve)


class PictureDecoder:
    def __init__(self, threads: int = 0, max_pixels: int = 40_000_000) -> None:
        self.threads = threads or os.cpu_count() or 1
        self.max_pixels = max_pixels
        self._jobs: list[_Job] = []
        self._changed = threading.Condition()
        self._order = itertools.count()
        self._closed = False
        self._workers: list[threading.Thread] = []
        # Pillow warns on every picture past its MAX_IMAGE_PIXELS as it opens it, before the
        # server's own limit refuses it: one log line per size a client cares to send.
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

    def _start_workers(self) -> None:
        """Threads start with the first picture: a server without encoded models has none."""
        if self._workers:
            return
        for i in range(self.threads):
            worker = threading.Thread(target=self._work, name=f"deepr-decode-{i}", daemon=True)
            worker.start()
            self._workers.append(worker)

    async def decode(
        self, inputs: dict[str, np.ndarray], name: str, preprocessing: ImagePreprocessing
    ) -> dict[str, np.ndarray]:
        """`inputs` with input `name`'s files, (N, 1) BYTES, replaced by their (N, H, W, C) pixels."""
        files = inputs[name].reshape(-1)
        if not len(files):
            return inputs  # an empty batch: refused with the model's batch check
        loop = asyncio.get_running_loop()
        with self._changed:
            if self._closed:
                raise RuntimeError("the picture decoder is closed")
            self._start_workers()
            level = min((j.cost for j in self._jobs), default=0)
            job = _Job(files, name, preprocessing, level, next(self._order), loop)
            self._jobs.append(job)
            self._changed.notify(min(len(files), self.threads))
        try:
            await job.finished
        except asyncio.CancelledError:
            with self._changed:
                job.error = job.error or InvalidInput("the request was cancelled")
                if job in self._jobs and job.done == job.handed_out:
                    self._jobs.remove(job)
            raise
        return {**inputs, name: job.out}

    def _next(self) -> tuple[_Job, int] | None:
        """The least served request with a picture left, and that picture's index; None
        once closed. Called with the lock held."""
        while True:
            if self._closed:
                return None
            waiting = [j for j in self._jobs if j.has_work]
            if waiting:
                job = min(waiting, key=lambda j: (j.cost, j.order))
                job.handed_out += 1
                return job, job.handed_out - 1
            self._changed.wait()

    def _work(self) -> None:
        while True:
            with self._changed:
                picked = self._next()
            if picked is None:
                return
            job, item = picked
            error: BaseException | None = None
            pixels = 1
            try:
                pixels = self._decode_one(job, item)
            except Exception as exc:  # bad input (InvalidInput) or a decoder bug: it fails its request, not the thread
                error = exc
            with self._changed:
                job.done += 1
                job.cost += pixels
                if error is not None and job.error is None:
                    job.error = error
                if job.done == job.handed_out and not job.has_work and job in self._jobs:
                    self._jobs.remove(job)
                    job.settle()

    def _decode_one(self, job: _Job, item: int) -> int:
        """Decode picture `item` of `job` into its row; returns the pixels it had."""
        data = job.files[item]
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidInput(
                f"input {job.name!r} item {item}: expected a picture file's bytes, got {type(data).__name__}"
            )
        try:
            job.out[item], pixels = job.preprocessing.decoded_with_size(bytes(data), self.max_pixels)
        except PictureError as exc:
            raise InvalidInput(f"input {job.name!r} item {item}: {exc}") from None
        return pixels

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        for worker in self._workers:
            worker.join()
