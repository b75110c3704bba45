"""``slimtorch distill``: train a zoo student from a trained teacher run (Hinton et al. 2015 soft targets,
optionally FitNets hints), through ``slimtorch.train.fit``.

The losses are built by ``Config.from_dict`` (the parser recipes use) as the ``losses`` and ``task_weight``
keys of the distill stage's options (:class:`~slimtorch.pipeline.stages.train.DistillOptions`): ``--T`` and
``--kd-weight`` set the first loss (``KD``), each ``--hint`` adds a ``Hint``, ``--task-weight`` sets
``task_weight``; then ``--set KEY=VALUE`` (repeatable, value as YAML) changes any of them, a dotted key
reaching into a loss by its position (``--set losses.0.temperature=8``) or replacing the list with any
registered losses (``--set "losses=[{type: KD, temperature: 4}, {type: RKD, weight: 25}]"``).
"""

from __future__ import annotations

import argparse
from typing import Any

import slimtorch
from slimtorch import data as sdata
from slimtorch.cli import common
from slimtorch.distill import Distiller, DistillLoss
from slimtorch.metrics import count_params, evaluate, render_table
from slimtorch.pipeline.stages.train import DistillOptions
from slimtorch.train import fit

NAME = "distill"
HELP = (
    "Distill a teacher run into a zoo student (soft targets at temperature T, optional hints); writes the "
    "student's run folder."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--teacher", required=True, help="teacher run folder or .safetensors file (slimtorch.save)"
    )
    p.add_argument("--student", required=True, help="zoo model name for the student (e.g. mlp_800_800)")
    p.add_argument("--student-arg", action="append", metavar="KEY=VALUE", help="student constructor argument")
    common.add_data_arguments(p)
    p.add_argument(
        "--T",
        "--temperature",
        dest="temperature",
        type=float,
        default=4.0,
        help="softmax temperature of the soft targets (> 0; Hinton et al. used 20 on MNIST)",
    )
    p.add_argument("--kd-weight", type=float, default=1.0, help="weight of the T^2-scaled soft-target loss")
    p.add_argument("--task-weight", type=float, default=0.1, help="weight of the hard-label cross-entropy")
    p.add_argument(
        "--hint",
        action="append",
        metavar="STUDENT_LAYER:TEACHER_LAYER",
        help="FitNets hint between two named modules, through a learned adapter (repeatable)",
    )
    p.add_argument("--hint-weight", type=float, default=1.0)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "adamw"])
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--schedule", default="cosine", choices=["cosine", "step", "constant"])
    p.add_argument(
        "--augment",
        action="store_true",
        help="train-time augmentation (teacher runs on the same augmented inputs)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="run folder for the student")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    common.add_set_argument(p, f"a loss option: {', '.join(SET_KEYS)} (losses.N.KEY: the N-th loss)")


#: Keys of :class:`DistillOptions` this command builds (the others come from its own flags).
SET_KEYS = ("losses", "task_weight")


def options_dict(args: argparse.Namespace) -> dict[str, Any]:
    """The plain data ``DistillOptions.from_dict`` builds the losses from (flags, then ``--set``)."""
    losses: list[dict[str, Any]] = [{"type": "KD", "temperature": args.temperature, "weight": args.kd_weight}]
    for spec in args.hint or []:
        s, sep, t = spec.partition(":")
        if not sep or not s or not t:
            raise ValueError(f"--hint expects STUDENT_LAYER:TEACHER_LAYER (e.g. net.4:net.6), got {spec!r}")
        losses.append({"type": "Hint", "student_layer": s, "teacher_layer": t, "weight": args.hint_weight,
                       "name": f"hint:{s}"})
    d = common.apply_sets({"losses": losses, "task_weight": args.task_weight}, args.set)
    unknown = sorted(set(d) - set(SET_KEYS))
    if unknown:
        raise ValueError(f"--set {', '.join(unknown)}: distill sets only {list(SET_KEYS)} (the rest comes from "
                         "its own flags)")
    return d


def _options(args: argparse.Namespace) -> DistillOptions:
    return DistillOptions.from_dict(options_dict(args), path="distill")


def run(args: argparse.Namespace) -> int:
    options = _options(args)  # validates T and the weights before anything is loaded
    losses: list[DistillLoss] = list(options.losses)
    teacher = slimtorch.load(args.teacher)
    train_set = sdata.load(args.data, "train", root=args.root, augment=args.augment)
    test_set = sdata.load(args.data, "test", root=args.root)
    common.check_model_fits_data(teacher, train_set, f"--teacher {args.teacher}", f"--data {args.data}")
    student = common.build_model(args.student, train_set, common.parse_kv(args.student_arg))
    distiller = Distiller(student, teacher, losses, task_weight=options.task_weight)
    out = common.check_out_dir(args.out, args.overwrite, args.resume)
    result = fit(
        distiller,
        train_set,
        args.epochs,
        eval_data=test_set,
        optimizer=args.optimizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        batch_size=args.batch_size,
        out_dir=out,
        resume=args.resume,
        overwrite=args.overwrite,
        seed=args.seed,
        progress=not args.no_progress,
    )
    t_eval = evaluate(teacher, test_set)
    summary = {
        "teacher": str(args.teacher),
        "student": args.student,
        "losses": [common.config_record(c) for c in losses],
        "task_weight": options.task_weight,
        "teacher_params": count_params(teacher),
        "student_params": count_params(student),
        "teacher_accuracy": t_eval["accuracy"],
        **{k: v for k, v in result.final.items() if k.startswith(("val_", "train_"))},
    }
    common.write_json(out / "distill.json", summary)
    rows = [
        {"model": "teacher", "params": summary["teacher_params"], "accuracy": t_eval["accuracy"]},
        {
            "model": f"student ({args.student})",
            "params": summary["student_params"],
            "accuracy": result.final.get("val_accuracy", float("nan")),
        },
    ]
    print(render_table(rows))
    print(f"saved student run to {out}")
    return 0
