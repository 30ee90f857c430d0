"""ONNX files from elsewhere, served as Triton serves them: a bare `NAME/1/model.onnx` gets its
config completed from the graph, a partial config is completed the same way, a repository
that is one model's files is one model, Triton's reshape works, and every config field deepr
does not implement is refused or, where that is safe, warned about."""

from __future__ import annotations

import logging
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from onnx import TensorProto, helper
from onnx.backend.test.runner import Runner

from conftest import TEST_DEVICE
from serving.client import InferenceClient, InferenceServerError
from serving.protocol.schema import COMPLETED_KEY
from serving.server.grpc.server import serve_in_thread
from serving.server.settings import ServerSettings

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def settings(repository: Path, **extra) -> ServerSettings:
    return ServerSettings(
        repository=repository, host="127.0.0.1", port=0, device=TEST_DEVICE, metrics_port=-1, http_port=-1, **extra
    )


def gemm_graph(path: Path, batch: str | int = "batch") -> Path:
    """y = x W + b over (batch, 4) -> (batch, 3), the batch free unless `batch` is a number."""
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])
    w = onnx.numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w")
    b = onnx.numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b")
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w", "b"], ["y"])], "gemm", [x], [y], [w, b])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


def conv_graph(path: Path) -> Path:
    """A 3x3 convolution over (batch, 1, 28, 28) pictures to (batch, 2, 26, 26)."""
    rng = np.random.default_rng(1)
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 1, 28, 28])
    y = helper.make_tensor_value_info("maps", TensorProto.FLOAT, ["batch", 2, 26, 26])
    w = onnx.numpy_helper.from_array(rng.standard_normal((2, 1, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["images", "w"], ["maps"])], "conv", [x], [y], [w])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


@pytest.fixture(scope="module")
def light_repository(tmp_path_factory) -> Path:
    """Every light model of the onnx package as a bare NAME/1/model.onnx, no config."""
    repository = tmp_path_factory.mktemp("light")
    for path in sorted(LIGHT.glob("*.onnx")):
        (repository / path.stem / "1").mkdir(parents=True)
        shutil.copy(path, repository / path.stem / "1" / "model.onnx")
    return repository


def test_every_light_model_of_the_onnx_package_is_served_from_a_bare_file(light_repository):
    """Config completed from each graph (fixed batch of 1: max_batch_size 0), answers equal to
    in-process onnxruntime on the inputs the onnx package's own backend test feeds them."""
    names = sorted(p.name for p in light_repository.iterdir())
    assert len(names) == 9
    with serve_in_thread(settings(light_repository)) as server, InferenceClient(f"127.0.0.1:{server.port}") as client:
        for name in names:
            path = light_repository / name / "1" / "model.onnx"
            graph = onnx.load(path)
            initializers = {i.name for i in graph.graph.initializer}
            feeds = {
                x.name: Runner.generate_dummy_data(x, seed=0, name=name, random=False)
                for x in graph.graph.input
                if x.name not in initializers
            }
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
            config = client.model_config(name)
            assert config.max_batch_size == 0 and COMPLETED_KEY in config.parameters, name
            assert [i.name for i in config.input] == list(feeds) and list(config.input[0].dims) == [1, 3, 224, 224]
            served = client.infer(name, feeds)
            for output, array in expected.items():
                np.testing.assert_array_equal(served[output], array, err_msg=name)


def test_a_batching_graph_gets_the_default_max_batch_size_and_merged_batches(tmp_path):
    repository = tmp_path / "repo"
    gemm_graph(repository / "gemm" / "1" / "model.onnx")
    session = ort.InferenceSession(str(repository / "gemm" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(2)
    rows = [rng.standard_normal((int(rng.integers(1, 4)), 4)).astype(np.float32) for _ in range(200)]
    with serve_in_thread(settings(repository, default_max_batch_size=8)) as server:
        url = f"127.0.0.1:{server.port}"
        client = triton.InferenceServerClient(url)
        config = client.get_model_config("gemm").config
        assert config.max_batch_size == 8 and config.HasField("dynamic_batching")
        assert [(i.name, list(i.dims)) for i in config.input] == [("x", [4])]
        assert [(o.name, list(o.dims)) for o in config.output] == [("y", [3])]
        assert config.parameters[COMPLETED_KEY].string_value == "max_batch_size, dynamic_batching, input, output"
        with InferenceClient(url) as ours, ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda x: ours.infer("gemm", {"x": x})["y"], rows))
        for x, y in zip(rows, answers):
            np.testing.assert_array_equal(y, session.run(None, {"x": x})[0])
        stats = client.get_inference_statistics("gemm").model_stats[0]
        assert stats.execution_count < stats.inference_count  # requests were merged into shared runs
        client.close()


def test_a_partial_config_is_completed_and_strict_mode_refuses_it(tmp_path, capsys):
    from deepr.cli import main

    repository = tmp_path / "repo"
    gemm_graph(repository / "named" / "1" / "model.onnx")
    (repository / "named" / "config.pbtxt").write_text('name: "named"\nmax_batch_size: 2\n')
    gemm_graph(repository / "bare" / "1" / "model.onnx", batch=1)
    with serve_in_thread(settings(repository)) as server:
        url = f"127.0.0.1:{server.port}"
        with InferenceClient(url) as client:
            named, bare = client.model_config("named"), client.model_config("bare")
        assert named.max_batch_size == 2 and named.parameters[COMPLETED_KEY].string_value == "input, output"
        assert bare.max_batch_size == 0 and list(bare.input[0].dims) == [1, 4]  # a fixed batch: the whole shape
        capsys.readouterr()
        assert main(["repository", "--url", url]) == 0
        listing = capsys.readouterr().out
        assert "named  version 1   READY       config completed from the graph: input, output" in listing, listing
    with serve_in_thread(settings(repository, strict_model_config=True)) as server:
        with InferenceClient(f"127.0.0.1:{server.port}") as client:
            index = {m.name: m for m in client.repository_index()}
    assert index["named"].state == index["bare"].state == "UNAVAILABLE"
    assert "--strict-model-config" in index["named"].reason and "gives no inputs and outputs" in index["bare"].reason


def test_a_repository_that_is_one_models_files_is_that_model(tmp_path):
    """KServe's layout for modelFormat onnx: model.onnx at the top of /mnt/models."""
    models = tmp_path / "models"
    gemm_graph(models / "model.onnx")
    with (
        serve_in_thread(settings(models, model_name="scorer")) as server,
        InferenceClient(f"127.0.0.1:{server.port}") as client,
    ):
        assert [m.name for m in client.repository_index()] == ["scorer"]
        answer = client.infer("scorer", {"x": np.ones((2, 4), np.float32)})["y"]
    assert answer.shape == (2, 3)
    with serve_in_thread(settings(models)) as server, InferenceClient(f"127.0.0.1:{server.port}") as client:
        assert [m.name for m in client.repository_index()] == ["models"]  # named after its folder


def test_triton_reshape_is_implemented_as_triton_defines_it(tmp_path):
    """Clients send (batch, 784) to a graph of (batch, 1, 28, 28), and get (batch, 1352) back
    from its (batch, 2, 26, 26), as the config's reshape fields say."""
    repository = tmp_path / "repo"
    path = conv_graph(repository / "conv" / "1" / "model.onnx")
    (repository / "conv" / "config.pbtxt").write_text(
        'name: "conv"\nmax_batch_size: 8\n'
        'input [{ name: "images" data_type: TYPE_FP32 dims: [784] reshape: { shape: [1, 28, 28] } }]\n'
        'output [{ name: "maps" data_type: TYPE_FP32 dims: [1352] reshape: { shape: [2, 26, 26] } }]\n'
    )
    pictures = np.random.default_rng(3).random((3, 1, 28, 28), dtype=np.float32)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": pictures})[0]
    with serve_in_thread(settings(repository)) as server:
        client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
        x = triton.InferInput("images", [3, 784], "FP32")
        x.set_data_from_numpy(pictures.reshape(3, 784))
        answer = client.infer("conv", [x]).as_numpy("maps")
        client.close()
    assert answer.shape == (3, 1352)
    np.testing.assert_array_equal(answer, expected.reshape(3, 1352))


@pytest.mark.parametrize(
    "field, expected",
    [
        ("sequence_batching { max_sequence_idle_microseconds: 5000000 }", "sequence_batching: stateful sequences"),
        (
            'ensemble_scheduling { step [{ model_name: "a" model_version: -1 }] }',
            'an ensemble needs both platform "ensemble" and ensemble_scheduling',
        ),
        ("model_transaction_policy { decoupled: true }", "model_transaction_policy.decoupled true: decoupled models"),
        ('platform: "tensorflow_savedmodel"', 'platform "tensorflow_savedmodel": deepr serves ONNX graphs'),
        ('backend: "pytorch"', 'backend "pytorch": deepr serves ONNX graphs'),
        ('batch_input [{ kind: BATCH_ELEMENT_COUNT target_name: "n" data_type: TYPE_FP32 }]', "batch_input:"),
        ('model_operations { op_library_filename: "libops.so" }', "model_operations: custom operator libraries"),
        ("dynamic_batching { priority_levels: 2 }", "dynamic_batching.priority_levels 2: request priorities"),
        (
            "dynamic_batching { default_queue_policy { default_timeout_microseconds: 100 } }",
            "default_timeout_microseconds 100: queue timeouts are not implemented",
        ),
        ('input [{ name: "x" data_type: TYPE_FP32 dims: [4] optional: true }]', "input.optional true: optional inputs"),
        ("max_batch_sizes: 4", "max_batch_sizes: not a field of Triton's model configuration"),
    ],
)
def test_a_field_deepr_does_not_implement_is_refused_by_name(tmp_path, field, expected):
    repository = tmp_path / "repo"
    gemm_graph(repository / "m" / "1" / "model.onnx")
    gemm_graph(repository / "good" / "1" / "model.onnx")
    (repository / "m" / "config.pbtxt").write_text(f'name: "m"\n{field}\n')
    with serve_in_thread(settings(repository)) as server, InferenceClient(f"127.0.0.1:{server.port}") as client:
        index = {m.name: m for m in client.repository_index()}
        assert index["good"].state == "READY"
        with pytest.raises(InferenceServerError, match="not ready"):
            client.infer("m", {"x": np.ones((1, 4), np.float32)})
    assert index["m"].state == "UNAVAILABLE" and expected in index["m"].reason, index["m"].reason


@pytest.mark.parametrize(
    "field, warning",
    [
        (
            "instance_group [{ kind: KIND_GPU count: 1 }]",
            "instance_group.kind: KIND_GPU on a host where onnxruntime's CUDA provider cannot run",
        ),
        (
            'optimization { execution_accelerators { gpu_execution_accelerator: [{ name: "tensorrt" }] } }',
            "optimization.execution_accelerators: execution accelerators (TensorRT, OpenVINO) are not used",
        ),
        ("response_cache { enable: true }", "response_cache.enable: there is no response cache"),
        ('metric_tags { key: "team" value: "vision" }', "metric_tags: metrics carry no tags"),
    ],
)
def test_a_field_that_is_safe_to_ignore_is_served_with_a_warning(tmp_path, caplog, field, warning):
    if TEST_DEVICE == "cuda" and "KIND_GPU" in field:
        pytest.skip("KIND_GPU is honoured where CUDA runs")
    repository = tmp_path / "repo"
    gemm_graph(repository / "m" / "1" / "model.onnx")
    (repository / "m" / "config.pbtxt").write_text(f'name: "m"\n{field}\n')
    with caplog.at_level(logging.WARNING, logger="serving.server.repository"):
        with serve_in_thread(settings(repository)) as server, InferenceClient(f"127.0.0.1:{server.port}") as client:
            assert client.is_model_ready("m")
            assert client.infer("m", {"x": np.ones((1, 4), np.float32)})["y"].shape == (1, 3)
    assert sum(warning in r.getMessage() for r in caplog.records) == 1, [r.getMessage() for r in caplog.records]
