"""Every registered model reproduces the parameter counts of the tutorial's summary() tables.

For PyTorch's SimpleRNN and LSTM, which keep one more bias vector than Keras,
the table's Keras column (`keras_params`) reproduces the tutorial and the
summary states the difference.
"""

import pytest

import zoo

# Per-layer "Param #" of each model's Keras summary, in order. The tutorial prints the
# MNIST and recurrent tables; the IMDB dense and GRU rows follow the same arithmetic.
KERAS_PARAMS = {
    "mnist_dense": [401_920, 5_130],
    "mnist_convnet": [320, 0, 18_496, 0, 36_928, 0, 36_928, 650],
    "mnist_convnet_nopool": [320, 18_496, 36_928, 0, 1_982_528, 650],
    "imdb_dense": [160_016, 272, 17],
    "imdb_dense_l2": [160_016, 272, 17],
    "imdb_dense_dropout": [160_016, 0, 272, 0, 17],
    "imdb_simple_rnn": [32_000, 1_368, 25],
    "imdb_lstm": [32_000, 5_472, 25],
    "imdb_gru": [32_000, 4_176, 25],
    "char_lstm": [4 * (128 * 70 + 128 * 128 + 128), 128 * 70 + 70],
    "catsdogs_convnet": [896, 0, 18_496, 0, 73_856, 0, 147_584, 0, 0, 0, 3_211_776, 513],
    "catsdogs_vgg16": [14_714_688, 0, 2_097_408, 257],
    "catsdogs_vgg16_head": [0, 2_097_408, 0, 257],
}
# Pretrained bases, with their tops: totals only. VGG matches Keras' applications exactly;
# InceptionV3 and ResNet50 are torchvision's architectures (Keras' InceptionV3 has no
# batch-norm scale, its ResNet50 has conv biases), so their totals are torchvision's.
BASE_TOTALS = {"vgg16": 138_357_544, "vgg19": 143_667_240, "inception_v3": 23_834_568, "resnet50": 25_557_032}
TUTORIAL_TOTALS = {
    "mnist_dense": 407_050,
    "mnist_convnet": 93_322,
    "mnist_convnet_nopool": 2_038_922,
    "imdb_simple_rnn": 33_393,
    "imdb_lstm": 37_497,
    "catsdogs_convnet": 3_453_121,
    "catsdogs_vgg16": 16_812_353,
}
# PyTorch's extra recurrent bias: one vector of `units` per gate.
PYTORCH_EXTRA = {"imdb_simple_rnn": 24, "imdb_lstm": 4 * 24, "char_lstm": 4 * 128}


def test_every_model_has_keras_counts():
    assert sorted([*KERAS_PARAMS, *BASE_TOTALS]) == zoo.list_models()


@pytest.mark.parametrize("name", sorted(BASE_TOTALS))
def test_base_totals(name):
    assert sum(p.numel() for p in zoo.get_model(name).parameters()) == BASE_TOTALS[name]


@pytest.mark.parametrize("name", sorted(KERAS_PARAMS))
def test_summary_matches_keras(name):
    s = zoo.model_summary(name)
    assert [row.keras_params for row in s.rows] == KERAS_PARAMS[name]
    assert s.keras_total_params == sum(KERAS_PARAMS[name]) == TUTORIAL_TOTALS.get(name, s.keras_total_params)
    assert s.total_params == s.keras_total_params + PYTORCH_EXTRA.get(name, 0)
    frozen = 14_714_688 if name == "catsdogs_vgg16" else 0  # its VGG16 base starts frozen
    assert s.non_trainable_params == frozen and s.trainable_params == s.total_params - frozen
    text = str(s)
    assert f"Total params: {s.total_params:,}" in text
    if name in PYTORCH_EXTRA:
        assert "in Keras: PyTorch's recurrent layers keep an input and a recurrent bias vector" in text
    else:
        assert "Note:" not in text


def test_summary_rows_use_keras_names_and_shapes():
    s = zoo.summary(zoo.get_model("mnist_convnet"), (1, 28, 28))
    assert [(r.name, r.layer_type) for r in s.rows][:3] == [
        ("conv2d", "Conv2D"),
        ("max_pooling2d", "MaxPooling2D"),
        ("conv2d_1", "Conv2D"),
    ]
    assert s.rows[0].output_shape == (None, 32, 26, 26)
    assert s.rows[5].output_shape == (None, 576)


def test_free_sequence_length_prints_as_none():
    s = zoo.model_summary("imdb_lstm")
    assert [r.output_shape for r in s.rows] == [(None, None, 32), (None, 24), (None, 1)]
