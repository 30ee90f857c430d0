"""A graph that answers other rows than it was given, or other dims than its config says,
fails each request of its run with INTERNAL naming the model and output: merged requests are
split back by row offsets, so any other answer would hand one client another's rows. Found at
load where a run can be made there (warm-up, a probe of completed configs), and at
`deepr import`."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as triton
from onnx import TensorProto, helper

from exporters.repository import add_to_repository, serving_config
from serving.protocol.generated import model_config_pb2 as mc
from serving.server.grpc.server import serve_in_thread
from serving.server.settings import ServerSettings

ALL = 2**62


def _save(path: Path, nodes, x_shape, y_shape, initializers=()) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)
    graph = helper.make_graph(nodes, path.stem, [x], [y], list(initializers))
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


def shifted_graph(path: Path, width: int | str = "width") -> Path:
    """y = [x[1:]; x]: 2N-1 rows for N, the first of them another request's when merged."""
    constants = [
        helper.make_tensor(name, TensorProto.INT64, [1], [value])
        for name, value in (("one", 1), ("all", ALL), ("zero", 0))
    ]
    nodes = [
        helper.make_node("Slice", ["x", "one", "all", "zero"], ["tail"]),
        helper.make_node("Concat", ["tail", "x"], ["y"], axis=0),
    ]
    return _save(path, nodes, ["batch", width], ["rows", width], constants)


def wider_graph(path: Path) -> Path:
    """y = [x, x[:, :1]]: one column more than it was given."""
    constants = [helper.make_tensor(name, TensorProto.INT64, [1], [value]) for name, value in (("zero", 0), ("one", 1))]
    nodes = [
        helper.make_node("Slice", ["x", "zero", "one", "one"], ["first"]),
        helper.make_node("Concat", ["x", "first"], ["y"], axis=1),
    ]
    return _save(path, nodes, ["batch", "width"], ["batch", "columns"], constants)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    repository = root / "repository"
    config = serving_config("shifted", 8)
    config.dynamic_batching.max_queue_delay_microseconds = 2_000_000  # two clients are merged
    config.dynamic_batching.preferred_batch_size.append(2)
    add_to_repository(repository, config, shifted_graph(root / "shifted.onnx"))
    config = serving_config("wider", 8)
    config.input.add(name="x", data_type=mc.TYPE_FP32, dims=[-1])
    config.output.add(name="y", data_type=mc.TYPE_FP32, dims=[3])
    add_to_repository(repository, config, wider_graph(root / "wider.onnx"))
    add_to_repository(repository, serving_config("shifted_fixed", 8), shifted_graph(root / "fixed.onnx", 4))
    bare = repository / "shifted_bare" / "1"
    bare.mkdir(parents=True)
    shifted_graph(bare / "model.onnx")
    settings = ServerSettings(repository=repository, host="127.0.0.1", port=0, metrics_port=-1, http_port=-1)
    settings.device = "cpu"
    settings.strict_readiness = False
    with serve_in_thread(settings) as running:
        yield running


def _infer(url: str, model: str, rows: np.ndarray) -> np.ndarray | triton.InferenceServerException:
    client = triton.InferenceServerClient(url, channel_args=[("grpc.use_local_subchannel_pool", 1)])
    x = triton.InferInput("x", list(rows.shape), "FP32")
    x.set_data_from_numpy(rows)
    try:
        return client.infer(model, [x]).as_numpy("y")
    except triton.InferenceServerException as error:
        return error
    finally:
        client.close()


def test_merged_requests_never_get_each_others_rows(server):
    url = f"127.0.0.1:{server.port}"
    answers: dict[int, object] = {}

    def ask(value: int) -> None:
        answers[value] = _infer(url, "shifted", np.full((1, 4), value, np.float32))

    threads = [threading.Thread(target=ask, args=(v,)) for v in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for value, answer in answers.items():
        assert isinstance(answer, triton.InferenceServerException), f"client {value} was handed rows {answer}"
        assert answer.status() == "StatusCode.INTERNAL"
        # a run of 2 for requests of 1 row each: they were merged
        assert "model 'shifted'" in answer.message() and "output 'y' has 3 rows for a run of 2" in answer.message()


def test_a_lone_request_given_other_rows_fails_too(server):
    answer = _infer(f"127.0.0.1:{server.port}", "shifted", np.ones((2, 4), np.float32))
    assert isinstance(answer, triton.InferenceServerException), answer
    assert answer.status() == "StatusCode.INTERNAL" and "3 rows for a run of 2" in answer.message()


def test_an_output_wider_than_its_config_says_fails(server):
    answer = _infer(f"127.0.0.1:{server.port}", "wider", np.ones((1, 4), np.float32))
    assert isinstance(answer, triton.InferenceServerException), f"served as {answer.shape}"
    assert answer.status() == "StatusCode.INTERNAL"
    assert "output 'y' has dims [5] past the batch; its config says [3]" in answer.message()


@pytest.mark.parametrize("model", ["shifted_fixed", "shifted_bare"])
def test_a_model_whose_rows_are_wrong_at_load_is_not_served(server, model):
    """Warmed at load (fixed dims), or probed at load (a bare file, batched by completion)."""
    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert index[model].state == "UNAVAILABLE"
    assert "output 'y' has 3 rows for a run of 2" in index[model].reason


def test_deepr_import_refuses_a_graph_that_answers_other_rows(tmp_path):
    from zoo.onnx.errors import OnnxImportError
    from zoo.onnx.store import import_onnx

    path = shifted_graph(tmp_path / "shifted.onnx", 4)
    with pytest.raises(OnnxImportError, match=r"output 'y' has 3 rows for a batch of 2"):
        import_onnx(path, "shifted", home=tmp_path / "home")


def test_deepr_import_refuses_a_tiny_file_declaring_a_huge_input_before_allocating(tmp_path):
    """162 bytes declaring a 1x3x8192x8192 picture: refused from its shapes, nothing run."""
    import resource

    from zoo.onnx.errors import OnnxImportError
    from zoo.onnx.store import import_onnx

    path = _save(
        tmp_path / "huge.onnx", [helper.make_node("Relu", ["x"], ["y"])], [1, 3, 8192, 8192], [1, 3, 8192, 8192]
    )
    assert path.stat().st_size < 300
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(OnnxImportError, match=r"would hold over 268,435,456 values"):
        import_onnx(path, "huge", home=tmp_path / "home")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: nothing of 800 MB allocated


def test_deepr_import_refuses_a_negative_dimension(tmp_path):
    from zoo.onnx.errors import OnnxImportError
    from zoo.onnx.store import import_onnx

    path = _save(tmp_path / "negative.onnx", [helper.make_node("Relu", ["x"], ["y"])], ["batch", -5], ["batch", -5])
    with pytest.raises(OnnxImportError, match=r"a dimension of -5"):
        import_onnx(path, "negative", home=tmp_path / "home")
