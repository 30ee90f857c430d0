"""The zoo's command line as a user runs it: as a process, and in this one where only what it
prints and returns is checked (a process costs seconds of imports)."""

import subprocess
import sys

import zoo
from deepr.cli import main


def deepr(*args, env=None):
    return subprocess.run([sys.executable, "-m", "deepr", *args], capture_output=True, text=True, timeout=600, env=env)


def deepr_here(capsys, *args) -> tuple[int, str, str]:
    """`deepr ARGS` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exit_:  # argparse's refusals
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


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


def test_summary_with_builder_options(capsys):
    code, out, _ = deepr_here(
        capsys, "summary", "vgg16", "--option", "include_top=false", "--option", "input_shape=150,150,3"
    )
    assert code == 0 and "block5_pool (MaxPooling2D)" in out
    assert "Total params: 14,714,688" in out
    _, transfer, _ = deepr_here(capsys, "summary", "catsdogs_vgg16")
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


def test_refusals_are_one_line_with_exit_code_2(tmp_path, capsys):
    scratch = deepr("train", "vgg16", "--out", str(tmp_path))  # as a process: the one line and the exit code
    assert scratch.returncode == 2 and "does not train the ImageNet models from scratch" in scratch.stderr
    assert len(scratch.stderr.strip().splitlines()) == 1, scratch.stderr
    code, _, err = deepr_here(capsys, "summary", "vgg16", "--option", "bogus=1")
    assert code == 2 and "unexpected keyword argument 'bogus'" in err
    code, _, err = deepr_here(capsys, "train", "catsdogs_convnet", "--fill-mode", "wrap", "--out", str(tmp_path))
    assert code == 2 and "invalid choice: 'wrap'" in err
    code, _, err = deepr_here(
        capsys, "export", "mnist_convnet", "--features", "--filters", "--repository", str(tmp_path / "repo")
    )
    assert code == 2 and "choose one kind of graph per export, not --filters and --features" in err
    assert not (tmp_path / "repo").exists()


def test_export_without_weights_takes_the_default_builds_and_says_so(tmp_path, monkeypatch, capsys, trained_convnet):
    """Where the default build trained mnist_convnet ($DEEPR_HOME/repository.runs), `deepr export
    mnist_convnet --gradcam` explains those weights, the served model's, and says so; it no
    longer exports fresh weights without a word."""
    import shutil

    import numpy as np
    import onnxruntime as ort

    from zoo.datasets import load_dataset

    monkeypatch.setenv("DEEPR_HOME", str(tmp_path / "home"))
    runs = tmp_path / "home" / "repository.runs" / "mnist_convnet"
    runs.mkdir(parents=True)
    shutil.copy(trained_convnet.out / "weights.pt", runs / "weights.pt")
    code, _, err = deepr_here(capsys, "export", "mnist_convnet", "--gradcam", "--repository", str(tmp_path / "repo"))
    assert code == 0 and f"using the weights the default build trained, {runs / 'weights.pt'}" in err, err
    assert "freshly initialised" not in err
    session = ort.InferenceSession(str(tmp_path / "repo" / "mnist_convnet_gradcam" / "1" / "model.onnx"))
    images = load_dataset("digits").test.tensors[0][:8].numpy()
    scores = session.run(["scores"], {"images": images, "class_index": np.full((8, 1), -1, np.int64)})[0]
    expected = trained_convnet.model(load_dataset("digits").test.tensors[0][:8]).detach().numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-5)
