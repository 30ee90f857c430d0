import pytest

import zoo
from zoo import register_model


def test_list_models_filters_with_patterns():
    assert zoo.list_models("mnist_conv*") == ["mnist_convnet", "mnist_convnet_nopool"]
    assert zoo.list_models("mnist_*", exclude="*nopool") == ["mnist_convnet", "mnist_dense"]
    assert zoo.list_models(["imdb_*lstm", "*_gru"]) == ["imdb_gru", "imdb_lstm"]


def test_duplicate_name_is_rejected():
    with pytest.raises(ValueError, match="already registered"):
        register_model("mnist_dense", section="x", input_shape=(1,), dataset="digits")(lambda: None)


def test_unknown_model_names_the_known_ones():
    with pytest.raises(
        KeyError,
        match="unknown model .mnist_resnet.; known models: catsdogs_convnet, catsdogs_vgg16, catsdogs_vgg16_head, char_lstm, ",
    ):
        zoo.get_model("mnist_resnet")


@pytest.mark.parametrize("name", zoo.list_models())
def test_spec_is_complete(name):
    spec = zoo.get_model_spec(name)
    assert spec.section and spec.description and spec.dataset
    assert all(d is None or (isinstance(d, int) and d > 0) for d in spec.input_shape)
    assert spec.task in ("multiclass", "binary") and spec.input_dtype in ("float32", "int64")
