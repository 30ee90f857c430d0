"""Ensembles in Triton's configuration (platform "ensemble", ensemble_scheduling), driven by
NVIDIA's tritonclient: a picture-scaling graph in front of the trained MNIST convnet, served as
one name, each step batched as its own model is; wiring mistakes and failing steps named."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
import tritonclient.http as triton_http
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from conftest import TEST_DEVICE
from serving.server.grpc.server import serve_in_thread
from serving.server.settings import ServerSettings

ENSEMBLE = """name: "digits"
platform: "ensemble"
max_batch_size: 8
input [ { name: "PIXELS" data_type: TYPE_UINT8 dims: [ 28, 28 ] } ]
output [ { name: "PROBABILITIES" data_type: TYPE_FP32 dims: [ 10 ] } ]
ensemble_scheduling {
  step [
    {
      model_name: "scale_pixels"
      model_version: -1
      input_map { key: "pixels" value: "PIXELS" }
      output_map { key: "images" value: "scaled" }
    },
    {
      model_name: "mnist_convnet"
      model_version: -1
      input_map { key: "images" value: "scaled" }
      output_map { key: "probabilities" value: "PROBABILITIES" }
    }
  ]
}
"""


def scale_pixels_graph() -> onnx.ModelProto:
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28] in [0, 1]: what a client's camera sends,
    as the convnet takes it."""
    nodes = [
        helper.make_node("Cast", ["pixels"], ["floats"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["floats", "full_scale"], ["divided"]),
        helper.make_node("Unsqueeze", ["divided", "channel_axis"], ["images"]),
    ]
    graph = helper.make_graph(
        nodes,
        "scale_pixels",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["batch", 28, 28])],
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        initializer=[
            helper.make_tensor("full_scale", TensorProto.FLOAT, [], [255.0]),
            helper.make_tensor("channel_axis", TensorProto.INT64, [1], [1]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17)], ir_version=8)


@pytest.fixture()
def ensemble_repository(repository, tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(repository / "mnist_convnet", root / "mnist_convnet")
    (root / "scale_pixels" / "1").mkdir(parents=True)
    onnx.save(scale_pixels_graph(), root / "scale_pixels" / "1" / "model.onnx")
    (root / "scale_pixels" / "config.pbtxt").write_text('name: "scale_pixels"\nmax_batch_size: 8\n')
    (root / "digits" / "1").mkdir(parents=True)  # Triton's layout: an empty version folder
    (root / "digits" / "config.pbtxt").write_text(ENSEMBLE)
    return root


def pixels(n: int) -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def expected(repository, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(
        str(repository / "mnist_convnet" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return session.run(None, {"images": (x.astype(np.float32) / 255.0)[:, None]})[0]


def inferences(client, model: str) -> int:
    return sum(s.inference_count for s in client.get_inference_statistics(model).model_stats)


def settings(root) -> ServerSettings:
    return ServerSettings(repository=root, host="127.0.0.1", port=0, http_port=0, device=TEST_DEVICE)


def test_an_ensemble_answers_as_its_steps_would(ensemble_repository):
    x = pixels(5)
    with serve_in_thread(settings(ensemble_repository)) as server:
        client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
        metadata = client.get_model_metadata("digits")
        assert metadata.platform == "ensemble" and [i.datatype for i in metadata.inputs] == ["UINT8"]
        before = inferences(client, "mnist_convnet")
        tensor = triton.InferInput("PIXELS", list(x.shape), "UINT8")
        tensor.set_data_from_numpy(x)
        got = client.infer("digits", [tensor]).as_numpy("PROBABILITIES")
        np.testing.assert_allclose(got, expected(ensemble_repository, x), rtol=1e-5, atol=1e-6)
        assert inferences(client, "mnist_convnet") - before == 5  # the step ran as mnist_convnet's request
        top = client.infer("digits", [tensor], outputs=[triton.InferRequestedOutput("PROBABILITIES", class_count=1)])
        assert top.as_numpy("PROBABILITIES").shape == (5, 1)
        http = triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
        web = triton_http.InferInput("PIXELS", list(x.shape), "UINT8")
        web.set_data_from_numpy(x)
        np.testing.assert_allclose(http.infer("digits", [web]).as_numpy("PROBABILITIES"), got, rtol=1e-6)
        http.close()
        client.close()


def test_a_failing_step_is_named(ensemble_repository):
    with serve_in_thread(settings(ensemble_repository)) as server:
        client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
        client.unload_model("mnist_convnet")
        tensor = triton.InferInput("PIXELS", [2, 28, 28], "UINT8")
        tensor.set_data_from_numpy(pixels(2))
        with pytest.raises(
            InferenceServerException, match="ensemble 'digits' step 2 .model 'mnist_convnet'.: .*not ready"
        ) as err:
            client.infer("digits", [tensor])
        assert err.value.status() == "StatusCode.UNAVAILABLE"
        client.close()


@pytest.mark.parametrize(
    "change, reason",
    [
        (
            ('value: "scaled" }\n      output_map', 'value: "nowhere" }\n      output_map'),
            "takes ['nowhere'], which neither",
        ),
        (('value: "PROBABILITIES"', 'value: "other"'), "no step makes the output(s) ['PROBABILITIES']"),
        (('platform: "ensemble"', 'platform: "onnxruntime_onnx"'), 'needs both platform "ensemble"'),
        (('model_name: "scale_pixels"', 'model_name: "digits"'), "step 1 names the ensemble itself"),
    ],
)
def test_wiring_mistakes_leave_the_ensemble_unavailable_with_the_reason(ensemble_repository, change, reason):
    config = ensemble_repository / "digits" / "config.pbtxt"
    text = config.read_text()
    assert change[0] in text
    config.write_text(text.replace(change[0], change[1], 1))
    with serve_in_thread(settings(ensemble_repository)) as server:
        client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
        index = {m.name: m for m in client.get_model_repository_index().models}
        assert index["digits"].state == "UNAVAILABLE" and reason in index["digits"].reason, index["digits"].reason
        assert index["mnist_convnet"].state == "READY"
        client.close()


def test_ensembles_naming_each_other_in_a_circle_are_refused_not_recursed(ensemble_repository):
    """Two ensembles whose steps name each other load (neither knows the other's steps), and a
    request is refused once they nest past the bound, instead of recursing without end."""
    for name, other in (("ping", "pong"), ("pong", "ping")):
        (ensemble_repository / name).mkdir()
        (ensemble_repository / name / "config.pbtxt").write_text(
            f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: 8\n'
            'input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
            'output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
            f'ensemble_scheduling {{ step [ {{ model_name: "{other}" model_version: -1 '
            'input_map { key: "X" value: "X" } output_map { key: "Y" value: "Y" } } ] }\n'
        )
    with serve_in_thread(settings(ensemble_repository)) as server:
        client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
        tensor = triton.InferInput("X", [1, 1], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 1), np.float32))
        with pytest.raises(InferenceServerException, match="at most 8 nest") as err:
            client.infer("ping", [tensor])
        assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert client.is_server_live()
        client.close()


def test_an_ensemble_of_picture_files_decodes_them_in_its_step(repository, trained_convnet, tmp_path):
    """Triton's image-ensemble shape: BYTES picture files in, classes out; the step that takes
    picture files (deepr export --pixels encoded) gets them decoded as its own requests are."""
    import io

    from PIL import Image

    from exporters import export_model

    root = tmp_path / "repo"
    export_model("mnist_convnet", root, weights=trained_convnet.out / "weights.pt", pixels="encoded")
    (root / "pictures" / "1").mkdir(parents=True)
    (root / "pictures" / "config.pbtxt").write_text(
        'name: "pictures"\nplatform: "ensemble"\nmax_batch_size: 8\n'
        'input [ { name: "INPUT" data_type: TYPE_STRING dims: [ 1 ] } ]\n'
        'output [ { name: "OUTPUT" data_type: TYPE_FP32 dims: [ 10 ] } ]\n'
        'ensemble_scheduling { step [ { model_name: "mnist_convnet_encoded" model_version: -1 '
        'input_map { key: "images" value: "INPUT" } output_map { key: "probabilities" value: "OUTPUT" } } ] }\n'
    )
    files = []
    for seed in range(3):
        png = io.BytesIO()
        Image.fromarray(pixels(3)[seed]).save(png, format="PNG")
        files.append(png.getvalue())
    batch = np.array([[f] for f in files], dtype=np.object_)
    with serve_in_thread(settings(root)) as server:
        client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
        (spec,) = client.get_model_metadata("mnist_convnet_encoded").inputs
        tensor = triton.InferInput("INPUT", [3, 1], "BYTES")
        tensor.set_data_from_numpy(batch)
        through_ensemble = client.infer("pictures", [tensor]).as_numpy("OUTPUT")
        direct = triton.InferInput(spec.name, [3, 1], "BYTES")
        direct.set_data_from_numpy(batch)
        alone = client.infer("mnist_convnet_encoded", [direct]).as_numpy("probabilities")
        client.close()
    np.testing.assert_allclose(through_ensemble, alone, rtol=1e-6)
    assert through_ensemble.shape == (3, 10)
