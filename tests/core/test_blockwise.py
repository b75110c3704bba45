"""Sequential block-wise calibration: block discovery, block-0 capture with kwargs, replay, bad input."""

from __future__ import annotations

import pytest
import torch
from tests.llm_models import dict_batches, logits, tiny_char_gpt, tiny_llama
from torch import nn

from slimtorch.core.batches import ModelInputs
from slimtorch.core.blockwise import (
    calibrate_blockwise,
    calibration_inputs,
    capture_block_inputs,
    find_blocks,
    input_groups,
    next_inputs,
    token_sequences,
)
from slimtorch.core.errors import SlimtorchError


def test_find_blocks_char_gpt_and_llama():
    assert [n for n, _ in find_blocks(tiny_char_gpt()).blocks] == ["blocks.0", "blocks.1"]
    assert [n for n, _ in find_blocks(tiny_llama()).blocks] == ["model.layers.0", "model.layers.1"]
    assert find_blocks(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))) is None


def test_replaying_blocks_reproduces_the_llama_forward():
    # Block 0's captured args + kwargs (attention mask, rotary embeddings), replayed through every block and
    # the final norm/head, must give the model's own logits: nothing of the call is lost.
    model = tiny_llama()
    batch = dict_batches(96, n=1)[0]
    found = find_blocks(model)
    inputs = capture_block_inputs(model, found.blocks[0][1], [ModelInputs((), batch)])
    assert "position_embeddings" in inputs[0].kwargs or "position_ids" in inputs[0].kwargs
    h = inputs[0]
    with torch.no_grad():
        for _, block in found.blocks:
            out = h(block)
            out = out[0] if isinstance(out, tuple) else out
            h = next_inputs(h, out)
        hidden = h.args[0] if h.args else h.kwargs["hidden_states"]
        replay = model.lm_head(model.model.norm(hidden))
    torch.testing.assert_close(replay, logits(model, batch), rtol=1e-5, atol=1e-5)


def test_calibrate_blockwise_visits_blocks_then_tail_with_progress():
    model = tiny_char_gpt()
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    seen: list[list[str]] = []
    stats = calibrate_blockwise(model, layers, calibration_inputs([torch.randint(0, 65, (2, 16))], "t"),
                                lambda sub, run: (seen.append(sorted(sub)), run()))
    assert stats.mode == "sequential" and stats.blocks == 2 and len(stats.seconds_per_block) == 2
    assert seen[0][0].startswith("blocks.0.") and seen[1][0].startswith("blocks.1.") and seen[2] == ["head"]
    # one block's cached inputs + outputs: 2 * (2 x 16 x 64) float32
    assert stats.activation_bytes == 2 * 2 * 16 * 64 * 4


def test_input_groups_put_qkv_together():
    model = tiny_char_gpt()
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("blocks.0")}
    x = torch.randint(0, 65, (2, 16))
    groups = input_groups(layers, lambda limit=None: [model(x)])
    assert groups == [["blocks.0.attn.q", "blocks.0.attn.k", "blocks.0.attn.v"], ["blocks.0.attn.proj"],
                      ["blocks.0.fc1"], ["blocks.0.fc2"]]


def test_bad_calibration_is_named():
    with pytest.raises(SlimtorchError, match="calibration data is empty"):
        calibration_inputs([], "AWQ")
    with pytest.raises(SlimtorchError, match="needs calibration data"):
        calibration_inputs(None, "AWQ")
    bad = [torch.randn(2, 8), torch.randn(2, 8)]
    bad[1][0, 3] = float("nan")
    with pytest.raises(SlimtorchError, match="calibration batch 1 contains 1 NaN"):
        calibration_inputs(bad, "AWQ")
    with pytest.raises(SlimtorchError, match="batch 0 has sequence length 8, shorter than the required 16"):
        calibration_inputs([torch.zeros(2, 8, dtype=torch.long)], "GPTQ", min_length=16)
    with pytest.raises(SlimtorchError, match="too short for the sequence length 64"):
        token_sequences(torch.arange(10), 64, 4)
    assert token_sequences(torch.arange(100), 16, 3).shape == (3, 16)
