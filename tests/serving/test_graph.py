"""The one graph interface the tasks run on: an exported graph read locally and served
gives the same facts from the same text (metadata and config carry one encoding), served
batches beyond max_batch_size go in parts, a task refuses a graph of another kind, and a
served graph closes only the connection it opened."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest

from serving.client import InferenceClient
from serving.protocol.schema import CHARSET_KEY, LAYER_KEY, LAYERS_KEY
from serving.server.grpc.server import serve_in_thread
from serving.server.settings import ServerSettings
from serving.tasks.features import FeatureExtractor, LocalFeatureExtractor, ServedFeatureExtractor
from serving.tasks.graph import LocalGraph, ServedGraph

GRAPHS = {"mnist_convnet_gradcam": LAYER_KEY, "mnist_convnet_features": LAYERS_KEY, "char_lstm_step": CHARSET_KEY}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from exporters import UntrainedWeightsWarning
    from exporters.features import export_features
    from exporters.text_generation import export_char_step
    from exporters.zoo_gradcam import export_gradcam

    repository = tmp_path_factory.mktemp("graphs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWeightsWarning)
        export_gradcam("mnist_convnet", repository)
        export_features("mnist_convnet", repository, max_batch_size=4)
        export_char_step(repository)
    return repository


@pytest.fixture(scope="module")
def url(exported):
    with serve_in_thread(ServerSettings(repository=exported, host="127.0.0.1", port=0, device="cpu")) as server:
        yield f"127.0.0.1:{server.port}"


@pytest.mark.parametrize("model", sorted(GRAPHS))
def test_local_and_served_graphs_read_the_same_facts_from_the_same_text(exported, url, model):
    onnx_file = exported / model / "1" / "model.onnx"
    metadata = {p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}
    assert GRAPHS[model] in metadata
    local = LocalGraph(onnx_file, device="cpu")
    with ServedGraph(model, url=url) as served:
        assert (served.inputs, served.outputs) == (local.inputs, local.outputs)
        for key, text in metadata.items():
            assert served.config.parameters[key].string_value == text, key
            assert served.fact(key) == local.fact(key), key
        with pytest.raises(KeyError, match="no deepr.nothing"):
            served.fact("deepr.nothing")
    assert local.fact("deepr.nothing", None) is None


def test_served_batches_beyond_max_batch_size_go_in_parts_and_equal_local(exported, url):
    rng = np.random.default_rng(0)
    batch = rng.random((10, 1, 28, 28), dtype=np.float32)  # max_batch_size 4: three requests
    local = LocalFeatureExtractor(exported / "mnist_convnet_features" / "1" / "model.onnx", device="cpu")
    with ServedFeatureExtractor("mnist_convnet_features", url=url) as served:
        layer = served.layers[-1]
        theirs = served(batch, [layer])[layer]
    mine = local(batch, [layer])[layer]
    assert theirs.shape[0] == 10
    np.testing.assert_allclose(theirs, mine, atol=1e-5)


def test_a_task_refuses_a_graph_of_another_kind_and_names_the_export(exported, url):
    with pytest.raises(
        ValueError, match="model 'char_lstm_step' is not a feature graph: .*deepr export NAME --features"
    ):
        FeatureExtractor(ServedGraph("char_lstm_step", url=url))
    with pytest.raises(ValueError, match="model.onnx is not a feature graph"):
        LocalFeatureExtractor(exported / "char_lstm_step" / "1" / "model.onnx", device="cpu")


def test_a_served_graph_closes_only_the_connection_it_opened(url):
    with InferenceClient(url) as client:
        ServedGraph("char_lstm_step", client=client).close()
        assert client.is_server_live()  # the caller's client stays open
    own = ServedGraph("char_lstm_step", url=url)
    own.close()
    with pytest.raises(ValueError, match="closed channel"):
        own.client.is_server_live()
