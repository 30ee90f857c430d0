"""Poll mode: watch the repository on disk and serve what changes there, without a restart.

Every `interval` seconds the poller takes a fingerprint of each model folder (the name,
size and modification time of every file in it, hidden staging folders left out). A
model whose fingerprint changed is loaded again once its files have stayed the same for
`settle` seconds, so a copy still in progress is not loaded half-written; a new folder
is loaded the same way; a folder that disappears is unloaded. Loading goes through the
dataplane's own load, so the versions already serving answer every request they
accepted, and a change that does not load leaves them serving (the error is logged and
shown in the repository index).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from serving.protocol.errors import ServingError
from serving.server.repository import READY, is_model_folder

if TYPE_CHECKING:
    from serving.server.dataplane import DataPlane
    from serving.server.repository import ModelRepository

__all__ = ["Fingerprint", "fingerprints", "poll_repository"]

logger = logging.getLogger(__name__)

Fingerprint = frozenset[tuple[str, int, int]]
"""(path inside the model folder, size, mtime in ns) of each of its files and folders."""

SETTLE_SECONDS = 0.5
"""How long a changed model's files must stay the same before it is loaded."""


def _fingerprint(model_dir: Path) -> Fingerprint:
    files = []
    for folder, subfolders, names in os.walk(model_dir):
        subfolders[:] = [s for s in subfolders if not s.startswith(".")]  # exporters stage in .staging-*
        try:
            # A folder's own time changes when a version is renamed into it, even one copied
            # with its files' old times kept (cp -p, rsync -t).
            files.append((str(Path(folder).relative_to(model_dir)) + "/", 0, os.stat(folder).st_mtime_ns))
        except OSError:
            continue
        for name in names:
            if name.startswith(".") or name.endswith(".tmp"):
                continue
            path = Path(folder, name)
            try:
                stat = path.stat()
            except OSError:  # removed while walking: the next look sees the folder as it is then
                continue
            files.append((str(path.relative_to(model_dir)), stat.st_size, stat.st_mtime_ns))
    return frozenset(files)


def fingerprints(repository: "ModelRepository", names: Iterable[str] | None = None) -> dict[str, Fingerprint]:
    """The fingerprint of every model folder of `repository` (or of `names` only); a
    repository that is one model's own files is that model's folder."""
    root = repository.root
    if repository.single:
        return {repository.single_name: _fingerprint(root)}
    try:
        folders = [root / n for n in names] if names is not None else list(root.iterdir())
    except OSError:
        return {}
    return {folder.name: _fingerprint(folder) for folder in folders if is_model_folder(folder)}


async def poll_repository(
    dataplane: "DataPlane", interval: float, settle: float = SETTLE_SECONDS, known: dict[str, Fingerprint] | None = None
) -> None:
    """Runs until cancelled: loads new and changed models, unloads removed ones. `known`:
    the fingerprints taken before the server loaded the repository, so a change made
    between the load and the first poll is seen (default: taken now)."""
    root = dataplane.repository.root
    if known is None:
        known = await asyncio.to_thread(fingerprints, dataplane.repository)
    logger.info("polling %s every %g s for new, changed and removed models", root, interval)
    while True:
        await asyncio.sleep(interval)
        try:
            await _follow(dataplane, known, settle)
        except Exception:  # a poll that fails must not end polling; the next one looks again
            logger.exception("poll: looking at %s failed", root)


async def _follow(dataplane: "DataPlane", known: dict[str, Fingerprint], settle: float) -> None:
    """One look at the repository: serve what changed since `known`, and update it."""
    repository = dataplane.repository
    seen = await asyncio.to_thread(fingerprints, repository)
    changed = [name for name, print_ in seen.items() if known.get(name) != print_]
    if changed:
        await asyncio.sleep(settle)
        again = await asyncio.to_thread(fingerprints, repository, changed)
        for name in changed:
            if again.get(name) != seen[name]:
                continue  # still being written: the next poll looks again
            known[name] = seen[name]
            if not _loaded_since(dataplane, name, seen[name]):
                await _load(dataplane, name)
    for name in sorted(known.keys() - seen.keys()):
        del known[name]
        await _unload(dataplane, name)


def _loaded_since(dataplane: "DataPlane", name: str, fingerprint: Fingerprint) -> bool:
    """Whether `name` serves and was loaded after its newest file was written (by a
    RepositoryModelLoad call, or by the server building its default models)."""
    try:
        entry = dataplane.repository.entry(name)
    except ServingError:
        return False
    return entry.state == READY and entry.loaded_ns > max(mtime for _, _, mtime in fingerprint)


async def _load(dataplane: "DataPlane", name: str) -> None:
    try:
        await dataplane.load_model(name)
    except ServingError as exc:
        logger.error("poll: %s changed on disk but does not load (what served before goes on serving): %s", name, exc)
        return
    versions = sorted(dataplane.repository.entry(name).versions, key=int)
    logger.info("poll: %s loaded from disk, versions %s", name, versions)


async def _unload(dataplane: "DataPlane", name: str) -> None:
    try:
        await dataplane.unload_model(name, forget=True)
    except ServingError:  # it was never loaded
        return
    logger.info("poll: %s was removed from the repository and is unloaded", name)
