"""Provenance of a run folder: which recipe it belongs to, and what each stage was computed from.

A run folder is one experiment. Its identity is the recipe's model, data, seed and the list of stage
names; ``--resume`` continues only a run of the same identity (a different one needs ``--overwrite``),
so a report never mixes stages of two experiments. Within a run, every stage records

* ``fingerprint``: a hash of the resolved options of the recipe up to and including this stage
  (:meth:`Recipe.stage_fingerprint`), written to ``started.json`` when the stage starts and to
  ``stage.json`` when it completes;
* ``input_hash``: the previous stage's ``output_hash`` (for the first stage, the starting checkpoint's file
  hash or the recipe's source fingerprint);
* ``output_hash``: the SHA-256 of the files the stage produced (its artefact and ONNX file), or of the
  model's tensors when it wrote none.

On resume a complete stage is reused only if all three still match (and its files still hash to
``output_hash``); an interrupted stage continues only if its ``started.json`` matches, otherwise it starts
over and the runner says why.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimtorch.core.errors import SlimtorchError
from slimtorch.pipeline.run_folder import RECIPE_FILE

#: Written when a stage starts: ``{"fingerprint", "input_hash"}`` of the attempt in that folder.
STARTED_FILE = "started.json"


class RunMismatchError(SlimtorchError):
    """The run folder holds another experiment than the recipe given (refused without ``--overwrite``)."""


def identity(recipe_dict: dict[str, Any]) -> dict[str, Any]:
    """What makes two recipes the same run: model, data, seed and the stage names in order."""
    stages = recipe_dict.get("stages") or []
    names = [next(iter(s)) if isinstance(s, dict) and s else str(s) for s in stages]
    return {"model": recipe_dict.get("model"), "data": recipe_dict.get("data"), "seed": recipe_dict.get("seed", 0),
            "stages": names}


def check_same_run(out: Path, recipe_dict: dict[str, Any]) -> None:
    """Refuse to resume ``out`` with a recipe of another identity (see :func:`identity`).

    Raises:
        RunMismatchError: naming what differs, and ``--overwrite`` as the way to replace the run.
    """
    import yaml

    stored_path = out / RECIPE_FILE
    if not stored_path.is_file():
        raise RunMismatchError(
            f"{out} holds a run that is not a recipe run (no {RECIPE_FILE}: e.g. a `slimtorch train` folder); "
            "pass --overwrite to replace it, or choose another --out folder"
        )
    try:
        stored = yaml.safe_load(stored_path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise RunMismatchError(f"{stored_path} cannot be read ({e}); pass --overwrite to replace the run") from None
    if not isinstance(stored, dict):
        raise RunMismatchError(f"{stored_path} is not a recipe; pass --overwrite to replace the run")
    old, new = identity(stored), identity(recipe_dict)
    differs = [k for k in new if _canon(old.get(k)) != _canon(new[k])]
    if differs:
        detail = "; ".join(f"{k}: {_short(old.get(k))} in the run, {_short(new[k])} in the recipe" for k in differs)
        raise RunMismatchError(
            f"{out} holds a run of a different recipe ({detail}); --resume continues only the same model, data, "
            "seed and stage list (edited stage options are fine). Pass --overwrite to replace the run, or "
            "choose another --out folder"
        )


def _canon(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def _short(v: Any) -> str:
    text = _canon(v)
    return text if len(text) <= 100 else text[:97] + "..."


def file_hash(path: Path, h: Any = None) -> str:
    """SHA-256 (hex) of a file's bytes."""
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensors_hash(model: nn.Module) -> str:
    """SHA-256 (hex) of a model's state dict: names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def output_files(artefact: Path | None, onnx: Path | None) -> list[Path]:
    """The files a stage's output consists of (artefact and ONNX file, those that exist)."""
    return [p for p in (artefact, onnx) if p is not None and Path(p).is_file()]


def output_hash(model: nn.Module, artefact: Path | None, onnx: Path | None) -> str:
    """Hash of a stage's output: its files when it has any, else the model's tensors."""
    files = output_files(artefact, onnx)
    return files_hash(files) if files else "tensors:" + tensors_hash(model)


def files_hash(files: list[Path]) -> str:
    """The ``output_hash`` of a stage whose output is ``files``."""
    return "files:" + hashlib.sha256("|".join(file_hash(Path(p)) for p in files).encode()).hexdigest()


def read_started(stage_dir: Path) -> dict[str, Any] | None:
    """The ``started.json`` of an attempt, or ``None``."""
    try:
        d = json.loads((stage_dir / STARTED_FILE).read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None
