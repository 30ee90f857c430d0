"""Digits as people bring them, through every path that prepares a picture: framed as MNIST's
digits (or not, with framing "none"), the same pixels from `classify`, `deepr classify`,
the server's decoding of picture files, and Grad-CAM mapped back onto the drawing."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from drawn_digits import drawn_digits
from PIL import Image

from conftest import TEST_DEVICE
from serving.client import InferenceClient
from serving.protocol.preprocessing import ImagePreprocessing
from serving.server.grpc.server import serve_in_thread
from serving.server.settings import ServerSettings
from serving.tasks.classify import classify
from serving.tasks.gradcam import gradcam
from zoo.datasets import DIGIT_PREPROCESSING


@pytest.fixture(scope="module")
def drawn():
    return drawn_digits(typed_per_font=1, pen_per_digit=2)  # 70 pictures


@pytest.fixture(scope="module")
def digit_server(tmp_path_factory, trained_convnet, catsdogs_repository):
    """The session's trained convnet three ways: float32 pixels (framed), picture files decoded
    by the server (framed there), and float32 pixels exported with --framing none (as
    mnist_convnet_unframed); its Grad-CAM graph; and the cats-vs-dogs convnet, a model of
    photos that states no background."""
    from exporters import export_model
    from exporters.zoo_gradcam import export_gradcam

    repo = tmp_path_factory.mktemp("digits")
    weights = trained_convnet.out / "weights.pt"
    export_model("mnist_convnet", repo, weights=weights, max_batch_size=128)
    export_model("mnist_convnet", repo, weights=weights, max_batch_size=128, pixels="encoded")
    export_gradcam("mnist_convnet", repo, weights=weights)
    elsewhere = tmp_path_factory.mktemp("unframed")
    export_model("mnist_convnet", elsewhere, weights=weights, options={"framing": "none"})
    shutil.copytree(elsewhere / "mnist_convnet", repo / "mnist_convnet_unframed")
    config = repo / "mnist_convnet_unframed" / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "mnist_convnet"', 'name: "mnist_convnet_unframed"'))
    shutil.copytree(catsdogs_repository / "catsdogs_convnet", repo / "catsdogs_convnet")
    settings = ServerSettings(repository=repo, host="127.0.0.1", port=0, device=TEST_DEVICE, metrics_port=-1)
    with serve_in_thread(settings) as server:
        yield f"127.0.0.1:{server.port}"


def accuracy(predictions, digits) -> float:
    return float(np.mean([p[0].label == str(d.label) for p, d in zip(predictions, digits)]))


def test_framing_is_written_into_the_config_and_read_back(digit_server):
    with InferenceClient(digit_server) as client:
        framed = ImagePreprocessing.from_json(
            client.model_config("mnist_convnet").parameters["deepr.preprocessing"].string_value
        )
        unframed = ImagePreprocessing.from_json(
            client.model_config("mnist_convnet_unframed").parameters["deepr.preprocessing"].string_value
        )
    assert framed.framing == "mnist" and framed.background == "dark"
    assert unframed.framing is None and unframed.background == "dark"


def test_drawn_digits_are_read_when_framed_as_mnist_and_every_path_agrees(digit_server, drawn):
    """The framing lifts the convnet from reading a drawn page's digit as a blot in a corner to
    reading it; the server decoding the files frames them exactly as the client does."""
    pictures = [d.picture for d in drawn]
    framed = classify(pictures, "mnist_convnet", url=digit_server, top_k=1)
    resized = classify(pictures, "mnist_convnet", url=digit_server, top_k=1, framing="none")
    unframed_export = classify(pictures, "mnist_convnet_unframed", url=digit_server, top_k=1)
    from_files = classify(pictures, "mnist_convnet_encoded", url=digit_server, top_k=1)
    print(f"drawn digits: framed {accuracy(framed, drawn):.1%}, resized {accuracy(resized, drawn):.1%}")
    assert accuracy(framed, drawn) >= 0.85
    assert accuracy(resized, drawn) < accuracy(framed, drawn) - 0.3
    assert [p[0].label for p in unframed_export] == [p[0].label for p in resized]
    assert [p[0].label for p in from_files] == [p[0].label for p in framed]
    np.testing.assert_allclose([p[0].score for p in from_files], [p[0].score for p in framed], atol=2e-6)


def test_gradcam_of_a_framed_digit_lies_on_the_drawing(digit_server, drawn):
    """The heatmap is over the 28x28 frame cut from the picture; mapped back, its heat falls
    where the ink is, and nothing outside the frame's box."""
    digit = drawn[3].picture  # a typed zero, somewhere on its page
    (result,) = gradcam([digit], "mnist_convnet_gradcam", url=digit_server)
    assert result.heatmap.shape == (digit.height, digit.width)
    placement = DIGIT_PREPROCESSING.placement(digit)
    left, top, right, bottom = placement.frame_to_picture((28, 28))
    ys, xs = np.mgrid[: digit.height, : digit.width] + 0.5  # pixel centres
    margin = 1.5  # bilinear sampling reaches a pixel past the frame's edge
    outside = (xs < left - margin) | (xs > right + margin) | (ys < top - margin) | (ys > bottom + margin)
    assert result.heatmap[outside].max() < 1e-6
    ink = np.asarray(digit.convert("L")) < 128
    assert result.heatmap[ink].mean() > 2 * result.heatmap[~outside & ~ink].mean() or result.heatmap[ink].max() > 0.5
    # no rectangle: the heat fades out toward the frame's edge instead of ending at it
    edge = (np.abs(xs - left) < 1) | (np.abs(xs - right) < 1) | (np.abs(ys - top) < 1) | (np.abs(ys - bottom) < 1)
    assert result.heatmap[edge & ~outside].max() < 0.05 < result.heatmap.max()


def test_a_picture_option_a_model_ignores_is_said_once(digit_server, tmp_path, capsys):
    """--invert on a model that states no background, or --framing on one that does not frame,
    does nothing: deepr classify says so, once, where it used to be silent."""
    from deepr.cli import main

    Image.new("L", (28, 28), 255).save(tmp_path / "white.png")
    pictures = [str(tmp_path / "white.png")] * 2
    url = ["--url", digit_server]
    for argv, note, code in [
        (["--model", "mnist_convnet", "--invert", "yes"], None, 3),  # a digit model: inverting is its business
        (["--model", "catsdogs_convnet", "--invert", "yes"], "catsdogs_convnet states no background", 0),
        (["--model", "catsdogs_convnet", "--invert", "auto"], "--invert auto does nothing", 0),
        (["--model", "mnist_convnet_unframed", "--framing", "none"], "--framing none does nothing", 0),
        (["--model", "mnist_convnet", "--framing", "none"], None, 0),
    ]:
        capsys.readouterr()
        assert main(["classify", *pictures, *argv, *url]) == code  # 3: a white page holds no digit
        err = capsys.readouterr().err
        assert (err.count(note) == 1) if note else "note:" not in err, (argv, err)


@pytest.fixture(scope="module")
def paper():
    from paper_digits import paper_digits

    return paper_digits()


def test_digits_on_every_kind_of_paper_are_read(digit_server, paper):
    """Ruled lines, a box, textured grey or yellow paper, a fine pen or a marker: each kind is
    read at least 8 times in 10 by the session's briefly trained convnet (tests/paper_digits.py;
    scripts/benchmarks/paper_digits.py measures the default models on the set)."""
    from paper_digits import KINDS

    digits = [d for d in paper if d.label is not None]
    answers = classify([d.picture for d in digits], "mnist_convnet", url=digit_server, top_k=1)
    per_kind = {
        kind: sum(a[0].label == str(d.label) for a, d in zip(answers, digits) if d.kind == kind) for kind in KINDS
    }
    print(f"paper digits read, per kind of ten: {per_kind}")
    assert min(per_kind.values()) >= 8, per_kind
    from_files = classify([d.picture for d in digits], "mnist_convnet_encoded", url=digit_server, top_k=1)
    assert [a[0].label for a in from_files] == [a[0].label for a in answers]  # the server frames them alike


def test_a_page_with_no_digit_is_said_to_have_none(digit_server, paper, tmp_path, capsys):
    from deepr.cli import main

    empty = [d for d in paper if d.label is None]
    assert all(DIGIT_PREPROCESSING.placement(d.picture) is None for d in empty)  # blank pages and noise
    assert all(DIGIT_PREPROCESSING.placement(d.picture) is not None for d in paper if d.label is not None)
    paths = []
    for i, d in enumerate([empty[0], empty[1], next(d for d in paper if d.label == 7)]):
        paths.append(str(tmp_path / f"{i}.png"))
        d.picture.save(paths[-1])
    capsys.readouterr()
    assert main(["classify", "--model", "mnist_convnet", "--url", digit_server, "--top-k", "1", *paths]) == 3
    lines = capsys.readouterr().out.splitlines()
    assert ["no digit found" in line for line in lines] == [True, True, False], lines
    assert lines[2].split()[1] == "7"


def test_a_huge_picture_is_refused_in_deeprs_words(tmp_path, capsys):
    import warnings

    from deepr.cli import main

    Image.new("L", (12000, 12000), 255).save(tmp_path / "page.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning would fail the test
        code = main(["classify", "--model", "mnist_convnet", "--url", "127.0.0.1:1", str(tmp_path / "page.png")])
    assert code == 2
    error = capsys.readouterr().err
    assert "12000x12000, 144,000,000 pixels, over the limit of 40,000,000" in error and "Decompression" not in error
