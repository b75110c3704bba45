"""``slimtorch profile``: parameters, nonzeros, bytes on disk, MACs and latency of a saved model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from slimtorch.cli import common
from slimtorch.metrics import file_size, measure_latency, profile, render_table

NAME = "profile"
HELP = "Profile a saved model: params, nonzero params, size on disk, MACs, latency (torch / ONNX Runtime)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_model_arguments(p, positional="model")
    p.add_argument("--runtime", action="append", choices=["torch", "onnxruntime"],
                   help="latency runtime (repeatable; default torch, onnxruntime for an ONNX file)")
    p.add_argument("--batch", type=int, default=1, help="batch size for MACs and latency")
    p.add_argument("--threads", type=int, default=1)
    common.add_data_arguments(p, required=False)
    p.add_argument("--input-shape", default=None, metavar="C,H,W",
                   help="shape of one input sample, for a model that declares no input_shape (or give --data)")
    p.add_argument("--json", default=None, help="also write the profile here")


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise ValueError(f"--input-shape expects integers separated by commas (e.g. 3,32,32), got {text!r}") from None
    if not shape or min(shape) < 1:
        raise ValueError(f"--input-shape: every size must be >= 1, got {text!r}")
    return shape


def _example(model: Any, args: argparse.Namespace) -> Any:
    import torch

    if args.input_shape:
        return torch.zeros(args.batch, *_shape(args.input_shape))
    dataset = common.load_data(args, "test") if args.data else None
    return common.example_input(model, dataset, args.batch)


def _onnx_example(path: Path, args: argparse.Namespace) -> Any:
    import numpy as np
    import torch

    from slimtorch.metrics import onnx_session

    if args.input_shape or args.data:
        return _example(None, args)
    (inp,) = onnx_session(path, 1).get_inputs()[:1]
    dims = [args.batch if i == 0 and not isinstance(d, int) else d for i, d in enumerate(inp.shape)]
    if not all(isinstance(d, int) for d in dims):
        raise ValueError(f"{path}: input {inp.name} has symbolic sizes {inp.shape}; give --input-shape or --data")
    dtype = torch.int64 if "int64" in inp.type else torch.float32
    return torch.from_numpy(np.zeros(dims)).to(dtype)


def run(args: argparse.Namespace) -> int:
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    ref = common.model_ref(args, "model")
    onnx = None if common.is_code_ref(ref) else common.onnx_file(ref)
    if onnx is not None:
        example = _onnx_example(onnx, args)
        prof: dict[str, Any] = {"latency_ms_onnxruntime": measure_latency(onnx, example, runtime="onnxruntime",
                                                                          threads=args.threads)}
        prof["file_bytes"] = file_size(onnx)
    else:
        model = common.open_model(ref, model_args=args.model_arg, weights=args.weights,
                                  allow_code=args.allow_code, trust_pickle=args.trust_pickle)
        prof = profile(model, _example(model, args), runtimes=tuple(args.runtime or ["torch"]),
                       threads=args.threads)
        if not common.is_code_ref(ref):  # .slim: the compressed file, not the dense copy
            prof["file_bytes"] = file_size(common.stored_file(ref))
    print(render_table([{"model": ref, **prof}]))
    if args.json:
        common.write_json(args.json, prof)
    return 0
