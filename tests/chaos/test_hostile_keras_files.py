"""C and D: Keras files that declare far more than they hold. `deepr import` refuses each with
exit 2 and one line, before allocating what the file claims, and leaves nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import h5py
import pytest

GB = 1 << 30

SEQUENTIAL = {
    "class_name": "Sequential",
    "config": {
        "name": "s",
        "layers": [
            {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 8], "dtype": "float32", "name": "in"}},
            {"class_name": "Dense", "config": {"name": "dense", "units": 4, "activation": "softmax"}},
        ],
    },
}

# The import runs in a child that reports its own peak memory as it exits.
RUN_AND_REPORT = (
    "import atexit, sys\n"
    "def peak():\n"
    "    with open('/proc/self/status') as status:\n"
    "        kb = next(line.split()[1] for line in status if line.startswith('VmHWM'))\n"
    "    print('PEAK_RSS_KB', kb, file=sys.stderr)\n"
    "atexit.register(peak)\n"
    "from deepr.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)
"""Runs the deepr CLI and reports its own peak RSS. VmHWM, not getrusage's ru_maxrss: a child
started from a large process (pytest after many tests) inherits that process's size in
ru_maxrss across the exec, while VmHWM belongs to the new program alone."""


def deepr_import(
    path: Path, home: Path, *extra: str, name: str = "probe", cwd: Path | None = None
) -> tuple[int, str, float, int]:
    """(exit code, stderr, seconds, peak RSS in bytes) of `deepr import path --name name`
    (`cwd`: a checkout of deepr to run instead of the installed one)."""
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            RUN_AND_REPORT,
            "import",
            str(path),
            "--name",
            name,
            "--repository",
            str(home / "repo"),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DEEPR_HOME": str(home), "KERAS_BACKEND": "torch"},
        cwd=cwd,
    )
    peak = int(result.stderr.rsplit("PEAK_RSS_KB", 1)[1].split()[0]) * 1024
    return result.returncode, result.stderr, time.monotonic() - started, peak


def dense_config(units: int) -> dict:
    config = json.loads(json.dumps(SEQUENTIAL))
    config["config"]["layers"][1]["config"]["units"] = units
    return config


def unwritten_weights_h5(path: Path, units: int) -> Path:
    """C: a Dense layer of `units` units whose chunked weight datasets were never written:
    kilobytes of file that declare units * 36 bytes of weights."""
    with h5py.File(path, "w") as file:
        file.attrs["model_config"] = json.dumps(dense_config(units))
        file.attrs["keras_version"] = "2.15.0"
        layer = file.create_group("model_weights").create_group("dense")
        layer.attrs["weight_names"] = [b"dense/kernel:0", b"dense/bias:0"]
        layer.create_dataset("dense/kernel:0", shape=(8, units), dtype="f4", chunks=(8, 1000))
        layer.create_dataset("dense/bias:0", shape=(units,), dtype="f4", chunks=(1000,))
    return path


def zip_bomb(path: Path, member: str) -> Path:
    """D: a .keras zip where `member` inflates to 1 GiB of spaces (about 1 MB compressed)."""
    members = {"config.json": json.dumps(SEQUENTIAL).encode(), "metadata.json": b"{}", "model.weights.h5": b""}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            if name == member:
                with archive.open(name, "w", force_zip64=True) as out:
                    chunk = b" " * (64 << 20)
                    for _ in range(GB // len(chunk)):
                        out.write(chunk)
            else:
                archive.writestr(name, data)
    return path


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hostile_keras")
    unwritten_weights_h5(folder / "unwritten_25m.h5", 25_000_000)
    unwritten_weights_h5(folder / "unwritten_1e9.h5", 1_000_000_000)
    for member in ("config.json", "model.weights.h5", "metadata.json"):
        zip_bomb(folder / f"bomb_{member.split('.')[0]}.keras", member)
    with h5py.File(folder / "deep_config.h5", "w") as file:
        file.attrs["model_config"] = '{"class_name": "Sequential", "config": ' + "[" * 10_000 + "]" * 10_000 + "}"
    return folder


@pytest.mark.parametrize(
    "file, message",
    [
        ("unwritten_25m.h5", "but the file holds 0 bytes of it"),
        ("unwritten_1e9.h5", "but the file holds 0 bytes of it"),
        ("bomb_config.keras", "config.json inflates from"),
        ("bomb_model.keras", "model.weights.h5 inflates from"),
        ("bomb_metadata.keras", "metadata.json inflates from"),
        ("deep_config.h5", "nested too deeply"),
    ],
)
def test_a_file_that_claims_more_than_it_holds_is_refused_before_allocating(hostile, tmp_path, file, message):
    size = (hostile / file).stat().st_size
    assert size < 2 << 20, f"{file} is {size} bytes"
    code, stderr, seconds, peak = deepr_import(hostile / file, tmp_path)
    print(f"{file}: {size:,} bytes -> exit {code} in {seconds:.1f} s, peak RSS {peak / GB:.2f} GB")
    assert code == 2, stderr
    assert message in stderr and "Traceback" not in stderr, stderr
    assert peak < 1.5 * GB, f"peak RSS {peak / GB:.2f} GB"
    assert seconds < 60
    assert not (tmp_path / "keras").exists() or not any((tmp_path / "keras").iterdir())
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


@pytest.mark.parametrize(
    "name, message",
    [("x" * 300, "(300 characters)"), ("café", "ASCII letters"), ("9lives", "not starting with a digit")],
)
def test_a_name_the_server_would_not_serve_is_refused(hostile, tmp_path, name, message):
    code, stderr, _, _ = deepr_import(hostile / "deep_config.h5", tmp_path, name=name)
    assert code == 2 and message in stderr and "Traceback" not in stderr, stderr


def test_an_unreadable_import_record_is_skipped_not_loaded(tmp_path):
    """The zoo skips an import folder whose record is not deepr's (here 50 MB of JSON)."""
    folder = tmp_path / "keras" / "giant"
    folder.mkdir(parents=True)
    (folder / "import.json").write_text('{"classes": [' + ", ".join(['"x"'] * 10_000_000) + "]}")
    result = subprocess.run(
        [sys.executable, "-m", "deepr", "models"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DEEPR_HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    assert "skipping the imported model" in result.stderr and "giant" not in result.stdout
