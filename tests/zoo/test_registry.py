import pytest

import zoo
from zoo import register_model


def test_list_models_filters_with_patterns():
    assert zoo.list_models("mnist_conv*") == ["mnist_convnet", "mnist_convnet_nopool"]
    assert zoo.list_models(exclude="*nopool") == ["mnist_convnet", "mnist_dense"]


def test_duplicate_name_is_rejected():
    with pytest.raises(ValueError, match="already registered"):
        register_model("mnist_dense", section="x", input_shape=(1,), dataset="digits")(lambda: None)


def test_unknown_model_names_the_known_ones():
    with pytest.raises(KeyError, match="known models: mnist_convnet, mnist_convnet_nopool, mnist_dense"):
        zoo.get_model("mnist_resnet")


@pytest.mark.parametrize("name", zoo.list_models())
def test_spec_is_complete(name):
    spec = zoo.get_model_spec(name)
    assert spec.section and spec.description and spec.dataset
    assert all(isinstance(d, int) and d > 0 for d in spec.input_shape)
