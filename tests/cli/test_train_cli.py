"""CLI train / eval / profile on the bundled digits data, and their user errors."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

import slimtorch
from slimtorch.cli.main import main
from slimtorch.metrics import CpuInfo
from slimtorch.metrics.cpu import FLAG_NAMES
from slimtorch.train import load_checkpoint

AVX2_CPU = CpuInfo("x86_64", "GenuineIntel", "Intel Core i7-6700", {**dict.fromkeys(FLAG_NAMES, False), "avx2": True})
AMX_CPU = CpuInfo("x86_64", "GenuineIntel", "Intel Xeon w5-3435X", {**AVX2_CPU.flags, "avx512f": True, "amx": True})


def use_cpu(monkeypatch, info: CpuInfo) -> None:
    """Make ``fit`` (the module, not the function the package exports) see ``info`` as this CPU."""
    monkeypatch.setattr(importlib.import_module("slimtorch.train.fit"), "cpu_info", lambda: info)


def test_train_then_load_eval_and_profile(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "mlp", "--model-arg", "hidden=[32]", "--data", "digits", "--epochs", "3",
                 "--lr", "0.1", "--out", str(out), "--no-progress"]) == 0
    for name in ("model.safetensors", "checkpoint.pt", "metrics.jsonl", "profile.json"):
        assert (out / name).exists(), name
    prof = json.loads((out / "profile.json").read_text())
    assert prof["params"] == 64 * 32 + 32 + 32 * 10 + 10
    assert prof["val_accuracy"] > 0.85
    assert set(prof["cpu"]) >= {"model", "kind", "flags"}  # the CPU the latency was measured on
    model = slimtorch.load(out)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    capsys.readouterr()
    assert main(["eval", str(out), "--data", "digits"]) == 0
    assert "%" in capsys.readouterr().out
    assert main(["profile", str(out), "--runtime", "torch", "--runtime", "onnxruntime",
                 "--json", str(tmp_path / "p.json")]) == 0
    p = json.loads((tmp_path / "p.json").read_text())
    assert p["file_bytes"] == (out / "model.safetensors").stat().st_size
    assert p["latency_ms_torch"] > 0 and p["latency_ms_onnxruntime"] > 0


def test_precision_layout_and_warmup_flags_reach_the_loop(tmp_path, monkeypatch):
    import slimtorch.cli.train as cli_train

    seen = {}
    real_fit = cli_train.fit

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(cli_train, "fit", spy)
    use_cpu(monkeypatch, AMX_CPU)
    out = tmp_path / "run"
    assert main(["train", "--model", "mlp", "--model-arg", "hidden=[32]", "--data", "digits", "--epochs", "3",
                 "--lr", "0.1", "--precision", "bf16", "--channels-last", "--warmup-epochs", "0.5",
                 "--out", str(out), "--no-progress"]) == 0
    assert (seen["precision"], seen["channels_last"], seen["warmup_epochs"]) == ("bf16", True, 0.5)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["val_accuracy"] > 0.85


@pytest.mark.parametrize("info, trained", [(AMX_CPU, "bf16"), (AVX2_CPU, "fp32")], ids=["amx", "avx2"])
def test_precision_defaults_to_auto_which_follows_the_cpu(tmp_path, monkeypatch, capsys, info, trained):
    use_cpu(monkeypatch, info)
    out = tmp_path / "run"
    assert main(["train", "--model", "mlp", "--model-arg", "hidden=[8]", "--data", "digits", "--epochs", "1",
                 "--out", str(out), "--no-progress"]) == 0
    assert f"trained in {trained} (--precision auto)" in capsys.readouterr().out
    assert load_checkpoint(out / "checkpoint.pt")["precision"] == trained


def test_bf16_on_a_cpu_without_native_bf16_warns(tmp_path, monkeypatch, capsys):
    use_cpu(monkeypatch, AVX2_CPU)
    with pytest.warns(UserWarning, match=r"slow on this CPU \(Intel Core i7-6700, no amx or avx512_bf16\)"):
        assert main(["train", "--model", "mlp", "--model-arg", "hidden=[8]", "--data", "digits", "--epochs", "1",
                     "--precision", "bf16", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert "trained in bf16 (--precision bf16)" in capsys.readouterr().out


def test_existing_run_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", "mlp", "--model-arg", "hidden=[8]", "--data", "digits", "--epochs", "1",
            "--out", str(out), "--no-progress"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    assert "already holds a run; pass --overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "nonet", "--data", "digits"], "unknown model 'nonet'; valid: .*lenet5"),
        (["--model", "mlp", "--data", "imagenet"], "unknown dataset 'imagenet'; valid: .*mnist"),
        (["--model", "resnet20", "--data", "digits"], r"shape \(1, 8, 8\) does not match .* \(1, 32, 32\)"),
        (["--model", "mlp", "--model-arg", "hidden", "--data", "digits"], "expected KEY=VALUE"),
    ],
)
def test_user_errors_exit_2_with_message(tmp_path, capsys, args, message):
    assert main(["train", *args, "--epochs", "1", "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert pytest.importorskip("re").search(message, capsys.readouterr().err)


def test_missing_data_files_list_every_place(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SLIMTORCH_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setenv("SLIMTORCH_CACHE", str(tmp_path / "cache"))
    (tmp_path / "empty").mkdir()  # exists, holds nothing (a missing --root is refused before any search)
    code = main(["train", "--model", "lenet5", "--data", "mnist", "--root", str(tmp_path / "empty"), "--epochs", "1",
                 "--out", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert str(tmp_path / "empty") in err and str(tmp_path / "nowhere") in err and "SLIMTORCH_DATA" in err


def test_help_for_every_command(capsys):
    from slimtorch.cli.main import COMMAND_MODULES

    for cmd in COMMAND_MODULES:
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        assert "usage: slimtorch" in capsys.readouterr().out


def test_profile_and_eval_read_slim_files(tmp_path, capsys):
    from slimtorch import share
    from slimtorch.models import create
    from slimtorch.prune import Magnitude, make_permanent_, prune_

    model = create("mlp", in_features=64, hidden=[32], num_classes=10)
    prune_(model, Magnitude(sparsity=0.75))
    make_permanent_(model)
    share.cluster_(model, bits=4)
    path = tmp_path / "m.slim"
    share.save(model, path)
    assert main(["profile", str(path), "--json", str(tmp_path / "p.json")]) == 0
    p = json.loads((tmp_path / "p.json").read_text())
    assert p["file_bytes"] == path.stat().st_size
    loaded = share.load(path)
    assert p["nonzero_params"] == sum(int((t != 0).sum()) for t in loaded.parameters())
    assert p["nonzero_params"] < 0.4 * p["params"]  # the 75% of pruned weights stay zero
    assert main(["eval", str(path), "--data", "digits"]) == 0
    assert "%" in capsys.readouterr().out
