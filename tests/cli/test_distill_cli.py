"""``slimtorch distill`` end to end on the bundled digits data, and its user errors."""

from __future__ import annotations

import json

import pytest
import torch

import slimtorch
from slimtorch.cli.main import main
from slimtorch.models import create


@pytest.fixture
def teacher_run(tmp_path):
    torch.manual_seed(0)
    teacher = create("mlp", in_features=64, hidden=(32,), num_classes=10)
    slimtorch.save(teacher, tmp_path / "teacher")
    return tmp_path / "teacher"


def _args(teacher, out, *extra):
    return [
        "distill",
        "--teacher",
        str(teacher),
        "--student",
        "mlp",
        "--student-arg",
        "hidden=[16]",
        "--data",
        "digits",
        "--epochs",
        "1",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def test_distill_writes_a_loadable_student_run(teacher_run, tmp_path, capsys):
    out = tmp_path / "student"
    assert main(_args(teacher_run, out, "--T", "20", "--hint", "net.2:net.2")) == 0
    student = slimtorch.load(out)
    assert student.net[1].weight.shape == (16, 64)
    summary = json.loads((out / "distill.json").read_text())
    assert summary["losses"][0] == {"type": "KD", "temperature": 20.0, "weight": 1.0, "name": "kd"}
    assert summary["losses"][1]["type"] == "Hint" and 0.0 <= summary["val_accuracy"] <= 1.0
    assert "saved student run" in capsys.readouterr().out


def test_refuses_existing_run_without_overwrite(teacher_run, tmp_path, capsys):
    out = tmp_path / "student"
    assert main(_args(teacher_run, out)) == 0
    capsys.readouterr()
    assert main(_args(teacher_run, out)) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(_args(teacher_run, out, "--overwrite")) == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--T", "0"], "temperature must be > 0, got 0.0"),
        (["--T", "-3"], "temperature must be > 0, got -3.0"),
        (["--kd-weight", "-1"], "weight must be >= 0, got -1.0"),
        (["--task-weight", "-0.5"], "task_weight must be >= 0, got -0.5"),
        (["--hint", "net.2"], "--hint expects STUDENT_LAYER:TEACHER_LAYER"),
        (["--hint", "net.22:net.2"], r"student layer: no module named 'net.22'.*closest: \['net.2'"),
    ],
)
def test_bad_arguments(teacher_run, tmp_path, capsys, extra, message):
    assert main(_args(teacher_run, tmp_path / "s", *extra)) == 2
    import re

    assert re.search(message, capsys.readouterr().err)


def test_teacher_with_other_class_count(tmp_path, capsys):
    slimtorch.save(create("mlp", in_features=64, hidden=(8,), num_classes=7), tmp_path / "t7")
    assert main(_args(tmp_path / "t7", tmp_path / "s")) == 2
    assert "student has 10 classes but teacher 0 has 7" in capsys.readouterr().err


def test_missing_teacher(tmp_path, capsys):
    assert main(_args(tmp_path / "nope", tmp_path / "s")) == 2
    assert "slimtorch distill: error:" in capsys.readouterr().err


def _options(*extra):
    from slimtorch.cli.distill import _options
    from slimtorch.cli.main import build_parser

    return _options(build_parser().parse_args(_args("T", "o", *extra)))


def test_losses_come_from_from_dict_with_flags_and_set():
    from slimtorch.distill import KD, RKD, Hint

    flags = _options("--T", "8", "--kd-weight", "0.5", "--task-weight", "0.2", "--hint", "net.2:net.2")
    assert flags.losses == (KD(temperature=8.0, weight=0.5), Hint("net.2", "net.2", name="hint:net.2"))
    assert flags.task_weight == 0.2
    sets = _options("--hint", "net.2:net.2", "--set", "losses.0.temperature=8", "--set", "losses.0.weight=0.5",
                    "--set", "task_weight=0.2")
    assert sets == flags
    assert _options("--T", "2", "--set", "losses.0.temperature=8").losses[0].temperature == 8  # --set wins
    assert _options("--set", "losses.1.adapter=linear", "--hint", "net.2:net.2").losses[1].adapter == "linear"
    other = _options("--set", "losses=[{type: KD}, {type: RKD, weight: 25}]").losses
    assert other == (KD(), RKD(weight=25))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "epochs=3"], r"--set epochs: distill sets only \['losses', 'task_weight'\]"),
        (["--set", "losses.0.temprature=8"], r"distill.losses\[0\]: unknown key\(s\) \['temprature'\]; "
                                            r"allowed: \['name', 'temperature', 'weight'\]"),
        (["--set", "losses.3.weight=1"], r"--set losses.3.weight: '3' is not an index of losses \(a list of 1\)"),
        (["--set", "losses=[{type: Nope}]"], r"distill.losses\[0\].type: 'Nope' is not one of \[.*'KD'"),
        (["--set", "losses.0.temperature=-1"], r"temperature must be > 0, got -1"),
    ],
)
def test_bad_set(extra, message):
    with pytest.raises(ValueError, match=message):
        _options(*extra)


def test_set_reaches_the_run(teacher_run, tmp_path):
    out = tmp_path / "student"
    assert main(_args(teacher_run, out, "--set", "losses.0.temperature=9", "--set", "task_weight=0.3")) == 0
    summary = json.loads((out / "distill.json").read_text())
    assert summary["losses"][0] == {"type": "KD", "temperature": 9, "weight": 1.0, "name": "kd"}
    assert summary["task_weight"] == 0.3
