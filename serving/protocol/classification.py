"""The V2 classification extension: top-K classes as "score:index:label" strings."""

from __future__ import annotations

import numpy as np

from serving.protocol.errors import InvalidInput

__all__ = ["top_k_strings", "parse_class_string"]


def top_k_strings(scores: np.ndarray, k: int, labels: list[str] | None, *, batched: bool) -> np.ndarray:
    """BYTES array of the `k` best classes per example, best first.

    Each element is b"score:index:label" (b"score:index" without labels).
    `scores` is (batch, ...) when `batched`, else one example; the classes are
    all of an example's elements, flattened.
    """
    if k < 1:
        raise InvalidInput(f"classification class_count must be >= 1, got {k}")
    rows = scores.reshape(len(scores), -1) if batched else scores.reshape(1, -1)
    k = min(k, rows.shape[1])
    top = np.argsort(-rows, axis=1, kind="stable")[:, :k]  # (rows, k)
    out = np.empty(top.shape, dtype=np.object_)
    for r, indices in enumerate(top):
        for j, idx in enumerate(indices):
            text = f"{float(rows[r, idx]):f}:{idx}"
            if labels is not None and idx < len(labels):
                text += f":{labels[idx]}"
            out[r, j] = text.encode()
    return out if batched else out[0]


def parse_class_string(item: bytes | str) -> tuple[float, int, str]:
    """(score, index, label) from one classification element; label "" when absent."""
    text = item.decode() if isinstance(item, bytes) else item
    score, index, *label = text.split(":", 2)
    return float(score), int(index), label[0] if label else ""
