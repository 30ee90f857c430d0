"""scripts/benchmarks/bench_peers.py measures deepr with the same load and CPU accounting it uses on
the peers (the peers themselves are installed from PyPI, which the tests never do)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.benchmarks.peers.servers import MODELS, write_models  # noqa: E402


def test_the_peer_models_have_the_tutorials_parameter_counts(tmp_path):
    counts = {}
    for name, path in write_models(tmp_path).items():
        weights = [t for t in onnx.load(path).graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
        counts[name] = sum(math.prod(t.dims) for t in weights)  # not the exporter's int64 shape constants
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert session.get_inputs()[0].shape[1:] == MODELS[name]
    # mnist_convnet is deepr's own export of the convnet that cnn writes by hand
    assert counts == {"cnn": 93_322, "mlp": 407_050, "mnist_convnet": 93_322}


CLIENTS = ("threads", "asyncio", "http-json", "http-binary")


def test_bench_peers_measures_deepr_with_every_client(tmp_path):
    out = tmp_path / "peers.json"
    command = [
        sys.executable,
        str(ROOT / "scripts" / "benchmarks" / "bench_peers.py"),
        "--servers",
        "deepr",
        "--models",
        "mlp",
    ]
    command += ["--grid", "1x2,4x2", "--seconds", "0.5", "--warmup", "0.2", "--out", str(out)]
    command += ["--clients", ",".join(CLIENTS), "--no-h2load"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert {(r["client"], r["rows"], r["inflight"]) for r in rows} == {
        (client, rows, 2) for client in CLIENTS for rows in (1, 4)
    }
    for row in rows:
        assert row["requests"] > 0 and row["items_per_second"] > 0
        assert 0 < row["server_cpu_ms_per_request"] < 100, row
        assert row["p50_ms"] <= row["p99_ms"]
    assert "| mlp | 4 x 2 |" in done.stdout


def test_bench_peers_refuses_a_bad_grid():
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "benchmarks" / "bench_peers.py"), "--grid", "1x0"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "expected ROWSxINFLIGHT" in done.stderr
