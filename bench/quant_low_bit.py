"""W4A8: round-to-nearest vs AdaRound vs QAT (LSQ) (BENCHMARKS.md: quant_low_bit).

All three share one pipeline: BatchNorm folded, weights symmetric per output channel (4-bit), every
Conv/Linear input and output static uint8 (min-max calibrated on 512 training images), i.e. the
fake-quant form :class:`slimtorch.quant.Int8Static` produces and ONNX Runtime executes.

* RTN: ``LowBitStatic(bits_w=4, method="rtn")`` (= ``Int8Static(weight_bits=4)``);
* AdaRound: ``LowBitStatic(bits_w=4, method="adaround")`` (Nagel et al. 2020, 1000 steps per layer);
* QAT: ``QAT(bits_w=4, bits_a=8)`` (LSQ learned step sizes, Esser et al. 2020) fine-tuned with
  ``slimtorch.train.fit`` on a training subset (SGD momentum 0.9, cosine, lr 1e-3 by default), then
  ``convert_qat_``; a control row fine-tunes the float model the same way. ``--qat-kd`` makes both
  fine-tunes distil from the fp32 model (Hinton KD, T=4, plus half the cross-entropy); with BN folded,
  QAT then needs ``--qat-grad-clip`` (lr 1e-3 without clipping diverged in 5 steps; docs/low_bit.md).

``--model resnet20`` uses ``bench/checkpoints/resnet20_cifar10.safetensors`` (CIFAR-10);
``--model lenet5`` is the stand-in used when that checkpoint is missing: Caffe LeNet-5 on MNIST
(trained here once if ``bench/checkpoints/lenet5_mnist_lowbit.safetensors`` is missing).

Run: ``.venv/bin/python bench/quant_low_bit.py --model resnet20`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import slimtorch  # noqa: E402
from common import CHECKPOINTS_DIR, DATA_ROOT, Timer, check, kd_trainee, write_result  # noqa: E402
from slimtorch.data import calibration_subset, load  # noqa: E402
from slimtorch.metrics import accuracy  # noqa: E402
from slimtorch.models import create  # noqa: E402
from slimtorch.quant import QAT, LowBitStatic, convert_qat_, quantize_  # noqa: E402
from slimtorch.train import fit  # noqa: E402

SEED = 0
SETUPS = {
    "resnet20": {"data": "cifar10", "ckpt": CHECKPOINTS_DIR / "resnet20_cifar10.safetensors"},
    "lenet5": {"data": "mnist", "ckpt": CHECKPOINTS_DIR / "lenet5_mnist_lowbit.safetensors"},
}


def tensors(ds, n: int | None, seed: int = SEED) -> TensorDataset:
    """The first ``n`` items of a seeded random draw (all items when ``n`` is None) as tensors."""
    sub = ds if n is None or n >= len(ds) else calibration_subset(ds, n, seed=seed)
    x, y = zip(*[sub[i] for i in range(len(sub))])
    return TensorDataset(torch.stack(x), torch.stack([torch.as_tensor(t) for t in y]))


def lenet_checkpoint(path: Path) -> dict:
    """Train Caffe LeNet-5 on MNIST (2 epochs, Adam) and save it; returns what was done."""
    torch.manual_seed(SEED)
    model = create("lenet5")
    train = load("mnist", "train", root=DATA_ROOT)
    t = Timer()
    fit(
        model,
        train,
        2,
        optimizer="adam",
        lr=1e-3,
        weight_decay=0.0,
        batch_size=128,
        progress=False,
        seed=SEED,
    )
    slimtorch.save(model, path)
    return {"trained": "lenet5 on MNIST, 2 epochs Adam lr 1e-3", "train_s": round(t.elapsed, 1)}


def run_seed(a: argparse.Namespace, seed: int, model: torch.nn.Module, setup: dict, acc, fp32: float) -> list[dict]:
    """The control, RTN, AdaRound and QAT rows of one seed (its own calibration and QAT subsets)."""
    torch.manual_seed(seed)
    train = load(setup["data"], "train", root=DATA_ROOT)
    calib_set = tensors(train, a.calib, seed=seed + 1)
    calib = [x for x, _ in DataLoader(calib_set, batch_size=64)]
    # A fixed random subset of the training split (augmented afresh in every batch with --qat-augment).
    qat_train = calibration_subset(
        load(setup["data"], "train", root=DATA_ROOT, augment=a.qat_augment), a.qat_n, seed + 2
    )

    def finetune(m: torch.nn.Module) -> None:
        """The QAT fine-tune; the fp32 control row runs exactly this too."""
        trainee = kd_trainee(m, model, calib[0][:2]) if a.qat_kd else m
        fit(trainee, qat_train, a.qat_epochs, optimizer=a.qat_optimizer, lr=a.qat_lr, weight_decay=0.0,
            batch_size=64, progress=False, seed=seed, grad_clip=a.qat_grad_clip)

    rows: list[dict] = []
    if not a.no_control:
        # Control: the float model fine-tuned exactly as QAT is, so QAT's number is not credited with
        # what extra training alone does (it matters for under-trained checkpoints).
        ctl = copy.deepcopy(model)
        t = time.perf_counter()
        finetune(ctl)
        top1 = acc(ctl)
        rows.append(
            {
                "model": a.model,
                "scheme": "fp32",
                "method": "fine-tuned like QAT (control)",
                "top1": top1,
                "drop_pt": fp32 - top1,
                "seed": seed,
                "seconds": round(time.perf_counter() - t, 1),
            }
        )
        print(f"seed {seed} fp32 fine-tuned control: {top1:.2f}%", flush=True)
    for bits in a.bits:
        for method in ("rtn", "adaround", "qat"):
            q = copy.deepcopy(model)
            t = time.perf_counter()
            if method == "qat":
                quantize_(q, QAT(bits_w=bits, bits_a=8), calib)
                finetune(q)
                convert_qat_(q)
            else:
                quantize_(
                    q,
                    LowBitStatic(
                        bits_w=bits,
                        bits_a=8,
                        method=method,
                        adaround_iters=a.adaround_iters,
                        adaround_batch=a.adaround_batch,
                    ),
                    calib,
                )
            secs = time.perf_counter() - t
            top1 = acc(q)
            rows.append(
                {
                    "model": a.model,
                    "scheme": f"w{bits}a8",
                    "method": method,
                    "top1": top1,
                    "drop_pt": fp32 - top1,
                    "seed": seed,
                    "seconds": round(secs, 1),
                }
            )
            print(f"seed {seed} w{bits}a8 {method}: {top1:.2f}% ({secs:.0f}s)", flush=True)

    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(SETUPS), default="resnet20")
    ap.add_argument("--bits", type=int, nargs="+", default=[4], help="weight widths (checks use 4)")
    ap.add_argument("--calib", type=int, default=512, help="calibration images (training split)")
    ap.add_argument("--test-n", type=int, default=None, help="test images (default: all)")
    ap.add_argument("--adaround-iters", type=int, default=1000)
    ap.add_argument("--adaround-batch", type=int, default=32, help="images per AdaRound step")
    ap.add_argument("--qat-n", type=int, default=10000, help="training images for QAT fine-tuning")
    ap.add_argument("--qat-epochs", type=int, default=2)
    ap.add_argument("--qat-lr", type=float, default=1e-3)
    ap.add_argument("--qat-optimizer", choices=["sgd", "adam"], default="sgd")
    ap.add_argument("--qat-augment", action="store_true", help="augment the QAT fine-tuning images")
    ap.add_argument("--qat-kd", action="store_true",
                    help="fine-tune (QAT and the control) by distillation from the fp32 model: KD T=4 + 0.5 CE")
    ap.add_argument("--qat-grad-clip", type=float, default=None,
                    help="clip the gradient norm of the fine-tunes (QAT with BN folded needs it under --qat-kd)")
    ap.add_argument("--no-control", action="store_true", help="skip the fp32 fine-tuned control row")
    ap.add_argument("--seeds", default="0",
                    help="comma-separated seeds; each draws its own calibration and QAT subsets, AdaRound and "
                         "fine-tune randomness; with several, the checks use the per-method mean")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny data and iterations")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (AdaRound and QAT)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    seeds = [int(v) for v in a.seeds.split(",")]
    timer = Timer()
    setup = SETUPS[a.model]
    if a.quick:
        a.calib, a.test_n, a.adaround_iters, a.qat_n, a.qat_epochs = 128, 500, 50, 512, 1
    extra: dict = {"model": a.model, "stand_in": a.model != "resnet20"}
    if a.model == "lenet5" and not setup["ckpt"].exists():
        extra["checkpoint_training"] = lenet_checkpoint(setup["ckpt"])
    if not setup["ckpt"].exists():
        raise SystemExit(f"missing checkpoint {setup['ckpt']} (run bench/prune_resnet.py --stage train first)")
    model = slimtorch.load(setup["ckpt"]).eval()
    test = tensors(load(setup["data"], "test", root=DATA_ROOT), a.test_n)

    def acc(m: torch.nn.Module) -> float:
        return 100.0 * accuracy(m, test, batch_size=250)

    fp32 = acc(model)
    print(f"fp32: {fp32:.2f}%", flush=True)
    rows = [{"model": a.model, "scheme": "fp32", "method": "-", "top1": fp32, "drop_pt": 0.0, "seconds": 0.0}]
    for seed in seeds:
        rows += run_seed(a, seed, model, setup, acc, fp32)
    if len(seeds) > 1:
        # one summary row per method: mean and sample std over the seeds (the checks read these)
        for scheme, method in dict.fromkeys((r["scheme"], r["method"]) for r in rows if "seed" in r):
            vals = torch.tensor([r["top1"] for r in rows if isinstance(r.get("seed"), int)
                                 and (r["scheme"], r["method"]) == (scheme, method)], dtype=torch.float64)
            rows.append({"model": a.model, "scheme": scheme, "method": method, "seed": "mean",
                         "top1": float(vals.mean()), "top1_std": float(vals.std()),
                         "drop_pt": fp32 - float(vals.mean()), "seeds": len(vals)})
    want = "mean" if len(seeds) > 1 else seeds[0]
    over = ", mean of seeds" if len(seeds) > 1 else ""

    def top(method: str, bits: int = 4) -> float:
        return next(r["top1"] for r in rows if r["method"] == method and r["scheme"] == f"w{bits}a8"
                    and r.get("seed") == want)

    checks = []
    if 4 in a.bits:
        label = a.model + (" (STAND-IN for ResNet-20)" if extra["stand_in"] else "")
        r, ad, qa = top("rtn"), top("adaround"), top("qat")
        checks.append(
            check(
                f"{label}: ordering RTN < AdaRound < QAT (top-1 %{over})",
                [round(r, 2), round(ad, 2), round(qa, 2)],
                "RTN < AdaRound < QAT",
                r < ad < qa,
            )
        )
        checks.append(check(f"{label}: QAT drop vs fp32 (pt{over})", round(fp32 - qa, 2), "<= 1.0", fp32 - qa <= 1.0))
    if extra["stand_in"]:
        extra["resnet20"] = "not run: bench/checkpoints/resnet20_cifar10.safetensors was not available"
    extra.update(
        {
            "test_images": len(test),
            "calib_images": a.calib,
            "qat_images": a.qat_n,
            "qat_epochs": a.qat_epochs,
            "qat_lr": a.qat_lr,
            "qat_optimizer": a.qat_optimizer,
            "qat_augment": a.qat_augment,
            "qat_kd": "KD from the fp32 model, T=4, + 0.5 x cross-entropy" if a.qat_kd else "no",
            "qat_grad_clip": a.qat_grad_clip,
            "qat_schedule": "cosine",
            "adaround_iters": a.adaround_iters,
            "activations": "uint8 static, min-max, every Conv/Linear input and output",
            "weights": "symmetric per-output-channel, BN folded",
        }
    )
    write_result("quant_low_bit", rows, checks, seeds=seeds, wall_s=timer.elapsed, extra=extra)


if __name__ == "__main__":
    main()
