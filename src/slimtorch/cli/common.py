"""Pieces shared by the CLI sub-commands: the model and data a command works on, configs, run folders.

The one place a command turns its model argument into a module (:func:`add_model_arguments`,
:func:`open_model`): a run folder, a ``.safetensors`` file from ``slimtorch.save`` (zoo models, and user
models built by a factory, which reload with ``--allow-code``), a ``.slim`` file, a quantized model, a
Hugging Face model folder (``config.json`` + safetensors), a ``torch.save`` pickle (only with
``--trust-pickle``), or ``package.module:function`` with ``--model-arg KEY=VALUE`` and ``--weights``
(only with ``--allow-code``: importing it runs its code).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import inspect
import math
from pathlib import Path
from typing import Any

from torch import nn

from slimtorch.core.errors import SlimtorchError
from slimtorch.io.atomic import atomic_write_json, atomic_write_text, ensure_dir, sweep_temp_files
from slimtorch.io.storage import MODEL_FILE
from slimtorch.models import MODELS, create


def parse_kv(items: list[str] | None) -> dict[str, Any]:
    """``["hidden=[300,100]", "dropout=0.5"]`` -> ``{"hidden": [300, 100], "dropout": 0.5}``.

    Values are read as YAML by :func:`slimtorch.core.safe_yaml.load_yaml` (plain data, no aliases).
    """
    from slimtorch.core.safe_yaml import load_yaml

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = load_yaml(v, source=f"the value of {k.strip()}=")
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


# ---- the model a command works on -----------------------------------------------------------------
#: Files ``torch.save`` writes; a full-model pickle among them loads only with ``--trust-pickle``.
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
#: The file a pipeline ``quantize`` stage leaves (``slimtorch.pipeline.stages.compress.QUANT_STATE_FILE``).
QUANT_STATE_FILE = "quantized.safetensors"
ONNX_SUFFIX = ".onnx"
MODEL_HELP = (
    "the model: a run or stage folder, a .safetensors file (slimtorch.save), a .slim file, a Hugging Face "
    "model folder (config.json + safetensors), a torch.save .pt file (needs --trust-pickle), or "
    "package.module:function building an nn.Module (needs --allow-code; arguments with --model-arg)"
)


def add_consent_arguments(p: argparse.ArgumentParser) -> None:
    """``--allow-code`` and ``--trust-pickle``: the user's consent to run code (see docs/trust_and_safety.md)."""
    p.add_argument("--allow-code", action="store_true",
                   help="allow running Python code the arguments or files name (a package.module:function "
                        "model, a recipe's factory, a model file saved from such a model); only for code you trust")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow unpickling a torch.save full-model file (a pickle runs code stored in the file); "
                        "only for files you trust")


def add_model_arguments(p: argparse.ArgumentParser, positional: str | None = None, option: bool = True) -> None:
    """The model arguments of a command: ``positional`` (e.g. ``"run"``; optional when ``option``), ``--model``
    (the same thing as an option), ``--model-arg KEY=VALUE``, ``--weights`` and the consent flags."""
    if positional:
        p.add_argument(positional, nargs="?" if option else None, default=None, metavar=positional.upper(),
                       help=MODEL_HELP)
    if option:
        p.add_argument("--model", dest="model_ref", default=None, metavar="MODEL",
                       help=MODEL_HELP if not positional else f"the model, instead of {positional.upper()}")
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE", default=[],
                   help="argument of a package.module:function model (repeatable; value as YAML)")
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="weights for a package.module:function model: a .safetensors file or a state-dict "
                        ".pt file (read without unpickling code)")
    add_consent_arguments(p)


def model_ref(args: argparse.Namespace, positional: str | None = None) -> str:
    """The model argument a command was given (``positional`` or ``--model``, exactly one)."""
    pos = getattr(args, positional, None) if positional else None
    opt = getattr(args, "model_ref", None)
    if pos and opt:
        raise ValueError(f"give the model once: as {positional.upper()} or as --model, not both")  # type: ignore[union-attr]
    if not (pos or opt):
        raise ValueError(f"give a model: {MODEL_HELP}")
    return str(pos or opt)


def is_code_ref(ref: str) -> bool:
    """Whether ``ref`` names Python code (``package.module:function``) rather than a file or folder."""
    from slimtorch.pipeline.options import FACTORY_PATTERN

    return bool(FACTORY_PATTERN.match(ref)) and not Path(ref).exists()


def open_model(ref: str, *, model_args: list[str] | None = None, weights: str | None = None,
               allow_code: bool = False, trust_pickle: bool = False, what: str = "--model") -> nn.Module:
    """The module ``ref`` names (see the module docstring), in eval mode.

    Args:
        ref: a path or ``package.module:function``.
        model_args: ``KEY=VALUE`` arguments of the function (values as YAML).
        weights: weights file loaded into the function's model (``.safetensors`` or a state-dict ``.pt``).
        allow_code: the user's ``--allow-code``.
        trust_pickle: the user's ``--trust-pickle``.
        what: the argument, named in errors (``--model``, ``--teacher``).

    Raises:
        CodeConsentError: code without ``--allow-code``, a full-model pickle without ``--trust-pickle``.
        SlimtorchError: nothing at ``ref``, or a file that holds no model.
    """
    from slimtorch.io.architectures import build_from_factory

    if is_code_ref(ref):
        model = build_from_factory(ref, parse_kv(model_args), allow_code=allow_code, what=f"{what} {ref!r}")
        if weights:
            _load_weights(model, weights, trust_pickle)
        return model.eval()
    if model_args:
        raise ValueError(f"{what}-arg applies to a package.module:function model; {ref!r} is a file or folder")
    if weights:
        raise ValueError(f"--weights applies to a package.module:function model; {ref!r} holds its own weights")
    return load_model(ref, allow_code=allow_code, trust_pickle=trust_pickle)


def finish_out_dir(out: str | Path) -> None:
    """Mark an output folder of :func:`check_out_dir` complete."""
    (Path(out) / INCOMPLETE_FILE).unlink(missing_ok=True)


def _load_weights(model: nn.Module, weights: str, trust_pickle: bool) -> None:
    from slimtorch.io.storage import load

    p = Path(weights)
    if not p.exists():
        raise SlimtorchError(f"--weights: no file at {p}")
    load(p, model=model, trust_pickle=trust_pickle)


def load_model(path: str | Path, *, allow_code: bool = False, trust_pickle: bool = False) -> nn.Module:
    """Any model file or folder the CLI accepts (not code: see :func:`open_model`), in eval mode."""
    from slimtorch import share
    from slimtorch.io.storage import load, read_spec

    p = Path(path)
    if not p.exists():
        raise SlimtorchError(f"no model at {p}: expected {MODEL_HELP}")
    if onnx_file(p) is not None:
        raise SlimtorchError(f"{onnx_file(p)} is an ONNX file; this command needs the torch model (slimtorch "
                             "eval and profile take ONNX files)")
    if p.is_dir() and not (p / MODEL_FILE).exists():
        p = _inner_model_file(p) or p  # a quantize or share stage folder; else an HF folder or an error
    if share.is_slim_file(p):
        return share.load(p).eval()
    if (p.suffix == ".safetensors" or (p / MODEL_FILE).is_file()) and (read_spec(p).get("metadata") or {}).get("quant"):
        from slimtorch.quant import load_quantized

        return load_quantized(p, allow_code=allow_code).eval()
    return load(p, trust_pickle=trust_pickle, allow_code=allow_code).eval()


def _inner_model_file(d: Path) -> Path | None:
    """The torch model file of a stage folder without ``model.safetensors`` (quantize, share stages)."""
    from slimtorch.share import SUFFIX

    if (d / QUANT_STATE_FILE).is_file():
        return d / QUANT_STATE_FILE
    slim = sorted(d.glob(f"*{SUFFIX}"))
    return slim[0] if slim else None


def onnx_file(path: str | Path) -> Path | None:
    """The ONNX file ``path`` is, or the ``model.onnx`` / ``model.int8.onnx`` of a folder that holds no torch
    model (an ``export`` stage), else ``None``."""
    p = Path(path)
    if p.is_file():
        return p if p.suffix == ONNX_SUFFIX else None
    if not p.is_dir() or (p / MODEL_FILE).exists() or (p / "config.json").exists() or _inner_model_file(p):
        return None
    for name in ("model.onnx", "model.int8.onnx"):
        if (p / name).is_file():
            return p / name
    return None


def example_input(model: nn.Module, dataset: Any = None, batch: int = 1) -> Any:
    """An example batch for tracing and timing: the first ``batch`` samples of ``dataset`` when given, else
    zeros of the model's declared ``input_shape``.

    Raises:
        SlimtorchError: no dataset and no ``input_shape`` (the message says to give ``--data``).
    """
    import torch

    from slimtorch.metrics import example_inputs_for

    if dataset is not None:
        from slimtorch.pipeline.context import fit_inputs

        x = torch.stack([dataset[i][0] for i in range(min(batch, len(dataset)))])
        return fit_inputs(model, x)
    if getattr(model, "input_shape", None) is None:
        raise SlimtorchError(
            f"{type(model).__name__} declares no input_shape, so no example input can be made; give --data "
            "(the first samples are used) or set model.input_shape = (C, H, W) in your factory"
        )
    return example_inputs_for(model, batch)


def stored_file(path: str | Path) -> Path:
    """The file whose size is the model's size on disk (``model.safetensors`` inside a run folder)."""
    p = Path(path)
    if p.is_dir():
        if (p / MODEL_FILE).exists():
            return p / MODEL_FILE
        return _inner_model_file(p) or onnx_file(p) or p / MODEL_FILE
    return p


# ---- the data a command works on ------------------------------------------------------------------
def add_data_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    """``--data`` and ``--root``."""
    p.add_argument("--data", required=required,
                   help="a dataset name (digits, mnist, cifar10, tinyshakespeare; image_folder, arrays, text, "
                        "hf_disk with --root) or a path to your data: a folder of class subfolders of images, "
                        "a .npz file (x, y), a folder with x.npy and y.npy, a .txt file (character-level LM), "
                        "or a Hugging Face datasets folder (save_to_disk)")
    p.add_argument("--root", default=None, help="folder (or file) holding the data; must exist (default: "
                   "$SLIMTORCH_DATA, then ~/.cache/slimtorch)")


def load_data(args: argparse.Namespace, split: str, **kwargs: Any) -> Any:
    """The ``split`` of the dataset ``--data`` / ``--root`` name (:func:`slimtorch.data.resolve`)."""
    from slimtorch import data as sdata

    name, root = sdata.resolve(args.data, args.root)
    return sdata.load(name, split, root=root, **kwargs)


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
