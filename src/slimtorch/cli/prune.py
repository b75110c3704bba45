"""``slimtorch prune RUN --method NAME ...``: prune a trained model, fine-tune it, save it with a report.

Methods come from the pruner registry (:data:`slimtorch.prune.METHODS`): a config class registered with
``@register_pruner(Config, name="...")`` appears here as ``--method name``, with no CLI code. The config
is built by ``Config.from_dict``, the parser recipes use, from

* ``--set KEY=VALUE`` (repeatable): any field of the method's config, the value read as YAML
  (``--set ratio=0.4``, ``--set exclude=[fc,features.0]``, ``--set overrides={layer3.*: 0.2}``); a dotted
  key reaches a nested config (``--set schedule.spacing=linear``);
* the method flags below, each a shorthand for one config key (:data:`FLAGS`), given only when used;
* for configs with a ``schedule`` field, ``--schedule oneshot|iterative|agp`` (with ``--rounds``,
  ``--prune-frequency``), which this command turns into a schedule config that fine-tunes with the
  shared fine-tuning flags (``--finetune-epochs``, ``--lr``, ...).

A config whose ``trains_during_pruning`` is true (iterative and AGP schedules) fine-tunes inside
``prune_``; for the others this command fine-tunes afterwards for ``--finetune-epochs``. Examples::

    slimtorch prune runs/lenet --method magnitude --sparsity 0.9 --schedule agp --data mnist \\
        --finetune-epochs 3 --out runs/lenet-p90
    slimtorch prune runs/lenet --method nm --n 2 --m 4 --exclude features.0 --data mnist --out runs/lenet-24
    slimtorch prune runs/gpt --method sparsegpt --sparsity 0.5 --data tinyshakespeare --out runs/gpt-sgpt50
    slimtorch prune runs/gpt --method wanda --nm 2:4 --data tinyshakespeare --out runs/gpt-wanda24
    slimtorch prune runs/r20 --method channel --ratio 0.5 --importance taylor --data cifar10 --out runs/r20-p
    slimtorch prune runs/r20 --method channel --set ratio=0.5 --set round_to=8 --set exclude=[fc] --out runs/r20-q

The output folder holds ``model.safetensors`` (dense; masks made permanent), ``model.sparse.safetensors``
(CSR form, for mask methods), ``prune_report.json`` and ``prune_report.txt``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any

import slimtorch
from slimtorch.cli.common import (
    ConfigFlag,
    add_config_flags,
    add_data_arguments,
    add_model_arguments,
    add_set_argument,
    apply_sets,
    check_out_dir,
    check_patterns_match,
    config_data,
    config_record,
    example_input,
    finish_out_dir,
    flag_dest,
    load_data,
    model_ref,
    open_model,
    write_json,
    write_text,
)
from slimtorch.prune import METHODS, make_permanent_, masked_layers, prune_, save_sparse

NAME = "prune"
HELP = "Prune a trained model (magnitude, N:M, channels), fine-tune it and save it with a report."

#: Method flags: ``(flag, config key, argparse keywords)``. Each sets one key of whichever method's config
#: has it (a method whose config lacks it refuses the flag, naming its keys).
FLAGS: list[ConfigFlag] = [
    ("--sparsity", "sparsity", {"type": float, "help": "magnitude: fraction of weights to zero, in [0, 1)"}),
    ("--scope", "scope", {"choices": ["global", "layer"], "help": "magnitude: one threshold or one per layer"}),
    ("--criterion", "criterion", {"help": "magnitude: magnitude or std"}),
    ("--nm", ("nm",), {"type": lambda text: parse_nm(text),
                       "help": "N:M pattern as one value, e.g. 2:4 (nm, sparsegpt, wanda); sets n and m"}),
    ("--n", "n", {"type": int, "help": "nm: weights kept per group (N of N:M)"}),
    ("--m", "m", {"type": int, "help": "nm: group size along the input dimension (M of N:M)"}),
    ("--ratio", "ratio", {"type": float, "help": "channel: fraction of channels removed per group"}),
    ("--target-macs", "target_macs", {"type": float, "help": "channel: prune until MACs <= this (<= 1: fraction)"}),
    ("--target-speedup", "target_speedup",
     {"type": float, "help": "channel: prune until the measured speedup is >= this on every --latency-runtime"}),
    ("--latency-runtime", "latency_runtimes",
     {"action": "append", "choices": ["torch", "onnxruntime", "onnxruntime-int8"],
      "help": "runtime of --target-speedup / --latency-budget-ms (repeatable)"}),
    ("--latency-budget-ms", "latency_budget_ms",
     {"type": float, "help": "channel, --allocation latency: latency budget (ms) on every --latency-runtime"}),
    ("--importance", "importance", {"help": "channel: importance criterion (l1, l2, bn_scale, taylor, ...)"}),
    ("--round-to", "round_to", {"type": int, "help": "channel: kept channel counts are multiples of this"}),
    ("--allocation", "allocation", {"choices": ["uniform", "global", "latency"],
                                    "help": "channel: ratio allocation (latency: per-group widths from measured "
                                            "latency tables, with --target-speedup or --latency-budget-ms)"}),
    ("--exclude", "exclude", {"nargs": "*", "help": "module-name patterns left alone (dense / channels kept)"}),
    ("--ignore", "exclude", {"nargs": "*", "help": "former name of --exclude (channel)"}),
]
#: ``--calib-batches`` (default 16) sets ``max_batches`` of configs that have it, unless given otherwise.
CALIB_KEY = "max_batches"
#: ``--method NAME`` needs these keys (flag named in the error) because their config default is not a choice.
REQUIRED: dict[str, tuple[str, str]] = {"magnitude": ("sparsity", "--sparsity (a fraction in [0, 1), e.g. 0.9)")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p, positional="run")
    p.add_argument("--method", required=True, choices=METHODS.names(), help="pruning method")
    add_data_arguments(p, required=False)
    p.add_argument(
        "--finetune-epochs",
        type=int,
        default=0,
        help="fine-tuning epochs (total over all rounds for --schedule iterative)",
    )
    p.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate")
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "adamw"])
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output run folder")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_set_argument(p, "a field of the method's config")
    g = p.add_argument_group("method options (shorthands for --set KEY=VALUE)")
    add_config_flags(g, FLAGS)
    g.add_argument("--calib-batches", type=int, default=16,
                   help=f"batches of --data used by gradient importance (taylor); sets {CALIB_KEY}")
    s = p.add_argument_group("schedule (methods with a schedule)")
    s.add_argument(
        "--schedule",
        choices=["oneshot", "iterative", "agp"],
        default="oneshot",
        help="iterative: prune/fine-tune --rounds times; agp: gradual pruning while fine-tuning",
    )
    s.add_argument("--rounds", type=int, default=3, help="rounds of --schedule iterative")
    s.add_argument(
        "--prune-frequency",
        type=int,
        default=None,
        help="AGP: optimizer steps between pruning steps (default: 20 pruning steps in the first 3/4)",
    )


def parse_nm(text: str) -> tuple[int, int]:
    """``"2:4"`` -> ``(2, 4)``: N weights kept of every M; ``0 < N < M``.

    Raises:
        argparse.ArgumentTypeError: the text is not ``N:M`` with integers ``0 < N < M`` (says what was given).
    """
    parts = str(text).split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"--nm takes N:M with two integers, e.g. 2:4; got {text!r}")
    n, m = int(parts[0]), int(parts[1])
    if not 0 < n < m:
        raise argparse.ArgumentTypeError(f"--nm {text}: N must be at least 1 and smaller than M (N kept of every "
                                         f"M weights), e.g. 2:4; got N={n}, M={m}")
    return n, m


def config_dict(args: argparse.Namespace, fields: set[str], fit_kwargs: dict[str, Any],
                steps_per_epoch: int = 0) -> dict[str, Any]:
    """The plain data ``Config.from_dict`` builds the method's config from (flags, then ``--set``)."""
    nm = getattr(args, "cfg_nm", None)
    if nm is not None:
        # --nm N:M is two keys; the configs spell them n and m
        if not {"n", "m"} <= fields:
            raise ValueError(f"--nm sets n and m, which {METHODS.get(args.method).__name__} does not have; "
                             f"allowed keys: {sorted(fields)} (--set KEY=VALUE)")
        if args.cfg_n is not None or args.cfg_m is not None:
            raise ValueError("give either --nm N:M or --n/--m, not both")
        args = argparse.Namespace(**{**vars(args), "cfg_nm": None, "cfg_n": nm[0], "cfg_m": nm[1]})
    d = config_data(args, FLAGS, METHODS.get(args.method))
    if CALIB_KEY in fields:
        d[CALIB_KEY] = args.calib_batches
    if "schedule" in fields:
        d["schedule"] = _schedule(args, fit_kwargs, steps_per_epoch)
    apply_sets(d, args.set)
    required = REQUIRED.get(args.method)
    if required and required[0] not in d:
        raise ValueError(f"--method {args.method} needs {required[1]} or --set {required[0]}=...")
    return d


def _schedule(args: argparse.Namespace, fit_kw: dict[str, Any], steps_per_epoch: int) -> dict[str, Any]:
    """``--schedule``'s config as plain data (epochs split over the rounds; AGP's pruning frequency)."""
    epochs = int(args.finetune_epochs or 0)
    if args.schedule == "oneshot":
        return {"type": "OneShot"}
    if args.schedule == "iterative":
        rounds = args.rounds
        return {"type": "Iterative", "rounds": rounds, "epochs": max(epochs // rounds, 1) if epochs else 0,
                "finetune": dict(fit_kw)}
    if epochs < 1:
        raise ValueError("--schedule agp prunes while fine-tuning: give --finetune-epochs >= 1")
    frequency = args.prune_frequency
    if frequency is None:  # ~20 pruning steps over the first 3/4 of fine-tuning
        frequency = max(1, int(0.75 * steps_per_epoch * epochs) // 20)
    return {"type": "AGP", "frequency": frequency, "epochs": epochs, "finetune": dict(fit_kw)}


def run(args: argparse.Namespace) -> int:
    from slimtorch.metrics import accuracy, file_size
    from slimtorch.train import fit

    if args.finetune_epochs < 0:
        raise ValueError(f"--finetune-epochs must be >= 0, got {args.finetune_epochs}")
    config_type = METHODS.get(args.method)
    fit_kwargs = {
        "lr": args.lr,
        "optimizer": args.optimizer,
        "weight_decay": args.weight_decay,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "progress": not args.no_progress,
    }
    train_set = test_set = None
    steps_per_epoch = 0
    if args.data:
        train_set = load_data(args, "train")
        test_set = load_data(args, "test")
        steps_per_epoch = math.ceil(len(train_set) / args.batch_size)
    fields = {f.name for f in dataclasses.fields(config_type)}  # type: ignore[arg-type]
    config = config_type.from_dict(config_dict(args, fields, fit_kwargs, steps_per_epoch))
    if train_set is None and args.finetune_epochs:
        raise ValueError("--finetune-epochs needs --data (the training set to fine-tune on)")
    trains = bool(getattr(config, "trains_during_pruning", False))
    if trains and train_set is None:
        raise ValueError(f"--method {args.method} with this schedule fine-tunes while pruning: give --data")
    ref = model_ref(args, "run")
    model = open_model(ref, model_args=args.model_arg, weights=args.weights, allow_code=args.allow_code,
                       trust_pickle=args.trust_pickle)
    for flag in ("--exclude", "--ignore"):
        check_patterns_match(model, getattr(args, flag_dest(flag)), flag)
    example = example_input(model, train_set)
    out = check_out_dir(args.out, args.overwrite, command="prune")

    before = accuracy(model, test_set) if test_set is not None else None
    report = prune_(model, config, example_inputs=example, data=train_set, fit_fn=fit)
    if not trains and args.finetune_epochs > 0:
        fit(model, train_set, args.finetune_epochs, **fit_kwargs)
    after = accuracy(model, test_set) if test_set is not None else None

    masked = bool(masked_layers(model))
    make_permanent_(model)
    files: dict[str, Any] = {"model": str(slimtorch.save(model, out))}
    if masked:
        files["sparse"] = str(save_sparse(model, out / "model.sparse.safetensors"))
    doc = {
        "source": ref,
        "method": args.method,
        "config": config_record(config),
        "finetune_epochs": args.finetune_epochs,
        "accuracy_before": before,
        "accuracy_after": after,
        "file_bytes": {k: file_size(v) for k, v in files.items()},
        "report": report.to_dict(),
    }
    write_json(out / "prune_report.json", doc)
    text = report.table()
    if before is not None:
        text += f"\ntest accuracy: {before:.4f} -> {after:.4f}"
    text += "\n" + "\n".join(f"{k} file: {v} ({doc['file_bytes'][k]} bytes)" for k, v in files.items())
    write_text(out / "prune_report.txt", text + "\n")
    print(text)
    finish_out_dir(out)
    return 0

