"""Every registered model reproduces the parameter counts of the tutorial's summary() tables."""

import pytest

import zoo

# Per-layer "Param #" column of the tutorial's tables, in order; Total = their sum.
TUTORIAL_PARAMS = {
    "mnist_dense": [401_920, 5_130],
    "mnist_convnet": [320, 0, 18_496, 0, 36_928, 0, 36_928, 650],
    "mnist_convnet_nopool": [320, 18_496, 36_928, 0, 1_982_528, 650],
}
TUTORIAL_TOTALS = {"mnist_dense": 407_050, "mnist_convnet": 93_322, "mnist_convnet_nopool": 2_038_922}


def test_every_model_has_tutorial_counts():
    assert sorted(TUTORIAL_PARAMS) == zoo.list_models()


@pytest.mark.parametrize("name", zoo.list_models())
def test_summary_matches_tutorial(name):
    spec = zoo.get_model_spec(name)
    s = zoo.summary(zoo.get_model(name), spec.input_shape, name=name)
    assert [row.params for row in s.rows] == TUTORIAL_PARAMS[name]
    assert s.total_params == TUTORIAL_TOTALS[name]
    assert s.trainable_params == TUTORIAL_TOTALS[name]
    assert s.non_trainable_params == 0
    text = str(s)
    assert f"Total params: {TUTORIAL_TOTALS[name]:,}" in text
    assert "Non-trainable params: 0" in text


def test_summary_rows_use_keras_names_and_shapes():
    s = zoo.summary(zoo.get_model("mnist_convnet"), (1, 28, 28))
    assert [(r.name, r.layer_type) for r in s.rows][:3] == [
        ("conv2d", "Conv2D"),
        ("max_pooling2d", "MaxPooling2D"),
        ("conv2d_1", "Conv2D"),
    ]
    assert s.rows[0].output_shape == (None, 32, 26, 26)
    assert s.rows[5].output_shape == (None, 576)
