"""Picture files into pixels, for models that take encoded pictures.

A model exported with `--pixels encoded` declares a BYTES input of picture files and
carries the preprocessing that turns one into its uint8 graph's (H, W, C) pixels. Each
request's files are decoded here, in a pool of threads beside the event loop (Pillow
releases the GIL while it decodes and resizes), before the request joins the batcher: a
file that is not a picture, is truncated, or is too large fails its own request with
INVALID_ARGUMENT naming the item, never the batch it would have been merged into.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from serving.protocol.errors import InvalidInput
from serving.protocol.preprocessing import ImagePreprocessing, PictureError

__all__ = ["PictureDecoder"]


class PictureDecoder:
    def __init__(self, threads: int = 0, max_pixels: int = 40_000_000) -> None:
        self.threads = threads or os.cpu_count() or 1
        self.max_pixels = max_pixels
        self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="deepr-decode")

    async def decode(
        self, inputs: dict[str, np.ndarray], name: str, preprocessing: ImagePreprocessing
    ) -> dict[str, np.ndarray]:
        """`inputs` with input `name`'s files, (N, 1) BYTES, replaced by their (N, H, W, C) pixels."""
        files = inputs[name].reshape(-1)
        loop = asyncio.get_running_loop()
        # a few items per task: one hand-off per thread rather than per file
        chunks = [c for c in np.array_split(np.arange(len(files)), min(len(files), self.threads)) if len(c)]
        parts = await asyncio.gather(
            *(loop.run_in_executor(self._pool, self._pixels, files, chunk, name, preprocessing) for chunk in chunks)
        )
        return {**inputs, name: np.concatenate(parts) if len(parts) > 1 else parts[0]}

    def _pixels(self, files: np.ndarray, items: np.ndarray, name: str, preprocessing: ImagePreprocessing) -> np.ndarray:
        height, width = preprocessing.size
        out = np.empty((len(items), height, width, preprocessing.channels), np.uint8)
        for row, item in enumerate(items):
            data = files[item]
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise InvalidInput(
                    f"input {name!r} item {item}: expected a picture file's bytes, got {type(data).__name__}"
                )
            try:
                out[row] = preprocessing.decoded(bytes(data), self.max_pixels)
            except PictureError as exc:
                raise InvalidInput(f"input {name!r} item {item}: {exc}") from None
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True)
