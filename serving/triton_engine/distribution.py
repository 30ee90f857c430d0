"""Triton's server files, installed once into a folder of deepr's own: the nvidia-pytriton
wheel's tritonserver binary, python backend and stubs, and the numpy 1.x that its stubs are
built against.

The stub embeds this interpreter's Python and imports deepr, onnxruntime and numpy from its
environment, but it links numpy's 1.x C API; under numpy 2 (deepr's own) it reads array
descriptors wrongly and hands models zeroed tensors. So the folder holds numpy 1.26 too, put
first on the stub's path only: deepr's own processes keep their numpy. Both come from PyPI
without their dependencies (the wheel pins packages deepr's environment has newer)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TritonDistribution", "TritonUnavailable", "find_triton", "install_triton", "engine_home", "PACKAGES"]

_PYTHON = "%d.%d" % sys.version_info[:2]
"""This interpreter's version: the stubs and numpy's wheel are built per version."""

PACKAGES = ["nvidia-pytriton==0.7.0", "numpy==1.26.4", "ml_dtypes==0.5.4"]
"""Triton 2.51's server files, the numpy its python-backend stubs are built against, and the
ml_dtypes (which onnx imports) that runs on that numpy."""


def engine_home() -> Path:
    """Where the files go: $DEEPR_TRITON_HOME, default ~/.cache/deepr-triton, one folder per
    Python version (the stubs and numpy's wheel are per version)."""
    root = Path(os.environ.get("DEEPR_TRITON_HOME", Path.home() / ".cache" / "deepr-triton"))
    return root / f"py{_PYTHON}"


def install_command(home: Path) -> list[str]:
    return [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(home), *PACKAGES]


class TritonUnavailable(RuntimeError):
    """This machine cannot run Triton's server: the message says why and what to install."""


@dataclass(frozen=True)
class TritonDistribution:
    root: Path
    """pytriton/tritonserver inside the engine's folder."""
    site: Path
    """The engine's folder: numpy 1.x first on the stub's path, ahead of deepr's environment."""

    @property
    def server(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def backend_files(self) -> list[Path]:
        """What Triton's python backend folder must hold: the backend library, its Python
        utilities and the stub for this Python (the backend looks for the stub beside itself)."""
        return [
            self.root / "backends" / "python" / "libtriton_python.so",
            self.root / "backends" / "python" / "triton_python_backend_utils.py",
            self.root / "python_backend_stubs" / _PYTHON / "triton_python_backend_stub",
        ]

    @property
    def version(self) -> str:
        found = sorted(self.site.glob("nvidia_pytriton-*.dist-info"))
        return found[-1].name.removesuffix(".dist-info").split("-")[1] if found else "unknown"


def libpython_dir() -> Path:
    """The folder of this Python's shared libpython, which the stub (an embedded CPython) loads."""
    return Path(sysconfig.get_config_var("LIBDIR") or sys.base_prefix + "/lib")


def _check_platform() -> None:
    if sys.platform != "linux" or platform.machine() != "x86_64":
        raise TritonUnavailable(
            f"--engine triton needs Linux on x86-64 (the nvidia-pytriton wheel's platform); this is "
            f"{sys.platform} on {platform.machine()}: serve with deepr's own engine (the default)"
        )
    if not any(libpython_dir().glob(f"libpython{_PYTHON}*.so*")):
        raise TritonUnavailable(
            f"--engine triton runs models in Triton's python-backend stub, which loads libpython{_PYTHON}.so; "
            f"there is none in {libpython_dir()} (a Python built without --enable-shared?)"
        )


def find_triton(home: Path | None = None) -> TritonDistribution:
    """The installed Triton server files, or TritonUnavailable naming what is missing."""
    _check_platform()
    home = home or engine_home()
    found = TritonDistribution(home / "pytriton" / "tritonserver", home)
    missing = [
        str(p) for p in [found.server, *found.backend_files, home / "numpy", home / "ml_dtypes"] if not p.exists()
    ]
    if missing:
        command = " ".join(install_command(home))
        raise TritonUnavailable(
            f"Triton's server files are not installed (no {missing[0]}); install them with: {command}"
        )
    return found


def install_triton(home: Path | None = None, log=print) -> TritonDistribution:
    """find_triton, after installing the files from PyPI the first time (55 MB, once)."""
    _check_platform()
    home = home or engine_home()
    try:
        return find_triton(home)
    except TritonUnavailable:
        pass
    log(f"installing Triton's server files into {home} (once): {' '.join(PACKAGES)}")
    result = subprocess.run(install_command(home), capture_output=True, text=True)
    if result.returncode != 0:
        raise TritonUnavailable(
            f"installing {' '.join(PACKAGES)} into {home} failed (pip exit {result.returncode}): "
            f"{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'no message'}"
        )
    return find_triton(home)
