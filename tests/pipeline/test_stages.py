"""Each technique stage through the runner on tiny digits models, and its restore on --resume."""

from __future__ import annotations

from slimtorch.pipeline import parse_recipe, run_recipe

MEASURE = {"repeats": 3, "warmup": 1}
TEACHER = {"train": {"epochs": 2, "lr": 0.1, "batch_size": 128}}
DIGITS_MLP16 = 64 * 16 + 16 + 16 * 10 + 10


def _run(tmp_path, stages, hidden=(16,), resume=False):
    recipe = parse_recipe(
        {
            "model": {"zoo": "mlp", "args": {"hidden": list(hidden)}},
            "data": {"name": "digits"},
            "measure": MEASURE,
            "stages": stages,
        }
    )
    return run_recipe(recipe, tmp_path, progress=False, report=False, resume=resume)


def _resume_last(tmp_path, stages, hidden=(16,)):
    """Drop the last stage's completion marker and resume: earlier stages are restored from their folders."""
    n = len(stages)
    last = sorted(p for p in tmp_path.iterdir() if p.name.startswith(f"{n:02d}-"))[0]
    (last / "stage.json").unlink()
    return _run(tmp_path, stages, hidden, resume=True)


def test_int8_static_writes_an_onnx_file_measured_on_onnxruntime_and_restores(tmp_path):
    stages = [TEACHER, {"quantize": {"type": "Int8Static"}}, {"evaluate": {}}]
    teacher, int8, ev = _run(tmp_path, stages)
    onnx = tmp_path / "02-quantize" / "model.onnx"
    assert int8["runtime"] == "onnxruntime" and onnx.stat().st_size == int8["size_bytes"]
    assert int8["size_bytes"] < teacher["size_bytes"] / 2
    assert abs(int8["accuracy"] - teacher["accuracy"]) <= 0.03
    assert {lay["bits"] for lay in int8["layers"]} == {7}  # the portable target's saturation-free weights
    again = _resume_last(tmp_path, stages)
    assert again[2]["accuracy"] == int8["accuracy"] and again[2]["size_bytes"] == int8["size_bytes"]


def test_deployment_targets_in_a_recipe(tmp_path):
    import onnx as onnx_lib
    import pytest

    from slimtorch.core.errors import SlimtorchError

    def target_of(path):
        return {p.key: p.value for p in onnx_lib.load(str(path)).metadata_props}["slimtorch.target"]

    stages = [TEACHER, {"quantize": {"type": "Int8Static", "target": "x86-vnni"}}, {"export": {}}]
    _, int8, exported = _run(tmp_path / "vnni", stages)
    assert {lay["bits"] for lay in int8["layers"]} == {8} and int8["target"] == "x86-vnni"
    assert target_of(tmp_path / "vnni" / "03-export" / "model.onnx") == "x86-vnni"
    assert exported["target"] == "x86-vnni" and exported["cpu"]["kind"]
    # a portable model re-exported for VNNI CPUs: the export stage's own target
    stages = [TEACHER, {"quantize": {"type": "Int8Static"}}, {"export": {"target": "x86-vnni"}}]
    _run(tmp_path / "portable", stages)
    assert target_of(tmp_path / "portable" / "02-quantize" / "model.onnx") == "portable"
    assert target_of(tmp_path / "portable" / "03-export" / "model.onnx") == "x86-vnni"
    # 8-bit weights cannot be exported for the portable target
    stages = [TEACHER, {"quantize": {"type": "Int8Static", "target": "x86-vnni"}}, {"export": {"target": "portable"}}]
    with pytest.raises(SlimtorchError, match="has 8-bit weights"):
        _run(tmp_path / "bad", stages)
    with pytest.raises(ValueError, match="unknown deployment target 'arm9'"):
        _run(tmp_path / "bad2", [TEACHER, {"export": {"target": "arm9"}}])


def test_weight_only_low_bit_is_deployed_as_matmul_nbits(tmp_path):
    import onnx

    stages = [TEACHER, {"quantize": {"type": "WeightOnly", "bits": 4, "group_size": 16}}]
    teacher, w4 = _run(tmp_path, stages)
    assert w4["runtime"] == "onnxruntime"  # packed 4-bit layers run as ONNX Runtime's MatMulNBits
    ops = [n.op_type for n in onnx.load(str(tmp_path / "02-quantize" / "model.onnx")).graph.node]
    assert "MatMulNBits" in ops
    assert w4["size_bytes"] < teacher["size_bytes"] / 2  # 4-bit codes + group scales vs fp32
    assert {lay["bits"] for lay in w4["layers"]} == {4}


def test_channel_pruning_gives_a_smaller_dense_model(tmp_path):
    teacher, pruned = _run(tmp_path, [TEACHER, {"prune": {"type": "Channel", "ratio": 0.5}}], hidden=(32,))
    assert pruned["params"] == DIGITS_MLP16 and teacher["params"] == 64 * 32 + 32 + 32 * 10 + 10
    assert pruned["macs"] < teacher["macs"] and pruned["size_bytes"] < teacher["size_bytes"]


def test_prune_then_share_writes_a_slim_file_and_restores(tmp_path):
    stages = [TEACHER, {"prune": {"sparsity": 0.5}}, {"share": {"bits": 4}}, {"evaluate": {}}]
    teacher, pruned, shared, ev = _run(tmp_path, stages)
    slim = tmp_path / "03-share" / "model.slim"
    assert slim.stat().st_size == shared["size_bytes"] < pruned["size_bytes"]
    assert shared["nonzero_params"] <= pruned["nonzero_params"]
    assert {lay["bits"] for lay in shared["layers"]} == {4}
    again = _resume_last(tmp_path, stages)
    assert again[3]["accuracy"] == shared["accuracy"]


def test_distill_trains_the_student_from_the_teacher(tmp_path):
    stages = [
        TEACHER,
        {
            "distill": {
                "student": {"zoo": "mlp", "args": {"hidden": [8]}},
                "losses": [{"type": "KD", "temperature": 2.0}],
                "train": {"epochs": 2, "lr": 0.1},
            }
        },
    ]
    teacher, student = _run(tmp_path, stages)
    assert student["params"] == 64 * 8 + 8 + 8 * 10 + 10
    assert student["accuracy"] > 0.5  # trained (chance is 0.1)
    again = _resume_last(tmp_path, stages)
    assert again[1]["accuracy"] == student["accuracy"]


def test_joint_stage_distils_prunes_and_quantizes_in_one_run(tmp_path):
    stages = [
        TEACHER,
        {
            "joint": {
                "student": {"zoo": "mlp", "args": {"hidden": [16]}},
                "prune": {"sparsity": 0.5, "schedule": {"type": "AGP", "frequency": 5}},
                "train": {"epochs": 2, "lr": 0.1},
            }
        },
    ]
    teacher, joint = _run(tmp_path, stages)
    assert joint["params"] == DIGITS_MLP16 and joint["runtime"] == "onnxruntime"
    assert joint["nonzero_params"] == DIGITS_MLP16 - round(0.5 * (64 * 16 + 16 * 10))
    assert {lay["bits"] for lay in joint["layers"]} == {7}  # portable target
    assert (tmp_path / "02-joint" / "model.onnx").stat().st_size == joint["size_bytes"]


def test_distill_in_place_fine_tunes_the_pruned_model_from_a_checkpoint_teacher(tmp_path):
    _run(tmp_path / "t", [TEACHER], hidden=(32,))
    teacher_ckpt = str(tmp_path / "t" / "01-train")
    stages = [
        {"prune": {"type": "Channel", "ratio": 0.5}},
        {"distill": {"teacher": {"zoo": "mlp", "checkpoint": teacher_ckpt}, "train": {"epochs": 2, "lr": 0.05}}},
    ]
    recipe = parse_recipe(
        {
            "model": {"zoo": "mlp", "checkpoint": teacher_ckpt},
            "data": {"name": "digits"},
            "measure": MEASURE,
            "stages": stages,
        }
    )
    source, pruned, distilled = run_recipe(recipe, tmp_path / "d", progress=False, report=False)
    assert source["stage"] == "source" and source["params"] == 64 * 32 + 32 + 32 * 10 + 10
    assert pruned["params"] == distilled["params"] == DIGITS_MLP16  # the student is the pruned model itself
    assert distilled["accuracy"] > 0.5


def test_qat_fine_tunes_clip_the_gradient_norm_unless_the_recipe_says_otherwise(tmp_path, monkeypatch):
    """QAT (and joint, which distils under QAT) fine-tunes clip at QAT_GRAD_CLIP; an explicit value wins."""
    import slimtorch.train
    from slimtorch.quant.workflows.qat import QAT_GRAD_CLIP

    seen: list = []
    real_fit = slimtorch.train.fit

    def spy(*args, **kwargs):
        seen.append(kwargs.get("grad_clip"))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(slimtorch.train, "fit", spy)
    qat = {"type": "QAT", "bits_w": 8, "bits_a": 8}
    _run(tmp_path / "a", [TEACHER, {"quantize": {**qat, "finetune": {"epochs": 1, "lr": 0.001}}}])
    _run(tmp_path / "b", [TEACHER, {"quantize": {**qat, "finetune": {"epochs": 1, "lr": 0.001,
                                                                       "grad_clip": float("inf")}}}])
    _run(tmp_path / "c", [TEACHER, {"joint": {"prune": {"sparsity": 0.5, "schedule": {"type": "AGP", "frequency": 5}},
                                                  "train": {"epochs": 1, "lr": 0.01}}}])
    # each run: the teacher's own training (no clip), then the QAT fine-tune
    assert seen == [None, QAT_GRAD_CLIP, None, float("inf"), None, QAT_GRAD_CLIP]


def test_with_default_clip_fills_only_an_unset_clip():
    from slimtorch.pipeline.options import FitOptions

    assert FitOptions(epochs=1).with_default_clip(1.0).grad_clip == 1.0
    assert FitOptions(epochs=1, grad_clip=5.0).with_default_clip(1.0).grad_clip == 5.0


def test_stage_runners_read_what_a_technique_needs_from_its_declaration():
    from slimtorch.pipeline.stages.compress import NEEDS, TechniqueNeeds, needs_of, prune_produces
    from slimtorch.prune import NM, Channel, Magnitude
    from slimtorch.quant.workflows.qat import QAT

    assert not needs_of(Channel()).leaves_masks and needs_of(Magnitude()).leaves_masks
    assert needs_of(QAT()).trains and not needs_of(NM()).trains

    class Spec:
        technique = Channel()

    assert prune_produces(Spec, "dense") == "dense"
    Spec.technique = NM()
    assert prune_produces(Spec, "dense") == "masked"

    class Structural(NM):  # a subclass declares its own needs; nothing in the stage changes
        pass

    NEEDS.register(Structural, TechniqueNeeds(leaves_masks=False))
    try:
        Spec.technique = Structural()
        assert prune_produces(Spec, "dense") == "dense"
    finally:
        NEEDS.pop(Structural)
