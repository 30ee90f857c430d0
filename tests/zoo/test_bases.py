"""Pretrained bases under Keras' layer names, and the tutorial's transfer-learning counts.

No test needs ImageNet weights: the mapping onto torchvision's modules is checked
with random torchvision weights, and the weights loader is checked offline.
"""

import urllib.error

import numpy as np
import pytest
import torch
from torchvision import models as tvm

import zoo
from zoo.pretrained import PretrainedWeightsError
from zoo.transfer import freeze, unfreeze


def test_vgg16_base_at_150():
    base = zoo.get_model("vgg16", include_top=False, input_shape=(150, 150, 3))
    s = zoo.model_summary("vgg16", model=base)
    assert s.total_params == 14_714_688
    assert s.rows[-1].name == "block5_pool" and s.rows[-1].output_shape == (None, 512, 4, 4)
    assert [r.name for r in s.rows][:3] == ["block1_conv1", "block1_conv2", "block1_pool"]


def test_full_vgg_counts_match_keras():
    assert sum(p.numel() for p in zoo.get_model("vgg16").parameters()) == 138_357_544
    assert sum(p.numel() for p in zoo.get_model("vgg19", include_top=False).parameters()) == 20_024_384


def test_inception_and_resnet_names():
    inception = dict(zoo.get_model("inception_v3", include_top=False).named_children())
    assert [f"mixed{i}" for i in range(11)] == [k for k in inception if k.startswith("mixed")]
    resnet = dict(zoo.get_model("resnet50", include_top=False).named_children())
    assert list(resnet)[-4:] == ["layer1", "layer2", "layer3", "layer4"]


@pytest.mark.parametrize(
    "name, tv_builder, shape",
    [
        ("vgg16", tvm.vgg16, (2, 3, 64, 64)),
        ("resnet50", tvm.resnet50, (2, 3, 64, 64)),
        ("inception_v3", tvm.inception_v3, (2, 3, 96, 96)),
    ],
)
def test_weights_file_maps_onto_torchvision(tmp_path, name, tv_builder, shape):
    torch.manual_seed(0)
    reference = tv_builder(
        weights=None, **({"aux_logits": True, "init_weights": True} if name == "inception_v3" else {})
    ).eval()
    torch.save(reference.state_dict(), tmp_path / "weights.pth")
    ours = zoo.get_model(
        name, include_top=False, input_shape=(shape[2], shape[3], 3), weights=str(tmp_path / "weights.pth")
    ).eval()
    x = torch.rand(shape)
    with torch.no_grad():
        if name == "vgg16":
            want = reference.features(x)
        else:  # torchvision runs every child up to the pooling head
            want = x
            for key, module in reference.named_children():
                if key in ("avgpool", "dropout", "fc"):
                    break
                if key != "AuxLogits":
                    want = module(want)
        np.testing.assert_allclose(ours(x).numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


def test_imagenet_weights_offline_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(tvm._api, "load_state_dict_from_url", offline, raising=False)
    with pytest.raises(
        PretrainedWeightsError, match=r"vgg16-397923af.pth are not in .*checkpoints and could not be downloaded"
    ):
        zoo.get_model("vgg16", weights="imagenet")
    with pytest.raises(PretrainedWeightsError, match="no weights file at"):
        zoo.get_model("vgg16", weights=str(tmp_path / "missing.pth"))


def test_transfer_model_counts_as_the_tutorial():
    s = zoo.model_summary("catsdogs_vgg16")
    assert [(r.name, r.layer_type, r.params) for r in s.rows] == [
        ("vgg16", "Model", 14_714_688),
        ("flatten", "Flatten", 0),
        ("dense", "Dense", 2_097_408),
        ("dense_1", "Dense", 257),
    ]
    assert (s.total_params, s.trainable_params, s.non_trainable_params) == (16_812_353, 2_097_665, 14_714_688)
    head = zoo.model_summary("catsdogs_vgg16_head")
    assert head.total_params == 2_097_665


def test_unfreeze_from_block5_conv1():
    model = zoo.get_model("catsdogs_vgg16", unfreeze_from="block5_conv1")
    base_trainable = sum(p.numel() for p in model.vgg16.parameters() if p.requires_grad)
    assert base_trainable == 7_079_424
    freeze(model.vgg16)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2_097_665
    unfreeze(model)
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="no layer named 'block6_conv1'"):
        unfreeze(model, from_="block6_conv1")


def test_fast_recipe_on_stored_features(tmp_path):
    """The plumbing of the fast recipe with random VGG16 weights (not a pretrained result)."""
    from PIL import Image

    from zoo.datasets import load_dataset
    from zoo.recipes import TrainConfig, train

    torch.manual_seed(0)
    torch.save(tvm.vgg16(weights=None).state_dict(), tmp_path / "vgg16.pth")
    for part, count in (("train", 6), ("validation", 2)):
        for cls, level in (("cats", 30), ("dogs", 220)):
            (tmp_path / "pics" / part / cls).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(np.full((40, 50, 3), level, np.uint8)).save(tmp_path / "pics" / part / cls / f"{i}.png")
    data = load_dataset(str(tmp_path / "pics"), like="vgg16_features", base_weights=str(tmp_path / "vgg16.pth"))
    x, y = data.train.tensors
    assert x.shape == (12, 512, 4, 4) and y.tolist().count(1) == 6
    cfg = TrainConfig.for_model("catsdogs_vgg16_head", out=tmp_path / "run", epochs=2, progress=False)
    result = train(cfg, data=data)
    assert (tmp_path / "run" / "weights.pt").is_file() and 0.0 <= result.test["accuracy"] <= 1.0


def test_training_an_imagenet_model_from_scratch_is_refused(tmp_path):
    from zoo.datasets import DatasetError
    from zoo.recipes import TrainConfig, train

    with pytest.raises(DatasetError, match="does not train the ImageNet models from scratch"):
        train(TrainConfig.for_model("vgg16", out=tmp_path, progress=False))
