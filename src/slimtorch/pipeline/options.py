"""Typed options shared by pipeline stages: where a model comes from, the data, training and measuring.

The techniques own their configs (``Magnitude``, ``Channel``, ``Int8Static``, ``WeightSharing``, ``KD``,
...); these classes only describe what the pipeline itself adds around them: a model source, a
dataset, the keyword arguments of :func:`slimtorch.train.fit`, and how stages are measured.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from slimtorch.core.config import Config, check_choice, check_positive

#: ``package.module:function`` (a Python import path and an attribute).
FACTORY_PATTERN = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")


def _check_int(name: str, value: Any, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value!r}")


def _check_str(name: str, value: Any, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")


@dataclass
class ModelSource(Config):
    """Where the starting model (or a distillation student) comes from.

    Args:
        zoo: a zoo model name (``slimtorch.models.list_models()``); input/output sizes not given in
            ``args`` are filled from the data (``in_features``, ``num_classes``, ``vocab_size``, ...).
        args: constructor keyword arguments.
        factory: instead of ``zoo``, ``"package.module:function"`` returning an ``nn.Module``
            (called with ``args``).
        checkpoint: weights to start from: a run folder or a ``.safetensors`` file written by
            ``slimtorch.save`` (a relative path is relative to the recipe file).
    """

    zoo: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    factory: str | None = None
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        from slimtorch.models import MODELS

        if (self.zoo is None) == (self.factory is None):
            raise ValueError("give exactly one of zoo (a zoo model name) or factory ('package.module:function')")
        if self.zoo is not None:
            _check_str("zoo", self.zoo)
            MODELS.get(self.zoo)  # unknown names list the valid ones
        if self.factory is not None and (not isinstance(self.factory, str) or not FACTORY_PATTERN.match(self.factory)):
            raise ValueError(f"factory: {self.factory!r} is not of the form 'package.module:function'")
        if not isinstance(self.args, dict) or not all(isinstance(k, str) for k in self.args):
            raise ValueError(f"args must be a mapping of argument names to values, got {self.args!r}")
        _check_str("checkpoint", self.checkpoint)


@dataclass
class DataSpec(Config):
    """The dataset every stage trains, calibrates and evaluates on.

    Args:
        name: a registered dataset (``digits``, ``mnist``, ``cifar10``, ``tinyshakespeare``).
        root: folder holding the data files (default: ``$SLIMTORCH_DATA``, then ``~/.cache/slimtorch``).
        augment: train-time augmentation.
        options: extra keyword arguments of ``slimtorch.data.load`` (e.g. ``{"block_size": 128}``).
        calib_samples: samples drawn (seeded) from the training split for calibration and importance.
        calib_batch_size: batch size of the calibration batches.
        eval_samples: evaluate on a seeded random subset of this many test samples (``None``: all).
    """

    name: str = "digits"
    root: str | None = None
    augment: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    calib_samples: int = 512
    calib_batch_size: int = 64
    eval_samples: int | None = None

    def __post_init__(self) -> None:
        from slimtorch.data import DATASETS

        _check_str("name", self.name, optional=False)
        DATASETS.get(self.name)
        _check_str("root", self.root)
        if not isinstance(self.augment, bool):
            raise ValueError(f"augment must be true or false, got {self.augment!r}")
        if not isinstance(self.options, dict):
            raise ValueError(f"options must be a mapping, got {self.options!r}")
        reserved = sorted(k for k in self.options if k in ("name", "split", "root", "augment"))
        if reserved:
            raise ValueError(f"options.{reserved[0]}: {reserved[0]} is a field of data itself (data: "
                             f"{{{reserved[0]}: ...}}), not a dataset option; options holds only the dataset's own "
                             "keyword arguments (e.g. {block_size: 128})")
        _check_int("calib_samples", self.calib_samples, 1)
        _check_int("calib_batch_size", self.calib_batch_size, 1)
        if self.eval_samples is not None:
            _check_int("eval_samples", self.eval_samples, 1)


@dataclass
class FitOptions(Config):
    """Keyword arguments of :func:`slimtorch.train.fit` for a stage that trains.

    Args:
        epochs: training epochs (0: no training).
        optimizer: ``sgd`` (Nesterov momentum), ``adam`` or ``adamw``.
        lr: peak learning rate.
        momentum: SGD momentum.
        weight_decay: L2 weight decay.
        schedule: ``cosine``, ``step`` or ``constant``.
        warmup_epochs: linear warm-up length in epochs.
        batch_size: training batch size.
        grad_clip: clip the global gradient norm to this value (``None``: no clipping, except in QAT
            fine-tunes, which clip at ``slimtorch.quant.workflows.qat.QAT_GRAD_CLIP`` = 1.0 unless it is set;
            ``.inf`` turns that off).
        precision: ``auto`` (the default): ``bf16`` on CPUs with AMX or AVX-512-BF16, else ``fp32``;
            ``fp32``; or ``bf16`` for bfloat16 autocast of the forward pass (2-3x faster conv training on
            CPUs with AMX/AVX-512-BF16, emulated and slower than fp32 elsewhere; weights stay float32).
        channels_last: train image models in the NHWC memory format.
    """

    epochs: int = 1
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    batch_size: int = 128
    grad_clip: float | None = None
    precision: str = "auto"
    channels_last: bool = False

    def __post_init__(self) -> None:
        from slimtorch.train import OPTIMIZERS, SCHEDULES
        from slimtorch.train.fit import PRECISION_CHOICES

        check_choice("precision", self.precision, sorted(PRECISION_CHOICES))
        _check_int("epochs", self.epochs, 0)
        check_choice("optimizer", self.optimizer, OPTIMIZERS.names())
        check_positive("lr", self.lr)
        check_positive("momentum", self.momentum, allow_zero=True)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        check_choice("schedule", self.schedule, SCHEDULES.names())
        check_positive("warmup_epochs", self.warmup_epochs, allow_zero=True)
        _check_int("batch_size", self.batch_size, 1)
        if self.grad_clip is not None:
            check_positive("grad_clip", self.grad_clip)

    def with_default_clip(self, grad_clip: float) -> FitOptions:
        """These options, with ``grad_clip`` set to ``grad_clip`` when the recipe left it unset."""
        return self if self.grad_clip is not None else dataclasses.replace(self, grad_clip=grad_clip)

    def fit_kwargs(self) -> dict[str, Any]:
        """Everything but ``epochs``, as ``fit`` keyword arguments."""
        d = self.to_dict()
        d.pop("epochs")
        d.pop("version")
        return d


@dataclass
class MeasureOptions(Config):
    """How every stage is measured for the report.

    Args:
        runtime: ``onnxruntime`` (fp32 models exported on the fly; int8 models run from their ONNX file)
            or ``torch``. A model that cannot be exported is timed on ``torch`` and the report says so.
        batch_size: batch of the MAC count and of the latency measurement.
        threads: intra-op threads while timing.
        warmup: untimed runs.
        repeats: timed runs (the median is reported).
    """

    runtime: str = "onnxruntime"
    batch_size: int = 1
    threads: int = 1
    warmup: int = 10
    repeats: int = 50

    def __post_init__(self) -> None:
        check_choice("runtime", self.runtime, ["onnxruntime", "torch"])
        _check_int("batch_size", self.batch_size, 1)
        _check_int("threads", self.threads, 1)
        _check_int("warmup", self.warmup, 0)
        _check_int("repeats", self.repeats, 1)
