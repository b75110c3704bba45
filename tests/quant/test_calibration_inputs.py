"""Calibration feeds every named input (attention masks included) and checks each one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimtorch.core.errors import SlimtorchError
from slimtorch.quant import Int8Dynamic, Int8Static, quantize_
from slimtorch.quant.calibration import iter_calibration, iter_calibration_inputs
from slimtorch.quant.modules.fake_quant import QuantLinear


class MaskedPool(nn.Module):
    """Token embeddings -> Linear -> mean over the tokens the mask keeps -> Linear (B, 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.proj = nn.Linear(16, 16)
        self.head = nn.Linear(16, 4)
        self.seen_masks: list[torch.Tensor] = []

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.proj(self.emb(input_ids))  # (B, T, 16)
        if attention_mask is not None:
            if isinstance(attention_mask, torch.Tensor):  # not the torch.fx proxy of the tracing pass
                self.seen_masks.append(attention_mask)
            m = attention_mask.unsqueeze(-1).float()
            h = (h * m).sum(1) / m.sum(1)  # masked mean: padded tokens do not count
        else:
            h = h.mean(1)
        return self.head(torch.relu(h))


def _batches(n: int = 3) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 49, (4, 6), generator=g)
        mask = torch.ones(4, 6, dtype=torch.long)
        mask[:, 3:] = 0  # half of every sequence is padding
        ids[:, 3:] = 49  # padding token with an outsized embedding: dominates the range if not masked
        out.append({"input_ids": ids, "attention_mask": mask, "labels": torch.zeros(4, dtype=torch.long)})
    return out


def test_calibration_feeds_the_attention_mask_and_the_ranges_depend_on_it() -> None:
    torch.manual_seed(0)
    model = MaskedPool()
    with torch.no_grad():
        model.emb.weight[49] = 40.0  # only the masked padding tokens reach this magnitude
    batches = _batches()
    quantize_(model, Int8Static(), calib_data=batches)
    # every batch reached the model with its own mask (not dropped, not replaced)
    assert len(model.seen_masks) == len(batches)
    for seen, b in zip(model.seen_masks, batches):
        assert torch.equal(seen, b["attention_mask"])
    # the head's input range is the masked mean of real tokens only: had the mask been dropped, the padding
    # rows (value 40 per dim through proj) would dominate the mean and widen the calibrated range
    head: QuantLinear = model.head
    with torch.no_grad():
        h = torch.cat([torch.relu(_masked_mean(model, b)) for b in batches])
        h_unmasked = torch.cat([torch.relu(model.proj(model.emb(b["input_ids"])).mean(1)) for b in batches])
    hi = float(head.input_quant.scale * (255 - head.input_quant.zero_point))
    assert hi == pytest.approx(float(h.max()), rel=0.05)  # calibration sees 7-bit proj weights, h is float
    assert float(h_unmasked.max()) > 2 * hi


def _masked_mean(model: MaskedPool, b: dict[str, torch.Tensor]) -> torch.Tensor:
    h = model.proj(model.emb(b["input_ids"]))
    m = b["attention_mask"].unsqueeze(-1).float()
    return (h * m).sum(1) / m.sum(1)


def test_dynamic_quantization_keeps_named_inputs() -> None:
    torch.manual_seed(0)
    model = MaskedPool()
    report = quantize_(model, Int8Dynamic(), calib_data=None)
    assert set(report.quantized) == {"proj", "head"}
    assert report.details["embeddings"] == ["emb"]
    b = _batches(1)[0]
    model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    assert torch.equal(model.seen_masks[-1], b["attention_mask"])


def test_iter_calibration_inputs_yields_every_named_input_without_the_target() -> None:
    got = list(iter_calibration_inputs(_batches(2)))
    assert [sorted(g.kwargs) for g in got] == [["attention_mask", "input_ids"]] * 2


def test_non_finite_named_input_names_the_batch_and_input() -> None:
    bad = [{"x": torch.zeros(2, 3), "w": torch.zeros(2, 3)}, {"x": torch.zeros(2, 3), "w": torch.zeros(2, 3)}]
    bad[1]["w"][0, 1] = float("nan")
    with pytest.raises(SlimtorchError, match=r"calibration batch 1 input 'w' contains 1 NaN/inf"):
        list(iter_calibration_inputs(bad))


def test_inputs_with_different_batch_sizes_are_refused() -> None:
    with pytest.raises(SlimtorchError, match="calibration batch 0: its inputs disagree on the batch size"):
        list(iter_calibration_inputs([{"input_ids": torch.zeros(2, 3), "attention_mask": torch.zeros(3, 3)}]))


def test_rank_change_of_a_named_input_is_refused() -> None:
    data = [{"input_ids": torch.zeros(2, 3)}, {"input_ids": torch.zeros(2, 3, 1)}]
    with pytest.raises(SlimtorchError, match="calibration batch 1 input 'input_ids' has shape .* in batch 0 it had 2"):
        list(iter_calibration_inputs(data))


def test_single_input_methods_refuse_a_multi_input_batch_instead_of_dropping_the_mask() -> None:
    with pytest.raises(SlimtorchError, match=r"batch 0 has 2 inputs \['input_ids', 'attention_mask'\]"):
        list(iter_calibration(_batches(1)))


def test_bad_batch_type_and_empty_data() -> None:
    with pytest.raises(SlimtorchError, match="calibration batch 0: a batch must be a tensor"):
        list(iter_calibration_inputs([3.0]))
    with pytest.raises(SlimtorchError, match="calibration data is empty"):
        list(iter_calibration_inputs([]))


def test_model_error_names_the_batch_and_its_input_shapes() -> None:
    model = MaskedPool()
    data = [{"input_ids": torch.zeros(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 5)}]
    with pytest.raises(SlimtorchError, match=r"calibration batch 0 with inputs \{'input_ids': \(2, 3\), "
                                             r"'attention_mask': \(2, 5\)\} failed in the model"):
        quantize_(model, Int8Static(), calib_data=data)


def test_frozen_weight_is_fake_quantized_once_per_change() -> None:
    """The weight-grid cache: same values as recomputing, refreshed when the weight changes in place."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8))
    quantize_(model, Int8Dynamic(), calib_data=None)
    layer = model[0]
    with torch.no_grad():
        a = layer._fake_quant_weight()
        assert layer._fake_quant_weight() is a  # cached
        assert torch.equal(a, layer.weight_quant(layer.weight))
        layer.weight.mul_(0.5)  # in-place change bumps the version: recomputed
        b = layer._fake_quant_weight()
    assert b is not a and torch.equal(b, layer.weight_quant(layer.weight).detach())
    # with grad enabled and a trainable weight (QAT), the STE path is used and gradients flow
    y = layer(torch.randn(2, 8)).sum()
    y.backward()
    assert layer.weight.grad is not None
