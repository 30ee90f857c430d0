"""Dynamic batching: merged runs give every request exactly its own rows, and the
scheduler keeps Triton's rules (queue bound, deadlines, preferred sizes, one bad
request failing alone)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton

from conftest import TEST_DEVICE
from serving.protocol.errors import DeadlineExceeded, QueueFull
from serving.protocol.generated import model_config_pb2 as mc
from serving.server.batching import BatchingPolicy, DynamicBatcher, _RecentPeak


class RowSums:
    """A model stand-in for the scheduler's own tests: sums each row, records run sizes,
    fails any run holding a row of -1s, and can be held to make requests queue."""

    name, version = "row_sums", "1"

    def __init__(self) -> None:
        self.runs: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def predict(self, inputs, outputs=None):
        self.gate.wait(5)
        x = inputs["x"]
        if (x == -1).all(axis=1).any():
            raise ValueError("poisoned row")
        self.runs.append(len(x))
        return {"sum": x.sum(axis=1, keepdims=True)}


def rows(n: int, start: float) -> dict[str, np.ndarray]:
    return {"x": np.arange(start, start + 3 * n, dtype=np.float32).reshape(n, 3)}


@pytest.fixture()
def executor():
    with ThreadPoolExecutor(4) as pool:
        yield pool


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_merge_and_get_their_own_rows(executor):
    model = RowSums()
    model.gate.clear()  # hold the first run so the rest pile up behind it
    batcher = DynamicBatcher(model, BatchingPolicy(max_batch_size=64), executor)
    sizes = [1, 3, 2, 5, 1, 4, 2, 7, 1, 1]

    async def main():
        tasks = [asyncio.create_task(batcher.infer(rows(n, 100 * i), ["sum"])) for i, n in enumerate(sizes)]
        await asyncio.sleep(0.05)
        model.gate.set()
        return await asyncio.gather(*tasks)

    results = run(main())
    for i, (n, (out, timings)) in enumerate(zip(sizes, results)):
        np.testing.assert_array_equal(out["sum"], rows(n, 100 * i)["x"].sum(axis=1, keepdims=True))
        assert timings.batch_size >= n and timings.infer_ns > 0
    assert sum(model.runs) == sum(sizes)
    assert model.runs == [sum(sizes)]  # all queued before the scheduler ran: one merged run


def test_max_batch_size_splits_runs(executor):
    model = RowSums()
    model.gate.clear()
    batcher = DynamicBatcher(model, BatchingPolicy(max_batch_size=4), executor)

    async def main():
        tasks = [asyncio.create_task(batcher.infer(rows(n, 10 * i), [])) for i, n in enumerate([1, 3, 2, 2, 4])]
        await asyncio.sleep(0.05)
        model.gate.set()
        return await asyncio.gather(*tasks)

    run(main())
    assert model.runs == [4, 4, 4]  # [1, 3], [2, 2], [4]: in order, none over the bound


def test_requests_with_other_shapes_run_separately(executor):
    model = RowSums()
    model.gate.clear()
    batcher = DynamicBatcher(model, BatchingPolicy(max_batch_size=32), executor)
    wide = {"x": np.ones((2, 5), dtype=np.float32)}

    async def main():
        tasks = [asyncio.create_task(batcher.infer(x, [])) for x in (rows(1, 0), rows(2, 0), wide, rows(1, 9))]
        await asyncio.sleep(0.05)
        model.gate.set()
        return await asyncio.gather(*tasks)

    results = run(main())
    np.testing.assert_array_equal(results[2][0]["sum"], [[5.0], [5.0]])
    assert model.runs == [4, 2]  # the three narrow requests merged; the wide one alone


def test_one_bad_request_fails_alone(executor):
    model = RowSums()
    model.gate.clear()
    batcher = DynamicBatcher(model, BatchingPolicy(max_batch_size=32), executor)
    poisoned = {"x": -np.ones((1, 3), dtype=np.float32)}

    async def main():
        tasks = [asyncio.create_task(batcher.infer(x, [])) for x in (rows(1, 0), rows(2, 5), poisoned, rows(3, 50))]
        await asyncio.sleep(0.05)
        model.gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = run(main())
    assert isinstance(results[2], ValueError)
    assert model.runs == [1, 2, 3]  # the merged run failed; each request was retried alone
    for got, (n, start) in zip([results[0], results[1], results[3]], [(1, 0), (2, 5), (3, 50)]):
        np.testing.assert_array_equal(got[0]["sum"], rows(n, start)["x"].sum(axis=1, keepdims=True))


def test_full_queue_is_refused_at_once(executor):
    model = RowSums()
    model.gate.clear()
    batcher = DynamicBatcher(model, BatchingPolicy(max_batch_size=8, max_queue_size=2), executor)

    async def main():
        running = asyncio.create_task(batcher.infer(rows(1, 0), []))
        await asyncio.sleep(0.05)  # taken by the scheduler: the queue is empty again
        queued = [asyncio.create_task(batcher.infer(rows(1, i), [])) for i in (1, 2)]
        await asyncio.sleep(0.01)
        started = time.perf_counter()
        with pytest.raises(QueueFull, match="queue is full \\(2 requests waiting\\)"):
            await batcher.infer(rows(1, 3), [])
        refused_in = time.perf_counter() - started
        model.gate.set()
        await asyncio.gather(running, *queued)
        return refused_in

    assert run(main()) < 0.5
    assert sum(model.runs) == 3


def test_request_past_its_deadline_is_dropped_unrun(executor):
    model = RowSums()
    model.gate.clear()
    batcher = DynamicBatcher(model, BatchingPolicy(max_batch_size=8), executor)

    async def main():
        running = asyncio.create_task(batcher.infer(rows(1, 0), []))
        await asyncio.sleep(0.05)
        late = asyncio.create_task(batcher.infer(rows(2, 0), [], deadline=time.monotonic() + 0.05))
        await asyncio.sleep(0.2)
        model.gate.set()
        await running
        with pytest.raises(DeadlineExceeded, match="deadline passed while it was queued"):
            await late

    run(main())
    assert model.runs == [1]


def test_queue_delay_waits_for_a_preferred_batch(executor):
    model = RowSums()
    batcher = DynamicBatcher(
        model, BatchingPolicy(max_batch_size=16, preferred_batch_sizes=(4,), max_queue_delay_s=0.5), executor
    )

    async def main():
        first = asyncio.create_task(batcher.infer(rows(1, 0), []))
        await asyncio.sleep(0.05)  # the scheduler holds it, waiting for more
        others = [asyncio.create_task(batcher.infer(rows(1, i), [])) for i in (1, 2, 3)]
        started = time.perf_counter()
        await asyncio.gather(first, *others)
        return time.perf_counter() - started

    assert run(main()) < 0.4  # released by the preferred size, not the 0.5 s delay
    assert model.runs == [4]


def test_a_lone_client_never_waits_out_the_queue_delay(executor):
    """No preferred sizes: a batch holding every request recently in the batcher runs at once."""
    model = RowSums()
    batcher = DynamicBatcher(model, BatchingPolicy(max_batch_size=16, max_queue_delay_s=0.5), executor)

    async def main():
        waits = []
        for i in range(5):
            started = time.perf_counter()
            await batcher.infer(rows(1, i), [])
            waits.append(time.perf_counter() - started)
        return waits

    assert max(run(main())) < 0.1
    assert model.runs == [1] * 5


def test_clients_that_wait_for_their_answers_are_gathered_without_the_delay(executor):
    """Four clients, each sending again once answered: after the first batch, all four are
    gathered as they return, and no batch waits the 0.5 s delay for a fifth."""
    model = RowSums()
    model.gate.clear()  # the first run is held so that all four meet in the batcher
    batcher = DynamicBatcher(model, BatchingPolicy(max_batch_size=16, max_queue_delay_s=0.5), executor)

    async def client(k: int):
        for i in range(5):
            await batcher.infer(rows(1, 10 * k + i), [])

    async def main():
        clients = [asyncio.create_task(client(k)) for k in range(4)]
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        model.gate.set()
        await asyncio.gather(*clients)
        return time.perf_counter() - started

    assert run(main()) < 0.45  # less than one delay for the four rounds after the first
    assert sum(model.runs) == 20 and model.runs[1:].count(4) >= 3


def test_a_batch_still_waits_for_as_many_as_were_recently_waiting(executor):
    model = RowSums()
    model.gate.clear()
    batcher = DynamicBatcher(model, BatchingPolicy(max_batch_size=16, max_queue_delay_s=0.5), executor)

    async def main():
        held = [asyncio.create_task(batcher.infer(rows(1, i), [])) for i in range(4)]
        await asyncio.sleep(0.05)
        model.gate.set()
        await asyncio.gather(*held)  # four were in the batcher at once
        first = asyncio.create_task(batcher.infer(rows(1, 10), []))
        await asyncio.sleep(0.05)
        later = [asyncio.create_task(batcher.infer(rows(1, 11 + i), [])) for i in range(3)]
        await asyncio.gather(first, *later)

    run(main())
    assert model.runs[-1] == 4  # the lone first request waited for the other three


def test_the_recent_peak_forgets_a_quiet_batcher():
    peak = _RecentPeak(window_s=0.05)
    peak.add(6)
    peak.add(2)
    assert peak.value() == 6
    time.sleep(0.06)
    assert peak.value() == 6  # the window before is still remembered
    time.sleep(0.11)
    assert peak.value() == 1


def test_policy_comes_from_the_config():
    config = mc.ModelConfig(name="m", max_batch_size=32)
    assert BatchingPolicy.from_config(config) is None
    config.dynamic_batching.preferred_batch_size.extend([16, 8, 64])
    config.dynamic_batching.max_queue_delay_microseconds = 2000
    config.dynamic_batching.default_queue_policy.max_queue_size = 100
    config.instance_group.add(count=2)
    assert BatchingPolicy.from_config(config) == BatchingPolicy(32, (8, 16), 0.002, 100, 2, run_sizes=(8, 16))
    config.max_batch_size = 0
    assert BatchingPolicy.from_config(config) is None


def test_served_model_batches_concurrent_requests(repository, server_url):
    """Over gRPC with tritonclient: 48 concurrent requests of mixed batch sizes each get
    exactly the rows in-process onnxruntime gives for their own images, and every run is
    at a batch size the model warmed when it loaded."""
    session = ort.InferenceSession(
        str(repository / "mnist_convnet" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(7)
    requests = [rng.random((int(rng.integers(1, 6)), 1, 28, 28), dtype=np.float32) for _ in range(48)]
    client = triton.InferenceServerClient(server_url)
    before = counts(client)

    def ask(x):
        tensor = triton.InferInput("images", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        return client.infer("mnist_convnet", [tensor]).as_numpy("probabilities")

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, requests))
    for x, got in zip(requests, answers):
        np.testing.assert_allclose(got, session.run(None, {"images": x})[0], rtol=1e-5, atol=1e-6)
    after = counts(client)
    (stats,) = client.get_inference_statistics("mnist_convnet").model_stats
    client.close()
    inferred, succeeded, executions = (a - b for a, b in zip(after, before))
    assert (inferred, succeeded) == (sum(len(x) for x in requests), len(requests))
    assert 1 <= executions <= len(requests)
    assert sum(b.compute_infer.count for b in stats.batch_stats) == stats.execution_count
    # every run was at a size warmed at load (powers of two up to 256), padding included
    assert {b.batch_size for b in stats.batch_stats} <= {2**i for i in range(9)}, stats.batch_stats
    assert sum(b.batch_size * b.compute_infer.count for b in stats.batch_stats) >= stats.inference_count


def counts(client) -> tuple[int, int, int]:
    """Rows inferred, requests succeeded, onnxruntime runs so far for mnist_convnet."""
    stats = client.get_inference_statistics("mnist_convnet").model_stats
    if not stats:
        return 0, 0, 0
    return stats[0].inference_count, stats[0].inference_stats.success.count, stats[0].execution_count


def test_full_queue_answers_resource_exhausted_over_grpc(repository, tmp_path):
    """A queue bound of 1 and 48 concurrent requests: the overflow is refused at once with
    RESOURCE_EXHAUSTED, every other request gets its own rows, and the server goes on."""
    import shutil

    from tritonclient.utils import InferenceServerException

    from serving.protocol.model_config import read_config, write_config
    from serving.server.grpc.server import serve_in_thread
    from serving.server.settings import ServerSettings

    shutil.copytree(repository / "mnist_convnet", tmp_path / "mnist_convnet")
    config = read_config(tmp_path / "mnist_convnet")
    config.dynamic_batching.default_queue_policy.max_queue_size = 1
    write_config(tmp_path / "mnist_convnet", config)
    session = ort.InferenceSession(
        str(tmp_path / "mnist_convnet" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    x = np.random.default_rng(1).random((256, 1, 28, 28), dtype=np.float32)
    want = session.run(None, {"images": x})[0]
    with serve_in_thread(
        ServerSettings(repository=tmp_path, host="127.0.0.1", port=0, device=TEST_DEVICE, metrics_port=-1)
    ) as server:
        client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")

        def ask(_):
            tensor = triton.InferInput("images", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            try:
                return client.infer("mnist_convnet", [tensor]).as_numpy("probabilities")
            except InferenceServerException as exc:
                return exc

        with ThreadPoolExecutor(48) as pool:
            answers = list(pool.map(ask, range(48)))
        refused = [a for a in answers if isinstance(a, InferenceServerException)]
        assert refused and all(
            e.status() == "StatusCode.RESOURCE_EXHAUSTED" and "queue is full" in e.message() for e in refused
        )
        for got in (a for a in answers if not isinstance(a, InferenceServerException)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        stats = client.get_inference_statistics("mnist_convnet").model_stats[0].inference_stats
        assert (stats.success.count, stats.fail.count) == (48 - len(refused), len(refused))
        assert client.is_server_ready()
        client.close()


def test_padding_runs_only_fixed_sizes_and_drops_the_padding(executor):
    model = RowSums()
    model.gate.clear()
    executed = []
    batcher = DynamicBatcher(
        model,
        BatchingPolicy(max_batch_size=16, run_sizes=(4, 8, 16)),
        executor,
        lambda size, infer_ns, cold: executed.append((size, cold)),
    )
    sizes = [1, 2, 3, 2]

    async def main():
        first = asyncio.create_task(batcher.infer(rows(1, 0), ["sum"]))  # runs alone, held at the gate
        await asyncio.sleep(0.05)
        tasks = [asyncio.create_task(batcher.infer(rows(n, 100 * i), ["sum"])) for i, n in enumerate(sizes)]
        await asyncio.sleep(0.05)
        model.gate.set()
        return await first, await asyncio.gather(*tasks)

    (alone, _), results = run(main())
    np.testing.assert_array_equal(alone["sum"], [[3.0]])  # 0 + 1 + 2; its 3 zero rows dropped
    for i, (n, (out, _)) in enumerate(zip(sizes, results)):
        np.testing.assert_array_equal(out["sum"], rows(n, 100 * i)["x"].sum(axis=1, keepdims=True))
    assert model.runs == [4, 8]  # 1 row padded to 4; 1 + 2 + 3 + 2 = 8 rows, exactly a size
    assert executed == [(4, True), (8, True)]  # statistics see the run sizes; nothing was warmed here


def test_run_sizes_from_the_config_and_the_warm_up():
    config = mc.ModelConfig(max_batch_size=32)
    config.dynamic_batching.SetInParent()
    assert BatchingPolicy.from_config(config).run_sizes == (1, 2, 4, 8, 16, 32)
    config.max_batch_size = 24
    assert BatchingPolicy.from_config(config).run_sizes == (1, 2, 4, 8, 16, 24)
    assert BatchingPolicy.from_config(config, {1: 0.1, 2: 0.1, 4: 0.1}).run_sizes == (
        1,
        2,
        4,
    )  # past the budget: unused
    config.parameters["deepr.pad_batches"].string_value = "false"
    assert BatchingPolicy.from_config(config).run_sizes == ()
    del config.parameters["deepr.pad_batches"]
    config.dynamic_batching.preferred_batch_size.extend([4, 12])
    assert BatchingPolicy.from_config(config).run_sizes == (4, 12)  # merging stops at the largest preferred size
    assert BatchingPolicy.from_config(config).merge_limit == 12


@pytest.mark.parametrize(
    "rows, seconds, plan",
    [
        ([1] * 23, {}, (23, 32)),  # no timings: pad up
        ([8, 8], {16: 1.0}, (2, 16)),  # an exact size
        (
            [32] * 5,
            {128: 1.28, 256: 2.56},
            (4, 128),
        ),  # compute-bound: 128 now, the fifth next (padding to 256 wastes 96 rows)
        ([1] * 23, {16: 0.016, 32: 0.018}, (23, 32)),  # a fixed cost per run: padding 23 to 32 beats 16 now and 7 later
        ([300], {256: 1.0}, (1, 300)),  # one request larger than every size runs as it is
        (
            [3, 30],
            {4: 0.004, 32: 0.032, 64: 0.064},
            (1, 4),
        ),  # 33 rows: 3 padded to 4 costs the same per row as 33 in 64
    ],
)
def test_plan_keeps_merged_runs_at_warmed_sizes(rows, seconds, plan):
    sizes = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    assert BatchingPolicy(256, run_sizes=sizes, run_seconds=seconds).plan(rows) == plan


def test_merging_stops_at_the_largest_preferred_size(executor):
    """A profiled model (preferred sizes 1, 2, 4): one-row requests merge into runs of at
    most 4; a request larger than that runs alone, at its own size."""
    model = RowSums()
    model.gate.clear()
    executed = []
    batcher = DynamicBatcher(
        model,
        BatchingPolicy(max_batch_size=64, preferred_batch_sizes=(1, 2, 4), run_sizes=(1, 2, 4)),
        executor,
        lambda size, infer_ns, cold: executed.append(size),
    )
    sizes = [1] * 9 + [8] + [1] * 3

    async def main():
        first = asyncio.create_task(batcher.infer(rows(1, 0), ["sum"]))  # held at the gate while the rest queue
        await asyncio.sleep(0.05)
        tasks = [asyncio.create_task(batcher.infer(rows(n, 100 * i), ["sum"])) for i, n in enumerate(sizes)]
        await asyncio.sleep(0.05)
        model.gate.set()
        await first
        return await asyncio.gather(*tasks)

    results = run(main())
    for i, (n, (out, _)) in enumerate(zip(sizes, results)):
        np.testing.assert_array_equal(out["sum"], rows(n, 100 * i)["x"].sum(axis=1, keepdims=True))
    assert 8 in model.runs and all(size in (1, 2, 4) for size in model.runs if size != 8)
    assert sorted(executed) == sorted(model.runs)
    assert sum(model.runs) == 1 + sum(sizes)  # no padding was needed: 12 one-row requests fill sizes exactly


def test_a_request_for_every_output_gets_every_output_when_merged(executor):
    """A merged run asks onnxruntime for every output when one of its requests wants them all."""

    class TwoOutputs(RowSums):
        def predict(self, inputs, outputs=None):
            result = super().predict(inputs, outputs)
            result["double"] = 2 * inputs["x"]
            return {k: v for k, v in result.items() if outputs is None or k in outputs}

    model = TwoOutputs()
    model.gate.clear()
    batcher = DynamicBatcher(model, BatchingPolicy(max_batch_size=8), executor)

    async def main():
        tasks = [
            asyncio.create_task(batcher.infer(rows(1, 0), ["sum"])),
            asyncio.create_task(batcher.infer(rows(1, 5), [])),
        ]
        await asyncio.sleep(0.05)
        model.gate.set()
        return await asyncio.gather(*tasks)

    (only_sum, _), (everything, _) = run(main())
    assert set(only_sum) == {"sum"} and set(everything) == {"sum", "double"}
    np.testing.assert_array_equal(everything["double"], 2 * rows(1, 5)["x"])


class Echo:
    """A stand-in for a generation graph: answers each row's sequence (padding included) as
    many times over as the longest `length` asked, and records what it was given."""

    name, version = "echo", "1"

    def __init__(self) -> None:
        self.given: list[dict[str, np.ndarray]] = []
        self.gate = threading.Event()

    def predict(self, inputs, outputs=None):
        self.gate.wait(5)
        self.given.append(inputs)
        steps = int(inputs["length"].max())
        return {"out": np.tile(inputs["seq"], (1, steps))[:, :steps], "count": (inputs["seq"] >= 0).sum(axis=1)}


def test_ragged_inputs_merge_padded_and_trimmed_outputs_come_back_at_each_requests_length(executor):
    """Requests whose sequences differ in length merge into one run, padded with the model's
    pad value (padding rows too); each gets its own rows, its `out` cut to its own length."""
    model = Echo()
    policy = BatchingPolicy(
        max_batch_size=8, run_sizes=(8,), ragged_inputs={"seq": -1}, trimmed_outputs={"out": "length"}
    )
    batcher = DynamicBatcher(model, policy, executor)
    requests = [
        {"seq": np.array([[1, 2, 3]]), "length": np.array([[2]])},
        {"seq": np.array([[4], [5]]), "length": np.array([[5], [1]])},
        {"seq": np.array([[6, 7, 8, 9, 10]]), "length": np.array([[4]])},
    ]

    async def main():
        held = asyncio.create_task(batcher.infer({"seq": np.array([[0]]), "length": np.array([[1]])}, []))
        await asyncio.sleep(0.05)  # the first runs alone (held); the three queue behind it
        tasks = [asyncio.create_task(batcher.infer(r, [])) for r in requests]
        await asyncio.sleep(0.05)
        model.gate.set()
        await held
        return await asyncio.gather(*tasks)

    answers = [out for out, _ in run(main())]
    merged = model.given[1]
    assert merged["seq"].shape == (8, 5)  # 4 rows of requests, padded up to the run size of 8
    np.testing.assert_array_equal(
        merged["seq"][:4], [[1, 2, 3, -1, -1], [4, -1, -1, -1, -1], [5, -1, -1, -1, -1], [6, 7, 8, 9, 10]]
    )
    assert (merged["seq"][4:] == -1).all() and (merged["length"][4:] == 0).all()
    np.testing.assert_array_equal(answers[0]["count"], [3])
    np.testing.assert_array_equal(answers[1]["count"], [1, 1])
    assert [a["out"].shape for a in answers] == [(1, 2), (2, 5), (1, 4)]
    np.testing.assert_array_equal(answers[0]["out"], [[1, 2]])
    np.testing.assert_array_equal(answers[2]["out"], [[6, 7, 8, 9]])


def test_ragged_and_trimmed_come_from_the_config():
    config = mc.ModelConfig(name="g", max_batch_size=8)
    config.dynamic_batching.SetInParent()
    config.parameters["deepr.ragged_inputs"].string_value = '{"prompt": -1}'
    config.parameters["deepr.trim_outputs"].string_value = '{"chars": "length"}'
    policy = BatchingPolicy.from_config(config)
    assert policy.ragged_inputs == {"prompt": -1} and policy.trimmed_outputs == {"chars": "length"}


DELAY = BatchingPolicy(max_batch_size=64, max_queue_delay_s=0.010, run_sizes=(1, 2, 4, 8, 16, 32))
PREFERRED = BatchingPolicy(max_batch_size=64, max_queue_delay_s=0.010, preferred_batch_sizes=(4, 8))


@pytest.mark.parametrize(
    ("policy", "rows", "count", "oldest", "now", "peak", "wait"),
    [
        (BatchingPolicy(max_batch_size=64), 1, 1, 0.0, 0.0, 1, 0.0),  # no delay: run now
        (DELAY, 1, 1, 0.0, 0.0, 1, 0.0),  # a lone client is never held
        (DELAY, 2, 2, 0.0, 0.004, 3, 0.006),  # three were recently waiting: wait for the third
        (DELAY, 2, 2, 0.0, 0.011, 3, 0.0),  # the delay counts from the oldest request's arrival
        (DELAY, 2, 2, 0.0, 0.004, 2, 0.0),  # everyone recently waiting is here
        (DELAY, 32, 3, 0.0, 0.0, 9, 0.0),  # the largest run size is full
        (PREFERRED, 1, 1, 0.0, 0.0, 1, 0.010),  # preferred sizes wait whatever the peak
        (PREFERRED, 4, 2, 0.0, 0.002, 9, 0.0),  # a preferred size reached
        (PREFERRED, 5, 2, 0.0, 0.002, 9, 0.008),  # between preferred sizes
        (PREFERRED, 9, 2, 0.0, 0.002, 9, 0.0),  # past the largest preferred size
        (PREFERRED, 5, 2, 1.0, 1.012, 9, 0.0),  # the delay is spent
    ],
)
def test_one_function_decides_when_a_batch_leaves(policy, rows, count, oldest, now, peak, wait):
    assert policy.wait(rows, count, oldest, now, peak) == pytest.approx(wait, abs=1e-9)


def test_the_queue_delay_counts_from_arrival_not_from_a_free_instance(executor):
    """A request that waited 150 ms for the only instance does not then wait a 200 ms delay."""
    model = RowSums()
    model.gate.clear()
    policy = BatchingPolicy(max_batch_size=64, max_queue_delay_s=0.200, preferred_batch_sizes=(8,))
    batcher = DynamicBatcher(model, policy, executor)

    async def main():
        first = asyncio.create_task(batcher.infer(rows(8, 0), ["sum"]))  # a preferred size: runs at once
        await asyncio.sleep(0.01)
        second = asyncio.create_task(batcher.infer(rows(1, 10), ["sum"]))
        await asyncio.sleep(0.150)  # the first holds the instance: the second waits for it
        model.gate.set()
        await first
        started = time.monotonic()
        await second
        return time.monotonic() - started

    assert run(main()) < 0.150  # about 50 ms of its delay were left, not 200


def test_a_gathered_request_whose_deadline_passes_is_not_run(executor):
    model = RowSums()
    policy = BatchingPolicy(max_batch_size=64, max_queue_delay_s=0.300, preferred_batch_sizes=(8,))
    batcher = DynamicBatcher(model, policy, executor)

    async def main():
        return await batcher.infer(rows(1, 0), ["sum"], deadline=time.monotonic() + 0.05)

    with pytest.raises(DeadlineExceeded):
        run(main())
    assert model.runs == []


def test_requests_being_gathered_count_against_the_queue_bound(executor):
    model = RowSums()
    policy = BatchingPolicy(max_batch_size=64, max_queue_delay_s=0.300, preferred_batch_sizes=(8,), max_queue_size=1)
    batcher = DynamicBatcher(model, policy, executor)

    async def main():
        first = asyncio.create_task(batcher.infer(rows(1, 0), ["sum"]))
        await asyncio.sleep(0.05)  # taken off the queue, waiting for a preferred batch
        with pytest.raises(QueueFull):
            await batcher.infer(rows(1, 10), ["sum"])
        await first

    run(main())
