"""compare_with_onnx feeds every named graph input (input_ids, attention_mask) and calls the model with them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimtorch.core.errors import SlimtorchError
from slimtorch.quant import compare_with_onnx


class MaskedMeanPool(nn.Module):
    """Embeds tokens, mean-pools the real ones (``attention_mask``), classifies: the mask changes the output."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.head = nn.Embedding(20, 8), nn.Linear(8, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.emb(input_ids)  # (B, T, 8)
        m = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        m = m.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1))  # (B, 3)


def _export(model: nn.Module, path, ids, mask) -> None:
    torch.onnx.export(model, (ids, mask), str(path), dynamo=False, opset_version=17,
                      input_names=["input_ids", "attention_mask"], output_names=["logits"],
                      dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}})


def test_dict_batches_reach_model_and_onnx_with_their_mask(tmp_path):
    torch.manual_seed(0)
    model = MaskedMeanPool().train()
    ids = torch.randint(0, 20, (4, 6))
    mask = torch.ones(4, 6, dtype=torch.long)
    mask[:2, 3:] = 0
    path = tmp_path / "pool.onnx"
    _export(model, path, ids, mask)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.zeros(4, dtype=torch.long),
             "token_type_ids": torch.zeros_like(ids)}  # keys the graph lacks are not fed
    got = compare_with_onnx(model, path, [batch, (batch, batch["labels"])])
    assert got["samples"] == 8 and got["max_abs_diff"] < 1e-5 and got["top1_agreement"] == 1.0
    assert model.training  # its mode is restored
    # were the mask dropped on either side, the padded rows would differ by this much
    with torch.no_grad():
        assert (model(ids, mask) - model(ids)).abs().max() > 1e-2
    with pytest.raises(SlimtorchError, match=r"a batch dict lacks the ONNX graph inputs \['attention_mask'\]"):
        compare_with_onnx(model, path, [{"input_ids": ids}])


def test_session_feed_takes_named_inputs(tmp_path):
    from slimtorch.metrics import onnx_session, session_feed

    model = MaskedMeanPool().eval()
    ids, mask = torch.randint(0, 20, (2, 5)), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    _export(model, tmp_path / "pool.onnx", ids, mask)
    sess = onnx_session(tmp_path / "pool.onnx")
    feed = session_feed(sess, {"attention_mask": mask, "input_ids": ids, "labels": torch.zeros(2)})
    assert sorted(feed) == ["attention_mask", "input_ids"]
    (out,) = sess.run(None, feed)
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(out), model(ids, mask), atol=1e-5)
    with pytest.raises(ValueError, match=r"\['attention_mask'\] are missing from the given \['input_ids'\]"):
        session_feed(sess, {"input_ids": ids})
