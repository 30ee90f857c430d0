"""Neural style transfer driven from outside the graph: scipy's L-BFGS asks an exported
`<model>_style` graph (deepr export vgg19 --style) for the loss and its gradient, in-process
or through a V2 server, and the generated picture starts from the content picture.

    loss = LocalStyleLoss("models/vgg19_style/1/model.onnx")
    result = transfer_style(loss, "portrait.jpg", "starry_night.jpg", iterations=20)
    result.picture.save("styled.png")
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image
from scipy.optimize import fmin_l_bfgs_b

from serving.client import DEFAULT_URL, InferenceClient
from serving.protocol.preprocessing import ImageInput, ImagePreprocessing, load_image, to_picture
from serving.protocol.schema import LOSS_WEIGHTS_KEY, PREPROCESSING_KEY
from serving.runtime.providers import open_session

__all__ = ["LocalStyleLoss", "ServedStyleLoss", "StyleResult", "transfer_style"]


class StyleLoss(Protocol):
    input_shape: tuple[int, int, int]
    preprocess: ImagePreprocessing

    def __call__(
        self, combination: np.ndarray, content: np.ndarray, style: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]: ...


class LocalStyleLoss:
    def __init__(self, onnx_file: str | Path, *, device: str = "auto") -> None:
        self.session = open_session(onnx_file, device, what="style-transfer graph")
        meta = self.session.get_modelmeta().custom_metadata_map
        if LOSS_WEIGHTS_KEY not in meta:
            raise ValueError(f"{onnx_file} is not a style-transfer graph: export one with `deepr export vgg19 --style`")
        self.input_shape = tuple(self.session.get_inputs()[0].shape[1:])
        self.preprocess = ImagePreprocessing.from_json(meta[PREPROCESSING_KEY])
        self.loss_weights = json.loads(meta[LOSS_WEIGHTS_KEY])

    def __call__(
        self, combination: np.ndarray, content: np.ndarray, style: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        loss, gradient = self.session.run(
            ["loss", "gradient"], {"combination": combination, "content": content, "style": style}
        )
        return loss.reshape(-1), gradient


class ServedStyleLoss:
    def __init__(
        self, model: str = "vgg19_style", *, url: str = DEFAULT_URL, client: InferenceClient | None = None
    ) -> None:
        self.model = model
        self.client = client or InferenceClient(url)
        config = self.client.model_config(model)
        if [i.name for i in config.input] != ["combination", "content", "style"]:
            raise ValueError(
                f"model {model!r} is not a style-transfer graph (export one with `deepr export vgg19 --style`)"
            )
        self.input_shape = tuple(config.input[0].dims)
        self.preprocess = ImagePreprocessing.from_json(config.parameters[PREPROCESSING_KEY].string_value)

    def __call__(
        self, combination: np.ndarray, content: np.ndarray, style: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        out = self.client.infer(self.model, {"combination": combination, "content": content, "style": style})
        return out["loss"].reshape(-1), out["gradient"]


@dataclass
class StyleResult:
    picture: Image.Image
    losses: list[float] = field(default_factory=list)
    """The loss after each iteration (the first entry: before any)."""


def transfer_style(
    loss: StyleLoss,
    content: ImageInput,
    style: ImageInput,
    *,
    iterations: int = 20,
    evaluations_per_iteration: int = 20,
    on_iteration=None,
) -> StyleResult:
    """The tutorial's loop: `iterations` runs of L-BFGS, each allowed
    `evaluations_per_iteration` loss evaluations, starting from the content picture."""
    content_x = loss.preprocess([load_image(content)])
    style_x = loss.preprocess([load_image(style)])
    shape = content_x.shape

    def evaluate(flat: np.ndarray) -> tuple[float, np.ndarray]:
        value, gradient = loss(flat.reshape(shape).astype(np.float32), content_x, style_x)
        return float(value[0]), gradient.reshape(-1).astype(np.float64)

    x = content_x.reshape(-1).astype(np.float64)
    result = StyleResult(picture=to_picture(content_x[0], loss.preprocess), losses=[evaluate(x)[0]])
    for i in range(iterations):
        x, value, _ = fmin_l_bfgs_b(evaluate, x, maxfun=evaluations_per_iteration)
        result.losses.append(float(value))
        if on_iteration is not None:
            on_iteration(i, float(value))
    result.picture = to_picture(x.reshape(shape)[0].astype(np.float32), loss.preprocess)
    return result
