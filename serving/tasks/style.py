"""Neural style transfer driven from outside the graph: scipy's L-BFGS asks an exported
`<model>_style` graph (deepr export vgg19 --style) for the loss and its gradient, in-process
or through a V2 server, and the generated picture starts from the content picture.

    loss = LocalStyleLoss("models/vgg19_style/1/model.onnx")
    result = transfer_style(loss, "portrait.jpg", "starry_night.jpg", iterations=20)
    result.picture.save("styled.png")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.optimize import fmin_l_bfgs_b

from serving.client import DEFAULT_URL, InferenceClient
from serving.protocol.preprocessing import ImageInput, ImagePreprocessing, load_image, to_picture
from serving.protocol.schema import LOSS_WEIGHTS_KEY, PREPROCESSING_KEY
from serving.tasks.graph import Graph, GraphTask, LocalGraph, ServedGraph

__all__ = ["StyleLoss", "LocalStyleLoss", "ServedStyleLoss", "StyleResult", "transfer_style"]


class StyleLoss(GraphTask):
    """The style-transfer loss of a combination picture and its gradient, from an exported
    style graph (content and style pictures as further inputs)."""

    kind = "style-transfer graph"
    export_hint = "deepr export vgg19 --style"

    def __init__(self, graph: Graph) -> None:
        super().__init__(graph)
        if graph.inputs != ["combination", "content", "style"]:
            raise self.refuse()
        self.input_shape = graph.item_shape("combination")
        self.preprocess = ImagePreprocessing.from_json(graph.fact(PREPROCESSING_KEY))
        self.loss_weights = graph.fact(LOSS_WEIGHTS_KEY, None)

    def __call__(
        self, combination: np.ndarray, content: np.ndarray, style: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        out = self.graph.run(
            {"combination": combination, "content": content, "style": style}, outputs=["loss", "gradient"]
        )
        return out["loss"].reshape(-1), out["gradient"]


class LocalStyleLoss(StyleLoss):
    def __init__(self, onnx_file: str | Path, *, device: str = "auto") -> None:
        super().__init__(LocalGraph(onnx_file, device=device, what="style-transfer graph"))


class ServedStyleLoss(StyleLoss):
    def __init__(
        self, model: str = "vgg19_style", *, url: str = DEFAULT_URL, client: InferenceClient | None = None
    ) -> None:
        super().__init__(ServedGraph(model, url=url, client=client))


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
