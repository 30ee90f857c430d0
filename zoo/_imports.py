"""What the Keras and ONNX importers share: where imports live, how an import's name is
judged, its `import.json` record, and keeping, forgetting and re-registering a model folder.

Each imported model is one folder, `$DEEPR_HOME/<kind>/<name>/` (default ~/.cache/deepr),
holding the model's file and `import.json`; `import zoo` registers every such folder again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from ._registry import ModelSpec, register_spec, unregister_imported

logger = logging.getLogger(__name__)

RECORD = "import.json"
_MAX_RECORD_BYTES = 4 * 2**20
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
"""An imported model's name: a Python name in ASCII, as model folders and servers take it."""


def imports_home(kind: str) -> Path:
    """$DEEPR_HOME/<kind> (default ~/.cache/deepr/<kind>)."""
    return Path(os.environ.get("DEEPR_HOME", Path.home() / ".cache" / "deepr")) / kind


def name_problem(name: str) -> str | None:
    """Why `name` cannot name an imported model, or None when it can."""
    if _NAME.fullmatch(name):
        return None
    shown = repr(name) if len(name) <= 60 else f"{name[:60]!r}... ({len(name)} characters)"
    return f"--name {shown}: use 1 to 128 ASCII letters, digits and underscores, not starting with a digit"


def read_record(folder: Path) -> dict[str, Any]:
    """The fields of `folder/import.json`, its lists as tuples."""
    path = folder / RECORD
    if path.stat().st_size > _MAX_RECORD_BYTES:  # what deepr writes is a few KB
        raise ValueError(f"{path} is {path.stat().st_size:,} bytes; deepr writes a few KB there")
    fields = json.loads(path.read_text())
    fields["input_shape"] = tuple(fields["input_shape"])
    fields["classes"] = tuple(fields["classes"])
    return fields


def keep(spec: ModelSpec, folder: Path, record: Any, write_model: Callable[[Path], object]) -> None:
    """Register `spec`, then write the model (`write_model(folder)`) and its record (a
    dataclass) into `folder`. Registering first refuses a built-in name before anything is
    written; a failure part way leaves neither the folder nor the registration."""
    register_spec(spec, replaces_imported=True)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_model(folder)
        (folder / RECORD).write_text(json.dumps(asdict(record), indent=2) + "\n")
    except BaseException:
        unregister_imported(spec.name)
        shutil.rmtree(folder, ignore_errors=True)
        raise


def forget(name: str, folder: Path) -> None:
    """Drop `name`'s registration and its folder (only a folder deepr wrote: one with a record)."""
    unregister_imported(name)
    if (folder / RECORD).is_file():
        shutil.rmtree(folder, ignore_errors=True)


def register_folders(home: Path, spec_of: Callable[[Path], ModelSpec], what: str) -> None:
    """Register the model of every folder under `home` that has a record; one that cannot be
    read is skipped with a warning naming it, so one damaged import takes no other down."""
    if not home.is_dir():
        return
    for folder in sorted(home.iterdir()):
        if not (folder / RECORD).is_file():
            continue
        try:
            register_spec(spec_of(folder), replaces_imported=True)
        except (OSError, ValueError, TypeError, KeyError, RecursionError) as exc:
            logger.warning("skipping the imported model in %s (%s): %s", folder, what, exc)
