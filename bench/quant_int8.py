"""Int8 post-training quantization deployed on ONNX Runtime, beside ONNX Runtime's own quantizer.

For each model (LeNet-5 on MNIST, ResNet-20 on CIFAR-10):

* ``fp32``: the float model exported to ONNX (legacy exporter), run on ONNX Runtime;
* ``ours <observer>``: ``quantize_(model, Int8Static(observer=...), calib)`` with the default ``portable``
  target (BN folded, per-channel symmetric 7-bit weights that no int8 kernel can saturate, uint8 asymmetric
  activations), exported with ``export_onnx`` (QDQ with our scales) and run on ONNX Runtime, which fuses it
  into QLinearConv / QGemm; ``ours percentile x86-vnni``: full 8-bit weights, exact only on VNNI/AMX CPUs;
* ``ort <method>``: ``onnxruntime.quantization.quantize_static`` on the same fp32 ONNX file and the same
  calibration images (QDQ, per-channel, QUInt8 activations / QInt8 weights, MinMax and Percentile), with the
  ``reduce_range`` ONNX Runtime recommends for this CPU (True on x86 without VNNI); the other setting is
  kept as a reference row (``rr=True``/``rr=False``) without a check.

Results are kept per CPU (``bench/results/quant_int8.json``, ``cpu`` on every row): a rerun replaces only
the rows of the CPU it runs on. ``--emulated`` runs accuracy and agreement only (no latency), for a run
under ``../shared/tools/as-cpu`` (qemu as an AVX2 CPU without VNNI), whose timings mean nothing.

Accuracy is ONNX Runtime's on the full test split (what is deployed); ``sim_agree`` is the top-1
agreement between our fake-quant simulation and ONNX Runtime on the first ``--agree-n`` test images.
Latency: ``compare_latency`` times the fp32 and the int8 ONNX files alternately at batch 64, one intra-op
thread, CPU-time clock (the machine is shared; see slimtorch.metrics.latency), median of ``--repeats``,
twice: in alternating blocks of 5 calls with the first untimed (the library default, steady state:
``speedup_x``, the one the floor is checked on) and in strictly alternating single calls
(``speedup_alternating_x``, where each model first refills the caches the other evicted).

    .venv/bin/python bench/quant_int8.py                      # both models
    .venv/bin/python bench/quant_int8.py --models lenet5      # one model
    .venv/bin/python bench/quant_int8.py --quick              # smoke test, writes nothing
    ../shared/tools/as-cpu .venv/bin/python bench/quant_int8.py --emulated --test-n 2000   # AVX2 rows
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    CHECKPOINTS_DIR,
    DATA_ROOT,
    Timer,
    check,
    cpu_label,
    print_table,
    write_result,
)

import slimtorch  # noqa: E402
from slimtorch import data as D  # noqa: E402
from slimtorch.metrics import accuracy, compare_latency, cpu_info, file_size  # noqa: E402
from slimtorch.metrics.ort import onnx_session  # noqa: E402
from slimtorch.models import create  # noqa: E402
from slimtorch.quant import Int8Static, compare_with_onnx, export_float_onnx, export_onnx, quantize_  # noqa: E402
from slimtorch.quant.export.onnx_export import runtime_ops  # noqa: E402

SEED = 0
#: our observers at their defaults (percentile 99.999, as ONNX Runtime's), on the default target, then the
#: x86-vnni target (8-bit weights) as a reference row without a check
OURS = [("minmax", {}, "portable"), ("percentile", {}, "portable"), ("mse", {}, "portable"), ("kl", {}, "portable"),
        ("percentile", {}, "x86-vnni")]
SETUPS: dict[str, dict[str, Any]] = {
    "lenet5": {"data": "mnist", "ckpt": "lenet5.safetensors", "fallback": "lenet5_2ep.safetensors"},
    "resnet20": {"data": "cifar10", "ckpt": "resnet20_cifar10.safetensors", "fallback": None},
}


def get_model(name: str, quick: bool, log: list[str]) -> torch.nn.Module | None:
    """The trained fp32 checkpoint; LeNet-5 is trained for 2 epochs if no checkpoint exists."""
    setup = SETUPS[name]
    for fname in (setup["ckpt"], setup["fallback"]):
        if fname and (CHECKPOINTS_DIR / fname).exists():
            log.append(f"{name}: checkpoint bench/checkpoints/{fname}")
            return slimtorch.load(CHECKPOINTS_DIR / fname).eval()
    if setup["fallback"] is None:
        log.append(f"{name}: NOT RUN, no checkpoint bench/checkpoints/{setup['ckpt']} (from prune_resnet)")
        return None
    from slimtorch.train import fit

    torch.manual_seed(SEED)
    train = D.load(setup["data"], "train", root=DATA_ROOT)
    if quick:
        train = D.calibration_subset(train, 2000, seed=SEED)
    model = create(name)
    t = Timer()
    fit(model, train, 2, lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine", batch_size=128,
        seed=SEED, progress=False)
    model.eval()
    if not quick:
        slimtorch.save(model, CHECKPOINTS_DIR / setup["fallback"], metadata={
            "trained_on": "MNIST train 60k, 2 epochs SGD 0.05 cosine, batch 128, 1 thread "
                          "(bench/quant_int8.py)"})
    log.append(f"{name}: trained 2 epochs in {t.elapsed:.0f}s -> bench/checkpoints/{setup['fallback']}")
    return model


def ort_accuracy(path: Path, loader) -> float:
    sess = onnx_session(path, threads=1)
    name = sess.get_inputs()[0].name
    correct = total = 0
    for x, y in loader:
        out = sess.run(None, {name: x.numpy()})[0]
        correct += int((out.argmax(1) == y.numpy()).sum())
        total += len(y)
    return correct / total


class _Reader:
    """onnxruntime.quantization CalibrationDataReader over our calibration batches."""

    def __init__(self, batches: list[torch.Tensor], input_name: str) -> None:
        self._it = iter([{input_name: b.numpy()} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def ort_recommends_reduce_range() -> bool:
    """ONNX Runtime's advice: 7-bit weights (reduce_range) on x86 CPUs without VNNI, where u8 x s8 pairs
    are added in saturating int16."""
    info = cpu_info()
    return info.kind.startswith("x86") and not info.int8_dot_product


def ort_quantize(fp32: Path, out: Path, batches: list[torch.Tensor], method: str, reduce_range: bool,
                 scheme: str = "U8S8") -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = fp32.with_suffix(".pre.onnx")
    if not pre.exists():
        quant_pre_process(str(fp32), str(pre))
    name = onnx_session(pre).get_inputs()[0].name
    quantize_static(str(pre), str(out), _Reader(batches, name), quant_format=QuantFormat.QDQ,
                    per_channel=True, reduce_range=reduce_range,
                    activation_type=QuantType.QUInt8 if scheme[0] == "U" else QuantType.QInt8,
                    weight_type=QuantType.QUInt8 if scheme[2] == "U" else QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, method))
    return out


def run_model(name: str, args: argparse.Namespace, tmp: Path, log: list[str]
              ) -> tuple[list[dict], list[dict]]:
    model = get_model(name, args.quick, log)
    if model is None:
        return [{"model": name, "method": "not run", "note": log[-1]}], []
    setup = SETUPS[name]
    test = D.load(setup["data"], "test", root=DATA_ROOT)
    if args.quick or args.test_n:
        test = D.calibration_subset(test, args.test_n or 1000, seed=SEED)
    loader = D.make_loader(test, batch_size=256)
    calib_set = D.calibration_subset(D.load(setup["data"], "train", root=DATA_ROOT), args.calib, seed=SEED)
    calib = [x for x, _ in D.make_loader(calib_set, batch_size=64)]
    agree_x = [x for x, _ in D.make_loader(D.calibration_subset(test, min(args.agree_n, len(test)), seed=1),
                                           batch_size=256)]
    x64 = torch.stack([test[i][0] for i in range(64)])

    fp32_path = export_float_onnx(model, tmp / f"{name}.fp32.onnx", x64[:1])
    fp32_size = file_size(fp32_path)
    fp32_acc = ort_accuracy(fp32_path, loader)
    torch_acc = accuracy(model, loader)
    rows = [{"model": name, "method": "fp32", "acc": fp32_acc, "torch_acc": torch_acc,
             "size_bytes": fp32_size}]
    log.append(f"{name}: fp32 ORT acc {fp32_acc:.4f} (torch {torch_acc:.4f}), {fp32_size} bytes")
    print(log[-1], flush=True)

    def deployed_row(method: str, path: Path, extra: dict[str, Any]) -> dict[str, Any]:
        acc = ort_accuracy(path, loader)
        nan = {"a_ms": None, "b_ms": None, "speedup": None}
        lat = nan if args.emulated else compare_latency(fp32_path, path, x64, runtime="onnxruntime", threads=1,
                                                        clock="cpu", warmup=5, repeats=args.repeats, block=5)
        alt = nan if args.emulated else compare_latency(fp32_path, path, x64, runtime="onnxruntime", threads=1,
                                                        clock="cpu", warmup=5, repeats=args.repeats, block=1)
        ops = runtime_ops(path, tmp)
        row = {"model": name, "method": method, "acc": acc, "drop_pt": 100 * (fp32_acc - acc), **extra,
               "size_bytes": file_size(path), "smaller_x": fp32_size / file_size(path),
               "fp32_ms": lat["a_ms"], "int8_ms": lat["b_ms"], "speedup_x": lat["speedup"],
               "speedup_alternating_x": alt["speedup"],
               "int_kernels": sum(v for k, v in ops.items() if k.startswith("QLinear") or k == "QGemm"),
               "float_matmuls": sum(ops.get(k, 0) for k in ("Conv", "FusedConv", "Gemm", "FusedGemm",
                                                            "MatMul")),
               "float_adds": ops.get("Add", 0)}
        print(f"{name} {method}: acc {acc:.4f} speedup {lat['speedup']} (alternating calls "
              f"{alt['speedup']}) smaller {row['smaller_x']:.2f}x", flush=True)
        return row

    paths: dict[str, Path] = {}
    for obs, kw, target in OURS:
        if args.emulated and obs in ("mse", "kl"):
            continue  # qemu runs ~50x slower: the rows the checks read, and the 8-bit reference, only
        q = copy.deepcopy(model)
        report = quantize_(q, Int8Static(observer=obs, observer_kwargs=kw, target=target), calib_data=calib)
        cal = report.details["calibration"]
        label = f"ours {obs}" + (f" {target}" if target != "portable" else "")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an x86-vnni file on a CPU without VNNI: measured, not checked
            paths[label] = export_onnx(q, tmp / f"{name}.{label.replace(' ', '_')}.onnx", x64[:1], check=False)
        agree = compare_with_onnx(q, paths[label], agree_x)
        rows.append(deployed_row(label, paths[label], {
            "target": target, "weight_bits": report.details["weight_bits"],
            "sim_agree": agree["top1_agreement"], "sim_max_abs_diff": agree["max_abs_diff"],
            "calib_images_per_s": cal["samples_per_s"], "calib_s": cal["seconds"],
            "float_layers": len(report.skipped)}))
    recommended = ort_recommends_reduce_range()
    for method in ("MinMax", "Percentile"):
        for rr in (recommended,) if args.emulated else (recommended, not recommended):
            t = Timer()
            label = f"ort {method}" + ("" if rr == recommended else f" rr={rr}")
            paths[label] = ort_quantize(fp32_path, tmp / f"{name}.ort_{method}_{rr}.onnx", calib, method, rr)
            rows.append(deployed_row(label, paths[label], {"reduce_range": rr, "recommended": rr == recommended,
                                                           "quantize_s": t.elapsed}))
    # the other saturation-free candidates for a portable scheme, full 8-bit: uint8 weights (U8U8) and int8
    # activations (S8S8); reference rows, measured for accuracy, agreement on this CPU and speed
    for scheme in ("U8U8", "S8S8"):
        label = f"ort MinMax {scheme}"
        paths[label] = ort_quantize(fp32_path, tmp / f"{name}.ort_{scheme}.onnx", calib, "MinMax", False, scheme)
        rows.append(deployed_row(label, paths[label], {"reduce_range": False, "scheme": scheme}))

    checks = []
    by = {r["method"]: r for r in rows}
    for ours, theirs in (("ours minmax", "ort MinMax"), ("ours percentile", "ort Percentile")):
        r, peer = by[ours], by[theirs]
        checks += [
            check(f"{name} {ours}: ONNX Runtime top-1 agreement with the simulation (default target)",
                  round(r["sim_agree"], 4), ">= 0.995", r["sim_agree"] >= 0.995),
            check(f"{name} {ours}: accuracy drop (pt) on ONNX Runtime", round(r["drop_pt"], 3), "<= 0.5",
                  r["drop_pt"] <= 0.5),
            check(f"{name} {ours}: accuracy minus {theirs} (reduce_range={peer['reduce_range']}, as ORT "
                  "recommends for this CPU) (pt)", round(100 * (r["acc"] - peer["acc"]), 3), ">= -0.1",
                  100 * (r["acc"] - peer["acc"]) >= -0.1),
            check(f"{name} {ours}: size reduction vs fp32 ONNX minus {theirs}'s",
                  round(r["smaller_x"] - peer["smaller_x"], 4), ">= 0", r["smaller_x"] >= peer["smaller_x"]),
        ]
        if not args.emulated:
            # both int8 files timed against each other inside one run: the peer's latency over ours
            vs = compare_latency(paths[theirs], paths[ours], x64, runtime="onnxruntime", threads=1, clock="cpu",
                                 warmup=5, repeats=args.repeats, block=5)
            r["speed_vs_peer_x"] = vs["speedup"]
            checks.append(check(f"{name} {ours}: speed vs {theirs} at batch 64 (their ms / our ms)",
                                round(vs["speedup"], 3), ">= 0.95", vs["speedup"] >= 0.95))
    return rows, checks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet5,resnet20")
    ap.add_argument("--calib", type=int, default=512, help="calibration images (from the train split)")
    ap.add_argument("--agree-n", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="small subsets, write nothing")
    ap.add_argument("--test-n", type=int, default=0, help="evaluate on this many test images (0: all)")
    ap.add_argument("--emulated", action="store_true",
                    help="running under qemu (../shared/tools/as-cpu): no latency, rows marked emulated")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    timer = Timer()
    rows: list[dict] = []
    checks: list[dict] = []
    log: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            r, c = run_model(name, args, Path(tmp), log)
            rows += r
            checks += c
    if args.quick:
        print_table(rows)
        for c in checks:
            print(c)
        return
    print(f"CPU: {cpu_label(args.emulated)}")
    latency = ("not measured (emulated CPU)" if args.emulated else
               "ONNX Runtime CPU EP, batch 64, 1 intra-op thread, cpu-time clock, median of repeats; speedup_x: "
               "alternating blocks of 5 calls per model, first untimed (steady state); speedup_alternating_x: "
               "strictly alternating single calls; speed_vs_peer_x: ORT quantizer's file vs ours, same way")
    write_result("quant_int8", rows, checks, seeds=[SEED], wall_s=timer.elapsed, per_cpu=True,
                 emulated=args.emulated, extra={"log": log, "calibration_images": args.calib,
                                                "test_images": args.test_n or "all", "latency": latency})


if __name__ == "__main__":
    main()
