"""``slimtorch eval``: accuracy and loss of a saved model on a dataset's test split."""

from __future__ import annotations

import argparse

from slimtorch.cli import common
from slimtorch.metrics import check_input_shape, evaluate, render_table

NAME = "eval"
HELP = ("Evaluate a model (run or stage folder, model file, ONNX file, Hugging Face folder, or "
        "package.module:function with --allow-code) on a dataset split.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_model_arguments(p, positional="model")
    common.add_data_arguments(p)
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--batch-size", type=int, default=512)


def run(args: argparse.Namespace) -> int:
    ref = common.model_ref(args, "model")
    dataset = common.load_data(args, args.split)
    onnx = None if common.is_code_ref(ref) else common.onnx_file(ref)
    if onnx is not None:  # an export stage or an int8 file: run on ONNX Runtime
        from slimtorch.pipeline.measure import onnx_accuracy

        res = {"accuracy": onnx_accuracy(onnx, dataset, batch_size=args.batch_size), "runtime": "onnxruntime"}
    else:
        model = common.open_model(ref, model_args=args.model_arg, weights=args.weights,
                                  allow_code=args.allow_code, trust_pickle=args.trust_pickle)
        check_input_shape(model, dataset[0][0])
        res = evaluate(model, dataset, batch_size=args.batch_size)
    print(render_table([{"model": ref, "split": args.split, **res}]))
    return 0
