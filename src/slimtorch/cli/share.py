"""``slimtorch share``: weight-share a (pruned) model, fine-tune the centroids, write a ``.slim`` file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from slimtorch.cli import common
from slimtorch.cli.common import add_data_arguments, write_json
from slimtorch.metrics import accuracy
from slimtorch.share import (
    KMEANS_INITS,
    SUFFIX,
    WeightSharing,
    cluster_,
    compression_report,
    format_report,
    save,
)
from slimtorch.train import fit

NAME = "share"
HELP = "Weight-share a model (k-means per layer), fine-tune the centroids, save a Huffman-coded .slim file."


def parse_bits(text: str) -> int | dict[str, int]:
    """``"5"`` -> 5; ``"conv=8,fc=5"`` or ``"features.0=6,fc=4"`` -> a per-layer mapping."""
    text = text.strip()
    if "=" not in text:
        try:
            return int(text)
        except ValueError:
            raise ValueError(
                f"--bits: expected an int or KIND=BITS,... (e.g. conv=8,fc=5), got {text!r}"
            ) from None
    out: dict[str, int] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--bits: expected KEY=BITS, got {item!r} in {text!r}")
        try:
            out[key.strip()] = int(value)
        except ValueError:
            raise ValueError(f"--bits: {key.strip()}={value!r} is not an integer number of bits") from None
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_model_arguments(p, positional="model")
    p.add_argument(
        "--bits",
        default="conv=8,fc=5",
        help="bits per cluster index: an int, or per kind / module-name pattern, e.g. conv=8,fc=5 (default)",
    )
    p.add_argument("--init", default="linear", choices=KMEANS_INITS.names(), help="k-means centroid init")
    p.add_argument("--finetune-epochs", type=int, default=0, help="epochs of shared-centroid fine-tuning")
    add_data_arguments(p, required=False)
    p.add_argument("--optimizer", default="adam", choices=["sgd", "adam", "adamw"])
    p.add_argument("--lr", type=float, default=1e-4, help="fine-tuning learning rate")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--codebook-dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--index-bits", default="auto", help="bits per relative position entry, or 'auto'")
    p.add_argument("--out", required=True, help=f"the {SUFFIX} file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--json", default=None, help="also write the compression report here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    config = WeightSharing(bits=parse_bits(args.bits), init=args.init, seed=args.seed)
    if args.finetune_epochs < 0:
        raise ValueError(f"--finetune-epochs must be >= 0, got {args.finetune_epochs}")
    if args.finetune_epochs and not args.data:
        raise ValueError("--finetune-epochs needs --data (the training set to fine-tune the centroids on)")
    index_bits: int | str = (
        args.index_bits if args.index_bits == "auto" else _int(args.index_bits, "--index-bits")
    )
    out = Path(args.out)
    if out.suffix != SUFFIX:
        raise ValueError(f"--out must name a {SUFFIX} file, got {out}")
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    model = common.open_model(common.model_ref(args, "model"), model_args=args.model_arg, weights=args.weights,
                              allow_code=args.allow_code, trust_pickle=args.trust_pickle)
    test_set = common.load_data(args, "test") if args.data else None
    summary: dict[str, Any] = {}
    if test_set is not None:
        summary["accuracy_before"] = accuracy(model, test_set)
    cluster_(model, config)
    if test_set is not None:
        summary["accuracy_clustered"] = accuracy(model, test_set)
    if args.finetune_epochs:
        train_set = common.load_data(args, "train")
        fit(
            model,
            train_set,
            args.finetune_epochs,
            optimizer=args.optimizer,
            lr=args.lr,
            weight_decay=0.0,
            schedule="cosine",
            batch_size=args.batch_size,
            seed=args.seed,
            progress=not args.no_progress,
        )
        model.eval()
        summary["accuracy_finetuned"] = accuracy(model, test_set)
    path = save(
        model,
        out,
        codebook_dtype=args.codebook_dtype,
        index_bits=index_bits,
        metadata={"bits": config.bits, "init": config.init, **summary},
    )
    report = compression_report(path)
    report.update(summary)
    print(format_report(report))
    for key, value in summary.items():
        print(f"{key}: {100 * value:.2f}%")
    print(f"wrote {path} ({report['file_bytes']} bytes, {report['ratio']:.1f}x smaller than fp32)")
    if args.json:
        write_json(args.json, report)
    return 0


def _int(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{flag}: expected an int or 'auto', got {text!r}") from None
