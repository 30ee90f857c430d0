"""Training by the default recipes on the embedded digits, measured on the held-out split."""

import json

import pytest
import torch

import zoo
from zoo.recipes import TrainConfig, evaluate, load_weights, train


def test_convnet_default_recipe_beats_97_percent_held_out(trained_convnet, digits):
    assert trained_convnet.test["accuracy"] >= 0.97, trained_convnet.test
    # The stored weights give the same held-out number when evaluated afresh.
    model = load_weights(zoo.get_model("mnist_convnet"), trained_convnet.out / "weights.pt")
    again = evaluate(model, digits.test)
    assert again["accuracy"] == pytest.approx(trained_convnet.test["accuracy"])


def test_run_directory_holds_history_curves_and_metrics(trained_convnet):
    out = trained_convnet.out
    history = json.loads((out / "history.json").read_text())
    epochs = TrainConfig.for_model("mnist_convnet", out=out).epochs
    assert all(len(history[k]) == epochs for k in ("loss", "accuracy", "val_loss", "val_accuracy"))
    assert history["loss"][-1] < history["loss"][0]
    assert (out / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] == trained_convnet.test["accuracy"]
    assert json.loads((out / "config.json").read_text())["model"] == "mnist_convnet"


def test_same_seed_same_weights(tmp_path, digits):
    def run(seed, sub):
        cfg = TrainConfig.for_model("mnist_dense", out=tmp_path / sub, epochs=1, seed=seed, progress=False)
        return train(cfg, data=digits).model.state_dict()

    a, b, c = run(3, "a"), run(3, "b"), run(4, "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_dense_default_recipe_beats_chance(tmp_path, digits):
    result = train(TrainConfig.for_model("mnist_dense", out=tmp_path, progress=False), data=digits)
    assert result.test["accuracy"] > 0.9  # chance is 0.1


@pytest.mark.parametrize(
    "override, message",
    [
        ({"optimizer": "adagrad"}, "unknown optimizer 'adagrad'"),
        ({"epochs": 0}, "epochs and batch_size must be >= 1"),
        ({"validation_split": 1.0}, "validation_split must be in"),
        ({"lr": -1.0}, "lr must be > 0"),
    ],
)
def test_bad_config_is_explained(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.for_model("mnist_dense", out=tmp_path, **override)


def test_progress_off_a_terminal_is_one_line_per_epoch(tmp_path, digits, capsys):
    """A log (a service, a container, CI) gets a summary per epoch, not a bar redrawn per batch."""
    train(TrainConfig.for_model("mnist_dense", out=tmp_path, epochs=2, progress=True), data=digits)
    err = capsys.readouterr().err  # captured: not a terminal
    lines = [line for line in err.splitlines() if line.startswith("mnist_dense: epoch")]
    assert [line.split()[2] for line in lines] == ["1/2", "2/2"], err
    assert "\r" not in err and "batch/s" not in err and "it/s" not in err
