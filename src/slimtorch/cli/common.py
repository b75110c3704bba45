"""Pieces shared by the CLI sub-commands: building a zoo model that fits a dataset, run folders."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import inspect
import math
from pathlib import Path
from typing import Any

from torch import nn

from slimtorch.io.atomic import atomic_write_json, atomic_write_text, ensure_dir, sweep_temp_files
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


#: A config flag: ``(flag, config key(s), argparse keywords)``. The flag sets the first of its keys the chosen
#: config has (``--bits`` -> ``bits`` or ``bits_w``); a dotted key reaches a nested config
#: (``observer_kwargs.percentile``). A config with none of the keys refuses the flag, naming its keys.
ConfigFlag = tuple[str, "str | tuple[str, ...]", dict[str, Any]]


def flag_dest(flag: str) -> str:
    """Where argparse keeps a config flag's value (``--group-size`` -> ``cfg_group_size``)."""
    return f"cfg_{flag[2:].replace('-', '_')}"


def add_config_flags(group: Any, flags: list[ConfigFlag]) -> None:
    """Add each flag of ``flags`` to ``group`` (value None unless given, so only given flags count)."""
    for flag, _key, kw in flags:
        if "action" not in kw and "choices" not in kw:  # help shows --bits BITS, not the internal dest
            kw = {"metavar": flag[2:].upper().replace("-", "_"), **kw}
        group.add_argument(flag, dest=flag_dest(flag), default=None, **kw)


def config_data(args: argparse.Namespace, flags: list[ConfigFlag], config_type: type,
                base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The plain data ``config_type.from_dict`` takes: ``base`` (e.g. a scheme's defaults), then the given
    ``flags``; ``--set`` comes last (:func:`apply_sets`). List values of one key from several flags add up.

    Raises:
        ValueError: a given flag whose keys ``config_type`` lacks (the message names the allowed keys).
    """
    fields = {f.name for f in dataclasses.fields(config_type)}
    fields |= set(getattr(config_type, "aliases", {}))
    d = copy.deepcopy(base or {})
    for flag, keys, _ in flags:
        value = getattr(args, flag_dest(flag))
        if value is None:
            continue
        candidates = (keys,) if isinstance(keys, str) else keys
        key = next((k for k in candidates if k.split(".")[0] in fields), None)
        if key is None:
            raise ValueError(f"{flag} sets {' or '.join(candidates)}, which {config_type.__name__} does not have; "
                             f"allowed keys: {sorted(fields)} (--set KEY=VALUE)")
        if isinstance(value, list):
            value = list(d.get(key, [])) + value
        put_key(d, key, value)
    return d


def apply_sets(d: dict[str, Any], items: list[str] | None) -> dict[str, Any]:
    """Apply ``--set KEY=VALUE`` items (:func:`parse_kv`) to ``d`` in place, dotted keys reaching nested dicts."""
    for key, value in parse_kv(items).items():
        put_key(d, key, value)
    return d


def put_key(d: dict[str, Any], key: str, value: Any) -> None:
    """``d[a][b] = value`` for ``key="a.b"``, creating nested dicts on the way; a number picks an item of a
    list (``losses.0.temperature``)."""
    keys = key.split(".")
    node: Any = d
    for depth, k in enumerate(keys):
        at: Any = k
        if isinstance(node, list):
            if not (k.isdigit() and int(k) < len(node)):
                raise ValueError(f"--set {key}: {k!r} is not an index of {'.'.join(keys[:depth])} "
                                 f"(a list of {len(node)})")
            at = int(k)
        elif not isinstance(node, dict):
            raise ValueError(f"--set {key}: {keys[depth - 1]} is not a nested config")
        if depth == len(keys) - 1:
            node[at] = value
        else:
            node = node.setdefault(at, {}) if isinstance(node, dict) else node[at]


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


#: Written into an output folder while a command that has no ``--resume`` fills it, removed when it succeeds:
#: a rerun of the same command after a kill replaces the interrupted attempt instead of refusing the folder.
INCOMPLETE_FILE = ".slimtorch-incomplete"


def check_out_dir(out: str | Path, overwrite: bool, resume: bool | None = None, command: str | None = None) -> Path:
    """Refuse an output folder that already holds a run unless ``--overwrite`` (or ``--resume``).

    Args:
        out: the folder.
        overwrite, resume: the command's flags (``resume=None``: the command has no ``--resume``).
        command: for commands without ``--resume``: mark the folder as being filled by ``command`` until
            :func:`finish_out_dir`, so a rerun after a kill is not refused.
    """
    p = Path(out)
    marker = p / INCOMPLETE_FILE
    interrupted = command is not None and marker.is_file() and marker.read_text().strip() == command
    if (p / MODEL_FILE).exists() and not (overwrite or resume or interrupted):
        raise FileExistsError(f"{p} already holds a run; pass --overwrite to replace it"
                              + (" or --resume to continue it" if resume is not None else ""))
    ensure_dir(p)
    sweep_temp_files(p)
    if command is not None:
        atomic_write_text(marker, command + "\n")
    return p


def finish_out_dir(out: str | Path) -> None:
    """Mark an output folder of :func:`check_out_dir` complete."""
    (Path(out) / INCOMPLETE_FILE).unlink(missing_ok=True)


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


def check_model_fits_data(model: nn.Module, dataset: Any, model_label: str, data_label: str) -> None:
    """Refuse a model whose declared input shape does not fit ``dataset`` (built for other data)."""
    from slimtorch.core.errors import SlimtorchError
    from slimtorch.metrics import check_input_shape

    try:
        check_input_shape(model, dataset[0])
    except SlimtorchError as e:
        raise SlimtorchError(f"{model_label} was built for other data than {data_label}: {e}") from None


def check_patterns_match(model: nn.Module, patterns: list[str] | None, flag: str) -> None:
    """Refuse module-name ``patterns`` given with ``flag`` (``--exclude``) that match no module of ``model``."""
    from slimtorch.core.selection import unmatched_patterns

    bad = unmatched_patterns(model, patterns)
    if bad:
        names = [n for n, _ in model.named_modules() if n]
        raise ValueError(f"{flag} {' '.join(bad)}: matches no module of the model (fnmatch patterns on module "
                         f"names such as {names[:8]}{' ...' if len(names) > 8 else ''})")


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` atomically (:mod:`slimtorch.io.atomic`)."""
    atomic_write_text(path, text, what="report")


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically (:mod:`slimtorch.io.atomic`)."""
    atomic_write_json(path, obj, default=float, what="report")
