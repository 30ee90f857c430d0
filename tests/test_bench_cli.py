"""`deepr bench` runs both sides and writes what it measured (speed itself is not tested)."""

from __future__ import annotations

import contextlib
import json
import socket

import pytest

from deepr.cli import main


def test_bench_writes_json_and_plot(repository, tmp_path, capsys):
    """Into a folder that does not exist yet, while something else holds the default
    metrics port (a `deepr serve` already running, say)."""
    out = tmp_path / "runs" / "first" / "bench.json"
    with contextlib.ExitStack() as held:
        metrics_port = held.enter_context(socket.socket())
        with contextlib.suppress(OSError):  # already held by something else: as good
            metrics_port.bind(("127.0.0.1", 8002))
            metrics_port.listen()
        code = main(
            [
                "bench",
                "--repository",
                str(repository),
                "--model",
                "mnist_convnet",
                "--batch",
                "1,4",
                "--concurrency",
                "1,3",
                "--seconds",
                "0.3",
                "--warmup",
                "0.1",
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )
    assert code == 0
    report = json.loads(out.read_text())
    rows = report["results"]
    assert [(r["mode"], r["batch"], r["concurrency"]) for r in rows] == [
        ("in-process", 1, 1),
        ("in-process", 4, 1),
        ("grpc", 1, 1),
        ("grpc", 1, 3),
        ("grpc", 4, 1),
        ("grpc", 4, 3),
    ]
    for r in rows:
        assert r["requests"] > 0 and r["items_per_s"] == pytest.approx(r["requests_per_s"] * r["batch"])
        assert 0 < r["p50_ms"] <= r["p99_ms"]
        assert (r["ratio"] is None) == (r["mode"] == "in-process")
    assert (
        report["settings"]["client"] == "tritonclient.grpc.aio"
        and report["settings"]["provider"] == "CPUExecutionProvider"
    )
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "vs in-proc" in capsys.readouterr().out


def test_bench_refuses_unknown_models(repository, tmp_path, capsys):
    code = main(
        ["bench", "--repository", str(repository), "--model", "no_such_model", "--out", str(tmp_path / "b.json")]
    )
    assert code == 2
    assert "no_such_model: not in" in capsys.readouterr().err


def test_bench_shared_memory_rows_sit_beside_message_rows(repository, tmp_path):
    from multiprocessing import shared_memory  # noqa: F401  (Linux: /dev/shm)
    from pathlib import Path

    before = set(Path("/dev/shm").iterdir())
    out = tmp_path / "bench.json"
    code = main(
        [
            "bench",
            "--repository",
            str(repository),
            "--model",
            "mnist_convnet",
            "--cells",
            "4x2",
            "--shared-memory",
            "--seconds",
            "0.3",
            "--warmup",
            "0.1",
            "--device",
            "cpu",
            "--client-processes",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert [(r["mode"], r["concurrency"]) for r in report["results"]] == [
        ("in-process", 1),
        ("grpc", 2),
        ("grpc+shm", 2),
    ]
    assert all(r["requests"] > 0 for r in report["results"]) and report["settings"]["shared_memory"] is True
    assert set(Path("/dev/shm").iterdir()) <= before  # every region the clients made is gone


@pytest.mark.parametrize(
    "served, form",
    [
        ("resnet50", ("resnet50", "fp32", "float32")),
        ("resnet50_fp16", ("resnet50", "fp16", "float32")),
        ("resnet50_uint8", ("resnet50", "fp32", "uint8")),
        ("resnet50_fp16_uint8", ("resnet50", "fp16", "uint8")),
    ],
)
def test_bench_exports_the_form_a_served_name_asks_for(served, form):
    from deepr.cli.bench_cmd import _export_form

    assert _export_form(served) == form


def _bench_beside(repository, tmp_path, cell: str, *flags: str) -> dict:
    """`deepr bench` of mnist_convnet with `flags` that serve a second form beside it; its JSON."""
    out = tmp_path / "bench.json"
    args = ["--repository", str(repository), "--model", "mnist_convnet", "--cells", cell, *flags]
    code = main(["bench", *args, "--seconds", "0.3", "--warmup", "0.1", "--device", "cpu", "--out", str(out)])
    assert code == 0
    return json.loads(out.read_text())


def test_bench_with_free_batch_sizes(repository, tmp_path):
    report = _bench_beside(repository, tmp_path, "1x8", "--free-batch-sizes")
    assert [(r["model"], r["mode"]) for r in report["results"]] == [
        ("mnist_convnet", "in-process"),
        ("mnist_convnet_free", "in-process"),
        ("mnist_convnet", "grpc"),
        ("mnist_convnet_free", "grpc"),
    ]
    assert report["settings"]["free_batch_sizes"] is True and all(r["requests"] > 0 for r in report["results"])
    assert all(r["cold_items_per_s"] > 0 and 0 < r["warmup_s"] < 1 for r in report["results"])
    assert all(r["load_s"] > 0 for r in report["results"] if r["mode"] == "grpc")  # reloaded before each cell


def test_bench_with_instances(repository, tmp_path):
    report = _bench_beside(repository, tmp_path, "4x4", "--instances", "2")
    assert [(r["model"], r["mode"]) for r in report["results"]] == [
        ("mnist_convnet", "in-process"),
        ("mnist_convnet_x2", "in-process"),
        ("mnist_convnet", "grpc"),
        ("mnist_convnet_x2", "grpc"),
    ]
    assert report["settings"]["instances"] == 2 and all(r["requests"] > 0 for r in report["results"])
    with pytest.raises(SystemExit) as refused:
        main(["bench", "--repository", str(repository), "--instances", "0"])
    assert refused.value.code == 2


def test_free_sizes_config(repository):
    from deepr.bench import with_free_sizes
    from serving.protocol.model_config import read_config
    from serving.server.batching import BatchingPolicy

    config = read_config(repository / "mnist_convnet")
    assert BatchingPolicy.from_config(config).run_sizes == (1, 2, 4, 8, 16, 32, 64, 128, 256)
    with_free_sizes(config)
    assert BatchingPolicy.from_config(config).run_sizes == () and not config.model_warmup


def test_free_sizes_need_dynamic_batching(repository, tmp_path, capsys):
    code = main(
        [
            "bench",
            "--repository",
            str(repository),
            "--free-batch-sizes",
            "--no-dynamic-batching",
            "--out",
            str(tmp_path / "b.json"),
        ]
    )
    assert code == 2 and "--free-batch-sizes compares ways of merging runs" in capsys.readouterr().err


def test_warm_up_ends_when_the_rate_is_steady():
    from deepr.bench import SteadyRate

    steady = SteadyRate(bound=10.0, began=0.0)
    for i in range(1, 400):  # 100 completions per second, evenly
        steady.complete(i / 100)
        if steady.steady_at is not None:
            break
    assert steady.steady_at == 1.0  # two 0.5 s windows at the same rate
    assert steady.first_rate() == 100.0

    climbing = SteadyRate(bound=3.0, began=0.0)
    at = 0.0
    for i in range(1, 10_000):  # each request 1% faster than the one before: never steady
        at += 0.05 * 0.99**i
        climbing.complete(at)
        if climbing.steady_at is not None:
            break
    assert 3.0 <= climbing.steady_at < 3.1  # the bound ends it
