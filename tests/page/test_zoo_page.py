"""The zoo page in Debian's chromium, against a real `deepr serve` on loopback with models
trained on the embedded data: the classes it shows are the gRPC answer, the Grad-CAM
overlay and the activation grid are drawn, two temperatures give two texts, bad input
reads as a message.

DEEPR_SCREENSHOTS=docs/img keeps a screenshot of each view there (the README shows them).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them with apt)",
)
SCREENSHOTS = os.environ.get("DEEPR_SCREENSHOTS")


@pytest.fixture(scope="module")
def zoo_repository(tmp_path_factory, repository, catsdogs_repository, trained_convnet, trained_chars) -> Path:
    """The session's trained mnist_convnet with its Grad-CAM and feature graphs, the cats-vs-dogs
    convnet and the character model's generation graph, each trained briefly on embedded data."""
    from exporters.features import export_features
    from exporters.text_generation import export_char_generation
    from exporters.zoo_gradcam import export_gradcam

    repo = tmp_path_factory.mktemp("page") / "repo"
    shutil.copytree(repository, repo)
    convnet = trained_convnet.out / "weights.pt"
    export_gradcam("mnist_convnet", repo, weights=convnet)
    export_features("mnist_convnet", repo, weights=convnet)
    shutil.copytree(catsdogs_repository, repo, dirs_exist_ok=True)
    export_char_generation(repo, weights=trained_chars.out / "weights.pt")
    return repo


@pytest.fixture(scope="module")
def server(zoo_repository, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "deepr",
                "serve",
                "--repository",
                str(zoo_repository),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--http-port",
                "0",
                "--metrics-port",
                "-1",
            ],
            stderr=sink,
            stdout=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + 120
    while not (match := re.search(r"HTTP/REST on 127\.0\.0\.1:(\d+)", log.read_text())):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    grpc_port = re.search(r"serving .* on 127\.0\.0\.1:(\d+)", log.read_text()).group(1)
    yield {"http": f"http://127.0.0.1:{match.group(1)}", "grpc": f"127.0.0.1:{grpc_port}", "proc": proc, "log": log}
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def pictures(tmp_path_factory, digits) -> dict[str, Path]:
    from skimage import data

    folder = tmp_path_factory.mktemp("pictures")
    sevens = [x for x, y in digits.test if y == 7]
    ink = (255 - sevens[0][0].numpy() * 255).astype(np.uint8)  # dark ink on white paper, as people write
    Image.fromarray(ink).resize((112, 112), Image.Resampling.BILINEAR).save(folder / "seven.png")
    Image.fromarray(data.chelsea()).save(folder / "chelsea.png")
    (folder / "notes.txt").write_text("not a picture")
    return {"digit": folder / "seven.png", "photo": folder / "chelsea.png", "text": folder / "notes.txt"}


def wait_for(browser, script: str, timeout: float = 60.0):
    """The value of `script` once truthy, or the page's error message in the failure."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = browser.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    error = browser.execute_script(
        "return document.getElementById('error').hidden ? '' : document.getElementById('error').textContent"
    )
    raise AssertionError(f"the page did not get there within {timeout} s: {script}; page error: {error!r}")


def open_model(browser, server, model: str) -> None:
    browser.get(f"{server['http']}/?model={model}")
    wait_for(browser, f"return document.getElementById('model-name').textContent === {model!r}")


def painted(browser, canvas: str) -> float:
    """Share of the canvas's pixels that are neither white nor empty."""
    return browser.execute_script(
        """const c = document.getElementById(arguments[0]);
           if (!c.width) return 0;
           const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
           let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i + 3] && (d[i] < 250 || d[i + 1] < 250 || d[i + 2] < 250)) n++;
           return n / (c.width * c.height);""",
        canvas,
    )


def hot(browser, canvas: str) -> float:
    """Share of the canvas's pixels where red clearly dominates blue (the top of the jet map)."""
    return browser.execute_script(
        """const c = document.getElementById(arguments[0]);
           const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
           let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] > d[i + 2] + 30) n++;
           return n / (c.width * c.height);""",
        canvas,
    )


def coloured(browser, canvas: str) -> float:
    """Share of the canvas's pixels in clear colour (not white paper, grey or black ink)."""
    return browser.execute_script(
        """const c = document.getElementById(arguments[0]);
           const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
           let n = 0; for (let i = 0; i < d.length; i += 4)
             if (Math.max(d[i], d[i + 1], d[i + 2]) - Math.min(d[i], d[i + 1], d[i + 2]) > 60) n++;
           return n / (c.width * c.height);""",
        canvas,
    )


def screenshot(browser, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(Path(SCREENSHOTS) / f"page-{name}.png"))


def top_classes(browser) -> list[str]:
    wait_for(browser, "return document.querySelectorAll('#top-classes li').length > 0")
    return browser.execute_script("return [...document.querySelectorAll('#top-classes .name')].map(e => e.textContent)")


@pytest.mark.parametrize("model, picture", [("mnist_convnet", "digit"), ("catsdogs_convnet", "photo")])
def test_a_picture_is_classified_as_grpc_classifies_it_with_its_gradcam(browser, server, pictures, model, picture):
    from serving.tasks.classify import classify

    open_model(browser, server, model)
    assert "tutorial:" in browser.find_element("id", "model-section").text
    browser.find_element("id", "picture-file").send_keys(str(pictures[picture]))
    shown = top_classes(browser)
    expected = classify([pictures[picture]], model, url=server["grpc"], top_k=5)[0]
    assert shown[0] == expected[0].label, (shown, expected)
    wait_for(browser, "return !document.getElementById('gradcam-figure').hidden")
    wait_for(browser, "return document.getElementById('gradcam').dataset.classIndex !== undefined")
    assert painted(browser, "gradcam") > 0.5
    assert hot(browser, "gradcam") > 0.01  # the heatmap's peak shows: red over the picture
    if picture == "digit":
        assert browser.find_element("id", "picture-note").text == "inverted: dark on light"
    stats = browser.find_element("id", "model-stats").text
    assert re.search(r"requests\s+[1-9]", stats), stats
    screenshot(browser, f"classify-{model}")


def test_a_model_that_decodes_pictures_gets_the_file(browser, server, pictures):
    """catsdogs_convnet_encoded and its Grad-CAM graph take picture files: the page sends the
    file's bytes, and the server's decode gives the classes gRPC's client gets for the same file."""
    from serving.tasks.classify import classify

    open_model(browser, server, "catsdogs_convnet_encoded")
    browser.find_element("id", "picture-file").send_keys(str(pictures["photo"]))
    shown = top_classes(browser)
    expected = classify([pictures["photo"]], "catsdogs_convnet_encoded", url=server["grpc"], top_k=5)[0]
    assert shown == [p.label for p in expected]
    scores = browser.execute_script(
        "return [...document.querySelectorAll('#top-classes .score')].map(e => e.textContent)"
    )
    assert scores == [f"{p.score:.4f}" for p in expected]
    wait_for(browser, "return !document.getElementById('gradcam-figure').hidden")
    wait_for(browser, "return document.getElementById('gradcam').dataset.classIndex !== undefined")
    assert painted(browser, "gradcam") > 0.5


def test_activations_of_a_layer(browser, server, pictures):
    open_model(browser, server, "mnist_convnet_features")
    browser.find_element("id", "features-file").send_keys(str(pictures["digit"]))
    wait_for(browser, "return document.getElementById('activations-note').textContent.includes('channels')")
    assert painted(browser, "activations") > 0.3
    first = browser.find_element("id", "activations-note").text
    browser.execute_script(
        "const s = document.getElementById('layer'); s.selectedIndex = 2; s.dispatchEvent(new Event('change'))"
    )
    wait_for(browser, f"return document.getElementById('activations-note').textContent !== {first!r}")
    screenshot(browser, "activations")


def test_two_temperatures_give_two_texts(browser, server):
    open_model(browser, server, "char_lstm_generate")
    browser.execute_script(
        "for (const b of document.querySelectorAll('.temperature')) b.checked = ['0.2', '1.2'].includes(b.value);"
        "document.getElementById('length').value = 120;"
    )
    browser.find_element("id", "sample").click()
    texts = wait_for(
        browser,
        "const t = [...document.querySelectorAll('#texts pre')].map(p => p.textContent); return t.length === 2 && t",
    )
    headings = browser.execute_script("return [...document.querySelectorAll('#texts h4')].map(h => h.textContent)")
    assert headings == ["temperature 0.2", "temperature 1.2"]
    prompt = browser.find_element("id", "prompt").get_attribute("value")
    assert all(t.startswith(prompt) and len(t) == len(prompt) + 120 for t in texts) and texts[0] != texts[1]
    screenshot(browser, "text")


def test_bad_input_reads_as_a_message(browser, server, pictures):
    open_model(browser, server, "mnist_convnet")
    browser.find_element("id", "picture-file").send_keys(str(pictures["text"]))
    message = wait_for(browser, "const e = document.getElementById('error'); return !e.hidden && e.textContent")
    assert "notes.txt is not a picture the browser can read" in message
    browser.get(f"{server['http']}/?model=no_such_model")
    message = wait_for(browser, "const e = document.getElementById('error'); return !e.hidden && e.textContent")
    assert "unknown model: 'no_such_model' is not found" in message
    screenshot(browser, "error")


def test_the_page_frames_pictures_as_the_python_clients_do(browser, server, tmp_path):
    """The page's JavaScript framing (framing.js: the paper flattened, lines and boxes left out,
    the digit fitted into 20x20 and centred by its mass) gives the pixels Python's gives, within
    one grey level, and the same placement, on drawn digits, digits on every kind of paper,
    pages with no digit, and MNIST's own."""
    import base64
    import io
    import json

    from drawn_digits import write_drawn_digits
    from paper_digits import write_paper_digits

    from zoo.datasets import DIGIT_PREPROCESSING, load_mnist_10k

    open_model(browser, server, "mnist_convnet")
    files = [path for path, _ in write_drawn_digits(tmp_path, typed_per_font=1, pen_per_digit=2)]
    files += [path for path, _, label in write_paper_digits(tmp_path / "paper") if label is None or label % 3 == 0]
    for i, digit in enumerate(load_mnist_10k()[0][:10]):
        Image.fromarray(255 - digit).resize((140, 140), Image.Resampling.BILINEAR).save(tmp_path / f"mnist_{i}.png")
        files.append(tmp_path / f"mnist_{i}.png")
    spec = json.dumps({**json.loads(DIGIT_PREPROCESSING.to_json()), "pixels": "uint8"})
    worst = 0
    for path in files:
        data_url = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
        shown = browser.execute_async_script(
            """const [url, spec, done] = arguments;
               const image = new Image();
               image.onload = () => {
                 const config = {parameters: {"deepr.preprocessing": {string_value: spec}}, max_batch_size: 1,
                                 input: [{name: "images", dims: ["28", "28", "1"]}]};
                 const {tensor, placement} = window.deepr.preprocess(image, config);
                 done({pixels: Array.from(tensor.data), placement});
               };
               image.src = url;""",
            data_url,
            spec,
        )
        picture = Image.open(io.BytesIO(path.read_bytes()))
        expected = DIGIT_PREPROCESSING.resized(picture)[..., 0].astype(int)
        page = np.asarray(shown["pixels"]).reshape(28, 28)
        worst = max(worst, int(np.abs(page - expected).max()))
        placement = DIGIT_PREPROCESSING.placement(picture)
        if placement is None:  # no digit found: both resize the whole page
            assert shown["placement"] is None, path
            continue
        assert shown["placement"]["left"] == placement.left and shown["placement"]["top"] == placement.top, path
        assert shown["placement"]["x0"] == placement.x0 and shown["placement"]["y0"] == placement.y0, path
    assert worst <= 1, f"the page's pixels differ from Python's by up to {worst} grey levels"


def test_a_digit_drawn_on_the_pad_is_classified_when_the_pen_lifts_and_explained(browser, server):
    """Mouse strokes on the pad (pointer events: a touch draws the same way) of a 7: when the pen
    lifts, the page shows the class gRPC gives the same drawing, with its Grad-CAM over it."""
    import base64
    import io

    from selenium.webdriver.common.action_chains import ActionChains

    from serving.tasks.classify import classify

    open_model(browser, server, "mnist_convnet")
    pad = browser.find_element("id", "pad")
    assert pad.is_displayed()
    size = pad.size["width"]
    strokes = [[(0.3, 0.25), (0.7, 0.25), (0.5, 0.5), (0.42, 0.8)]]  # a seven, in the pad's fractions
    actions = ActionChains(browser)
    for stroke in strokes:
        (x, y), rest = stroke[0], stroke[1:]
        actions.move_to_element_with_offset(pad, int((x - 0.5) * size), int((y - 0.5) * size)).click_and_hold()
        for (x1, y1), (x0, y0) in zip(rest, stroke):
            for step in range(1, 6):  # small moves, as a hand makes them
                fx, fy = x0 + (x1 - x0) * step / 5, y0 + (y1 - y0) * step / 5
                actions.move_to_element_with_offset(pad, int((fx - 0.5) * size), int((fy - 0.5) * size))
        actions.release()
    actions.perform()
    shown = top_classes(browser)
    drawing = browser.execute_script("return document.getElementById('pad').toDataURL('image/png')")
    picture = Image.open(io.BytesIO(base64.b64decode(drawing.split(",", 1)[1])))
    expected = classify([picture], "mnist_convnet", url=server["grpc"], top_k=5)[0]
    assert shown[0] == expected[0].label == "7", (shown, expected)
    wait_for(browser, "return !document.getElementById('gradcam-figure').hidden")
    wait_for(browser, "return document.getElementById('gradcam').dataset.classIndex !== undefined")
    screenshot(browser, "draw-mnist_convnet")
    assert hot(browser, "gradcam") > 0.005  # red where the model looked
    # the heat is on the drawing, not a wash over the page: most of the paper keeps its white
    assert coloured(browser, "gradcam") < 0.35


def test_a_stopped_server_reads_as_a_message(browser, server, pictures):
    """Last in the module: it stops the server."""
    open_model(browser, server, "mnist_convnet")
    server["proc"].send_signal(signal.SIGTERM)
    server["proc"].wait(timeout=30)
    browser.find_element("id", "picture-file").send_keys(str(pictures["digit"]))
    message = wait_for(browser, "const e = document.getElementById('error'); return !e.hidden && e.textContent")
    assert "the server does not answer" in message
