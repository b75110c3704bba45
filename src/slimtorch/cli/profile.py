"""``slimtorch profile``: parameters, nonzeros, bytes on disk, MACs and latency of a saved model."""

from __future__ import annotations

import argparse
from pathlib import Path

from slimtorch.cli.common import load_model, stored_file, write_json
from slimtorch.metrics import example_inputs_for, file_size, profile, render_table

NAME = "profile"
HELP = "Profile a saved model: params, nonzero params, size on disk, MACs, latency (torch / ONNX Runtime)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="run folder, .safetensors or .slim file")
    p.add_argument("--runtime", action="append", choices=["torch", "onnxruntime"],
                   help="latency runtime (repeatable; default torch)")
    p.add_argument("--batch", type=int, default=1, help="batch size for MACs and latency")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the profile here")


def run(args: argparse.Namespace) -> int:
    path = Path(args.model)
    model = load_model(path)
    prof = profile(model, example_inputs_for(model, args.batch), runtimes=tuple(args.runtime or ["torch"]),
                   threads=args.threads)
    prof["file_bytes"] = file_size(stored_file(path))  # .slim: the compressed file, not the dense copy
    print(render_table([{"model": str(path), **prof}]))
    if args.json:
        write_json(args.json, prof)
    return 0
