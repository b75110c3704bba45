"""Pieces shared by the CLI sub-commands: building a zoo model that fits a dataset, run folders."""

from __future__ import annotations

import argparse
import inspect
import json
import math
from pathlib import Path
from typing import Any

from torch import nn

from slimtorch.io.storage import MODEL_FILE
from slimtorch.models import MODELS, create


def parse_kv(items: list[str] | None) -> dict[str, Any]:
    """``["hidden=[300,100]", "dropout=0.5"]`` -> ``{"hidden": [300, 100], "dropout": 0.5}`` (values as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def add_set_argument(p: argparse.ArgumentParser, what: str) -> None:
    """``--set KEY=VALUE`` (repeatable): ``what`` (a config field), the value read as YAML; see :func:`parse_kv`."""
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help=f"{what}, value as YAML (repeatable; a dotted key reaches a nested config)")


def model_kwargs_for_data(name: str, dataset: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """Fill a zoo constructor's input/output size arguments from a dataset's first sample.

    Only arguments the constructor accepts and the user did not set are filled: ``in_features``
    (flattened sample size), ``in_channels`` and ``image_size`` (image samples), ``num_classes``,
    ``vocab_size`` and ``block_size`` (text).
    """
    params = inspect.signature(MODELS.get(name)).parameters
    x = dataset[0][0]
    guess: dict[str, Any] = {}
    if getattr(dataset, "vocab_size", None):
        guess["vocab_size"] = dataset.vocab_size
        guess["block_size"] = x.shape[-1]
    else:
        guess["in_features"] = math.prod(x.shape)
        if x.dim() == 3:
            guess["in_channels"] = x.shape[0]
            guess["image_size"] = x.shape[-1]
        n = getattr(dataset, "num_classes", None)
        if n:
            guess["num_classes"] = n
    kw = {k: v for k, v in guess.items() if k in params}
    kw.update(overrides)
    return kw


def build_model(name: str, dataset: Any, overrides: dict[str, Any]) -> nn.Module:
    """A zoo model sized for ``dataset`` (see :func:`model_kwargs_for_data`)."""
    return create(name, **model_kwargs_for_data(name, dataset, overrides))


def check_out_dir(out: str | Path, overwrite: bool, resume: bool = False) -> Path:
    """Refuse an output folder that already holds a run unless ``--overwrite`` (or ``--resume``)."""
    p = Path(out)
    if (p / MODEL_FILE).exists() and not (overwrite or resume):
        raise FileExistsError(f"{p} already holds a run; pass --overwrite to replace it"
                              + (" or --resume to continue it" if resume is not None else ""))
    p.mkdir(parents=True, exist_ok=True)
    return p


def load_model(path: str | Path) -> nn.Module:
    """Any model file the CLI accepts: a run folder, a ``.safetensors`` file or a ``.slim`` file."""
    from slimtorch import share
    from slimtorch.io.storage import load

    return share.load(path) if share.is_slim_file(path) else load(path)


def stored_file(path: str | Path) -> Path:
    """The file whose size is the model's size on disk (``model.safetensors`` inside a run folder)."""
    p = Path(path)
    return p / MODEL_FILE if p.is_dir() else p


def add_data_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    """``--data`` and ``--root``."""
    p.add_argument("--data", required=required, help="dataset name: digits, mnist, cifar10, tinyshakespeare")
    p.add_argument("--root", default=None, help="folder holding the data files (default: $SLIMTORCH_DATA, then "
                   "~/.cache/slimtorch)")


def config_record(config: Any) -> dict[str, Any]:
    """A config as a report file shows it: ``{"type": ..., field: value}`` (callables and the version left out)."""
    d = config.to_dict()
    d.pop("version", None)
    return {"type": type(config).__name__, **{k: v for k, v in d.items() if not callable(v)}}


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2, default=float) + "\n")
