"""The training loop: learning, schedules, callbacks, loss modules, checkpoints, resume, refusal."""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import slimtorch
from slimtorch.io.atomic import StorageError
from slimtorch.io.storage import read_spec
from slimtorch.metrics import CpuInfo
from slimtorch.metrics.cpu import FLAG_NAMES
from slimtorch.models import create
from slimtorch.train import SCHEDULES, fit, load_checkpoint
from slimtorch.train.checkpoint import atomic_torch_save

ROOT = Path(__file__).resolve().parents[2]
# The module, where fit looks cpu_info up (the package attribute slimtorch.train.fit is the function).
FIT_MODULE = importlib.import_module("slimtorch.train.fit")


def _cpu(model: str, **flags: bool) -> CpuInfo:
    return CpuInfo("x86_64", "GenuineIntel", model, {**dict.fromkeys(FLAG_NAMES, False), "avx2": True, **flags})


SLOW_BF16_CPU = _cpu("Intel Xeon E5-2680 v4")  # AVX2 only: bf16 autocast is emulated
AVX512_BF16_CPU = _cpu("AMD EPYC 9R14", avx512f=True, avx512_vnni=True, avx512_bf16=True)
AMX_CPU = _cpu("Intel Xeon Platinum 8488C", avx512f=True, avx512_vnni=True, amx=True)


def use_cpu(monkeypatch: pytest.MonkeyPatch, info: CpuInfo) -> None:
    """Make fit see ``info`` as the CPU it runs on."""
    monkeypatch.setattr(FIT_MODULE, "cpu_info", lambda: info)


def blobs(n: int = 256, seed: int = 0) -> TensorDataset:
    """Two Gaussian blobs in 8 dimensions, linearly separable."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 8, generator=g) + (y[:, None].float() * 2 - 1) * 1.5
    return TensorDataset(x, y)


def small_mlp() -> nn.Module:
    return create("mlp", in_features=8, hidden=[16], num_classes=2)


def test_fit_learns_and_records_history():
    data = blobs()
    res = fit(small_mlp(), data, 5, eval_data=blobs(128, seed=1), lr=0.1, batch_size=32, progress=False)
    assert len(res.history) == 5
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert res.final["val_accuracy"] > 0.95
    assert math.isclose(res.final["val_perplexity"], math.exp(res.final["val_loss"]), rel_tol=1e-6)


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_schedules_start_at_one_and_never_exceed_it(name):
    fn = SCHEDULES.get(name)
    values = [fn(s, 100, 0) for s in range(100)]
    assert values[0] == pytest.approx(1.0)
    assert max(values) <= 1.0 + 1e-12


def test_cosine_and_step_values():
    cos, step = SCHEDULES.get("cosine"), SCHEDULES.get("step")
    assert cos(50, 100, 0) == pytest.approx(0.5)
    assert cos(100, 100, 0) == pytest.approx(0.0, abs=1e-12)
    assert cos(4, 100, 10) == pytest.approx(0.5)  # warm-up: (4 + 1) / 10
    assert [step(s, 100, 0) for s in (0, 49, 50, 74, 75)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


def test_callbacks_see_every_step_and_epoch():
    seen = {"steps": [], "epochs": [], "begin": 0}

    class CB:
        def on_train_begin(self, s):
            seen["begin"] += 1

        def on_step_end(self, s):
            seen["steps"].append(s.step)

        def on_epoch_end(self, s):
            seen["epochs"].append((s.epoch, "train_loss" in s.metrics))

    fit(small_mlp(), blobs(64), 2, batch_size=16, callbacks=[CB()], progress=False)
    assert seen["begin"] == 1
    assert seen["steps"] == list(range(1, 9))
    assert seen["epochs"] == [(0, True), (1, True)]


def test_loss_module_is_called_with_targets_and_only_trainable_params_move():
    class LossModule(nn.Module):
        computes_loss = True

        def __init__(self):
            super().__init__()
            self.student = small_mlp()
            self.frozen = nn.Linear(8, 2)
            self.frozen.requires_grad_(False)

        def forward(self, x, y):
            out = self.student(x)
            task = nn.functional.cross_entropy(out, y)
            extra = (out - self.frozen(x)).pow(2).mean()
            return {"loss": task + 0.01 * extra, "output": out, "task": task, "extra": extra}

    lm = LossModule()
    before = lm.frozen.weight.clone()
    res = fit(lm, blobs(), 2, batch_size=32, progress=False, eval_data=blobs(64, 1))
    assert torch.equal(lm.frozen.weight, before)
    assert "train_task" in res.final and "train_extra" in res.final
    assert res.final["val_accuracy"] > 0.9


def test_run_folder_contents_and_reload(tmp_path):
    out = tmp_path / "run"
    model = small_mlp()
    fit(model, blobs(), 2, batch_size=32, out_dir=out, progress=False)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    ck = load_checkpoint(out / "checkpoint.pt")
    assert ck["epoch"] == 2
    again = slimtorch.load(out)
    x = torch.randn(4, 8)
    assert torch.equal(again(x), model.eval()(x))


def test_existing_run_is_refused_without_resume_or_overwrite(tmp_path):
    fit(small_mlp(), blobs(64), 1, out_dir=tmp_path, progress=False)
    with pytest.raises(FileExistsError, match="already holds a run.*resume.*overwrite"):
        fit(small_mlp(), blobs(64), 1, out_dir=tmp_path, progress=False)
    res = fit(small_mlp(), blobs(64), 1, out_dir=tmp_path, overwrite=True, progress=False)
    assert len(res.history) == 1


def test_resume_in_process_matches_uninterrupted(tmp_path):
    class Stop(Exception):
        pass

    class StopAt:
        def on_step_end(self, s):
            if s.step == 20:  # 8 steps per epoch: in the middle of epoch 3
                raise Stop

    def run(out, callbacks=(), resume=False):
        torch.manual_seed(123)
        model = create("mlp", in_features=8, hidden=[16], num_classes=2, dropout=0.3)
        return fit(model, blobs(), 4, batch_size=32, out_dir=out, resume=resume, seed=7, progress=False,
                   callbacks=callbacks).model

    full = run(tmp_path / "a")
    with pytest.raises(Stop):
        run(tmp_path / "b", [StopAt()])
    torch.manual_seed(999)  # a different process state: everything must come from the checkpoint
    resumed = run(tmp_path / "b", resume=True)
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, torch
    from torch.utils.data import TensorDataset
    from slimtorch.models import create
    from slimtorch.train import fit
    out, epochs, kill_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (256,), generator=g)
    x = torch.randn(256, 8, generator=g) + (y[:, None].float() * 2 - 1)
    class Killer:
        def on_step_end(self, s):
            if s.step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, like a power cut or OOM kill
    torch.manual_seed(1)
    model = create("mlp", in_features=8, hidden=[16], num_classes=2, dropout=0.3)
    fit(model, TensorDataset(x, y), epochs, batch_size=32, out_dir=out, resume=True, seed=3, progress=False,
        callbacks=[Killer()])
    """
)


def test_killed_and_resumed_run_ends_with_identical_weights(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def launch(out, kill_at):
        return subprocess.run([sys.executable, str(script), str(out), "3", str(kill_at)], env=env,
                              capture_output=True, text=True, timeout=120)

    assert launch(tmp_path / "full", -1).returncode == 0
    killed = launch(tmp_path / "cut", 13)  # 8 steps per epoch: dies in the middle of epoch 2
    assert killed.returncode == -9
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["epoch"] == 1
    assert launch(tmp_path / "cut", -1).returncode == 0
    a = slimtorch.load(tmp_path / "full").state_dict()
    b = slimtorch.load(tmp_path / "cut").state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_interrupted_checkpoint_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    atomic_torch_save({"epoch": 1}, path)

    def broken_save(obj, f):
        Path(f).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(StorageError, match=r"cannot write checkpoint .*checkpoint\.pt: disk full"):
        atomic_torch_save({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


@pytest.mark.parametrize(
    "kwargs, match",
    [({"epochs": -1}, "epochs must be"), ({"batch_size": 0}, "batch_size must be"), ({"lr": 0.0}, "lr must be"),
     ({"optimizer": "lion"}, "unknown optimizer 'lion'; valid: adam, adamw, sgd"),
     ({"precision": "fp16"}, r"precision must be one of \['auto', 'bf16', 'fp32'\], got 'fp16'")],
)
def test_bad_arguments(kwargs, match):
    kw = {"epochs": 1, **kwargs}
    epochs = kw.pop("epochs")
    with pytest.raises(ValueError, match=match):
        fit(small_mlp(), blobs(32), epochs, progress=False, **kw)


class _DtypeProbe(nn.Module):
    """A tiny conv net that records the dtype and memory format its convolution saw."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)
        self.seen: list[tuple[torch.dtype, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        self.seen.append((h.dtype, x.is_contiguous(memory_format=torch.channels_last)))
        return self.fc(h.mean((2, 3)))


def _images(n: int = 32) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (n,), generator=g)
    return TensorDataset(torch.randn(n, 3, 8, 8, generator=g) + y[:, None, None, None].float(), y)


def test_bf16_autocast_and_channels_last_train_in_that_format(monkeypatch):
    use_cpu(monkeypatch, AMX_CPU)
    model = _DtypeProbe()
    res = fit(model, _images(), 2, lr=0.05, batch_size=8, progress=False, precision="bf16", channels_last=True)
    assert model.seen and all(s == (torch.bfloat16, True) for s in model.seen)
    # Master weights stay float32, and the model comes back in the default memory format.
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.conv.weight.is_contiguous()
    assert math.isfinite(res.final["train_loss"])


def test_bf16_training_follows_fp32_training_closely(monkeypatch):
    """bf16 autocast changes the rounding of the forward pass only: weights after a few steps stay close."""
    use_cpu(monkeypatch, AMX_CPU)
    runs = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = _DtypeProbe()
        fit(model, _images(), 1, lr=0.01, batch_size=8, progress=False, precision=precision)
        runs[precision] = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.manual_seed(0)
    start = torch.cat([p.detach().reshape(-1) for p in _DtypeProbe().parameters()])
    moved = (runs["fp32"] - start).norm()
    assert moved > 0
    assert (runs["bf16"] - runs["fp32"]).norm() < 0.05 * moved


@pytest.mark.parametrize(
    "info, precision, dtype",
    [(AMX_CPU, "bf16", torch.bfloat16), (AVX512_BF16_CPU, "bf16", torch.bfloat16),
     (SLOW_BF16_CPU, "fp32", torch.float32)],
    ids=["amx", "avx512_bf16", "avx2"],
)
def test_auto_precision_is_bf16_only_on_a_cpu_with_native_bf16_and_is_what_the_run_records(
        monkeypatch, tmp_path, info, precision, dtype):
    use_cpu(monkeypatch, info)
    model = _DtypeProbe()
    states = []

    class Probe:
        def on_train_begin(self, s):
            states.append(s.precision)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto never warns
        res = fit(model, _images(), 1, lr=0.05, batch_size=8, progress=False, precision="auto", out_dir=tmp_path,
                  callbacks=[Probe()])
    assert {s[0] for s in model.seen} == {dtype}  # what the convolution really computed in
    assert res.precision == precision and states == [precision]
    assert load_checkpoint(tmp_path / "checkpoint.pt")["precision"] == precision
    assert read_spec(tmp_path / "model.safetensors")["metadata"]["precision"] == precision


def test_bf16_on_a_cpu_without_native_bf16_warns_naming_the_cpu_and_still_trains_in_bf16(monkeypatch):
    use_cpu(monkeypatch, SLOW_BF16_CPU)
    model = _DtypeProbe()
    with pytest.warns(UserWarning, match=r"bf16 autocast will be slow on this CPU \(Intel Xeon E5-2680 v4, no amx "
                                         r"or avx512_bf16\).*use precision='fp32', or 'auto'") as record:
        res = fit(model, _images(), 1, lr=0.05, batch_size=8, progress=False, precision="bf16")
    assert [Path(w.filename).name for w in record] == [Path(__file__).name]  # points at the caller of fit
    assert res.precision == "bf16"
    assert {s[0] for s in model.seen} == {torch.bfloat16}


@pytest.mark.parametrize(
    "info, precision",
    [(AMX_CPU, "bf16"), (AVX512_BF16_CPU, "bf16"), (SLOW_BF16_CPU, "fp32"), (SLOW_BF16_CPU, "auto")],
)
def test_no_warning_where_the_precision_suits_the_cpu(monkeypatch, info, precision):
    use_cpu(monkeypatch, info)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(_DtypeProbe(), _images(8), 1, batch_size=8, progress=False, precision=precision)


def test_cpu_flags_decide_nothing_on_other_devices(monkeypatch):
    use_cpu(monkeypatch, AMX_CPU)
    assert FIT_MODULE.resolve_precision("auto", "meta") == "fp32"
    use_cpu(monkeypatch, SLOW_BF16_CPU)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert FIT_MODULE.resolve_precision("bf16", "cuda") == "bf16"
    assert FIT_MODULE.resolve_precision("auto", "cpu") == "fp32"


def test_resumed_auto_run_resolves_again_and_records_the_change(monkeypatch, tmp_path):
    use_cpu(monkeypatch, AVX512_BF16_CPU)
    fit(_DtypeProbe(), _images(), 1, batch_size=8, progress=False, precision="auto", out_dir=tmp_path)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["precision"] == "bf16"
    # Same CPU: resumes silently in bf16.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = fit(_DtypeProbe(), _images(), 2, batch_size=8, progress=False, precision="auto", out_dir=tmp_path,
                  resume=True)
    assert res.precision == "bf16" and [r["epoch"] for r in res.history] == [1, 2]
    # Another CPU: 'auto' now means fp32; the run continues in fp32, says so, and records it.
    use_cpu(monkeypatch, SLOW_BF16_CPU)
    model = _DtypeProbe()
    with pytest.warns(UserWarning, match=r"resuming a run trained in bf16 with precision 'fp32'"):
        res = fit(model, _images(), 3, batch_size=8, progress=False, precision="auto", out_dir=tmp_path,
                  resume=True)
    assert res.precision == "fp32" and [r["epoch"] for r in res.history] == [1, 2, 3]
    assert {s[0] for s in model.seen} == {torch.float32}
    assert load_checkpoint(tmp_path / "checkpoint.pt")["precision"] == "fp32"


def test_checkpoint_without_a_precision_entry_still_resumes(monkeypatch, tmp_path):
    """Checkpoints written before the precision was recorded resume in whatever the new call resolves to."""
    use_cpu(monkeypatch, AMX_CPU)
    fit(_DtypeProbe(), _images(), 1, batch_size=8, progress=False, out_dir=tmp_path)
    ck = load_checkpoint(tmp_path / "checkpoint.pt")
    del ck["precision"]
    atomic_torch_save(ck, tmp_path / "checkpoint.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = fit(_DtypeProbe(), _images(), 2, batch_size=8, progress=False, precision="auto", out_dir=tmp_path,
                  resume=True)
    assert res.precision == "bf16" and len(res.history) == 2


def test_input_shape_mismatch_is_reported():
    model = create("lenet5")  # expects (1, 28, 28)
    data = TensorDataset(torch.randn(8, 1, 32, 32), torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(1, 28, 28\).*\(1, 32, 32\)|\(1, 32, 32\).*\(1, 28, 28\)"):
        fit(model, data, 1, progress=False)


DDP_SCRIPT = textwrap.dedent(
    """
    import sys, torch, torch.distributed as dist
    from torch.utils.data import TensorDataset
    from slimtorch.models import create
    from slimtorch.train import fit
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (128,), generator=g)
    x = torch.randn(128, 8, generator=g) + (y[:, None].float() * 2 - 1)
    torch.manual_seed(dist.get_rank() if dist.is_initialized() else int(__import__('os').environ['RANK']))
    model = create("mlp", in_features=8, hidden=[16], num_classes=2)
    fit(model, TensorDataset(x, y), 2, batch_size=16, progress=False)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.save(flat, sys.argv[1] + f"/rank{dist.get_rank()}.pt")
    """
)


def test_ddp_two_cpu_processes_end_identical(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531", str(script),
         str(tmp_path)], env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert torch.equal(a, b)
