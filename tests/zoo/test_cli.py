"""The zoo's command line as a user runs it."""

import subprocess
import sys

import zoo


def deepr(*args, env=None):
    return subprocess.run([sys.executable, "-m", "deepr", *args], capture_output=True, text=True, timeout=600, env=env)


def test_models_lists_every_model_with_count_precisions_and_section():
    result = deepr("models")
    assert result.returncode == 0
    header, *lines = result.stdout.splitlines()
    assert header.split()[:2] == ["model", "parameters"]
    rows = {line.split()[0]: line for line in lines}
    assert sorted(rows) == zoo.list_models()
    assert (
        "3,453,121  fp32, fp16, int8 (static)" in rows["catsdogs_convnet"]
        and "Data augmentation" in rows["catsdogs_convnet"]
    )
    assert (
        "33,417  fp32, fp16, int8 (dynamic)" in rows["imdb_simple_rnn"]
        and "Recurrent Layers" in rows["imdb_simple_rnn"]
    )


def test_summary_with_builder_options():
    result = deepr("summary", "vgg16", "--option", "include_top=false", "--option", "input_shape=150,150,3")
    assert result.returncode == 0 and "block5_pool (MaxPooling2D)" in result.stdout
    assert "Total params: 14,714,688" in result.stdout
    transfer = deepr("summary", "catsdogs_vgg16").stdout
    assert "Trainable params: 2,097,665" in transfer and "Non-trainable params: 14,714,688" in transfer


def test_train_and_export_a_recurrent_model(tmp_path):
    trained = deepr("train", "imdb_lstm", "--epochs", "1", "--out", str(tmp_path / "run"))
    assert trained.returncode == 0, trained.stderr
    assert "imdb_lstm: held-out accuracy" in trained.stdout
    exported = deepr(
        "export", "imdb_lstm", "--weights", str(tmp_path / "run" / "weights.pt"), "--repository", str(tmp_path / "repo")
    )
    assert exported.returncode == 0, exported.stderr
    assert "(1, 5), (1, 23), (7, 5), (7, 23)" in exported.stdout
    assert (tmp_path / "repo" / "imdb_lstm" / "1" / "model.onnx").is_file()


def test_refusals_are_one_line_with_exit_code_2(tmp_path):
    scratch = deepr("train", "vgg16", "--out", str(tmp_path))
    assert scratch.returncode == 2 and "does not train the ImageNet models from scratch" in scratch.stderr
    bad_option = deepr("summary", "vgg16", "--option", "bogus=1")
    assert bad_option.returncode == 2 and "unexpected keyword argument 'bogus'" in bad_option.stderr
    bad_fill = deepr("train", "catsdogs_convnet", "--fill-mode", "wrap", "--out", str(tmp_path))
    assert bad_fill.returncode == 2 and "invalid choice: 'wrap'" in bad_fill.stderr
    two_kinds = deepr("export", "mnist_convnet", "--features", "--filters", "--repository", str(tmp_path / "repo"))
    assert (
        two_kinds.returncode == 2
        and "choose one kind of graph per export, not --filters and --features" in two_kinds.stderr
    )
    assert not (tmp_path / "repo").exists()
