"""What a stage gets to work with: the recipe, its folder, the data (loaded once), models and training."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from slimtorch.pipeline.options import FitOptions, ModelSource
from slimtorch.pipeline.recipe import Recipe


def fit_inputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` reshaped to ``model.input_shape`` when the model flattens its input anyway.

    MLPs (``flattens_input = True``) declare ``input_shape = (in_features,)`` but take images; code that
    checks shapes against ``input_shape`` (calibration, ONNX graphs) gets the flat form.
    """
    shape = getattr(model, "input_shape", None)
    if shape is None or not getattr(model, "flattens_input", False):
        return x
    shape = tuple(int(s) for s in shape)
    if tuple(x.shape[1:]) != shape and math.prod(x.shape[1:]) == math.prod(shape):
        return x.reshape(x.shape[0], *shape)
    return x


def zoo_kwargs(name: str, dataset: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments of zoo model ``name`` sized for ``dataset`` (``overrides`` win).

    Fills, when the constructor takes them: ``in_features`` (flattened sample size), ``in_channels`` and
    ``image_size`` (image samples), ``num_classes``, ``vocab_size`` and ``block_size`` (text).
    """
    from slimtorch.models import MODELS

    params = inspect.signature(MODELS.get(name)).parameters
    x = dataset[0][0]
    guess: dict[str, Any] = {}
    if getattr(dataset, "vocab_size", None):
        guess.update(vocab_size=dataset.vocab_size, block_size=x.shape[-1])
    else:
        guess["in_features"] = math.prod(x.shape)
        if x.dim() == 3:
            guess.update(in_channels=x.shape[0], image_size=x.shape[-1])
        if getattr(dataset, "num_classes", None):
            guess["num_classes"] = dataset.num_classes
    return {**{k: v for k, v in guess.items() if k in params}, **overrides}


@dataclass
class StageContext:
    """Shared by every stage of one run.

    Attributes:
        recipe: the validated recipe.
        run_dir: the run folder (``runs/x``).
        stage_dir: the current stage's folder (``runs/x/03-prune``), set by the runner.
        progress: show training progress bars.
        log: where progress lines go (the CLI prints them; tests pass a no-op).
        allow_code: the user consented to running the recipe's ``factory`` functions (``--allow-code``).
    """

    recipe: Recipe
    run_dir: Path
    stage_dir: Path = Path()
    progress: bool = True
    log: Callable[[str], None] = lambda msg: None
    allow_code: bool = False
    _cache: dict[str, Any] = field(default_factory=dict)

    # ---- data ---------------------------------------------------------------------------------
    def dataset(self, split: str) -> Dataset:
        """The recipe's dataset split (``train`` is augmented when the recipe says so), loaded once."""
        if split not in self._cache:
            from slimtorch import data as sdata

            d = self.recipe.data
            root = self.recipe.resolve(d.root)
            ds = sdata.load(d.name, split, root=root, augment=d.augment and split == "train", **d.options)
            if split == "test" and d.eval_samples is not None and d.eval_samples < len(ds):
                # a seeded random subset: test splits are often sorted by class
                ds = sdata.calibration_subset(ds, d.eval_samples, seed=self.recipe.seed)
            self._cache[split] = ds
        return self._cache[split]

    @property
    def train_set(self) -> Dataset:
        return self.dataset("train")

    @property
    def test_set(self) -> Dataset:
        return self.dataset("test")

    def calib_batches(self, model: nn.Module | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Seeded calibration batches ``(x, y)`` from the training split (without augmentation)."""
        if "calib" not in self._cache:
            from slimtorch import data as sdata

            d = self.recipe.data
            plain = sdata.load(d.name, "train", root=self.recipe.resolve(d.root), **d.options)
            n = min(d.calib_samples, len(plain))
            sub = sdata.calibration_subset(plain, n, seed=self.recipe.seed)
            self._cache["calib"] = list(DataLoader(sub, batch_size=d.calib_batch_size, shuffle=False))
        batches = self._cache["calib"]
        if model is None:
            return batches
        return [(fit_inputs(model, x), y) for x, y in batches]

    def example_inputs(self, model: nn.Module, batch_size: int = 1) -> torch.Tensor:
        """A batch of real test inputs in the shape the model declares (for MACs, latency, export)."""
        x = torch.stack([self.test_set[i][0] for i in range(min(batch_size, len(self.test_set)))])
        while x.shape[0] < batch_size:
            x = torch.cat([x, x])[:batch_size]
        return fit_inputs(model, x)

    # ---- models -------------------------------------------------------------------------------
    def build_model(self, source: ModelSource) -> nn.Module:
        """The model ``source`` describes, with its checkpoint's weights when it names one."""
        from slimtorch import models
        from slimtorch.io.storage import load as load_model

        ckpt = self.recipe.resolve(source.checkpoint)
        if source.zoo is not None:
            if ckpt is not None:
                return load_model(ckpt).train()
            return models.create(source.zoo, **zoo_kwargs(source.zoo, self.train_set, dict(source.args)))
        model = self.call_factory(source)
        if ckpt is not None:
            load_model(ckpt, model=model)
        return model.train()

    def call_factory(self, source: ModelSource) -> nn.Module:
        """Import ``package.module:function`` and call it with ``source.args`` (only with ``allow_code``)."""
        from slimtorch.io.architectures import build_from_factory

        return build_from_factory(str(source.factory), dict(source.args), allow_code=self.allow_code,
                                  what=f"the recipe's model factory {source.factory!r}")

    def restore_model(self, path: Path, like: ModelSource | None = None) -> nn.Module:
        """Reload a model the pipeline saved with ``slimtorch.save`` (user models by their recorded factory)."""
        from slimtorch.io.storage import load as load_model
        from slimtorch.io.storage import read_spec

        spec = read_spec(path)
        if "model" in spec or "factory" in spec or like is None or like.factory is None:
            return load_model(path, allow_code=self.allow_code).train()
        return load_model(path, model=self.call_factory(like)).train()

    # ---- training -----------------------------------------------------------------------------
    def fit(
        self,
        model: nn.Module,
        options: FitOptions,
        callbacks: Sequence[Any] = (),
        out_dir: Path | None = None,
    ) -> Any:
        """``slimtorch.train.fit`` into the stage folder, resuming a checkpoint an earlier attempt left.

        The runner empties a stage's folder before a fresh attempt, so a checkpoint found here always
        belongs to an interrupted attempt of this very stage: a kill loses at most the current epoch.
        The precision ``auto`` resolved to is logged.
        """
        from slimtorch.metrics import cpu_info
        from slimtorch.train import fit

        result = fit(
            model,
            self.train_set,
            options.epochs,
            eval_data=self.test_set,
            out_dir=out_dir or self.stage_dir,
            resume=True,
            seed=self.recipe.seed,
            callbacks=list(callbacks),
            progress=self.progress,
            **options.fit_kwargs(),
        )
        if options.precision == "auto" and options.epochs > 0:
            self.log(f"  precision auto -> {result.precision} on {cpu_info()}")
        return result
