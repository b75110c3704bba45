"""What the training loop exposes to callbacks, and what ``fit`` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn


@dataclass
class TrainState:
    """The loop's live state, passed to every callback hook.

    Attributes:
        model: the module being trained (unwrapped, never the DDP wrapper).
        optimizer: the optimizer.
        epoch: current epoch, 0-based (during ``on_epoch_end``: the epoch that just finished).
        step: optimizer steps taken so far (global, across epochs).
        total_steps: steps the whole run will take.
        epochs: epochs the whole run will take.
        metrics: the latest metrics (``loss`` during steps; train and eval metrics at epoch end).
        batch_output: the forward output of the last step (tensor or dict), for callbacks that log it.
        precision: ``"fp32"`` or ``"bf16"`` (autocast of the forward pass): what ``fit``'s ``precision``
            resolved to (never ``"auto"``).
        channels_last: whether image batches are fed in the NHWC memory format.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    epoch: int = 0
    step: int = 0
    total_steps: int = 0
    epochs: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    batch_output: Any = None
    precision: str = "fp32"
    channels_last: bool = False


class Callback(Protocol):
    """Any object with some of these methods can be passed in ``fit(callbacks=[...])``."""

    def on_train_begin(self, state: TrainState) -> None: ...

    def on_step_end(self, state: TrainState) -> None: ...

    def on_epoch_end(self, state: TrainState) -> None: ...


@dataclass
class FitResult:
    """The trained model and one metrics dict per epoch (``epoch``, ``train_loss``, ``val_accuracy``, ...).

    Attributes:
        model: the trained module (the one passed to ``fit``).
        history: one metrics dict per epoch, including the epochs of a resumed run's earlier attempts.
        precision: the precision the run trained in, ``"fp32"`` or ``"bf16"`` (``"auto"`` resolved).
    """

    model: nn.Module
    history: list[dict[str, float]]
    precision: str = "fp32"

    @property
    def final(self) -> dict[str, float]:
        """Metrics of the last epoch."""
        return self.history[-1] if self.history else {}
