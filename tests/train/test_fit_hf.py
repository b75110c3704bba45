"""Dict batches and Hugging Face outputs in fit, evaluate, taylor gradients and the teacher cache.

Padded positions hold random token ids, so a dropped ``attention_mask`` changes every number checked
here: each test compares with the model run by hand *with* the mask and checks that the run without it
differs.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from slimtorch.core.labels import IGNORE_INDEX, align, shifts_labels  # noqa: E402
from slimtorch.distill import IndexedDataset, cache_teacher_outputs  # noqa: E402
from slimtorch.metrics import evaluate  # noqa: E402
from slimtorch.prune.structured.channel import collect_gradients  # noqa: E402
from slimtorch.train import fit  # noqa: E402

from ..distill.tiny_hf import bert, bert_classifier, llama, text_batch  # noqa: E402

LABELS = torch.tensor([0, 2, 1, 2])


def _classifier_batch() -> dict[str, torch.Tensor]:
    return {**text_batch(), "labels": LABELS}


def _differs(a: torch.Tensor | float, b: torch.Tensor | float) -> bool:
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return bool((a - b).abs().max() > 1e-3 * b.abs().max())


def test_evaluate_dict_batches_feeds_the_mask_and_uses_logits():
    model = bert_classifier().eval()
    batch = _classifier_batch()
    got = evaluate(model, [batch])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        unmasked = model(input_ids=batch["input_ids"]).logits
    assert got["loss"] == pytest.approx(float(F.cross_entropy(logits, LABELS)), rel=1e-5)
    assert got["accuracy"] == pytest.approx(float((logits.argmax(-1) == LABELS).float().mean()))
    assert _differs(F.cross_entropy(unmasked, LABELS), F.cross_entropy(logits, LABELS))


def test_evaluate_causal_lm_shifts_labels_and_skips_padding():
    model = llama().eval()
    assert shifts_labels(model) and not shifts_labels(bert_classifier())
    batch = text_batch()
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
    got = evaluate(model, [{**batch, "labels": labels}])
    with torch.no_grad():
        logits = model(**batch).logits
    z, y = logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
    keep = y != IGNORE_INDEX
    ce = F.cross_entropy(z[keep], y[keep])
    assert got["loss"] == pytest.approx(float(ce), rel=1e-5)
    assert got["perplexity"] == pytest.approx(float(ce.exp()), rel=1e-5)
    assert got["accuracy"] == pytest.approx(float((z[keep].argmax(-1) == y[keep]).float().mean()))
    # (B, T, V) logits pair with (B, T) labels one position later
    a, b = align(model, logits, labels)
    assert a.shape[1] == b.shape[1] == labels.shape[1] - 1


def test_fit_trains_on_dict_batches_with_the_models_own_loss():
    model = bert_classifier()
    batch = _classifier_batch()
    with torch.no_grad():
        own = model(**batch).loss  # dropout is off: the loss of fit's first step, before the update
        unmasked = model(input_ids=batch["input_ids"], labels=LABELS).loss
    seen = []

    class Spy:
        def on_step_end(self, state):
            seen.append(state.metrics["loss"])

    result = fit(model, [batch] * 3, epochs=2, optimizer="adam", lr=1e-2, weight_decay=0.0, progress=False,
                 callbacks=[Spy()], eval_data=[batch])
    assert seen[0] == pytest.approx(float(own), rel=1e-5)
    assert _differs(unmasked, own)
    assert seen[-1] < seen[0]
    assert result.history[-1]["val_loss"] < float(own)


def test_fit_user_loss_fn_gets_aligned_causal_lm_logits():
    model = llama()
    batch = {**text_batch(), "labels": text_batch()["input_ids"]}
    shapes = []

    def loss_fn(logits, target):
        shapes.append((tuple(logits.shape), tuple(target.shape)))
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))

    fit(model, [batch], epochs=1, loss_fn=loss_fn, optimizer="adam", lr=1e-3, progress=False)
    assert shapes == [((4, 9, model.config.vocab_size), (4, 9))]


def test_fit_without_labels_says_what_a_batch_needs():
    with pytest.raises(ValueError, match=r"training batches need a target: \(inputs, targets\) pairs or dicts "
                                         r"with 'labels'; got dict with keys \['attention_mask', 'input_ids'\]"):
        fit(bert_classifier(), [text_batch()], epochs=1, progress=False)


def test_taylor_gradients_of_dict_batches_follow_the_mask():
    model = bert_classifier()
    batch = _classifier_batch()
    grads = collect_gradients(model, [batch])
    ref = copy.deepcopy(model).eval()
    ref(**batch).loss.backward()
    ref_unmasked = copy.deepcopy(model).eval()
    ref_unmasked(input_ids=batch["input_ids"], labels=LABELS).loss.backward()
    for (name, p), q, u in zip(model.named_parameters(), ref.parameters(), ref_unmasked.parameters()):
        if name == "bert.encoder.layer.0.attention.self.query.weight":
            assert torch.allclose(grads[id(p)][0], q.grad, atol=1e-6)
            assert _differs(u.grad, q.grad)
    with pytest.raises(ValueError, match="taylor importance needs batches with targets in data="):
        collect_gradients(model, [text_batch()])


def test_teacher_cache_of_dict_items_uses_every_input(tmp_path):
    teacher = bert_classifier().eval()
    batch = _classifier_batch()
    items = [{k: v[i] for k, v in batch.items()} for i in range(4)]  # a map-style dataset of dicts
    cache = cache_teacher_outputs(teacher, items, tmp_path / "cache", batch_size=3)
    with torch.no_grad():
        logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        unmasked = teacher(input_ids=batch["input_ids"]).logits
    assert torch.allclose(cache(torch.arange(4)), logits, atol=1e-5)
    assert _differs(unmasked, logits)
    inputs, y, i = IndexedDataset(items)[2]
    assert set(inputs) == {"input_ids", "attention_mask"} and int(y) == int(LABELS[2]) and i == 2
    with pytest.raises(ValueError, match=r"IndexedDataset item 0 is a dict without 'labels'"):
        IndexedDataset([text_batch()])[0]


def test_fit_distills_an_encoder_with_dict_batches():
    """fit -> Distiller on unlabeled dict batches: the loss is the hidden-state hint only."""
    from slimtorch.distill import Distiller, Hint

    teacher, student = bert(layers=2, seed=1), bert(layers=2, seed=2)
    batch = text_batch()
    d = Distiller(student, teacher, [Hint(student_layer="hidden_states.2", teacher_layer="hidden_states.2",
                                          adapter="identity")], task_weight=0.0, example_inputs=batch)
    result = fit(d, [batch] * 2, epochs=3, optimizer="adam", lr=1e-2, weight_decay=0.0, progress=False)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0]
