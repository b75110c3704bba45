"""``slimtorch prune RUN --method NAME ...``: prune a trained model, fine-tune it, save it with a report.

Methods come from the pruner registry (:data:`slimtorch.prune.METHODS`): a config class registered
with ``@register_pruner(Config, name="...")`` appears here as ``--method name``. Its
``add_cli_arguments(parser)`` adds its flags and ``from_cli_args(args)`` builds the config; besides its
own flags it may read the shared ones below (``args.finetune_epochs``, ``args.fit_kwargs`` = the
fine-tuning settings for ``slimtorch.train.fit``, ``args.steps_per_epoch``). A config whose
``trains_during_pruning`` is true (iterative and AGP schedules) fine-tunes inside ``prune_``; for the
others this command fine-tunes afterwards for ``--finetune-epochs``. Examples::

    slimtorch prune runs/lenet --method magnitude --sparsity 0.9 --schedule agp --data mnist \\
        --finetune-epochs 3 --out runs/lenet-p90
    slimtorch prune runs/lenet --method nm --n 2 --m 4 --exclude features.0 --data mnist --out runs/lenet-24
    slimtorch prune runs/r20 --method channel --ratio 0.5 --importance taylor --data cifar10 --out runs/r20-p

The output folder holds ``model.safetensors`` (dense; masks made permanent), ``model.sparse.safetensors``
(CSR form, for mask methods), ``prune_report.json`` and ``prune_report.txt``.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import slimtorch
from slimtorch import data as sdata
from slimtorch.cli.common import add_data_arguments, check_out_dir, write_json
from slimtorch.prune import METHODS, make_permanent_, masked_layers, prune_, save_sparse

NAME = "prune"
HELP = "Prune a trained model (magnitude, N:M, channels), fine-tune it and save it with a report."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run folder or .safetensors file of the model to prune")
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
    for _, config_type in METHODS.items():
        config_type.add_cli_arguments(p)  # type: ignore[attr-defined]


def run(args: argparse.Namespace) -> int:
    from slimtorch.metrics import accuracy, example_inputs_for, file_size
    from slimtorch.train import fit

    if args.finetune_epochs < 0:
        raise ValueError(f"--finetune-epochs must be >= 0, got {args.finetune_epochs}")
    out = check_out_dir(args.out, args.overwrite)
    model = slimtorch.load(args.run)
    train_set = test_set = None
    if args.data:
        train_set = sdata.load(args.data, "train", root=args.root)
        test_set = sdata.load(args.data, "test", root=args.root)
        args.steps_per_epoch = math.ceil(len(train_set) / args.batch_size)
    elif args.finetune_epochs:
        raise ValueError("--finetune-epochs needs --data (the training set to fine-tune on)")
    args.fit_kwargs = {
        "lr": args.lr,
        "optimizer": args.optimizer,
        "weight_decay": args.weight_decay,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "progress": not args.no_progress,
    }
    config = METHODS.get(args.method).from_cli_args(args)  # type: ignore[attr-defined]
    trains = bool(getattr(config, "trains_during_pruning", False))
    if trains and train_set is None:
        raise ValueError(f"--method {args.method} with this schedule fine-tunes while pruning: give --data")

    before = accuracy(model, test_set) if test_set is not None else None
    report = prune_(model, config, example_inputs=example_inputs_for(model), data=train_set, fit_fn=fit)
    if not trains and args.finetune_epochs > 0:
        fit(model, train_set, args.finetune_epochs, **args.fit_kwargs)
    after = accuracy(model, test_set) if test_set is not None else None

    masked = bool(masked_layers(model))
    make_permanent_(model)
    files: dict[str, Any] = {"model": str(slimtorch.save(model, out))}
    if masked:
        files["sparse"] = str(save_sparse(model, out / "model.sparse.safetensors"))
    doc = {
        "source": str(args.run),
        "method": args.method,
        "config": {"type": type(config).__name__, **_plain(config)},
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
    (out / "prune_report.txt").write_text(text + "\n")
    print(text)
    return 0


def _plain(config: Any) -> dict[str, Any]:
    d = config.to_dict()
    return {k: v for k, v in d.items() if not callable(v)}
