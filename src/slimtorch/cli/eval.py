"""``slimtorch eval``: accuracy and loss of a saved model on a dataset's test split."""

from __future__ import annotations

import argparse

from slimtorch import data as sdata
from slimtorch.cli.common import add_data_arguments, load_model
from slimtorch.metrics import check_input_shape, evaluate, render_table

NAME = "eval"
HELP = "Evaluate a saved model (run folder or .safetensors file) on a dataset split."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="run folder, .safetensors or .slim file")
    add_data_arguments(p)
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--batch-size", type=int, default=512)


def run(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    dataset = sdata.load(args.data, args.split, root=args.root)
    check_input_shape(model, dataset[0][0])
    res = evaluate(model, dataset, batch_size=args.batch_size)
    print(render_table([{"model": str(args.model), "split": args.split, **res}]))
    return 0
