"""A user's own model at the CLI: module:function (with consent), pickles (with --trust-pickle), reloads."""

from __future__ import annotations

import json

import pytest
import torch

from slimtorch.cli.main import main


@pytest.fixture
def user(tmp_path, monkeypatch, user_code):
    mod = user_code.install(tmp_path, monkeypatch, user_code.FACTORY_SOURCE)
    return mod, user_code.separable_npz(tmp_path / "d.npz", n_per_class=40)


def test_module_function_needs_allow_code_and_nothing_is_imported(tmp_path, monkeypatch, capsys, user_code):
    marker = tmp_path / "imported"
    mod = user_code.install(tmp_path, monkeypatch, user_code.MARKER_SOURCE, marker=str(marker))
    assert main(["profile", "--model", f"{mod}:build", "--input-shape", "4"]) == 2
    err = capsys.readouterr().err
    assert f"--model '{mod}:build' names Python code" in err and "pass --allow-code" in err
    assert not marker.exists()
    assert main(["profile", "--model", f"{mod}:build", "--input-shape", "4", "--allow-code"]) == 0
    assert marker.read_text() == "called"


def test_user_model_through_train_prune_quantize_and_eval(tmp_path, capsys, user):
    mod, data = user
    run, pruned, quant = tmp_path / "run", tmp_path / "pruned", tmp_path / "q"
    assert main(["train", "--model", f"{mod}:build", "--model-arg", "width=8", "--data", str(data), "--epochs", "5",
                 "--lr", "0.1", "--batch-size", "16", "--precision", "fp32", "--out", str(run), "--no-progress",
                 "--allow-code"]) == 0
    assert main(["prune", str(run), "--method", "channel", "--ratio", "0.5", "--data", str(data),
                 "--finetune-epochs", "2", "--out", str(pruned), "--allow-code", "--no-progress"]) == 0
    assert main(["quantize", str(pruned), "--scheme", "int8", "--data", str(data), "--calib", "32",
                 "--out", str(quant), "--allow-code"]) == 0
    capsys.readouterr()
    accs = {}
    for d in (run, pruned, quant):
        assert main(["eval", str(d), "--data", str(data), "--allow-code"]) == 0
        accs[d.name] = capsys.readouterr().out
    report = json.loads((quant / "quant_report.json").read_text())
    assert report["onnxruntime_vs_simulation"]["top1_agreement"] >= 0.9
    # a class mean of 0, 1, 2 is easy: the trained model is far above chance (1/3)
    assert report["accuracy"]["fp32"] >= 0.75
    # the pruned file rebuilds the narrower model through the factory
    from slimtorch.io.storage import load

    m = load(pruned, allow_code=True)
    assert m.features[0].out_channels == 4 and m(torch.zeros(2, 3, 8, 8)).shape == (2, 3)
    assert main(["eval", str(quant / "model.int8.onnx"), "--data", str(data)]) == 0


def test_module_function_with_weights_from_a_state_dict(tmp_path, capsys, user, user_code):
    mod, data = user
    import importlib

    net = importlib.import_module(mod).build(width=8)
    torch.nn.init.constant_(net.fc.bias, 0.25)
    torch.save(net.state_dict(), tmp_path / "sd.pt")  # tensors only: read without unpickling code
    assert main(["eval", "--model", f"{mod}:build", "--model-arg", "width=8", "--weights", str(tmp_path / "sd.pt"),
                 "--data", str(data), "--allow-code"]) == 0
    assert "test" in capsys.readouterr().out


def test_a_full_pickle_needs_trust_pickle(tmp_path, capsys, user):
    mod, data = user
    import importlib

    torch.save(importlib.import_module(mod).build(), tmp_path / "whole.pt")
    assert main(["eval", str(tmp_path / "whole.pt"), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "Unpickling runs arbitrary code, so it is refused" in err and "--trust-pickle" in err
    assert main(["eval", str(tmp_path / "whole.pt"), "--data", str(data), "--trust-pickle"]) == 0


@pytest.mark.parametrize("argv,msg", [
    (["eval", "a", "--model", "b", "--data", "digits"], "give the model once: as MODEL or as --model, not both"),
    (["eval", "--data", "digits"], "give a model: the model: a run or stage folder"),
    (["eval", "nowhere_dir", "--data", "digits"], "no model at nowhere_dir"),
    (["eval", "x:y", "--weights", "w.pt", "--data", "digits"], "names Python code"),
])
def test_bad_model_arguments(capsys, argv, msg):
    assert main(argv) == 2
    assert msg in capsys.readouterr().err


def test_model_arg_on_a_file_is_refused(tmp_path, capsys):
    import slimtorch
    from slimtorch.models import create

    slimtorch.save(create("mlp", in_features=64, hidden=[8], num_classes=10), tmp_path / "m")
    assert main(["eval", str(tmp_path / "m"), "--model-arg", "x=1", "--data", "digits"]) == 2
    assert "--model-arg applies to a package.module:function model" in capsys.readouterr().err


def test_missing_root_is_an_error_not_a_fallback(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SLIMTORCH_DATA", str(tmp_path))
    assert main(["train", "--model", "mlp", "--data", "mnist", "--root", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "r")]) == 2
    assert f"--root {tmp_path / 'nope'} does not exist" in capsys.readouterr().err


def test_data_path_and_root_together_are_refused(tmp_path, capsys, user):
    _, data = user
    assert main(["eval", "x", "--data", str(data), "--root", str(tmp_path)]) == 2
    assert "is already a path; leave out --root" in capsys.readouterr().err


def test_hf_folder_goes_through_slimtorch_load(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16, num_labels=3)
    transformers.BertForSequenceClassification(cfg).save_pretrained(tmp_path / "hf")
    from slimtorch.cli.common import load_model

    try:
        model = load_model(tmp_path / "hf")
    except Exception as e:  # noqa: BLE001 - slimtorch.load of HF folders lands with the hf-structure work
        if "holds no architecture spec" in str(e):
            pytest.skip("slimtorch.load does not read Hugging Face folders on this branch yet")
        raise
    out = model(torch.zeros(2, 8, dtype=torch.long))
    assert out.logits.shape == (2, 3)


def test_set_values_are_plain_yaml_too(tmp_path, capsys):
    assert main(["quantize", "nowhere", "--scheme", "int8", "--set", "observer_kwargs=&a {percentile: 99}",
                 "--out", str(tmp_path / "q")]) == 2
    assert "the value of observer_kwargs=: YAML anchor &a" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()
