"""NVIDIA's perf_analyzer (C++, from the tritonclient wheel) drives deepr in each of its modes:
gRPC, gRPC streaming, HTTP, and system shared memory over both. Skipped where it cannot start
(scripts/tools/install_perf_analyzer.sh installs the two libraries it links)."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest
from triton_example_repository import write_example_repository

from deepr.bench import perf_analyzer, serve_subprocess
from scripts.benchmarks.bench_perf_analyzer import MODES


@pytest.fixture(scope="module")
def examples_server(tmp_path_factory):
    found = perf_analyzer()
    if found is None:
        pytest.skip("perf_analyzer cannot start here (sh scripts/tools/install_perf_analyzer.sh)")
    repository = write_example_repository(tmp_path_factory.mktemp("examples"))
    with serve_subprocess(repository, device="cpu", http_port=0, timeout=60, extra=["--no-strict-readiness"]) as (
        url,
        process,
    ):
        yield found, {"grpc": url, "http": process.http_url}


@pytest.mark.parametrize("mode", ["grpc", "stream", "http", "grpc-shm", "http-shm"])
def test_perf_analyzer_runs_against_deepr(examples_server, mode, tmp_path):
    (binary, env), urls = examples_server
    report = tmp_path / "report.csv"
    command = [binary, "-m", "simple", *MODES[mode], "-u", urls["http" if mode.startswith("http") else "grpc"]]
    command += ["--concurrency-range", "2"]
    command += ["--measurement-mode", "count_windows", "--measurement-request-count", "100"]
    command += ["--stability-percentage", "100", "-f", str(report)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    with Path(report).open() as lines:
        row = next(csv.DictReader(lines))
    assert float(row["Inferences/Second"]) > 0
    assert "Successful request count" in done.stdout
