"""TinyBERT-style layer distillation: the DistilBERT student, the loss formulas, training, save/reload."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slimtorch.core.errors import SlimtorchError
from slimtorch.distill import (
    TinyBERT,
    TinyBERTDistiller,
    attention_mse_loss,
    embedding_cosine_loss,
    find_layers,
    hidden_mse_loss,
    layer_drop_student,
    soft_cross_entropy,
    uniform_mapping,
)
from slimtorch.train import fit

from .tiny_hf import bert, bert_classifier, gpt2, llama, text_batch, transformers


# ---- the student ------------------------------------------------------------------------------------------
def test_uniform_mapping_is_every_kth_layer_ending_with_the_last():
    assert uniform_mapping(4, 2) == (1, 3)  # (i + 1) k - 1 with k = 2
    assert uniform_mapping(6, 3) == (1, 3, 5)
    assert uniform_mapping(12, 4) == (2, 5, 8, 11)
    assert uniform_mapping(6, 6) == tuple(range(6))
    with pytest.raises(SlimtorchError, match="the student must have between 1 and 4 layers"):
        uniform_mapping(4, 5)


def test_student_from_every_second_layer_copies_the_teacher_layers():
    teacher = bert(layers=4)
    student = layer_drop_student(teacher, every=2)
    assert student.config.num_hidden_layers == 2 and len(student.encoder.layer) == 2
    assert teacher.config.num_hidden_layers == 4 and len(teacher.encoder.layer) == 4  # left unchanged
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    for i, j in enumerate((1, 3)):  # student layer i <- teacher layer (i + 1) * 2 - 1
        for k, v in t_sd.items():
            if k.startswith(f"encoder.layer.{j}."):
                assert torch.equal(s_sd[k.replace(f"layer.{j}.", f"layer.{i}.")], v), k
    for k, v in t_sd.items():
        if k.startswith("embeddings."):
            assert torch.equal(s_sd[k], v)
    assert all(s.data_ptr() != t.data_ptr() for s, t in zip(student.parameters(), teacher.parameters()))
    # every block shares the student's own config (not a private copy)
    assert all(m.config is student.config for m in student.modules() if hasattr(m, "config"))


def test_student_with_a_custom_mapping_and_its_errors():
    teacher = bert(layers=4)
    student = layer_drop_student(teacher, mapping=[0, 3])
    for i, j in ((0, 0), (1, 3)):
        assert torch.equal(student.encoder.layer[i].intermediate.dense.weight,
                           teacher.encoder.layer[j].intermediate.dense.weight)
    with pytest.raises(SlimtorchError, match=r"every=3: keep every k-th of the teacher's 4 layers needs an integer"):
        layer_drop_student(teacher, every=3)
    with pytest.raises(SlimtorchError, match=r"layer mapping \[0, 4\]: each entry is a teacher layer index in 0..3"):
        layer_drop_student(teacher, mapping=[0, 4])
    with pytest.raises(SlimtorchError, match=r"layers_path='encoder' is no non-empty ModuleList of BertModel; its "
                                             r"ModuleLists are \['encoder.layer'\]"):
        layer_drop_student(teacher, layers_path="encoder")
    with pytest.raises(SlimtorchError, match=r"cannot find the layers of Linear"):
        layer_drop_student(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("build, path", [(llama, "model.layers"), (gpt2, "transformer.h")])
def test_student_of_causal_lms_runs_with_renumbered_cache_slots(build, path):
    teacher = build(layers=4)
    assert find_layers(teacher)[0] == path
    student = layer_drop_student(teacher, every=2)
    assert student.config.num_hidden_layers == 2
    idx = [m.layer_idx for m in student.modules() if isinstance(getattr(m, "layer_idx", None), int)]
    assert sorted(set(idx)) == [0, 1]
    batch = text_batch()
    out = student(**batch, use_cache=True)  # a KV cache of 2 layers, filled by layers 0 and 1
    assert out.logits.shape == (4, 10, teacher.config.vocab_size)


# ---- the losses against their formulas ----------------------------------------------------------------------
def test_pure_losses_match_their_formulas():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5, 8, generator=g), torch.randn(3, 5, 8, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    keep = mask.bool()
    # no mask: the plain means
    assert float(hidden_mse_loss(s, t)) == pytest.approx(float(F.mse_loss(s, t)), rel=1e-6)
    assert float(embedding_cosine_loss(s, t)) == pytest.approx(
        float((1 - F.cosine_similarity(s, t, dim=-1)).mean()), rel=1e-6)
    # mask: only real tokens
    assert float(hidden_mse_loss(s, t, mask)) == pytest.approx(float(F.mse_loss(s[keep], t[keep])), rel=1e-6)
    cos = [1 - F.cosine_similarity(s[b, i], t[b, i], dim=0) for b in range(3) for i in range(5) if mask[b, i]]
    assert float(embedding_cosine_loss(s, t, mask)) == pytest.approx(float(torch.stack(cos).mean()), rel=1e-6)
    # attention: 1/h sum_heads MSE over (query, key) pairs of real tokens
    a_s = torch.rand(3, 2, 5, 5, generator=g).softmax(-1)
    a_t = torch.rand(3, 2, 5, 5, generator=g).softmax(-1)
    assert float(attention_mse_loss(a_s, a_t)) == pytest.approx(
        float(sum(F.mse_loss(a_s[:, h], a_t[:, h]) for h in range(2)) / 2), rel=1e-6)
    sq = [float((a_s[b, h, i, j] - a_t[b, h, i, j]) ** 2) for b in range(3) for h in range(2) for i in range(5)
          for j in range(5) if mask[b, i] and mask[b, j]]
    assert float(attention_mse_loss(a_s, a_t, mask)) == pytest.approx(sum(sq) / len(sq), rel=1e-6)
    # TinyBERT eq. 10
    z_s, z_t = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    ref = -(F.softmax(z_t / 2, -1) * F.log_softmax(z_s / 2, -1)).sum(-1).mean()
    assert float(soft_cross_entropy(z_s, z_t, 2.0)) == pytest.approx(float(ref), rel=1e-6)
    with pytest.raises(SlimtorchError, match=r"hidden_mse_loss: student \(3, 5, 8\) and teacher \(3, 5, 4\) differ"):
        hidden_mse_loss(s, t[..., :4])
    with pytest.raises(SlimtorchError, match=r"attention_mask of shape \(3, 4\) does not fit features of shape"):
        hidden_mse_loss(s, t, mask[:, :4])


def test_distiller_terms_are_the_formulas_on_the_models_outputs():
    teacher = bert(layers=4, seed=1)
    student = bert(layers=2, seed=2)  # a fresh student: every term is far from 0
    cfg = TinyBERT(mapping=(1, 3), embedding_weight=0.5, hidden_weight=2.0, attention_weight=3.0)
    d = TinyBERTDistiller(student, teacher, cfg)
    batch = text_batch()
    out = d(batch)
    mask = batch["attention_mask"]
    with torch.no_grad():
        s = student(**batch, output_hidden_states=True, output_attentions=True)
        t = teacher(**batch, output_hidden_states=True, output_attentions=True)
    emb = embedding_cosine_loss(s.hidden_states[0], t.hidden_states[0], mask)
    hid = hidden_mse_loss(s.hidden_states[1], t.hidden_states[2], mask) + hidden_mse_loss(
        s.hidden_states[2], t.hidden_states[4], mask)
    att = attention_mse_loss(s.attentions[0], t.attentions[1], mask) + attention_mse_loss(
        s.attentions[1], t.attentions[3], mask)
    assert float(out["embedding"]) == pytest.approx(0.5 * float(emb), rel=1e-5)
    assert float(out["hidden"]) == pytest.approx(2.0 * float(hid), rel=1e-5)
    assert float(out["attention"]) == pytest.approx(3.0 * float(att), rel=1e-5)
    assert float(out["loss"].detach()) == pytest.approx(float(0.5 * emb + 2 * hid + 3 * att), rel=1e-5)
    assert float(att) > 0 and float(hid) > 0 and float(emb) > 0
    assert teacher.config._attn_implementation == "eager"  # switched so attention maps exist


def test_padded_positions_do_not_count():
    """Changing the ids of padded positions changes nothing; were the mask dropped, the loss would move."""
    teacher = bert(layers=4, seed=1)
    d = TinyBERTDistiller(layer_drop_student(teacher), teacher)
    batch = text_batch()
    other = dict(batch, input_ids=batch["input_ids"].clone())
    other["input_ids"][batch["attention_mask"] == 0] = 1
    d.eval()
    with torch.no_grad():
        a, b = d(batch)["loss"], d(other)["loss"]
        unmasked = d({"input_ids": batch["input_ids"]})["loss"]
    assert float(a) == pytest.approx(float(b), rel=1e-5)
    assert abs(float(unmasked) - float(a)) > 1e-3 * float(a)


def test_projections_when_widths_differ_and_prediction_loss():
    teacher = bert_classifier(layers=2, seed=1)
    cfg = transformers.BertConfig(**{**teacher.config.to_dict(), "hidden_size": 16, "intermediate_size": 32,
                                     "num_hidden_layers": 1})
    torch.manual_seed(3)
    student = transformers.BertForSequenceClassification(cfg)
    d = TinyBERTDistiller(student, teacher, TinyBERT(prediction_weight=1.0, temperature=2.0))
    assert isinstance(d.hidden_proj, torch.nn.Linear) and d.hidden_proj.weight.shape == (32, 16)
    assert d.mapping == (1,)
    batch = text_batch()
    out = d(batch)
    with torch.no_grad():
        s = student(**batch, output_hidden_states=True)
        t = teacher(**batch, output_hidden_states=True)
        hid = hidden_mse_loss(d.hidden_proj(s.hidden_states[1]), t.hidden_states[2], batch["attention_mask"])
    assert float(out["hidden"]) == pytest.approx(float(hid), rel=1e-5)
    assert float(out["prediction"]) == pytest.approx(float(soft_cross_entropy(s.logits, t.logits, 2.0)), rel=1e-5)
    out["loss"].backward()
    assert d.hidden_proj.weight.grad is not None and d.embedding_proj.weight.grad is not None
    assert "attention" not in TinyBERTDistiller(student, teacher, TinyBERT(attention_weight=0.0))(batch)
    narrow_heads = transformers.BertModel(transformers.BertConfig(**{**cfg.to_dict(), "num_attention_heads": 2}))
    with pytest.raises(SlimtorchError, match="the student has 2 heads and the teacher 4; set attention_weight=0"):
        TinyBERTDistiller(narrow_heads, teacher)


def test_config_validation_and_round_trip():
    cfg = TinyBERT(mapping=[1, 3], hidden_weight=0.5)
    assert cfg.mapping == (1, 3)
    assert TinyBERT.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="hidden_weight"):
        TinyBERT(hidden_weight=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        TinyBERT(temperature=0.0)
    with pytest.raises(ValueError, match="every loss weight is 0"):
        TinyBERT(embedding_weight=0, hidden_weight=0, attention_weight=0)
    with pytest.raises(ValueError, match=r"TinyBERT.mapping must be a list of teacher layer indices, got '13'"):
        TinyBERT(mapping="13")
    with pytest.raises(ValueError, match=r"non-empty list of teacher layer indices >= 0, got \[1, -1\]"):
        TinyBERT(mapping=[1, -1])
    teacher = bert(layers=4)
    with pytest.raises(SlimtorchError, match=r"layer mapping \[1, 2, 3\] has 3 entries but the student has 2"):
        TinyBERTDistiller(layer_drop_student(teacher), teacher, TinyBERT(mapping=(1, 2, 3)))
    with pytest.raises(SlimtorchError, match="the student cannot be its own teacher"):
        TinyBERTDistiller(teacher, teacher)


# ---- training, save and reload -----------------------------------------------------------------------------
def test_short_training_run_lowers_the_loss_and_the_student_reloads(tmp_path):
    teacher = bert(layers=4, seed=1)
    student = layer_drop_student(teacher, every=2)
    d = TinyBERTDistiller(student, teacher)
    data = [text_batch(batch=8, length=10, seed=s) for s in range(4)]  # unlabeled: no 'labels'

    def eval_loss() -> float:
        d.eval()
        with torch.no_grad():
            return sum(float(d(b)["loss"]) for b in data) / len(data)

    before = eval_loss()
    result = fit(d, data, epochs=4, optimizer="adamw", lr=3e-3, weight_decay=0.0, progress=False)
    after = eval_loss()
    assert after < 0.7 * before, (before, after)
    assert {"train_embedding", "train_hidden", "train_attention"} <= set(result.history[-1])
    assert all(p.grad is None for p in teacher.parameters())

    student.save_pretrained(tmp_path)
    reloaded = transformers.AutoModel.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_hidden_layers == 2 and len(reloaded.encoder.layer) == 2
    student.eval()
    batch = text_batch()
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).last_hidden_state, student(**batch).last_hidden_state, atol=1e-5)
