"""fit's reliability guards (issue 18): metrics.jsonl after its checkpoint, temp files swept, NaN/inf runs
stopped without saving, learning rates beyond float32 and a resume into another architecture named."""

from __future__ import annotations

import importlib
import json

import pytest
import torch
from torch.utils.data import TensorDataset

import slimtorch
from slimtorch.core.errors import SlimtorchError
from slimtorch.core.numerics import NonFiniteError
from slimtorch.models import create
from slimtorch.train import fit

FIT = importlib.import_module("slimtorch.train.fit")  # the module (slimtorch.train.fit is also the function)


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def _mlp(hidden=(6,)):
    torch.manual_seed(0)
    return create("mlp", in_features=8, hidden=list(hidden), num_classes=2)


KW = {"batch_size": 16, "progress": False, "lr": 0.1}


def _epochs(out):
    return [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_kill_at_the_checkpoint_write_never_repeats_an_epoch(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = FIT.atomic_torch_save
    calls = []

    def dies_on_second(obj, path):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while writing epoch 2's checkpoint
        real(obj, path)

    monkeypatch.setattr(FIT, "atomic_torch_save", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        fit(_mlp(), _data(), 3, out_dir=out, **KW)
    assert _epochs(out) == [1]  # the epoch whose checkpoint did not land is not in metrics.jsonl
    monkeypatch.setattr(FIT, "atomic_torch_save", real)
    (out / ".tmp-left-by-kill.pt").write_bytes(b"partial")
    fit(_mlp(), _data(), 3, out_dir=out, resume=True, **KW)
    assert _epochs(out) == [1, 2, 3]
    assert not list(out.glob(".tmp-*"))


def test_metrics_file_alone_counts_as_a_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"epoch": 0}\n')
    with pytest.raises(FileExistsError, match="already holds a run"):
        fit(_mlp(), _data(), 1, out_dir=out, **KW)
    fit(_mlp(), _data(), 1, out_dir=out, overwrite=True, **KW)
    assert _epochs(out) == [1]  # not mixed with the earlier attempt's lines


@pytest.mark.parametrize("lr", [1e20, 1e30])
def test_diverging_run_stops_and_keeps_the_good_model(tmp_path, lr):
    out = tmp_path / "run"
    fit(_mlp(), _data(), 1, out_dir=out, **KW)
    good = (out / "model.safetensors").read_bytes()
    with pytest.raises(NonFiniteError, match=r"(loss became nan|training diverged).*lower the learning rate"):
        fit(_mlp(), _data(), 2, out_dir=out, overwrite=True, **{**KW, "lr": lr}, eval_data=_data(seed=1))
    assert (out / "model.safetensors").read_bytes() == good


def test_nan_weights_after_an_epoch_stop_the_run(tmp_path):
    class Poison:
        def on_step_end(self, state):
            if state.step == 4:  # the last step of epoch 1 (64 samples, batches of 16): its loss was finite
                with torch.no_grad():
                    state.model.net[1].weight[0, 0] = float("inf")

    with pytest.raises(NonFiniteError, match=r"training diverged in epoch 1 \(NaN/inf weights in \['net\.1\.weight'\]"
                       r"\) with lr=0\.1; this epoch was not saved"):
        fit(_mlp(), _data(), 2, out_dir=tmp_path / "r", callbacks=[Poison()], **KW)
    assert not (tmp_path / "r" / "checkpoint.pt").exists() and not (tmp_path / "r" / "model.safetensors").exists()


def test_learning_rate_beyond_float32_is_refused():
    with pytest.raises(ValueError, match=r"lr=1e\+40 does not fit in float32 \(at most 3\.4e\+38\)"):
        fit(_mlp(), _data(), 1, **{**KW, "lr": 1e40})


def test_negative_warmup_is_refused():
    with pytest.raises(ValueError, match=r"warmup_epochs must be a non-negative number, got -1"):
        fit(_mlp(), _data(), 1, warmup_epochs=-1, **KW)


def test_resume_into_another_architecture_is_a_named_error(tmp_path):
    out = tmp_path / "run"
    fit(_mlp(), _data(), 1, out_dir=out, **KW)
    (out / "model.safetensors").unlink()
    with pytest.raises(SlimtorchError, match=r"cannot resume from .*checkpoint\.pt: it was written for another model "
                       r"or optimizer \(.*size mismatch.*pass --overwrite to start over"):
        fit(_mlp(hidden=(5,)), _data(), 2, out_dir=out, resume=True, **KW)


def test_nan_weights_cannot_be_saved(tmp_path):
    m = _mlp()
    with torch.no_grad():
        m.net[3].bias[1] = float("nan")
    with pytest.raises(NonFiniteError, match=r"slimtorch.save: the model's weights hold NaN or inf in "
                       r"\['net\.3\.bias'\]"):
        slimtorch.save(m, tmp_path / "m.safetensors")
    assert not list(tmp_path.iterdir())
