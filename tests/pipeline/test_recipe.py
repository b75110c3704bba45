"""Recipe validation: every bad input the issue names, all problems at once, round trip, fuzzing."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slimtorch.pipeline import RecipeError, load_recipe, parse_recipe, parse_recipe_text, stage_names
from slimtorch.prune import Magnitude

GOOD = """
model: {zoo: mlp, args: {hidden: [32]}}
data: {name: digits}
stages:
  - train: {epochs: 1, lr: 0.05}
  - prune: {type: Magnitude, sparsity: 0.5, finetune: {epochs: 1}}
  - evaluate: {}
"""


def _recipe(stages: list, **top) -> dict:
    return {"model": {"zoo": "mlp"}, "data": {"name": "digits"}, "stages": stages, **top}


def _problems(data) -> list[str]:
    with pytest.raises(RecipeError) as e:
        parse_recipe(data)
    return e.value.problems


def test_good_recipe_parses_into_technique_configs():
    r = parse_recipe_text(GOOD)
    assert [s.name for s in r.stages] == ["train", "prune", "evaluate"]
    assert r.stages[0].options.epochs == 1 and r.stages[0].options.lr == 0.05
    assert isinstance(r.stages[1].technique, Magnitude) and r.stages[1].technique.sparsity == 0.5
    assert r.stages[1].options.finetune.epochs == 1


def test_round_trip_through_yaml_gives_the_same_recipe():
    r = parse_recipe_text(GOOD)
    again = parse_recipe_text(r.to_yaml())
    assert again.to_dict() == r.to_dict()
    assert again.stage_fingerprint(2) == r.stage_fingerprint(2)


def test_bad_option_value_is_reported_with_its_path():
    probs = _problems(_recipe([{"train": {}}, {"prune": {"type": "Magnitude", "sparsity": 1.5}}]))
    assert probs == ["stages[1].prune.sparsity: 1.5 is not in [0, 1)"]


def test_train_precision_options_parse_and_bad_precision_has_its_path():
    r = parse_recipe(_recipe([{"train": {"epochs": 1, "precision": "bf16", "channels_last": True}}]))
    kw = r.stages[0].options.fit_kwargs()
    assert (kw["precision"], kw["channels_last"]) == ("bf16", True)
    probs = _problems(_recipe([{"train": {"precision": "int4"}}]))
    assert probs == ["stages[0].train.precision: 'int4' is not one of ['auto', 'bf16', 'fp32']"]


def test_precision_defaults_to_auto_in_every_training_option_and_auto_round_trips():
    r = parse_recipe(_recipe([{"train": {"epochs": 1}}, {"prune": {"type": "Magnitude", "finetune": {"epochs": 1}}},
                              {"distill": {"train": {"epochs": 1}}}]))
    assert r.stages[0].options.fit_kwargs()["precision"] == "auto"
    assert r.stages[1].options.finetune.precision == "auto"
    assert r.stages[2].options.train.precision == "auto"
    explicit = parse_recipe(_recipe([{"train": {"epochs": 1, "precision": "auto"}}]))
    assert parse_recipe_text(explicit.to_yaml()).stages[0].options.precision == "auto"
    assert parse_recipe(_recipe([{"train": {"precision": "fp32"}}])).stages[0].options.precision == "fp32"


def test_unknown_keys_are_errors_listing_allowed_keys():
    probs = _problems(_recipe([{"train": {"epochs": 1, "learning_rate": 0.1}}]))
    assert len(probs) == 1
    assert probs[0].startswith("stages[0].train: unknown key(s) ['learning_rate']")
    assert "'lr'" in probs[0]


def test_every_problem_is_reported_at_once():
    data = _recipe([{"train": {"epochs": -1}}, {"prune": {"sparsity": 2.0, "bogus": 1}}, {"quantise": {}}], seed="x")
    data["data"] = {"name": "nope"}
    probs = _problems(data)
    text = "\n".join(probs)
    assert "stages[0].train.epochs must be >= 0, got -1" in text
    assert "stages[1].prune: unknown key(s) ['bogus']" in text
    assert "stages[2]: unknown stage 'quantise'; valid stages: " + ", ".join(stage_names()) in text
    assert "data.name" in text and "unknown dataset 'nope'" in text
    assert "seed must be a non-negative integer" in text
    assert len(probs) == 5


def test_nested_config_problem_has_the_nested_path():
    probs = _problems(_recipe([{"distill": {"student": {"zoo": "mlp"}, "train": {"lr": -1}}}]))
    assert probs == ["stages[0].distill.train.lr must be > 0, got -1"]
    probs = _problems(_recipe([{"distill": {"losses": [{"type": "KD", "temperature": 4}, {"type": "Nope"}]}}]))
    assert len(probs) == 1 and probs[0].startswith("stages[0].distill.losses[1].type: 'Nope' is not one of")


def test_unknown_technique_type_lists_the_registered_ones():
    probs = _problems(_recipe([{"prune": {"type": "Random"}}]))
    assert len(probs) == 1 and probs[0].startswith("stages[0].prune.type: 'Random' is not one of [")
    assert "'Magnitude'" in probs[0] and "'Channel'" in probs[0] and "'NM'" in probs[0]


def test_unknown_stage_lists_valid_stages():
    probs = _problems(_recipe([{"compress": {}}]))
    assert probs == [f"stages[0]: unknown stage 'compress'; valid stages: {', '.join(stage_names())}"]
    for name in ("train", "distill", "prune", "quantize", "share", "export", "evaluate", "joint"):
        assert name in stage_names()


def test_share_after_quantize_explains_the_allowed_order():
    probs = _problems(_recipe([{"quantize": {"type": "Int8Static"}}, {"share": {"bits": 5}}]))
    assert len(probs) == 1
    assert probs[0].startswith(
        "stages[1].share cannot run after stages[0].quantize: it needs a model that is "
        "dense or masked, but the stages before leave it quantized. Allowed order: "
    )
    assert "prune" in probs[0] and "export" in probs[0]


def test_train_after_export_is_refused():
    probs = _problems(_recipe([{"export": {}}, {"evaluate": {}}, {"train": {}}]))
    assert len(probs) == 1 and probs[0].startswith("stages[2].train cannot run after stages[0].export")


def test_malformed_yaml_reports_line_and_column(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model: {zoo: mlp}\nstages:\n  - train: {epochs: 1\n  - evaluate: {}\n")
    with pytest.raises(RecipeError, match=r"malformed YAML at line 4, column \d+") as e:
        load_recipe(p)
    assert str(p) in str(e.value)


def test_missing_checkpoint_is_reported(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("model: {zoo: mlp, checkpoint: runs/teacher}\nstages: [{evaluate: {}}]\n")
    with pytest.raises(
        RecipeError, match=r"model.checkpoint: no model at 'runs/teacher' \(looked for .*runs/teacher\)"
    ):
        load_recipe(p)


def test_missing_recipe_file_and_bad_shapes():
    with pytest.raises(RecipeError, match="no recipe file at"):
        load_recipe("/nonexistent/recipe.yaml")
    assert _problems([1, 2])[0].startswith("a recipe is a mapping")
    assert _problems(_recipe([]))[0].startswith("stages must be a non-empty list")
    assert _problems(_recipe([{"train": {}, "prune": {}}]))[0].startswith("stages[0]: expected one {stage: options}")
    assert _problems({"stages": [{"train": {}}]}) == [
        "model: missing (e.g. model: {zoo: mlp} or model: {factory: 'mypkg.nets:build'})"
    ]
    assert _problems(_recipe([{"train": {}}], model={"zoo": "mlp", "factory": "a:b"}))[0].startswith(
        "model: give exactly one of zoo"
    )


def test_order_is_checked_with_a_stage_specific_state():
    # Channel pruning keeps a dense model; magnitude pruning leaves masks; both may be followed by int8.
    r = parse_recipe(
        _recipe(
            [
                {"prune": {"type": "Channel", "ratio": 0.5}},
                {"prune": {"sparsity": 0.5}},
                {"quantize": {}},
                {"export": {}},
                {"evaluate": {}},
            ]
        )
    )
    assert [s.name for s in r.stages] == ["prune", "prune", "quantize", "export", "evaluate"]


# ---- fuzzing: only RecipeError escapes --------------------------------------------------------------
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=True),
    st.text(max_size=6),
    st.sampled_from(["mlp", "digits", "Magnitude", "KD", "Int8Static", "type", "epochs"]),
)
_keys = st.one_of(
    st.sampled_from(
        [
            "model",
            "data",
            "stages",
            "seed",
            "measure",
            "zoo",
            "args",
            "name",
            "type",
            "train",
            "prune",
            "quantize",
            "share",
            "distill",
            "export",
            "evaluate",
            "joint",
            "epochs",
            "lr",
            "sparsity",
            "finetune",
            "student",
            "losses",
            "label",
            "checkpoint",
            "factory",
            "bits",
        ]
    ),
    st.text(max_size=4),
    st.integers(0, 3),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_keys, inner, max_size=3)),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=st.dictionaries(_keys, _values, max_size=5))
def test_fuzz_documents_only_raise_recipe_error(doc):
    try:
        parse_recipe(doc)
    except RecipeError as e:
        assert e.problems and all(isinstance(p, str) and p for p in e.problems)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stages=st.lists(st.dictionaries(_keys, _values, min_size=1, max_size=2), min_size=1, max_size=4))
def test_fuzz_stage_lists_only_raise_recipe_error(stages):
    try:
        parse_recipe(_recipe(stages))
    except RecipeError as e:
        assert e.problems


@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet="{}[]:-,'\"\n #&*!|>abc01", max_size=60))
def test_fuzz_yaml_text_only_raises_recipe_error(text):
    try:
        parse_recipe_text(text)
    except RecipeError:
        pass


def test_yaml_dump_of_a_parsed_recipe_is_plain_data():
    text = parse_recipe_text(GOOD).to_yaml()
    assert yaml.safe_load(text)["stages"][1]["prune"]["type"] == "Magnitude"
