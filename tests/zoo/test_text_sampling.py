"""The tutorial's loop: after each epoch, text at several temperatures from a seed taken from the corpus."""

import json

import torch

import zoo
from zoo.datasets import load_dataset
from zoo.datasets.chars import CHARSET
from zoo.recipes import TrainConfig, train
from zoo.recipes.text_sampling import window_sample


def test_epoch_samples_at_each_temperature(tmp_path):
    (tmp_path / "corpus.txt").write_text("the cat sat on the mat. the dog sat on the log. " * 60)
    data = load_dataset(str(tmp_path / "corpus.txt"), like="chars")
    cfg = TrainConfig.for_model(
        "char_lstm", out=tmp_path / "run", epochs=2, progress=False, sample_temperatures=(0.2, 1.2), sample_length=30
    )
    train(cfg, data=data)
    samples = json.loads((tmp_path / "run" / "samples.json").read_text())
    assert [s["epoch"] for s in samples] == [1, 2]
    for s in samples:
        assert len(s["seed"]) == 60 and sorted(s["texts"]) == ["0.2", "1.2"]
        assert all(len(t) == 30 and set(t) <= set(CHARSET) for t in s["texts"].values())


def test_window_sampling_is_seeded():
    torch.manual_seed(0)
    model = zoo.get_model("char_lstm")
    a = window_sample(model, "the value of ", 25, 0.7, seed=3)
    assert a == window_sample(model, "the value of ", 25, 0.7, seed=3)
    assert a != window_sample(model, "the value of ", 25, 0.7, seed=4)
