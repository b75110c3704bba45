"""``slimtorch train``: train a zoo model on a dataset into a run folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from slimtorch.cli import common
from slimtorch.cli.common import add_data_arguments, build_model, check_out_dir, parse_kv, write_json
from slimtorch.metrics import cpu_info, profile, render_table
from slimtorch.models import MODELS
from slimtorch.train import fit
from slimtorch.train.fit import PRECISION_CHOICES

NAME = "train"
HELP = ("Train a model (a zoo name, your package.module:function with --allow-code, or a model folder/file) on a "
        "dataset; writes model.safetensors, checkpoint.pt, metrics.jsonl, profile.json.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", dest="model_ref", required=True, metavar="MODEL",
                   help="a zoo model name (slimtorch.models.list_models()), or " + common.MODEL_HELP)
    common.add_model_arguments(p, option=False)
    add_data_arguments(p)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "adamw"])
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--schedule", default="cosine", choices=["cosine", "step", "constant"])
    p.add_argument("--augment", action="store_true", help="train-time augmentation (shifts/crops/flips)")
    p.add_argument("--precision", default="auto", choices=list(PRECISION_CHOICES),
                   help="bf16: bfloat16 autocast (2-3x faster on CPUs with AMX/AVX-512-BF16, slower elsewhere); "
                        "auto (default): bf16 on such CPUs, else fp32")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format (faster CPU convolutions)")
    p.add_argument("--warmup-epochs", type=float, default=0.0, help="linear learning-rate warm-up")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    out = check_out_dir(args.out, args.overwrite, args.resume)
    train_set = common.load_data(args, "train", augment=args.augment)
    test_set = common.load_data(args, "test")
    if not common.is_code_ref(args.model_ref) and not Path(args.model_ref).exists():
        try:
            MODELS.get(args.model_ref)  # neither code nor a path: a zoo name, or an error listing them
        except ValueError as e:
            raise ValueError(f"{e} (or give a model folder or file, or package.module:function)") from None
    if MODELS.find(args.model_ref) is not None:  # a zoo name: sized for the data
        model = build_model(args.model_ref, train_set, parse_kv(args.model_arg))
    else:
        model = common.open_model(args.model_ref, model_args=args.model_arg, weights=args.weights,
                                  allow_code=args.allow_code, trust_pickle=args.trust_pickle).train()
    result = fit(model, train_set, args.epochs, eval_data=test_set, optimizer=args.optimizer, lr=args.lr,
                 weight_decay=args.weight_decay, schedule=args.schedule, batch_size=args.batch_size, out_dir=out,
                 resume=args.resume, overwrite=args.overwrite, seed=args.seed, progress=not args.no_progress,
                 precision=args.precision, channels_last=args.channels_last, warmup_epochs=args.warmup_epochs)
    prof = profile(model, common.example_input(model, test_set))
    prof.update({k: v for k, v in result.final.items() if k.startswith("val_")})
    write_json(out / "profile.json", {**prof, "cpu": cpu_info().to_dict()})  # latency depends on the CPU
    print(render_table([{"model": args.model_ref, **prof}]))
    print(f"trained in {result.precision} (--precision {args.precision})")
    print(f"saved run to {out}")
    return 0
