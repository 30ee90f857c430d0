"""Transfer learning as the tutorial does it: freeze a pretrained base, train a head,
then unfreeze the last layers and fine-tune at a low learning rate.

    freeze(model.vgg16)                         # Keras: freeze_weights(conv_base)
    unfreeze(model.vgg16, from_="block5_conv1") # Keras: unfreeze_weights(conv_base, from = "block5_conv1")
"""

from __future__ import annotations

from torch import nn

__all__ = ["freeze", "unfreeze"]


def freeze(module: nn.Module) -> nn.Module:
    """Make every parameter of `module` non-trainable; returns it."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def unfreeze(module: nn.Module, from_: str | None = None) -> nn.Module:
    """Make `module` trainable again: all of it, or only the layer named `from_` and every layer after it.

    `from_` is a layer name as the summary prints it ("block5_conv1"), or a
    dotted path to one ("vgg16.block5_conv1").
    """
    prefix = ""
    if from_ is not None:
        names = [name for name, _ in module.named_modules() if name]
        matches = [name for name in names if name == from_ or name.endswith("." + from_)]
        if not matches:
            raise ValueError(
                f"no layer named {from_!r}; the layers are {[n.rsplit('.', 1)[-1] for n in names if n.count('.') <= 1]}"
            )
        prefix = matches[0] + "."
    reached = from_ is None
    # Parameters come in layer order; everything from the first one of `from_` on is unfrozen.
    for name, p in module.named_parameters():
        reached = reached or name.startswith(prefix)
        if reached:
            p.requires_grad_(True)
    return module
