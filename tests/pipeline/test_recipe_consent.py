"""Recipes run code only with consent; recipes are read as plain, bounded YAML; options are checked first."""

from __future__ import annotations

import time

import pytest
import torch

from slimtorch.cli.main import main
from slimtorch.core.consent import CodeConsentError
from slimtorch.pipeline import RecipeError, load_recipe, parse_recipe_text, run_recipe

OS_SYSTEM_MODEL = """
model: {{factory: "os:system", args: {{command: "touch {marker}"}}}}
data: {{name: digits}}
stages: [{{train: {{epochs: 1}}}}]
"""

OS_SYSTEM_TEACHER = """
model: {{zoo: mlp, args: {{hidden: [8]}}}}
data: {{name: digits}}
stages:
  - distill:
      teacher: {{factory: "os:system", args: {{command: "touch {marker}"}}}}
      train: {{epochs: 1}}
"""


@pytest.mark.parametrize("text,path", [(OS_SYSTEM_MODEL, "model.factory"),
                                       (OS_SYSTEM_TEACHER, "stages[0].distill.teacher.factory")])
def test_os_system_factory_is_refused_without_consent(tmp_path, capsys, text, path):
    marker = tmp_path / "marker"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text.format(marker=marker))
    assert main(["run", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"the recipe runs code: {path} 'os:system'" in err and "--allow-code" in err
    assert not marker.exists()  # the shell command never ran
    assert not (tmp_path / "run").exists()  # refused before the run folder was made
    with pytest.raises(CodeConsentError, match="runs code"):  # the API says the same
        run_recipe(load_recipe(recipe), tmp_path / "run2", progress=False)
    assert not marker.exists()


def test_factory_module_is_not_even_imported_without_consent(tmp_path, monkeypatch, user_code):
    marker = tmp_path / "imported"
    mod = user_code.install(tmp_path, monkeypatch, user_code.MARKER_SOURCE, marker=str(marker))
    recipe = parse_recipe_text(f"model: {{factory: '{mod}:build'}}\ndata: {{name: digits}}\n"
                               "stages: [{train: {epochs: 1}}]")
    with pytest.raises(CodeConsentError, match=f"model.factory '{mod}:build'"):
        run_recipe(recipe, tmp_path / "run", progress=False)
    assert not marker.exists()


def test_with_allow_code_a_factory_recipe_runs_and_every_output_reloads(tmp_path, monkeypatch, capsys, user_code):
    mod = user_code.install(tmp_path, monkeypatch, user_code.FACTORY_SOURCE)
    data = user_code.separable_npz(tmp_path / "d.npz")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
model: {{factory: "{mod}:build", args: {{width: 8}}}}
data: {{name: arrays, root: d.npz}}
measure: {{repeats: 2, warmup: 1}}
stages:
  - train: {{epochs: 3, lr: 0.05, batch_size: 16, precision: fp32}}
  - distill:
      student: {{factory: "{mod}:build", args: {{width: 6}}}}
      train: {{epochs: 1, batch_size: 16, precision: fp32}}
  - prune: {{type: Channel, ratio: 0.5}}
  - quantize: {{type: Int8Static}}
  - export: {{}}
""")
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out), "--no-progress", "--allow-code"]) == 0
    capsys.readouterr()
    stage_dirs = sorted(d for d in out.iterdir() if d.is_dir() and d.name[:2].isdigit())
    assert [d.name for d in stage_dirs] == ["01-train", "02-distill", "03-prune", "04-quantize", "05-export"]
    for d in stage_dirs[:-1]:
        # a file of a factory model names its factory: reloading it runs code, so it needs consent
        assert main(["eval", str(d), "--data", str(data)]) == 2
        assert f"a model built by '{mod}:build'" in capsys.readouterr().err
        assert main(["eval", str(d), "--data", str(data), "--allow-code"]) == 0
        assert "test" in capsys.readouterr().out
        assert main(["profile", str(d), "--data", str(data), "--allow-code"]) == 0
    # the ONNX files of the quantize and export stages need no code at all
    assert main(["eval", str(out / "04-quantize" / "model.onnx"), "--data", str(data)]) == 0
    assert "onnxruntime" in capsys.readouterr().out
    assert main(["eval", str(out / "05-export"), "--data", str(data)]) == 0
    assert main(["profile", str(out / "05-export")]) == 0
    assert "latency_ms_onnxruntime" in capsys.readouterr().out
    # the distilled student is the factory's width-6 model; pruning halved it and it reloads narrower
    from slimtorch.io.storage import load

    assert load(out / "02-distill", allow_code=True).features[0].out_channels == 6
    pruned = load(out / "03-prune", allow_code=True)
    assert pruned.features[0].out_channels == 3 and pruned.fc.in_features == 3
    assert pruned(torch.zeros(1, 3, 8, 8)).shape == (1, 3)


ALIAS_BOMB = """model: {zoo: mlp}
data: {name: digits}
stages:
  - quantize:
      type: Int8Static
      observer_kwargs:
        a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
        b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
        c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
        d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
        e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
        f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
        g: [*f,*f,*f,*f,*f,*f,*f,*f,*f]
"""


def test_alias_bomb_is_refused_fast(tmp_path):
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(ALIAS_BOMB)
    t0 = time.perf_counter()
    with pytest.raises(RecipeError, match=r"YAML anchor &a at line 7.*aliases and anchors are not allowed"):
        load_recipe(recipe)
    assert time.perf_counter() - t0 < 1.0


def test_an_alias_alone_is_refused(tmp_path):
    with pytest.raises(RecipeError, match=r"YAML alias \*x"):
        parse_recipe_text("model: *x\n")


def test_oversize_recipe_is_refused_before_reading(tmp_path):
    recipe = tmp_path / "big.yaml"
    recipe.write_text("model: {zoo: mlp}\n# " + "x" * (1 << 20) + "\n")
    t0 = time.perf_counter()
    with pytest.raises(RecipeError, match=r"the file is 10485\d\d bytes; a recipe is limited to 1048576 bytes"):
        load_recipe(recipe)
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize("kwargs,msg", [
    ("{percentile: 20}", r"observer_kwargs: percentile: 20 is not in \(50.0, 100.0\]"),
    ("{percentile: 99.9, colour: red}", r"unknown option\(s\) \['colour'\] for observer 'percentile'"),
    ("{bins: 1000000000}", r"bins must be an integer in \[16, 65536\]"),
    ("{percentile: [1, 2]}", r"observer_kwargs.percentile must be a number"),
])
def test_bad_observer_kwargs_are_refused_before_training(tmp_path, capsys, kwargs, msg):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {zoo: mlp, args: {hidden: [8]}}\ndata: {name: digits}\nstages:\n"
                      "  - train: {epochs: 1}\n"
                      f"  - quantize: {{type: Int8Static, observer: percentile, observer_kwargs: {kwargs}}}\n")
    assert main(["run", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert capsys.readouterr().err.count("stages[1].quantize") >= 1
    with pytest.raises(RecipeError, match=msg):
        load_recipe(recipe)
    assert not (tmp_path / "run").exists()  # nothing trained


@pytest.mark.parametrize("data,msg", [
    ("{name: tinyshakespeare, options: {block_size: 8, colour: red}}", r"unknown option\(s\) \['colour'\]"),
    ("{name: digits, options: {x: 1}}", r"data.options: dataset 'digits': unknown option"),
])
def test_bad_data_options_are_refused_at_parse(data, msg):
    with pytest.raises(RecipeError, match=msg):
        parse_recipe_text(f"model: {{zoo: mlp}}\ndata: {data}\nstages: [{{train: {{epochs: 1}}}}]")


def test_bad_zoo_args_are_refused_at_parse():
    with pytest.raises(RecipeError, match=r"model.args: unknown argument\(s\) \['widht'\] of zoo model 'mlp'"):
        parse_recipe_text("model: {zoo: mlp, args: {widht: 3}}\nstages: [{train: {epochs: 1}}]")


def test_missing_root_in_a_recipe_is_an_error(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {zoo: mlp, args: {hidden: [8]}}\ndata: {name: mnist, root: no_such_dir}\n"
                      "stages: [{train: {epochs: 1}}]")
    assert main(["run", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "no_such_dir does not exist" in capsys.readouterr().err
