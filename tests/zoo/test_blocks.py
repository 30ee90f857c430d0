"""The building blocks any model can use: batch normalization, separable convolutions,
dropout and weight penalties, counted as Keras counts them and exported faithfully."""

import numpy as np
import pytest
import torch

import zoo
from exporters import export_onnx, validate_onnx
from zoo.layers import (
    BatchNormalization,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    MaxPooling2D,
    SeparableConv2D,
    keras_sequential,
    regularization_loss,
    regularizer_l1,
    regularizer_l1_l2,
    regularizer_l2,
)


def block_model():
    return keras_sequential(
        Conv2D(3, 32, 3, activation="relu"),
        BatchNormalization(32),
        SeparableConv2D(32, 64, 3, activation="relu"),
        MaxPooling2D(2),
        Flatten(),
        Dense(64 * 5 * 5, 32, activation="relu"),
        BatchNormalization(32),
        Dropout(0.5),
        Dense(32, 10, activation="softmax"),
    )


def test_keras_counts():
    s = zoo.summary(block_model(), (3, 14, 14))
    # Keras: SeparableConv2D = 32*3*3 (depthwise) + 32*64 + 64 (pointwise); BatchNormalization = 4 per feature.
    assert [(r.name, r.keras_params) for r in s.rows] == [
        ("conv2d", 896),
        ("batch_normalization", 128),
        ("separable_conv2d", 2_400),
        ("max_pooling2d", 0),
        ("flatten", 0),
        ("dense", 51_232),
        ("batch_normalization_1", 128),
        ("dropout", 0),
        ("dense_1", 330),
    ]
    assert s.rows[1].params == 64  # gamma and beta; the moving statistics are buffers
    assert "Keras counts the moving mean and variance as non-trainable parameters" in str(s)


def test_blocks_export_with_trained_statistics(tmp_path):
    model = block_model()
    model.train()
    with torch.no_grad():
        for _ in range(5):  # move the running statistics away from their initial values
            model(torch.randn(16, 3, 14, 14) * 3 + 1)
    path = tmp_path / "blocks.onnx"
    export_onnx(model, (torch.zeros(2, 3, 14, 14),), path)
    cases = [(np.random.default_rng(b).normal(1, 3, (b, 3, 14, 14)).astype(np.float32),) for b in (1, 6)]
    report = validate_onnx(model, path, cases)
    assert report.max_abs_diff < 1e-5


@pytest.mark.parametrize(
    "regularizer, expected",
    [
        (regularizer_l1(0.01), 0.01 * 10.0),
        (regularizer_l2(0.001), 0.001 * 10.0),
        (regularizer_l1_l2(0.1, 0.2), 0.1 * 10 + 0.2 * 10),
    ],
)
def test_penalties_add_to_the_loss(regularizer, expected):
    layer = Dense(5, 2, kernel_regularizer=regularizer)
    with torch.no_grad():
        layer.weight.fill_(1.0)  # 10 weights of 1: sum |w| = sum w^2 = 10
        layer.bias.fill_(5.0)  # biases are not penalised
    with torch.no_grad():
        assert float(regularization_loss(keras_sequential(layer, Dense(2, 1)))) == pytest.approx(expected)


def test_l2_penalty_changes_training(tmp_path):
    from zoo.datasets import load_dataset
    from zoo.recipes import TrainConfig, train

    data = load_dataset("words_multi_hot")
    plain = train(TrainConfig.for_model("imdb_dense", out=tmp_path / "a", epochs=3, progress=False), data=data)
    l2 = train(TrainConfig.for_model("imdb_dense_l2", out=tmp_path / "b", epochs=3, progress=False), data=data)
    norm = lambda m: float(m[0].weight.detach().norm())  # noqa: E731
    assert norm(l2.model) < norm(plain.model)
    assert l2.history["loss"][0] > plain.history["loss"][0]  # the penalty is part of the reported loss
