"""``slimtorch quantize RUN --scheme NAME ...``: quantize a trained model, export it to int8 ONNX, report.

Schemes come from :data:`slimtorch.quant.SCHEMES`: a scheme registered with
``register_scheme("name", ConfigType, data="calib"|"train"|"none", defaults={...})`` appears here as
``--scheme name``, with no CLI code. ``data`` says which batches ``quantize_`` gets: ``--calib`` training
images, the whole training set, or none. The config is built by ``Config.from_dict``, the parser recipes
use, from the scheme's ``defaults``, then

* the option flags below, each a shorthand for one config key (:data:`FLAGS`), given only when used
  (``--bits`` sets ``bits``, ``bits_w`` or ``weight_bits``, whichever the config has; ``--per-tensor``
  sets ``per_channel=false``; ``--percentile`` sets ``observer_kwargs.percentile``); a flag whose key the
  scheme's config lacks is an error naming the config's keys;
* ``--set KEY=VALUE`` (repeatable, wins over the flags): any field of the config, the value read as YAML,
  a dotted key reaching a nested config (``--set observer_kwargs.percentile=99.9``,
  ``--set rounding.act_order=true`` with ``--scheme w4-gptq``).

``--qat-epochs N`` (N > 0) builds the scheme's ``trained`` config instead (``w4a8``: ``QAT``) and
fine-tunes it for N epochs. Examples::

    slimtorch quantize runs/r20 --scheme int8 --observer percentile --calib 512 --data cifar10 --out runs/q
    slimtorch quantize runs/r20 --scheme int8 --set observer=percentile --set observer_kwargs.percentile=99.9 \
        --data cifar10 --out runs/q
    slimtorch quantize runs/gpt --scheme int8-dynamic --out runs/gpt-q
    slimtorch quantize runs/gpt --scheme w4-gptq --set group_size=32 --set rounding.act_order=true \
        --data tinyshakespeare --out runs/gpt-w4
    slimtorch quantize runs/gpt --scheme weight-only --method awq --bits 4 --group-size 32 \
        --data tinyshakespeare --out runs/gpt-awq
    slimtorch quantize runs/gpt --scheme w8a8 --smoothquant 0.5 --data tinyshakespeare --out runs/gpt-sq

A weight-only model is exported as ``model.int8.onnx`` with ONNX Runtime's ``MatMulNBits`` operator (its own
codes, scales and zero points; the name is kept for every scheme) when its group size is a power of two >= 16.

A scheme registered in the former form (a ``build(options) -> Config`` function) receives the options as a
dict; ``--set`` then changes the config it returns.

The output folder holds ``model.safetensors`` (the fake-quant simulation, reload it with
``slimtorch.quant.load_quantized``), ``model.int8.onnx`` (QDQ model for ONNX Runtime, when the
scheme exports), ``model.fp32.onnx`` and ``quant_report.json`` / ``quant_report.txt`` (accuracy of
fp32, simulation and ONNX Runtime int8, their agreement, file sizes, latency, float layers).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import torch

from slimtorch import data as sdata
from slimtorch.cli import common
from slimtorch.core.config import Config
from slimtorch.quant import OBSERVERS, QAT, SCHEMES, convert_qat_, quantize_, save_quantized
from slimtorch.quant.api import Scheme
from slimtorch.quant.export.targets import DEFAULT_TARGET, TARGETS
from slimtorch.quant.workflows.qat import QAT_GRAD_CLIP
from slimtorch.train import fit

NAME = "quantize"
HELP = "Quantize a trained model (int8 PTQ and the registered low-bit schemes) and export int8 ONNX."

#: Option flags: ``(flag, config key(s), argparse keywords)``; each sets the first of its keys the scheme's
#: config has (a config with none of them refuses the flag, naming its keys).
FLAGS: list[common.ConfigFlag] = [
    ("--observer", "observer", {"choices": OBSERVERS.names(), "help": "activation range observer (default minmax)"}),
    ("--percentile", "observer_kwargs.percentile", {"type": float, "help": "percentile for --observer percentile"}),
    ("--per-tensor", "per_channel",
     {"action": "store_const", "const": False, "help": "one weight scale per tensor, not per channel"}),
    ("--exclude", "exclude", {"nargs": "*", "help": "layer name patterns to keep in float"}),
    ("--target", "target", {"choices": TARGETS.names(), "help": f"int8 deployment target (default {DEFAULT_TARGET}): "
                            + "; ".join(f"{n}: {TARGETS.get(n).description}" for n in TARGETS.names())}),
    ("--method", "method", {"help": "low-bit weight method of the scheme (e.g. rtn, gptq, adaround)"}),
    ("--bits", ("bits", "bits_w", "weight_bits"), {"type": int, "help": "weight bits"}),
    ("--group-size", "group_size", {"type": int, "help": "weight group size of low-bit schemes"}),
]
#: Former-form schemes (``build(options)``) got these values for options not given.
_LEGACY_DEFAULTS: dict[str, Any] = {"observer": "minmax", "per_tensor": False, "exclude": [],
                                    "target": DEFAULT_TARGET}


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_model_arguments(p, positional="run")
    p.add_argument("--scheme", required=True, choices=sorted(SCHEMES),
                   help="; ".join(f"{k}: {v.help}" for k, v in sorted(SCHEMES.items())))
    p.add_argument("--calib", type=int, default=512, help="calibration images from the training split")
    common.add_set_argument(p, "a field of the scheme's config (wins over the option flags)")
    common.add_config_flags(p.add_argument_group("config options (shorthands for --set KEY=VALUE)"), FLAGS)
    p.add_argument("--smoothquant", type=_alpha, default=None, metavar="ALPHA",
                   help="W8A8: migrate activation outliers into the weights first (SmoothQuant, Xiao et al. "
                        "2023) with this alpha in [0, 1] (0.5 is the paper's default) or 'auto' (searched); "
                        "int8 schemes only")
    p.add_argument("--qat-epochs", type=int, default=0, help="quantization-aware training epochs (QAT schemes)")
    p.add_argument("--lr", type=float, default=None, help="learning rate for schemes that train")
    p.add_argument("--grad-clip", type=float, default=QAT_GRAD_CLIP,
                   help="clip the global gradient norm of the QAT fine-tune to this (inf: no clipping)")
    common.add_data_arguments(p, required=False)
    p.add_argument("--batch-size", type=int, default=64, help="calibration / evaluation batch size")
    p.add_argument("--eval-n", type=int, default=2000, help="test images for the accuracy report (0: none)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads for the latency report")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output run folder")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")


def run(args: argparse.Namespace) -> int:
    from slimtorch.metrics import accuracy, compare_latency, cpu_info, file_size
    from slimtorch.quant.export.onnx_export import compare_with_onnx, export_float_onnx, export_onnx

    if args.calib < 1:
        raise ValueError(f"--calib must be >= 1, got {args.calib}")
    if args.qat_epochs < 0:
        raise ValueError(f"--qat-epochs must be >= 0, got {args.qat_epochs}")
    if not args.grad_clip > 0:  # also refuses nan
        raise ValueError(f"--grad-clip must be > 0 (inf: no clipping), got {args.grad_clip}")
    scheme = SCHEMES.get(args.scheme)
    config = scheme_config(scheme, args)
    smooth = smoothquant_config(args.smoothquant, config)
    if scheme.data != "none" and not args.data:
        raise ValueError(f"--scheme {args.scheme} needs data: give --data (e.g. mnist, cifar10)")
    ref = common.model_ref(args, "run")
    train = common.load_data(args, "train") if args.data else None
    test = common.load_data(args, "test") if args.data else None
    model = common.open_model(ref, model_args=args.model_arg, weights=args.weights, allow_code=args.allow_code,
                              trust_pickle=args.trust_pickle).eval()
    common.check_patterns_match(model, getattr(args, common.flag_dest("--exclude")), "--exclude")
    out = common.check_out_dir(args.out, args.overwrite, command="quantize")
    batches: Any = None
    if scheme.data == "calib":
        subset = sdata.calibration_subset(train, min(args.calib, len(train)), seed=args.seed)
        batches = sdata.make_loader(subset, batch_size=args.batch_size)
    elif scheme.data == "train":
        batches = sdata.make_loader(train, batch_size=args.batch_size, shuffle=True, seed=args.seed)
    if smooth is not None and batches is None:
        raise ValueError(f"--smoothquant needs calibration batches, which --scheme {args.scheme} does not read; "
                         "use --scheme w8a8 (or int8) with --data")
    example = _example_input(model, test if test is not None else train, args.batch_size)
    eval_set = None
    if test is not None and args.eval_n > 0:
        eval_set = sdata.calibration_subset(test, min(args.eval_n, len(test)), seed=args.seed)
    fp32_acc = accuracy(model, eval_set) if eval_set is not None else None
    fp32_onnx = export_float_onnx(model, out / "model.fp32.onnx", example[:1])

    if smooth is not None:
        # a float pre-pass (outputs unchanged up to float error) before the int8 scheme calibrates
        quantize_(model, smooth, calib_data=batches)
    report = quantize_(model, config, calib_data=batches)
    if isinstance(config, QAT):
        # QAT: the prepared model (LSQ fake quantizers, BN folded) trains on the training split, then its
        # learned scales are frozen into the same simulated form PTQ produces.
        fit(model, train, args.qat_epochs, lr=args.lr or 1e-3, batch_size=args.batch_size, seed=args.seed,
            eval_data=eval_set, grad_clip=args.grad_clip)
        convert_qat_(model)
    doc: dict[str, Any] = {
        "source": ref,
        "scheme": args.scheme,
        "config": common.config_record(config),
        "smoothquant": None if smooth is None else common.config_record(smooth),
        "report": report.to_dict(),
        "accuracy": {"fp32": fp32_acc},
        "target": report.details.get("target"),
        "cpu": cpu_info().to_dict(),
    }
    model_file = save_quantized(model, out, config)
    doc["files"] = {"model": str(model_file), "fp32_onnx": str(fp32_onnx)}
    if eval_set is not None:
        doc["accuracy"]["simulated"] = accuracy(model, eval_set)
    try:
        int8_onnx = export_onnx(model, out / "model.int8.onnx", example[:1])
    except ValueError as e:  # e.g. sub-8-bit activations have no ONNX integer kernels
        doc["onnx_export"] = f"not exported: {e}"
        int8_onnx = None
    if int8_onnx is not None:
        doc["files"]["int8_onnx"] = str(int8_onnx)
        doc["bytes"] = {"fp32_onnx": file_size(fp32_onnx), "int8_onnx": file_size(int8_onnx)}
        doc["bytes"]["smaller_x"] = doc["bytes"]["fp32_onnx"] / doc["bytes"]["int8_onnx"]
        lat = compare_latency(fp32_onnx, int8_onnx, example, runtime="onnxruntime", threads=args.threads,
                              warmup=3, repeats=20)
        doc["latency"] = {**lat, "batch": example.shape[0]}
        if eval_set is not None:
            loader = sdata.make_loader(eval_set, batch_size=256)
            doc["onnxruntime_vs_simulation"] = compare_with_onnx(model, int8_onnx, loader, threads=args.threads)
            doc["accuracy"]["onnxruntime_int8"] = _ort_accuracy(int8_onnx, loader, args.threads)
    common.write_json(out / "quant_report.json", doc)
    text = _text(doc, report.summary())
    common.write_text(out / "quant_report.txt", text + "\n")
    common.finish_out_dir(out)
    print(text)
    return 0


#: Config types ``--smoothquant`` composes with (SmoothQuant prepares activations for int8 activation grids).
SMOOTHQUANT_SCHEMES = ("Int8Static", "Int8Dynamic")


def _alpha(text: str) -> float | str:
    """``--smoothquant`` value: ``auto`` or a number (its range is checked with the scheme)."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--smoothquant takes a number in [0, 1] or 'auto', got {text!r}") from None


def smoothquant_config(alpha: float | str | None, config: Config) -> Config | None:
    """``SmoothQuant(alpha)`` for ``--smoothquant ALPHA``, or None when the flag is not given.

    Raises:
        ValueError: ``alpha`` outside [0, 1], or a scheme whose activations stay float.
    """
    if alpha is None:
        return None
    if alpha != "auto" and not 0.0 <= alpha <= 1.0:  # also refuses nan
        raise ValueError(f"--smoothquant takes alpha in [0, 1] (the share of the activation range moved into "
                         f"the weights; 0.5 is the paper's default), got {alpha}")
    if type(config).__name__ not in SMOOTHQUANT_SCHEMES:
        raise ValueError(f"--smoothquant applies to int8 activation schemes (w8a8, int8, int8-dynamic); "
                         f"{type(config).__name__} keeps activations in float (for weight-only use --method awq)")
    from slimtorch import quant

    cls = getattr(quant, "SmoothQuant", None)
    if cls is None:
        raise ValueError("--smoothquant needs slimtorch.quant.SmoothQuant, which this installation lacks")
    return cls(alpha=alpha)


def scheme_config(scheme: Scheme, args: argparse.Namespace) -> Config:
    """The config ``--scheme`` and the options build: ``from_dict`` of the scheme's defaults, the given
    flags, then ``--set`` (a former-form scheme's ``build(options)`` result, changed by ``--set``)."""
    if scheme.build is not None:
        return _legacy_config(scheme, args)
    config_type: Any = scheme.config_type(trains=args.qat_epochs > 0)  # set: the scheme has no build
    data = common.config_data(args, FLAGS, config_type, scheme.defaults)
    return config_type.from_dict(common.apply_sets(data, args.set))


def _legacy_config(scheme: Scheme, args: argparse.Namespace) -> Config:
    options = {k: v for k, v in vars(args).items() if not k.startswith(("_", "cfg_"))}
    options.setdefault("run", None)
    for flag, _key, _kw in FLAGS:
        name = flag[2:].replace("-", "_")
        value = getattr(args, common.flag_dest(flag))
        options[name] = _LEGACY_DEFAULTS.get(name) if value is None else value
    options["per_tensor"] = args.cfg_per_tensor is False
    config = scheme.build(options)  # type: ignore[misc]
    if any(f.name == "target" for f in dataclasses.fields(config)):  # type: ignore[arg-type]
        config = dataclasses.replace(config, target=options["target"])  # type: ignore[type-var]
    if args.set:
        config = type(config).from_dict(common.apply_sets(config.to_dict(), args.set))
    return config


def _example_input(model: torch.nn.Module, dataset: Any, batch: int) -> torch.Tensor:
    if dataset is not None:
        return torch.stack([dataset[i][0] for i in range(min(batch, len(dataset)))])
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise ValueError("the model has no input_shape; give --data so an example input can be built")
    dtype = getattr(model, "input_dtype", torch.float32)
    return torch.zeros(batch, *shape, dtype=dtype)


def _ort_accuracy(path: Any, loader: Any, threads: int) -> float:
    from slimtorch.metrics.ort import onnx_session

    sess = onnx_session(path, threads)
    name = sess.get_inputs()[0].name
    correct = total = 0
    for x, y in loader:
        pred = torch.from_numpy(sess.run(None, {name: x.numpy()})[0]).argmax(-1)
        correct += int((pred == y).sum())
        total += y.numel()
    return correct / max(total, 1)


def _text(doc: dict[str, Any], summary: str) -> str:
    lines = [summary]
    if doc.get("target"):
        lines.append(f"deployment target: {doc['target']} (CPU here: {doc['cpu']['model']}, {doc['cpu']['kind']})")
    acc = {k: v for k, v in doc["accuracy"].items() if v is not None}
    if acc:
        lines.append("accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in acc.items()))
    if "onnxruntime_vs_simulation" in doc:
        c = doc["onnxruntime_vs_simulation"]
        lines.append(f"ONNX Runtime vs simulation: top-1 agreement {c['top1_agreement']:.4f}, "
                     f"max |diff| {c['max_abs_diff']:.3g}")
    if "bytes" in doc:
        b = doc["bytes"]
        lines.append(f"size: fp32 ONNX {b['fp32_onnx']} B, int8 ONNX {b['int8_onnx']} B "
                     f"({b['smaller_x']:.2f}x smaller)")
    if "latency" in doc:
        lat = doc["latency"]
        lines.append(f"ONNX Runtime latency at batch {lat['batch']}, {lat['threads']} thread(s): fp32 "
                     f"{lat['a_ms']:.2f} ms, int8 {lat['b_ms']:.2f} ms ({lat['speedup']:.2f}x)")
    if "onnx_export" in doc:
        lines.append(doc["onnx_export"])
    return "\n".join(lines)
