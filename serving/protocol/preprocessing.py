"""Image preprocessing that travels with a model (ONNX metadata and config.pbtxt).

Only numpy and Pillow: an app that embeds deepr's runtime needs no PyTorch to
turn its pictures into a model's input.
"""

from __future__ import annotations

import io
import json
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from serving.protocol.framing import Placement, mnist_framing

__all__ = [
    "ImagePreprocessing",
    "ImageInput",
    "INVERT_CHOICES",
    "PictureError",
    "load_image",
    "PIXEL_FORMS",
    "PICTURE_FORMATS",
    "FRAMINGS",
    "FRAMING_CHOICES",
    "mnist_frame",
    "mnist_framing",
    "Placement",
    "MAX_PICTURE_PIXELS",
]

PIXEL_FORMS = ("float32", "uint8", "encoded")

PICTURE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
"""What a server decodes for a model that takes picture files: what cameras, phones, scanners
and browsers write. Formats whose header can understate what they hold (an ICO directory
that says 256x256 around a 13000x13000 PNG) or that few clients send are refused by name."""


def _over_the_limit(what: str, pixels: int | None, max_pixels: int) -> str:
    size = f": {pixels:,} pixels" if pixels else ""
    return f"{what}{size}, over the limit of {max_pixels:,} pixels"


def _pixels_in(message: str) -> int | None:
    """The pixel count in Pillow's DecompressionBombError message ("Image size (N pixels) ...")."""
    match = re.search(r"\((\d+) pixels\)", message)
    return int(match.group(1)) if match else None


class PictureError(ValueError):
    """Bytes that are not a picture this preprocessing can take."""


FRAMINGS = ("mnist",)
"""How a model's pictures are framed before it sees them (ImagePreprocessing.framing)."""

FRAMING_CHOICES = ("auto", "none")
"""A client's say over framing: `auto` frames as the model states, `none` resizes the whole picture."""

INVERT_CHOICES = ("auto", "yes", "no")
"""How a picture's polarity is handled for a model that states its background: `auto`
inverts a picture whose border is lighter than mid-grey, `yes` and `no` force it."""

ImageInput = Union[str, Path, Image.Image, np.ndarray]

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


MAX_PICTURE_PIXELS = 40_000_000
"""The largest picture (width x height) deepr reads, by default: a 40-megapixel photo. Pillow
warns of a decompression bomb past 89 million and refuses past twice that; deepr reads the
size from the header and refuses first, in its own words."""


def load_image(source: ImageInput, max_pixels: int = MAX_PICTURE_PIXELS) -> Image.Image:
    """A PIL image from a path, a PIL image or a HxW / HxWxC uint8 array; a file of more than
    `max_pixels` pixels is refused (PictureError) from its header, before it is decoded."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim not in (2, 3):
            raise ValueError(f"an image array must be uint8 HxW or HxWxC, got {source.dtype} with shape {source.shape}")
        return Image.fromarray(source)
    path = Path(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is judged below
            with Image.open(path) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise PictureError(
                        f"{path} is {width}x{height}, {width * height:,} pixels, over the limit of {max_pixels:,}; "
                        "shrink it (a digit needs a few hundred pixels a side)"
                    )
                img.load()
                return img
    except FileNotFoundError:
        raise FileNotFoundError(f"no image file at {path}") from None
    except Image.DecompressionBombError as exc:
        raise PictureError(f"{path}: " + _over_the_limit("a picture", _pixels_in(str(exc)), max_pixels)) from None
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path} is not an image Pillow can read (PNG, JPEG, ...): {exc}") from None


@dataclass(frozen=True)
class ImagePreprocessing:
    """How a picture becomes one example of a model's input.

    The image is converted to `color_mode`, resized to `size`, multiplied by
    `scale`, then normalised by `mean` / `std` per channel when they are given.
    """

    size: tuple[int, int]
    """(height, width) the model takes."""
    color_mode: str = "L"
    """Pillow mode: "L" for one grey channel, "RGB" for three."""
    scale: float = 1 / 255
    """Factor applied to the 0..255 pixel values."""
    mean: tuple[float, ...] | None = None
    """Per-channel mean subtracted after scaling."""
    std: tuple[float, ...] | None = None
    """Per-channel standard deviation divided by after the mean."""
    layout: str = "NCHW"
    """Axis order of the batch the model takes: "NCHW" or "NHWC"."""
    resample: str = "bilinear"
    """Resize filter: nearest, bilinear or bicubic."""
    pixels: str = "float32"
    """What the model takes: "float32" (scaled and normalised here), "uint8" (the resized
    pixels as they are, NHWC; the graph scales and normalises them itself) or "encoded" (the
    picture's file bytes, JPEG, PNG...; the server decodes and resizes them as "uint8" would)."""
    background: str | None = None
    """"dark" for models trained on light marks on a dark ground (MNIST's digits): pictures
    drawn dark on light, as people write and scan them, are inverted first (see `inverts`).
    None: pictures are taken as they are."""
    framing: str | None = None
    """"mnist": after polarity, the picture is framed as MNIST's digits were (see
    `mnist_frame`): ink cut out, fitted into 20x20, centred by its mass in 28x28. None: the
    whole picture is resized."""

    def __post_init__(self) -> None:
        if self.color_mode not in ("L", "RGB"):
            raise ValueError(f"color_mode must be 'L' or 'RGB', got {self.color_mode!r}")
        if self.layout not in ("NCHW", "NHWC"):
            raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {self.layout!r}")
        if self.resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got {self.resample!r}")
        if self.pixels not in PIXEL_FORMS:
            raise ValueError(f"pixels must be one of {PIXEL_FORMS}, got {self.pixels!r}")
        if self.pixels != "float32" and self.layout != "NHWC":
            raise ValueError(f"{self.pixels} pixels travel as NHWC, the layout pictures have")
        if self.background not in (None, "dark"):
            raise ValueError(f"background must be 'dark' or None, got {self.background!r}")
        if self.framing not in (None, *FRAMINGS):
            raise ValueError(f"framing must be one of {FRAMINGS} or None, got {self.framing!r}")
        if self.framing == "mnist" and (self.color_mode != "L" or self.background != "dark"):
            raise ValueError("mnist framing is for grey pictures of light ink on a dark ground (background 'dark')")

    def inverts(self, image: ImageInput, invert: str = "auto") -> bool:
        """Whether `image` is inverted before the model sees it: never for a model with no
        stated background; for a dark-background model, `auto` inverts a picture whose
        outer ring of pixels averages lighter than mid-grey (paper, not the night sky)."""
        if invert not in INVERT_CHOICES:
            raise ValueError(f"invert must be one of {INVERT_CHOICES}, got {invert!r}")
        if self.background is None or invert == "no":
            return False
        if invert == "yes":
            return True
        grey = np.asarray(load_image(image).convert("L"), dtype=np.float32)
        ring = max(1, min(grey.shape) // 10)
        border = np.concatenate(
            [grey[:ring].ravel(), grey[-ring:].ravel(), grey[:, :ring].ravel(), grey[:, -ring:].ravel()]
        )
        return float(border.mean()) > 127.5

    def placement(self, image: ImageInput, invert: str = "auto", framing: str = "auto") -> Placement | None:
        """Where the model's input came from in `image`, for a framed model (None: the
        whole picture resized, or no framing)."""
        if self.framing != "mnist" or framing != "auto":
            return None
        img = load_image(image).convert(self.color_mode)
        if self.inverts(img, invert):
            img = ImageOps.invert(img)
        return mnist_framing(np.asarray(img), self.size)[1]

    @property
    def channels(self) -> int:
        return 1 if self.color_mode == "L" else 3

    def resized(self, image: ImageInput, invert: str = "auto", framing: str = "auto") -> np.ndarray:
        """One picture's (H, W, C) uint8 pixels: converted, inverted where `invert` says,
        framed (`framing` "auto": as the model says; "none": not) or resized."""
        if framing not in FRAMING_CHOICES:
            raise ValueError(f"framing must be one of {FRAMING_CHOICES}, got {framing!r}")
        height, width = self.size
        img = load_image(image).convert(self.color_mode)
        if self.inverts(img, invert):
            img = ImageOps.invert(img)
        if self.framing == "mnist" and framing == "auto":
            return mnist_frame(np.asarray(img), self.size).reshape(height, width, 1)
        if img.size != (width, height):
            img = img.resize((width, height), _RESAMPLE[self.resample])
        return np.asarray(img).reshape(height, width, self.channels)

    def decoded(self, data: bytes, max_pixels: int) -> np.ndarray:
        """The (H, W, C) uint8 pixels of a picture file's bytes, as `resized` makes them;
        PictureError for bytes Pillow cannot read, formats other than PICTURE_FORMATS,
        truncated pictures, and pictures of more than `max_pixels` pixels (checked from the
        header, before anything is decoded)."""
        return self.decoded_with_size(data, max_pixels)[0]

    def decoded_with_size(self, data: bytes, max_pixels: int) -> tuple[np.ndarray, int]:
        """`decoded`, and the pixels the file held (what decoding it cost)."""
        try:
            with Image.open(io.BytesIO(data), formats=PICTURE_FORMATS) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise PictureError(_over_the_limit(f"a {width}x{height} picture", width * height, max_pixels))
                img.load()
                if img.size != (width, height):  # a header that understated what the file holds
                    raise PictureError(f"the picture decoded to {img.size}, not the {width}x{height} its header says")
                return self.resized(img), width * height
        except UnidentifiedImageError:
            raise PictureError(
                f"not a picture in a format the server takes ({', '.join(PICTURE_FORMATS)}): "
                f"{len(data):,} bytes starting {data[:8]!r}"
            ) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            # Pillow's own guard (an error past twice its MAX_IMAGE_PIXELS, a warning past it,
            # raised where warnings are errors) fires before deepr's check can: refused the same way.
            pixels = _pixels_in(str(exc))
            if pixels is not None and pixels > max_pixels:
                raise PictureError(_over_the_limit("a picture", pixels, max_pixels)) from None
            raise PictureError(f"a picture over Pillow's own pixel limit ({exc})") from None
        except (OSError, SyntaxError, ValueError) as exc:
            if isinstance(exc, PictureError):
                raise
            raise PictureError(f"a damaged or truncated picture ({exc})") from None

    def __call__(self, images: Sequence[ImageInput], invert: str = "auto", framing: str = "auto") -> np.ndarray:
        """A batch of `images` as the model takes it: float32 in the model's layout, uint8
        NHWC pixels for graphs that preprocess themselves, or for "encoded" each picture's
        file bytes, (N, 1) BYTES (a path's own bytes; pictures in memory as PNG, lossless).
        `invert`: see `inverts`; `framing`: see `resized` (an encoded model's server inverts
        and frames as "auto" does)."""
        if self.pixels == "encoded":
            if invert != "auto" or framing != "auto":
                raise ValueError(
                    "a model that takes encoded pictures decides their polarity and framing itself: "
                    "invert='auto', framing='auto'"
                )
            return np.array([[_file_bytes(source)] for source in images], dtype=np.object_).reshape(len(images), 1)
        height, width = self.size
        batch = np.empty((len(images), height, width, self.channels), dtype=np.dtype(self.pixels))
        for i, source in enumerate(images):
            batch[i] = self.resized(source, invert, framing)
        if self.pixels == "uint8":
            return batch
        batch *= self.scale
        if self.mean is not None:
            batch -= np.asarray(self.mean, dtype=np.float32)
        if self.std is not None:
            batch /= np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2)) if self.layout == "NCHW" else batch

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ImagePreprocessing":
        fields = json.loads(text)
        for key in ("size", "mean", "std"):
            if fields.get(key) is not None:
                fields[key] = tuple(fields[key])
        return cls(**fields)


def mnist_frame(grey: np.ndarray, size: tuple[int, int] = (28, 28)) -> np.ndarray:
    """A grey picture of light ink on a dark ground (HxW uint8, after polarity) framed as
    MNIST's digits were (serving/protocol/framing.py: the paper flattened, ruled lines and
    boxes left out, the digit's ink fitted into 20x20 and centred by its mass). A picture
    with no digit is resized whole. The zoo page does the same in JavaScript (tested equal
    within one grey level)."""
    return mnist_framing(grey, size)[0]


def _file_bytes(source: ImageInput) -> bytes:
    if isinstance(source, (str, Path)):
        try:
            return Path(source).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"no image file at {source}") from None
    buffer = io.BytesIO()
    load_image(source).save(buffer, format="PNG")
    return buffer.getvalue()


def to_picture(x: np.ndarray, preprocess: ImagePreprocessing) -> Image.Image:
    """A model input (C, H, W) back to a picture: the preprocessing's mean, std and scale
    undone, clipped to 0..255 (for pictures a model has changed: dreams, style transfer)."""
    mean = np.asarray(preprocess.mean or 0.0, np.float32).reshape(-1, 1, 1)
    std = np.asarray(preprocess.std or 1.0, np.float32).reshape(-1, 1, 1)
    pixels = np.clip((x * std + mean) / preprocess.scale, 0, 255).astype(np.uint8).transpose(1, 2, 0)
    return Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
