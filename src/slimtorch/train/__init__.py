"""Training: one model-agnostic loop with progress bar, checkpoints, resume and DDP support."""

from slimtorch.train.checkpoint import atomic_torch_save, load_checkpoint
from slimtorch.train.fit import cross_entropy, fit, product_module
from slimtorch.train.optim import OPTIMIZERS, SCHEDULES
from slimtorch.train.state import Callback, FitResult, TrainState

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "Callback",
    "FitResult",
    "TrainState",
    "atomic_torch_save",
    "cross_entropy",
    "fit",
    "load_checkpoint",
    "product_module",
]
