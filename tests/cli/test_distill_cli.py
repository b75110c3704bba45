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
