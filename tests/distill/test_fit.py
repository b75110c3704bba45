"""The Distiller inside ``slimtorch.train.fit``: student and adapters are optimised, the teacher is not."""

from __future__ import annotations

import copy

import torch

import slimtorch
from slimtorch.data import load
from slimtorch.distill import KD, Distiller, Hint, MutualLearning
from slimtorch.models import create
from slimtorch.train import fit


def test_fit_trains_student_and_adapter_only(tmp_path):
    data = load("digits", "train")
    torch.manual_seed(0)
    teacher = create("mlp", in_features=64, hidden=(48,), num_classes=10)
    student = create("mlp", in_features=64, hidden=(16,), num_classes=10)
    d = Distiller(
        student, teacher, [KD(temperature=4.0), Hint("net.2", "net.2", weight=0.5)], task_weight=0.5
    )
    t_before = copy.deepcopy(teacher.state_dict())
    s_before = copy.deepcopy(student.state_dict())
    a_before = d.loss_terms["hint"].adapter.weight.detach().clone()
    result = fit(d, data, 2, batch_size=64, lr=0.05, progress=False, out_dir=tmp_path / "run")
    hist = result.history
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert {"train_kd", "train_hint", "train_task"} <= set(hist[-1])
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, t_before[k]), k
    assert all(not torch.equal(v, s_before[k]) for k, v in student.state_dict().items())
    assert not torch.equal(d.loss_terms["hint"].adapter.weight, a_before)
    assert not teacher.training
    saved = slimtorch.load(tmp_path / "run")  # fit saves the student, not the distiller
    assert torch.equal(saved.net[1].weight, student.net[1].weight)


def test_fit_runs_mutual_learning():
    data = load("digits", "train")
    students = [create("mlp", in_features=64, hidden=(16,), num_classes=10) for _ in range(2)]
    before = [copy.deepcopy(s.state_dict()) for s in students]
    fit(MutualLearning(students), data, 1, batch_size=64, lr=0.05, progress=False)
    for s, b in zip(students, before):
        assert not torch.equal(s.net[1].weight, b["net.1.weight"])
