"""On onnxruntime's CUDA provider (skipped where there is none): served classification,
dynamic batching, tensors in shared memory and the character graphs agree with the CPU
provider.

Tolerances: TF32 is off (deepr's default), so CUDA and CPU differ by float32 rounding
and the order of summation only: 1e-5 absolute on probabilities.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest
import torch
import tritonclient.grpc as triton

import zoo
from exporters import UntrainedWeightsWarning
from exporters.text_generation import export_char_generation, export_char_step
from serving.server.grpc.server import serve_in_thread
from serving.server.settings import ServerSettings
from serving.tasks.graph import LocalGraph
from serving.tasks.text_generation import GenerationGraph, LocalStepModel, TextRows

pytestmark = pytest.mark.gpu


def cpu_session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_served_on_cuda_equals_cpu_under_concurrency(repository):
    onnx_file = repository / "mnist_convnet" / "1" / "model.onnx"
    rng = np.random.default_rng(3)
    requests = [rng.random((int(rng.integers(1, 9)), 1, 28, 28), dtype=np.float32) for _ in range(64)]
    with serve_in_thread(ServerSettings(repository=repository, host="127.0.0.1", port=0, device="cuda")) as server:
        assert server.dataplane.model("mnist_convnet")._session.get_providers()[0] == "CUDAExecutionProvider"
        client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")

        def ask(x):
            tensor = triton.InferInput("images", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            return client.infer("mnist_convnet", [tensor]).as_numpy("probabilities")

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(ask, requests))
        client.close()
    cpu = cpu_session(onnx_file)
    for x, got in zip(requests, answers):
        np.testing.assert_allclose(got, cpu.run(None, {"images": x})[0], atol=1e-5)


def test_shared_memory_requests_on_cuda_equal_cpu(repository):
    # Inputs read in place from the client's shared memory go to the GPU from there.
    from serving.client import InferenceClient

    onnx_file = repository / "mnist_convnet" / "1" / "model.onnx"
    rng = np.random.default_rng(4)
    requests = [rng.random((int(rng.integers(1, 65)), 1, 28, 28), dtype=np.float32) for _ in range(32)]
    with serve_in_thread(ServerSettings(repository=repository, host="127.0.0.1", port=0, device="cuda")) as server:
        with InferenceClient(f"127.0.0.1:{server.port}", shared_memory=True) as client, ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda x: client.infer("mnist_convnet", {"images": x})["probabilities"], requests))
    cpu = cpu_session(onnx_file)
    for x, got in zip(requests, answers):
        np.testing.assert_allclose(got, cpu.run(None, {"images": x})[0], atol=1e-5)


def test_char_graphs_on_cuda_equal_cpu(tmp_path, prebuilt_graphs):
    if prebuilt_graphs:
        step_file, loop_file = (prebuilt_graphs / f"char_lstm_{kind}.onnx" for kind in ("step", "generate"))
    else:
        torch.manual_seed(0)
        torch.save(zoo.get_model("char_lstm").state_dict(), tmp_path / "weights.pt")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UntrainedWeightsWarning)
            step_file = export_char_step(tmp_path / "repo", weights=tmp_path / "weights.pt").version_dir / "model.onnx"
            loop_file = (
                export_char_generation(tmp_path / "repo", weights=tmp_path / "weights.pt").version_dir / "model.onnx"
            )
    sessions = [LocalStepModel(step_file, device=d).graph.session for d in ("cpu", "cuda")]
    assert sessions[1].get_providers()[0] == "CUDAExecutionProvider"
    units = sessions[0].get_inputs()[1].shape[1]
    states = [(np.zeros((4, units), np.float32), np.zeros((4, units), np.float32)) for _ in sessions]
    for code in (5, 17, 33, 2, 40):  # five steps, the state carried on each device
        feeds = [{"char_index": np.full((4, 1), code, np.int64), "h": h, "c": c} for h, c in states]
        (p_cpu, *states[0]), (p_cuda, *states[1]) = (s.run(None, f) for s, f in zip(sessions, feeds))
        np.testing.assert_allclose(p_cuda, p_cpu, atol=1e-5)
    # The Loop graph samples with a seeded hash: the same seeds give the same characters on both.
    on_cpu, on_cuda = (
        GenerationGraph(LocalGraph(loop_file, device=d)).texts(
            TextRows.of(["def main(arguments):\n    ", "the "], [0.5, 1.0], [None, 5], [7, 8]), 200
        )
        for d in ("cpu", "cuda")
    )
    assert on_cuda == on_cpu
