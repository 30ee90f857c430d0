"""The tutorial's MNIST models: a dense net and a small convnet with and without pooling."""

from __future__ import annotations

from torch import nn

from .._registry import register_model
from ..layers import Conv2D, Dense, Flatten, MaxPooling2D, keras_sequential

# The default recipes train on the 10,000 real MNIST digits deepr embeds (8,000 of them;
# 2,000 are held out): the tutorial's 5 epochs of RMSprop, at a smaller batch than its 128
# for an eighth of its data, with a cosine decay so the last steps settle. Held out:
# 95.4% (dense), 98.2% (convnet), 97.9% (no pooling) in 1, 10 and 46 s on 2 cores.
_DIGITS_RECIPE = {"epochs": 5, "batch_size": 64, "optimizer": "rmsprop", "lr": 2e-3, "lr_schedule": "cosine"}


@register_model(
    "mnist_dense", section="Architectures / Problems", input_shape=(784,), dataset="digits", recipe=_DIGITS_RECIPE
)
def mnist_dense() -> nn.Sequential:
    """Dense 784 -> 512 relu -> 10 softmax on flattened 28x28 digits."""
    return keras_sequential(
        Dense(28 * 28, 512, activation="relu"),
        Dense(512, 10, activation="softmax"),
    )


def _mnist_convnet(pooling: bool) -> nn.Sequential:
    def pool() -> list[nn.Module]:
        return [MaxPooling2D(2)] if pooling else []

    # 28 -> conv 26 -> pool 13 -> conv 11 -> pool 5 -> conv 3; without pooling 28 -> 26 -> 24 -> 22.
    side = 3 if pooling else 22
    return keras_sequential(
        Conv2D(1, 32, 3, activation="relu"),
        *pool(),
        Conv2D(32, 64, 3, activation="relu"),
        *pool(),
        Conv2D(64, 64, 3, activation="relu"),
        Flatten(),
        Dense(64 * side * side, 64, activation="relu"),
        Dense(64, 10, activation="softmax"),
    )


@register_model(
    "mnist_convnet", section="Convolutional Layers", input_shape=(1, 28, 28), dataset="digits", recipe=_DIGITS_RECIPE
)
def mnist_convnet() -> nn.Sequential:
    """Convnet conv32-pool-conv64-pool-conv64, dense 64, dense 10 softmax."""
    return _mnist_convnet(pooling=True)


@register_model(
    "mnist_convnet_nopool",
    section="Convolutional Layers",
    input_shape=(1, 28, 28),
    dataset="digits",
    recipe=_DIGITS_RECIPE,
)
def mnist_convnet_nopool() -> nn.Sequential:
    """The same convnet without max pooling: 20x the parameters, most in the first dense layer."""
    return _mnist_convnet(pooling=False)
