"""Convolutional bases with torchvision's architectures and weights, under the Keras layer names
the tutorial uses: VGG16 / VGG19 (block1_conv1 ... block5_pool, fc1, fc2, predictions),
InceptionV3 (mixed0 ... mixed10) and ResNet50 (torchvision's names).

    get_model("vgg16", include_top=False, input_shape=(150, 150, 3))   # 14,714,688 parameters
    get_model("vgg16", weights="imagenet")                              # from TORCH_HOME or a download

`input_shape` is given in Keras' (height, width, channels) order; the models
take NCHW tensors. Without `weights` the layers are freshly initialised.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable

from torch import nn

from serving.protocol.preprocessing import ImagePreprocessing

from .._registry import register_model
from ..datasets.augmentation import TUTORIAL_AUGMENTATION
from ..layers import Conv2D, Dense, Flatten, MaxPooling2D
from ..pretrained import load_pretrained_state

if TYPE_CHECKING:
    from torchvision import models as tvm

__all__ = ["ConvBase", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _imagenet_preprocessing(shape: tuple[int, int, int], inception: bool = False) -> ImagePreprocessing:
    # torchvision's VGG and ResNet weights take ImageNet-normalised RGB; its InceptionV3
    # weights (Google's) take RGB scaled to [-1, 1].
    mean, std = ((0.5,) * 3, (0.5,) * 3) if inception else (IMAGENET_MEAN, IMAGENET_STD)
    return ImagePreprocessing(size=shape[1:], color_mode="RGB", scale=1 / 255, mean=mean, std=std)


_SECTION = "Pretrained DL models"


class ConvBase(nn.Sequential):
    """A pretrained network as one Keras "Model" layer: nested in a bigger model, the
    summary shows it as a single row, as Keras does."""

    keras_type = "Model"

    def __init__(
        self,
        layers: "OrderedDict[str, nn.Module]",
        input_shape: tuple[int, int, int],
        name: str,
        preprocessing: ImagePreprocessing,
    ) -> None:
        super().__init__(layers)
        self.input_shape = input_shape  # (C, H, W)
        self.keras_name = name
        self.preprocessing = preprocessing
        """What the weights expect: resize, 0..1 scaling, then their normalisation."""


def _channels_first(
    input_shape: tuple[int, ...] | None, default: tuple[int, int, int], include_top: bool, name: str
) -> tuple[int, int, int]:
    if input_shape is None:
        return default
    if len(input_shape) != 3 or input_shape[2] != 3:
        raise ValueError(f"{name}: input_shape is (height, width, 3) as in Keras, got {input_shape}")
    height, width, _ = input_shape
    if include_top and (height, width) != default[1:]:
        raise ValueError(
            f"{name}: with include_top=True the input must be {default[1]}x{default[2]}; use include_top=False for {height}x{width}"
        )
    if min(height, width) < 32:
        raise ValueError(f"{name}: input_shape {input_shape} is too small; height and width must be >= 32")
    return (3, height, width)


def _vgg(
    builder: Callable[..., tvm.VGG],
    weights_enum: tvm.WeightsEnum,
    name: str,
    include_top: bool,
    input_shape: tuple[int, ...] | None,
    weights: str | None,
) -> ConvBase:
    shape = _channels_first(input_shape, (3, 224, 224), include_top, name)
    source = builder(weights=None)  # torchvision's architecture
    if weights is not None:
        source.load_state_dict(load_pretrained_state(weights_enum, weights))
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    block, conv = 1, 0
    modules = list(source.features)
    for i, module in enumerate(modules):
        if isinstance(module, nn.Conv2d):
            conv += 1
            layer = Conv2D(module.in_channels, module.out_channels, 3, activation="relu", padding="same")
            layer.load_state_dict(module.state_dict())
            layers[f"block{block}_conv{conv}"] = layer
        elif isinstance(module, nn.MaxPool2d):
            layers[f"block{block}_pool"] = MaxPooling2D(2)
            block, conv = block + 1, 0
    if include_top:
        layers["flatten"] = Flatten()
        linears = [m for m in source.classifier if isinstance(m, nn.Linear)]
        for key, linear, activation in zip(("fc1", "fc2", "predictions"), linears, ("relu", "relu", "softmax")):
            dense = Dense(linear.in_features, linear.out_features, activation=activation)
            dense.load_state_dict(linear.state_dict())
            layers[key] = dense
    return ConvBase(layers, shape, name, _imagenet_preprocessing(shape))


def _pooled_top(fc: nn.Linear) -> "OrderedDict[str, nn.Module]":
    """Global average pooling and the classifier `fc` with Keras' softmax, as the top of a base."""
    predictions = Dense(fc.in_features, fc.out_features, activation="softmax")
    predictions.load_state_dict(fc.state_dict())
    return OrderedDict(avg_pool=nn.AdaptiveAvgPool2d(1), flatten=Flatten(), predictions=predictions)


def _inception_v3(include_top: bool, input_shape: tuple[int, ...] | None, weights: str | None) -> ConvBase:
    shape = _channels_first(input_shape, (3, 299, 299), include_top, "inception_v3")
    # torchvision's ImageNet weights include the auxiliary classifier; it is dropped after loading.
    from torchvision import models as tvm  # here: importing torchvision costs every command 2 s

    source = tvm.inception_v3(weights=None, aux_logits=True, init_weights=weights is None, transform_input=False)
    if weights is not None:
        source.load_state_dict(load_pretrained_state(tvm.Inception_V3_Weights.IMAGENET1K_V1, weights))
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    mixed = 0
    for key, module in source.named_children():
        if key in ("AuxLogits", "avgpool", "dropout", "fc"):
            continue
        if key.startswith("Mixed_"):
            layers[f"mixed{mixed}"] = module
            mixed += 1
        else:
            layers[key] = module
    if include_top:
        layers.update(_pooled_top(source.fc))
    return ConvBase(layers, shape, "inception_v3", _imagenet_preprocessing(shape, inception=True))


def _resnet50(include_top: bool, input_shape: tuple[int, ...] | None, weights: str | None) -> ConvBase:
    shape = _channels_first(input_shape, (3, 224, 224), include_top, "resnet50")
    from torchvision import models as tvm

    source = tvm.resnet50(weights=None)
    if weights is not None:
        source.load_state_dict(load_pretrained_state(tvm.ResNet50_Weights.IMAGENET1K_V2, weights))
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        (key, module) for key, module in source.named_children() if key not in ("avgpool", "fc")
    )
    if include_top:
        layers.update(_pooled_top(source.fc))
    return ConvBase(layers, shape, "resnet50", _imagenet_preprocessing(shape))


_IMAGENET: dict[str, Any] = {"dataset": "imagenet", "recipe": {}}


@register_model("vgg16", section=_SECTION, input_shape=(3, 224, 224), **_IMAGENET)
def vgg16(include_top: bool = True, input_shape: tuple[int, ...] | None = None, weights: str | None = None) -> ConvBase:
    """VGG16: 13 3x3 convolutions in 5 blocks (block1_conv1 ... block5_pool), top fc1-fc2-predictions."""
    from torchvision import models as tvm

    return _vgg(tvm.vgg16, tvm.VGG16_Weights.IMAGENET1K_V1, "vgg16", include_top, input_shape, weights)


@register_model("vgg19", section=_SECTION, input_shape=(3, 224, 224), **_IMAGENET)
def vgg19(include_top: bool = True, input_shape: tuple[int, ...] | None = None, weights: str | None = None) -> ConvBase:
    """VGG19: 16 3x3 convolutions in 5 blocks (block1_conv1 ... block5_pool), top fc1-fc2-predictions."""
    from torchvision import models as tvm

    return _vgg(tvm.vgg19, tvm.VGG19_Weights.IMAGENET1K_V1, "vgg19", include_top, input_shape, weights)


@register_model("inception_v3", section=_SECTION, input_shape=(3, 299, 299), **_IMAGENET)
def inception_v3(
    include_top: bool = True, input_shape: tuple[int, ...] | None = None, weights: str | None = None
) -> ConvBase:
    """InceptionV3 (torchvision's), its 11 mixed blocks named mixed0 ... mixed10 as in Keras."""
    return _inception_v3(include_top, input_shape, weights)


@register_model("resnet50", section=_SECTION, input_shape=(3, 224, 224), **_IMAGENET)
def resnet50(
    include_top: bool = True, input_shape: tuple[int, ...] | None = None, weights: str | None = None
) -> ConvBase:
    """ResNet50 (torchvision's names: conv1 ... layer4), top avg_pool-predictions."""
    return _resnet50(include_top, input_shape, weights)


# -- the tutorial's transfer-learning models on 150x150 pictures ----------------------------------------------------

_PICTURE_SHAPE = (150, 150, 3)
_FINE_TUNE_RECIPE = {
    "epochs": 5,
    "batch_size": 20,
    "optimizer": "rmsprop",
    "lr": 2e-5,
    "base_weights": "imagenet",
    **TUTORIAL_AUGMENTATION,
}


@register_model(
    "catsdogs_vgg16",
    section=_SECTION,
    input_shape=(3, 150, 150),
    dataset="pictures",
    recipe=_FINE_TUNE_RECIPE,
    task="binary",
    export={"output_names": ("probability",)},
)
def catsdogs_vgg16(weights: str | None = None, unfreeze_from: str | None = None) -> nn.Sequential:
    """VGG16 base (frozen; fine-tuned from `unfreeze_from`) + flatten + dense 256 + dense 1 sigmoid."""
    from ..transfer import freeze, unfreeze

    base = vgg16(include_top=False, input_shape=_PICTURE_SHAPE, weights=weights)
    freeze(base)
    if unfreeze_from is not None:
        unfreeze(base, from_=unfreeze_from)
    model = nn.Sequential(
        OrderedDict(
            vgg16=base,
            flatten=Flatten(),
            dense=Dense(512 * 4 * 4, 256, activation="relu"),
            dense_1=Dense(256, 1, activation="sigmoid"),
        )
    )
    model.preprocessing = base.preprocessing  # type: ignore[assignment]
    return model


@register_model(
    "catsdogs_vgg16_head",
    section=_SECTION,
    input_shape=(512, 4, 4),
    dataset="vgg16_features",
    recipe={"epochs": 30, "batch_size": 20, "optimizer": "rmsprop", "lr": 2e-5, "base_weights": "imagenet"},
    task="binary",
    export={"input_names": ("features",), "output_names": ("probability",)},
)
def catsdogs_vgg16_head() -> nn.Sequential:
    """The fast recipe's head on stored VGG16 block5_pool features: dense 256, dropout 0.5, dense 1 sigmoid."""
    from ..layers import Dropout, keras_sequential

    return keras_sequential(
        Flatten(),
        Dense(512 * 4 * 4, 256, activation="relu"),
        Dropout(0.5),
        Dense(256, 1, activation="sigmoid"),
    )
