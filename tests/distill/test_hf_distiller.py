"""The Distiller with Hugging Face students/teachers: dict batches, ModelOutputs, output-field features."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from slimtorch.core.errors import SlimtorchError
from slimtorch.distill import KD, AttentionTransfer, Distiller, Hint, MutualLearning, kd_loss

from .tiny_hf import bert_classifier, gpt2, image_batch, llama, text_batch, vit


def _shifted_ce(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


FAMILIES = {
    # name: (model builder, batch, labels of the batch, task loss of the student's logits by hand)
    "bert": (bert_classifier, text_batch(), torch.tensor([0, 2, 1, 2]), F.cross_entropy),
    "llama_gqa": (llama, text_batch(), None, _shifted_ce),
    "gpt2": (gpt2, text_batch(), None, _shifted_ce),
    "vit": (vit, image_batch(), torch.tensor([0, 1, 2, 1]), F.cross_entropy),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_distiller_step_with_each_model_output_family(family):
    build, batch, labels, task_by_hand = FAMILIES[family]
    if labels is None:  # causal LM: the labels are the input ids themselves
        labels = batch["input_ids"]
    teacher = build(seed=1)
    student = build(seed=2)
    losses = [KD(temperature=2.0),
              Hint(student_layer="hidden_states.1", teacher_layer="hidden_states.2", adapter="identity"),
              AttentionTransfer(student_layers="attentions.0", teacher_layers="attentions.1", weight=1.0)]
    d = Distiller(student, teacher, losses, example_inputs=batch)
    out = d(batch, labels)

    # the same forwards by hand: every named input (mask included) reaches both models
    with torch.no_grad():
        s = copy.deepcopy(student).train()(**batch, output_hidden_states=True, output_attentions=True)
        t = teacher(**batch, output_hidden_states=True, output_attentions=True)
    assert torch.allclose(out["output"], s.logits, atol=1e-5)
    assert float(out["task"]) == pytest.approx(float(task_by_hand(s.logits, labels)), rel=1e-4)
    assert float(out["kd"]) == pytest.approx(float(kd_loss(s.logits, t.logits, 2.0)), rel=1e-4, abs=1e-7)
    assert float(out["hint"]) == pytest.approx(float(F.mse_loss(s.hidden_states[1], t.hidden_states[2])), rel=1e-4)
    assert s.attentions[0].shape[1] == student.config.num_attention_heads  # query heads, also under GQA
    total = sum(float(out[k]) for k in ("task", "kd", "hint", "at"))
    assert float(out["loss"].detach()) == pytest.approx(total, rel=1e-5)

    out["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_distiller_feeds_the_attention_mask():
    """Padded positions hold random ids: were the mask dropped, the student's logits would differ."""
    teacher, student = bert_classifier(seed=1), bert_classifier(seed=2)
    batch = text_batch()
    d = Distiller(student, teacher, [KD()], task_weight=0.0)
    out = d(batch)
    student.eval()
    with torch.no_grad():
        with_mask = student(**batch).logits
        without = student(input_ids=batch["input_ids"]).logits
    assert (with_mask - without).abs().max() > 1e-2 * with_mask.abs().max()
    assert torch.allclose(out["output"], with_mask, atol=1e-5)


def test_output_field_errors_name_what_the_output_holds():
    teacher, student = bert_classifier(seed=1), bert_classifier(seed=2)
    batch = text_batch()
    with pytest.raises(SlimtorchError, match=r"student feature 'hidden_states.9': 'hidden_states' has 3 entries "
                                             r"\(indices 0..2\)"):
        Distiller(student, teacher, [Hint(student_layer="hidden_states.9", teacher_layer="hidden_states.1")],
                  example_inputs=batch)
    with pytest.raises(SlimtorchError, match=r"feature 'hidden_states.first': after the output field "
                                             r"'hidden_states' comes a layer index"):
        Distiller(student, teacher, [Hint(student_layer="hidden_states.first", teacher_layer="hidden_states.1")],
                  example_inputs=batch)
    with pytest.raises(SlimtorchError, match=r"output field 'hidden_states' holds 3 tensors; name one"):
        Distiller(student, teacher, [Hint(student_layer="hidden_states", teacher_layer="hidden_states.1")],
                  example_inputs=batch)


def test_output_field_of_a_plain_model_is_an_error():
    student = torch.nn.Sequential(torch.nn.Linear(4, 3))
    teacher = torch.nn.Sequential(torch.nn.Linear(4, 3))
    with pytest.raises(SlimtorchError, match="reads an output field, but the model returned a Tensor"):
        Distiller(student, teacher, [Hint(student_layer="logits", teacher_layer="0")],
                  example_inputs=torch.randn(2, 4))


def test_mutual_learning_takes_dict_batches():
    a, b = bert_classifier(seed=1), bert_classifier(seed=2)
    batch, y = text_batch(), torch.tensor([0, 1, 2, 0])
    out = MutualLearning([a, b])(batch, y)
    with torch.no_grad():
        za, zb = a(**batch).logits, b(**batch).logits
    assert torch.allclose(out["outputs"][1], zb, atol=1e-5)
    assert float(out["task_0"]) == pytest.approx(float(F.cross_entropy(za, y)), rel=1e-4)
