"""Every command refuses a value out of range before doing any work: one line naming the
option and what it takes, exit code 2, no traceback. The commands are read from the parser,
so a new command or option is covered without editing this file."""

from __future__ import annotations

import argparse

import pytest

from deepr.cli import build_parser, main


def numeric_options() -> list[tuple[str, argparse.Action]]:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [
        (command, action)
        for command, subparser in commands.choices.items()
        for action in subparser._actions
        if action.type is not None and action.option_strings
    ]


def test_no_option_takes_a_bare_int_or_float():
    """Bare int/float accept 0, negatives, nan and inf alike; each option states its range."""
    bare = [f"deepr {c} {a.option_strings[0]}" for c, a in numeric_options() if a.type in (int, float)]
    assert bare == []


def out_of_range(action: argparse.Action) -> str:
    low, high = action.type.range
    return str(high + 1) if low is None else str(low - 1)


@pytest.mark.parametrize(
    "command, action",
    [(c, a) for c, a in numeric_options() if hasattr(a.type, "range")],
    ids=lambda x: x if isinstance(x, str) else x.option_strings[0],
)
def test_a_value_out_of_range_exits_2_with_one_line(command, action, capsys):
    # argparse converts each value as it reads it: the bad one is refused before it would
    # notice missing positional or required arguments
    with pytest.raises(SystemExit) as exit_:
        main([command, action.option_strings[0], out_of_range(action)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert f"argument {'/'.join(action.option_strings)}: expected" in last, last
    assert "Traceback" not in err


def test_nan_is_not_a_number_for_the_commands():
    with pytest.raises(SystemExit) as exit_:
        main(["sample", "--temperature", "nan"])
    assert exit_.value.code == 2


def test_classify_top_k_0_is_refused_before_any_work(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["classify", "no-such-file.png", "--model", "m", "--top-k", "0"])
    assert exit_.value.code == 2
    assert "argument --top-k: expected an integer >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, named",
    [
        (["classify", "digit.png", "--modle", "mnist_convnet"], "unknown option --modle (did you mean --model?)"),
        (["sample", "--promt", "hello"], "unknown option --promt (did you mean --prompt?)"),
        (["import", "m.h5", "--nmae", "m"], "unknown option --nmae (did you mean --name?)"),
    ],
)
def test_a_mistyped_option_is_named_before_a_missing_one(argv, named, capsys):
    """With `--modle x` argparse would first say --model is required; the typo is the news."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert named in err and "required" not in err, err
