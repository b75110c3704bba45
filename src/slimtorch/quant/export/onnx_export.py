"""Export a fake-quant model to an ONNX QDQ model that ONNX Runtime runs with integer kernels.

The fake-quant modules emit, during ``torch.onnx.export`` (legacy TorchScript exporter):

* ``QuantizeLinear -> DequantizeLinear`` for every activation quantizer, with our scale and zero point;
* ``DequantizeLinear(int8 codes, per-channel scales, axis=0)`` for weights, the codes being constants
  computed by :func:`slimtorch.quant.primitives.quantize_affine`;
* ``DequantizeLinear(int32 codes, s_in * s_w)`` for biases.

ONNX Runtime's graph optimizer fuses ``DQ -> Conv -> Q`` into ``QLinearConv`` and ``DQ -> Gemm``
into ``QGemm`` (U8S8 kernels). After export the graph is tidied so the file is close to one byte per
weight: constants become initializers, then the lossless passes of :mod:`slimtorch.quant.export.onnx_compact`
(default zero points and attributes dropped, bias scales derived, duplicates merged, short names), and
repeated node units become calls of model-local functions (:mod:`slimtorch.quant.export.experimental.onnx_functions`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
import torch
from onnx import numpy_helper
from torch import nn

from slimtorch.core.batches import ModelInputs, output_tensor, split_batch
from slimtorch.core.errors import SlimtorchError
from slimtorch.core.labels import takes_argument
from slimtorch.io.atomic import atomic_path, ensure_dir
from slimtorch.metrics._batches import eval_mode
from slimtorch.metrics.named_export import export_named, needs_named_export, wrap_for_export
from slimtorch.metrics.ort import export_onnx_fp32, onnx_session, session_feed
from slimtorch.quant.export import onnx_compact as C
from slimtorch.quant.export import onnx_kernels as K
from slimtorch.quant.export import targets as T
from slimtorch.quant.export.experimental import onnx_functions as F
from slimtorch.quant.modules.onnx_ops import export_constants

#: Opset of exported models (per-axis QuantizeLinear/DequantizeLinear need >= 13).
OPSET = 17


def _as_tuple(example_inputs: Any) -> tuple[Any, ...]:
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


def export_float_onnx(model: nn.Module, path: str | os.PathLike[str], example_inputs: Any,
                      dynamic_batch: bool = True) -> Path:
    """Plain fp32 ONNX export with a dynamic batch dimension (the baseline int8 is compared with).

    The quantization-side spelling of :func:`slimtorch.metrics.ort.export_onnx_fp32` (argument order
    ``model, path, example_inputs`` like :func:`export_onnx`); that function does the work.
    """
    inputs = example_inputs if needs_named_export(model, example_inputs) else _as_tuple(example_inputs)
    return export_onnx_fp32(model, inputs, path, dynamic_batch=dynamic_batch)


def export_onnx(model: nn.Module, path: str | os.PathLike[str], example_inputs: Any,
                dynamic_batch: bool = True, pad_input_channels: int | None = None, functions: bool = False,
                target: str | None = None, check: bool = True, accuracy_level: int = 0,
                dynamic_axes: dict[str, dict[int, str]] | None = None) -> Path:
    """Write the quantized ``model`` as an ONNX QDQ model carrying our scales and zero points.

    A weight-only model (packed layers of ``WeightOnly``) is written with ONNX Runtime's ``MatMulNBits``
    operator instead, carrying its own codes, scales and zero points
    (:func:`slimtorch.quant.export.matmul_nbits.export_matmul_nbits`).

    Args:
        model: a model quantized by :func:`slimtorch.quant.quantize_` (a float model exports as
            plain fp32 ONNX).
        path: output ``.onnx`` file.
        example_inputs: a tensor or tuple of tensors of the model's input (any batch size), or a dict of
            named tensors (``input_ids``, ``attention_mask``, ``pixel_values``): Hugging Face models and dict
            inputs export through :func:`export_named_qdq` (``torch.export``-based exporter,
            graph inputs named after the model's arguments).
        dynamic_batch: make the first dimension of inputs and outputs symbolic (and, for named token
            inputs, the sequence dimension).
        pad_input_channels: zero-pad the channels of an input read only by quantized convolutions (the
            first conv of an image model, 1 or 3 channels) to a multiple of this, so ONNX Runtime runs that
            conv on its symmetric int8 kernel (:mod:`slimtorch.quant.export.onnx_kernels`); exact. None: the
            target's choice; 1 or 0: off.
        functions: store repeated node units (a quantized conv with its weight, bias and output Q/DQ) once
            as model-local ONNX functions (:mod:`slimtorch.quant.export.experimental.onnx_functions`); exact,
            ~1.4% smaller files, but it needs a runtime that reads IR-9 local functions (ONNX Runtime >= 1.16
            does), so it is opt-in.
        target: deployment target (``portable``, ``x86-avx2``, ``x86-vnni``; see
            :mod:`slimtorch.quant.export.targets`). None: the target the model was quantized for, else
            ``portable``. Stored in the file's metadata (``slimtorch.target``).
        check: when this host is a CPU of the target, run the file on ``example_inputs`` with ONNX Runtime
            and raise if it disagrees with the simulation (naming the first layer that diverges); on
            another CPU, warn that the file cannot be checked here. A file that fails the check is removed.
        accuracy_level: ``MatMulNBits`` only: 0 keeps activations fp32, 4 lets ONNX Runtime quantize them to
            int8 per block (faster, approximate).
        dynamic_axes: ``{graph input/output name: {dim: label}}`` (inputs ``input``/``input0..``, output
            ``output``), e.g. ``{"input": {0: "batch", 1: "seq"}, "output": {0: "batch", 1: "seq"}}`` for a
            language model; default from ``dynamic_batch``.

    Returns:
        The path written.

    Raises:
        SlimtorchError: if the model cannot be exported (e.g. a layer quantized below 8 bits), if its
            weights are wider than the target allows, or if the check fails.
    """
    from slimtorch.quant.export.matmul_nbits import export_matmul_nbits, nbits_layers

    if nbits_layers(model):
        # sub-byte packed weights with per-group scales: ONNX Runtime's MatMulNBits contrib operator
        if _quantized_layers(model):
            raise SlimtorchError("a model mixing weight-only packed layers with fake-quant (int8 QDQ) layers cannot "
                                 "be exported; quantize it with one scheme")
        if dynamic_axes is None and not dynamic_batch:
            dynamic_axes = {}
        return export_matmul_nbits(model, path, example_inputs, dynamic_axes=dynamic_axes,
                                   accuracy_level=accuracy_level, check=check)
    tgt = T.get_target(target or T.model_target(model) or T.DEFAULT_TARGET)
    if pad_input_channels is None:
        pad_input_channels = tgt.pad_input_channels
    if pad_input_channels < 0:
        raise SlimtorchError(f"pad_input_channels must be >= 0, got {pad_input_channels}")
    check_weights_fit_target(model, tgt)
    if needs_named_export(model, example_inputs):
        # HF models / dict inputs: torch.export-based exporter with named dynamic axes
        return export_named_qdq(model, path, example_inputs, dynamic=dynamic_batch, target=tgt, check=check,
                                tolerance=CHECK_TOLERANCE)
    inputs = _as_tuple(example_inputs)
    out = Path(path)
    # Exported, tidied and checked under a temporary name, published only when all of it succeeded: a kill
    # or a failed check never leaves a partial or wrong file at ``path``.
    try:
        with atomic_path(out, what="ONNX model") as tmp:
            _export(model, tmp, inputs, dynamic_batch, tidy=True, pad_input_channels=pad_input_channels,
                    functions=functions, metadata={"slimtorch.target": tgt.name},
                    dynamic_axes=dynamic_axes)
            if check and _quantized_layers(model) and T.warn_if_host_cannot_check(tgt, f"the exported file {out}"):
                check_export(model, tmp, inputs)
    except ExportCheckError as e:
        # a file that computes something other than the model must not be left for deployment
        out.unlink(missing_ok=True)
        raise ExportCheckError(f"{str(e).replace(str(tmp), str(out))} (the file was removed)") from None
    return out


def export_named_qdq(model: nn.Module, path: str | os.PathLike[str], example_inputs: Any, *,
                     dynamic: bool, target: T.Target, check: bool, tolerance: float) -> Path:
    """Write the quantized ``model`` (a HF model, or named inputs) as an ONNX QDQ file, no wrapper needed.

    ``export_onnx`` sends a model here when it is a HF model or its example inputs are a dict
    (``{"input_ids": ..., "attention_mask": ...}``). The export itself is
    :func:`slimtorch.metrics.named_export.export_named` (``torch.export``-based exporter first, KV cache off,
    attention implementation switched to ``eager`` if SDPA fails, TorchScript as the checked last resort,
    named inputs with dynamic ``batch`` / ``sequence`` axes, one short error). Under ``torch.export`` the
    fake-quant modules emit their ``QuantizeLinear`` / ``DequantizeLinear`` nodes through
    :mod:`slimtorch.quant.modules.onnx_ops`, with the integer codes registered as buffers for the trace
    (:func:`~slimtorch.quant.modules.onnx_ops.export_constants`); embeddings export as ``Gather`` of int8 rows
    + per-row ``DequantizeLinear`` (:mod:`slimtorch.quant.modules.embedding`). The graph is then tidied like
    every QDQ export (:func:`slimtorch.quant.export.onnx_export.tidy_qdq_graph`) and checked against the
    simulation on the example inputs.

    Args:
        model: a model quantized by :func:`slimtorch.quant.quantize_`.
        path: output file.
        example_inputs: a dict of named tensors (or a tensor for the model's first input).
        dynamic: dynamic ``batch`` / ``sequence`` axes.
        target: deployment target, stored in the file's metadata.
        check: run the file with ONNX Runtime on the example and compare with the simulation.
        tolerance: the check's allowance, a fraction of the peak |output|.

    Returns:
        The path written.

    Raises:
        SlimtorchError: the export failed (one short message) or the check failed (the file is removed).
    """
    out = export_named(model, example_inputs, path, dynamic=dynamic, check_rtol=tolerance,
                       prepare=lambda: export_constants(model))
    proto = onnx.load(str(out))
    tidy_qdq_graph(proto)
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props},
                                        "slimtorch.target": target.name})
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))
    if check and _quantized_layers(model) and T.warn_if_host_cannot_check(target, f"the exported file {out}"):
        wrapper, names, tensors = wrap_for_export(model, example_inputs)
        try:
            with eval_mode(model), torch.no_grad():
                ours = wrapper(*tensors)
            theirs = _run_onnx(out, tensors)
            keep = _unpadded(names, tensors, ours)
            diff, allowed = _disagreement(ours[keep], theirs[keep]) if keep is not None else _disagreement(ours, theirs)
            if diff > allowed:
                check_export(wrapper, out, tensors)  # raises, naming the first layer that diverges
        except ExportCheckError as e:
            out.unlink(missing_ok=True)
            raise ExportCheckError(f"{e} (the file was removed)") from None
    return out


def _unpadded(names: list[str], tensors: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor | None:
    """Boolean ``(B, T)`` index of the tokens an ``attention_mask`` keeps, when the output is per token.

    Outputs at padded positions are not used by anything downstream and are free to differ (measured on
    all-MiniLM-L6-v2 int8: 0.46 at padded vs 0.21 at real tokens, peak 5.9); the check compares real tokens.
    """
    if "attention_mask" not in names:
        return None
    mask = tensors[names.index("attention_mask")]
    if mask.dim() != 2 or out.dim() < 2 or tuple(out.shape[:2]) != tuple(mask.shape) or not bool(mask.any()):
        return None
    return mask.bool()


def _quantized_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from slimtorch.quant.modules.fake_quant import QuantConv2d, QuantLinear

    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, (QuantConv2d, QuantLinear)) and m.weight_quant.quantizing]


def check_weights_fit_target(model: nn.Module, target: T.Target) -> None:
    """Raise if an integer weight of ``model`` could saturate an int8 kernel on a CPU of ``target``.

    A weight read by a u8 x s8 kernel is safe on every CPU when each adjacent pair along its reduction axis
    has ``|w1| + |w2| <= 128`` (:func:`slimtorch.quant.export.targets.saturation_free`); targets with full 8-bit
    weights (``x86-vnni``) need no check.
    """
    if target.max_weight_bits >= 8:
        return
    for name, layer in _quantized_layers(model):
        codes = layer.integer_weight().numpy()
        if not T.saturation_free(codes):
            worst = int(max(T.reduction_pairs(codes, lay).max() for lay in ("nchw", "nhwc")))
            raise SlimtorchError(
                f"layer {name or '<root>'!r} has {layer.weight_quant.bits}-bit weights (adjacent |codes| sum "
                f"to {worst} > {T.PAIR_LIMIT}), which int8 kernels of x86 CPUs without VNNI saturate; target "
                f"{target.name!r} needs weights quantized for it: quantize with target={target.name!r}, or "
                "export with target='x86-vnni' to deploy only on CPUs with AVX-512 VNNI, AVX-VNNI or AMX")


class ExportCheckError(SlimtorchError):
    """The exported file computes something other than the simulation on this CPU."""


#: Export check tolerance: the largest output difference between ONNX Runtime and the simulation, as a
#: fraction of the simulation's peak |output|. Correct exports differ by a few rounding steps (ONNX Runtime
#: requantizes in float, ties and bias rounding differ): measured at <= 1% on the zoo; a saturated int16
#: pair sum moves outputs by 10% or more.
CHECK_TOLERANCE = 0.05


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise SlimtorchError(f"cannot compare a model output of type {type(out).__name__} with ONNX Runtime")


def _disagreement(ours: torch.Tensor, theirs: torch.Tensor) -> tuple[float, float]:
    """``(max |ours - theirs|, allowed)`` with the allowance of :data:`CHECK_TOLERANCE`."""
    ours, theirs = ours.detach().float(), theirs.float()
    if ours.shape != theirs.shape:
        return float("inf"), 0.0
    if not ours.numel():
        return 0.0, 1e-5
    return float((ours - theirs).abs().max()), CHECK_TOLERANCE * float(ours.abs().max()) + 1e-5


def _run_onnx(path: Path, inputs: tuple[Any, ...]) -> torch.Tensor:
    sess = onnx_session(path)
    return torch.from_numpy(sess.run(None, session_feed(sess, inputs))[0])


@torch.no_grad()
def check_export(model: nn.Module, path: str | os.PathLike[str], example_inputs: Any) -> dict[str, float]:
    """Run ``path`` with ONNX Runtime on ``example_inputs`` and compare with the simulation ``model``.

    Returns:
        ``{"max_abs_diff", "allowed"}``.

    Raises:
        SlimtorchError: when the outputs disagree beyond :data:`CHECK_TOLERANCE`; the message names the
            first quantized layer whose own output diverges (each layer is exported alone and run on the
            input it received), so a saturating or mis-exported layer is found without reading the graph.
    """
    inputs = _as_tuple(example_inputs)
    modes = _training_modes(model)
    model.eval()
    try:
        ours = _first_tensor(model(*inputs))
        diff, allowed = _disagreement(ours, _run_onnx(Path(path), inputs))
        if diff <= allowed:
            return {"max_abs_diff": diff, "allowed": allowed}
        culprit = _first_diverging_layer(model, inputs, Path(path).parent)
    finally:
        _restore_training_modes(modes)
    where = (f"; the first layer that diverges is {culprit!r}" if culprit is not None
             else "; every quantized layer agrees when exported alone, so the difference lies between layers, or "
             "the model changed after export")
    raise ExportCheckError(
        f"ONNX Runtime's output of {path} differs from the simulation by {diff:.4g} (allowed {allowed:.4g}) "
        f"on this CPU ({T.cpu_info()}){where}. If the model was quantized for target 'x86-vnni', this CPU "
        "cannot run it correctly: quantize with target='portable'")


def _first_diverging_layer(model: nn.Module, inputs: tuple[Any, ...], workdir: Path) -> str | None:
    """Export each quantized layer alone, run it on its recorded input, and name the first that disagrees."""
    import tempfile

    layers = _quantized_layers(model)
    seen: dict[str, torch.Tensor] = {}

    def recorder(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:  # returns None: output kept
            seen.setdefault(name, args[0])
        return hook

    hooks = [layer.register_forward_hook(recorder(name)) for name, layer in layers]
    try:
        model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    with tempfile.TemporaryDirectory(dir=workdir if workdir.is_dir() else None) as tmp:
        for name, layer in layers:
            if name not in seen:
                continue
            x = seen[name]
            f = _export(layer, Path(tmp) / "layer.onnx", (x,), dynamic_batch=False, tidy=True)
            diff, allowed = _disagreement(layer(x), _run_onnx(f, (x,)))
            if diff > allowed:
                return name or "<root>"
    return None


def _training_modes(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """Each submodule's ``training`` flag: a model may mix modes (a frozen submodule kept in eval)."""
    return [(m, m.training) for m in model.modules()]


def _restore_training_modes(modes: list[tuple[nn.Module, bool]]) -> None:
    for m, training in modes:
        m.training = training


def _export(model: nn.Module, path: Path, inputs: tuple[Any, ...], dynamic_batch: bool, tidy: bool,
            pad_input_channels: int = 0, functions: bool = False, metadata: dict[str, str] | None = None,
            dynamic_axes: dict[str, dict[int, str]] | None = None) -> Path:
    ensure_dir(path.parent)
    in_names = [f"input{i}" if len(inputs) > 1 else "input" for i in range(len(inputs))]
    axes = {n: {0: "batch"} for n in [*in_names, "output"]} if dynamic_batch else None
    if dynamic_axes is not None:
        axes = dynamic_axes
    modes = _training_modes(model)
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # constants captured on purpose (our scales, integer codes) make the tracer warn
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, inputs, str(path), dynamo=False, opset_version=OPSET,
                              input_names=in_names,
                              output_names=["output"], dynamic_axes=axes, do_constant_folding=True)
    except ValueError as e:
        raise SlimtorchError(f"ONNX export failed: {e}") from None
    finally:
        _restore_training_modes(modes)
    if tidy:
        proto = onnx.load(str(path))
        tidy_qdq_graph(proto, pad_input_channels=pad_input_channels, functions=functions)
        for key, value in (metadata or {}).items():
            onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, key: value})
        onnx.checker.check_model(proto)
        onnx.save(proto, str(path))
    return path


def tidy_qdq_graph(proto: onnx.ModelProto, compact: bool = True, pad_input_channels: int = 0,
                   functions: bool = False) -> None:
    """Shrink an exported QDQ graph in place without changing what it computes.

    ``Constant`` nodes become initializers, grid-preserving ops are moved onto integers
    (:func:`propagate_qdq`) and tensor names are shortened; with ``compact`` the lossless passes of
    :mod:`slimtorch.quant.export.onnx_compact` run too: default zero points and attributes dropped, bias scales
    derived from the input and weight scales, duplicate constants and nodes merged. With
    ``pad_input_channels`` > 1 the input channels of first convolutions are zero-padded to that multiple
    (:func:`slimtorch.quant.export.onnx_kernels.pad_input_channels`). With ``functions`` (and ``compact``)
    repeated node units become calls of model-local functions
    (:func:`slimtorch.quant.export.experimental.onnx_functions.outline_functions`).
    """
    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    keep = []
    for node in g.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            t = onnx.TensorProto()
            t.CopyFrom(node.attribute[0].t)
            t.name = node.output[0]
            inits[t.name] = t
        else:
            keep.append(node)
    outputs = {o.name for o in g.output}
    graph_io = {i.name for i in g.input} | outputs
    keep = propagate_qdq(keep, inits, outputs)
    if compact:
        C.drop_default_zero_points(keep, inits)
        C.drop_default_attributes(keep, inits)
    # after the zero-point pass: it recognises a conv weight as a DequantizeLinear of an initializer
    keep = K.pad_input_channels(keep, inits, {i.name for i in g.input} - set(inits), pad_input_channels)
    if compact:
        keep = C.derive_bias_scales(keep, inits)
        C.dedupe_initializers(keep, inits, graph_io)
        keep = C.dedupe_nodes(keep, outputs)
        if functions:
            keep, funcs = F.outline_functions(keep, inits, outputs, proto.opset_import)
            if funcs:
                proto.functions.extend(funcs)
                proto.opset_import.append(onnx.helper.make_opsetid(F.FUNCTION_DOMAIN, F.FUNCTION_DOMAIN_VERSION))
                if any(f.attribute_proto for f in funcs):
                    proto.ir_version = max(proto.ir_version, F.IR_VERSION_ATTRIBUTE_DEFAULTS)
    used = {i for n in keep for i in n.input} | outputs
    # the most-referenced tensors get the shortest names (every reference spells the name out)
    refs: dict[str, int] = {}
    for name in [i for n in keep for i in (*n.input, *n.output)] + [t for t in inits if t in used]:
        if name and name not in graph_io:
            refs[name] = refs.get(name, 0) + 1
    rename = {name: C.short_name(k) for k, name in enumerate(sorted(refs, key=lambda t: -refs[t]))}

    def short(name: str) -> str:
        return rename.get(name, name)

    for node in keep:
        node.ClearField("name")
        node.ClearField("doc_string")
        for j, name in enumerate(node.input):
            node.input[j] = short(name)
        for j, name in enumerate(node.output):
            node.output[j] = short(name)
    new_inits = []
    for name, t in inits.items():
        if name in used:
            t.name = short(name)
            new_inits.append(t)
    del g.node[:]
    g.node.extend(keep)
    del g.initializer[:]
    g.initializer.extend(new_inits)
    del g.value_info[:]
    for vi in list(g.input):
        if vi.name in inits and vi.name not in used:
            g.input.remove(vi)
    g.name = "slimtorch"
    proto.doc_string = ""
    proto.producer_name = "slimtorch"


#: Ops that map values on a quantization grid to values on the same grid (data movement, max).
GRID_PRESERVING = {"MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity"}


def _params(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> tuple[Any, ...] | None:
    """(scale, zero point, axis) of a per-tensor Q/DQ node with constant parameters, else None."""
    if len(node.input) < 3 or node.input[1] not in inits or node.input[2] not in inits:
        return None
    s, z = numpy_helper.to_array(inits[node.input[1]]), numpy_helper.to_array(inits[node.input[2]])
    if s.size != 1:
        return None
    return float(s), int(z), z.dtype.str


def propagate_qdq(nodes: list[onnx.NodeProto], inits: dict[str, onnx.TensorProto], outputs: set[str]
                  ) -> list[onnx.NodeProto]:
    """Make grid-preserving ops run on integers in ONNX Runtime; exact, the values do not change.

    * ``DQ(p) -> Relu`` with ``p``'s zero point at the grid minimum: the ReLU is a no-op (every value
      is already >= 0) and is removed.
    * ``DQ(p) -> op`` for ``op`` in :data:`GRID_PRESERVING`: ``Q(p) -> DQ(p)`` is inserted after ``op``
      (its output is on the same grid), so ONNX Runtime runs ``op`` on int8 data.
    * ``DQ(p) -> Q(p)`` with identical parameters: ``Q(DQ(q)) == q``, the pair is bypassed.

    Nodes must be in topological order (as exported); dead nodes are removed at the end.
    """
    nodes = _quantize_before_reshapes(nodes, inits)
    _, readers = C.graph_index(nodes)
    producer: dict[str, onnx.NodeProto] = {}
    out: list[onnx.NodeProto] = []
    alias: dict[str, str] = {}
    counter = [0]

    def fresh(base: str) -> str:
        counter[0] += 1
        return f"{base}__qdq{counter[0]}"

    def grid_min(p: tuple[Any, ...]) -> int:
        return -128 if p[2].endswith("i1") else 0

    for node in nodes:
        for j, name in enumerate(node.input):
            node.input[j] = alias.get(name, name)
        src = producer.get(node.input[0]) if node.input else None
        p = _params(src, inits) if src is not None and src.op_type == "DequantizeLinear" else None
        if node.op_type == "Relu" and node.output[0] not in outputs:
            users = [u for u, _ in readers.get(node.output[0], [])]
            q_params = [_params(u, inits) if u.op_type == "QuantizeLinear" else None for u in users]
            # Q(relu(x)) == Q(x) when Q's zero point is the grid minimum (negatives clamp to it)
            if (p is not None and p[1] == grid_min(p)) or (
                    users and all(qp is not None and qp[1] == grid_min(qp) for qp in q_params)):
                alias[node.output[0]] = node.input[0]
                continue
        if node.op_type == "QuantizeLinear" and p is not None and _params(node, inits) == p:
            alias[node.output[0]] = src.input[0]
            continue
        out.append(node)
        for o in node.output:
            producer[o] = node
        if node.op_type in GRID_PRESERVING and p is not None and node.output[0] not in outputs:
            q_out, dq_out = fresh(node.output[0]), fresh(node.output[0])
            q = onnx.helper.make_node("QuantizeLinear", [node.output[0], src.input[1], src.input[2]], [q_out])
            dq = onnx.helper.make_node("DequantizeLinear", [q_out, src.input[1], src.input[2]], [dq_out])
            out += [q, dq]
            producer[q_out], producer[dq_out] = q, dq
            alias[node.output[0]] = dq_out
            # the op itself keeps its original output name, consumed only by the new Q
            q.input[0] = node.output[0]
    # drop nodes whose outputs nobody reads
    changed = True
    while changed:
        used = {i for n in out for i in n.input} | outputs
        kept = [n for n in out if any(o in used for o in n.output)]
        changed = len(kept) != len(out)
        out = kept
    return out


def _quantize_before_reshapes(nodes: list[onnx.NodeProto], inits: dict[str, onnx.TensorProto]
                              ) -> list[onnx.NodeProto]:
    """``op -> Q(p)`` with ``op`` grid-preserving and float input: also quantize the input with ``p``.

    ``Q(op(y)) == op(Q(y))`` for these ops, so this is exact, and it puts a ``Q`` right after the op
    that produced ``y`` (e.g. ``GlobalAveragePool -> Flatten -> Q`` becomes ``GlobalAveragePool -> Q``,
    which ONNX Runtime fuses into ``QLinearGlobalAveragePool``).
    """
    producer, readers = C.graph_index(nodes)
    out: list[onnx.NodeProto] = []
    inserted: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        if n.op_type != "QuantizeLinear" or _params(n, inits) is None:
            continue
        op = producer.get(n.input[0])
        # not through MaxPool: on a float input it stays a float pool (ONNX Runtime's uint8 MaxPool in
        # NCHW is ~10x slower than its float one) and Q after it quantizes 4x fewer values
        if (op is None or op.op_type not in GRID_PRESERVING or op.op_type == "MaxPool"
                or len(readers.get(op.output[0], [])) != 1):
            continue
        src = producer.get(op.input[0])
        if src is not None and src.op_type == "DequantizeLinear":
            continue
        q_out, dq_out = op.input[0] + "__preq", op.input[0] + "__predq"
        inserted[op.name or op.output[0]] = [
            onnx.helper.make_node("QuantizeLinear", [op.input[0], n.input[1], n.input[2]], [q_out]),
            onnx.helper.make_node("DequantizeLinear", [q_out, n.input[1], n.input[2]], [dq_out]),
        ]
        op.input[0] = dq_out
    for n in nodes:
        out += inserted.get(n.name or n.output[0], [])
        out.append(n)
    return out


def onnx_qdq_summary(path: str | os.PathLike[str]) -> dict[str, int]:
    """Operator counts of an ONNX file (e.g. how many QuantizeLinear / DequantizeLinear it has), with
    calls of model-local functions counted as the nodes of their bodies."""
    from onnx.inliner import inline_local_functions

    counts: dict[str, int] = {}
    for node in inline_local_functions(onnx.load(str(path))).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def runtime_ops(path: str | os.PathLike[str], tmp_dir: str | os.PathLike[str]) -> dict[str, int]:
    """Operator counts of the graph ONNX Runtime actually executes (after its QDQ fusions)."""
    out = Path(tmp_dir) / (Path(path).stem + ".ort-optimized.onnx")
    onnx_session(path, optimized_path=out)
    return onnx_qdq_summary(out)


def _graph_inputs(batch: Any, names: list[str], model: nn.Module) -> ModelInputs:
    """The inputs of ``batch`` that the graph with inputs ``names`` takes (the model gets exactly these).

    A dict batch (or ``(dict, target)``) gives its entries named like the graph inputs, in any order
    (passed to the model by name when its ``forward`` has parameters of those names, e.g. ``input_ids``,
    else in graph order, e.g. ``input0, input1``);
    a flat tuple of at least ``len(names)`` tensors gives its first ``len(names)`` in order (the rest,
    e.g. targets, ignored); anything else goes through :func:`~slimtorch.core.batches.split_batch`.
    """
    if (len(names) > 1 and isinstance(batch, (tuple, list)) and len(batch) >= len(names)
            and all(isinstance(t, torch.Tensor) for t in batch[: len(names)])):
        return ModelInputs(tuple(batch[: len(names)]))
    inputs = split_batch(batch)[0]
    if inputs.kwargs:
        missing = [k for k in names if k not in inputs.kwargs]
        if missing or inputs.args:
            raise SlimtorchError(f"a batch dict lacks the ONNX graph inputs {missing}; it has "
                                 f"{sorted(inputs.kwargs)}")
        if all(takes_argument(model, k) for k in names):
            return ModelInputs((), {k: inputs.kwargs[k] for k in names})
        return ModelInputs(tuple(inputs.kwargs[k] for k in names))
    if len(inputs.args) < len(names):
        raise SlimtorchError(f"the ONNX graph takes {len(names)} input(s) {names}: a batch must be a tuple of at "
                             f"least {len(names)} tensor(s) (extra elements such as targets are ignored), a "
                             f"dict with those keys, or for one input a tensor; got {type(batch).__name__}")
    return ModelInputs(tuple(inputs.args[: len(names)]))


def _numpy_feed(inputs: ModelInputs, names: list[str]) -> dict[str, Any]:
    values = [inputs.kwargs[k] for k in names] if inputs.kwargs else list(inputs.args)
    if not all(isinstance(v, torch.Tensor) for v in values):
        raise SlimtorchError(f"the graph inputs {names} must be tensors, got {[type(v).__name__ for v in values]}")
    return {k: v.detach().cpu().numpy() for k, v in zip(names, values)}


@torch.no_grad()
def compare_with_onnx(model: nn.Module, path: str | os.PathLike[str], batches: Sequence[torch.Tensor] | Any,
                      threads: int = 1) -> dict[str, float]:
    """Run ``model`` (our simulation) and the ONNX file on the same inputs and compare.

    Every graph input is fed (``input_ids``, ``attention_mask``, ... by name), and the model is called with
    exactly those inputs (as keywords for a dict batch), so both see the same data. The model runs in eval
    mode; each submodule's own training flag is restored afterwards.

    Args:
        model: the fake-quant model.
        path: its exported ONNX file.
        batches: iterable of batches: a tensor, an ``(inputs..., targets)`` tuple (the first as many
            elements as the graph has inputs are fed, in order), an ``(inputs, targets)`` pair, or a dict
            (e.g. a tokenizer's ``BatchEncoding``) holding the graph's input names; other keys are ignored.
        threads: ONNX Runtime threads.

    Returns:
        ``max_abs_diff`` (largest output difference), ``mean_abs_diff``, ``top1_agreement`` (fraction
        of samples whose arg-max agrees; for non-classifier outputs it compares the last axis) and
        ``samples``.
    """
    sess = onnx_session(path, threads)
    names = [i.name for i in sess.get_inputs()]
    max_diff, sum_diff, n_el, agree, n = 0.0, 0.0, 0, 0, 0
    with eval_mode(model):
        for batch in batches:
            inputs = _graph_inputs(batch, names, model)
            feed = _numpy_feed(inputs, names)
            ours = output_tensor(inputs(model)).float().cpu()  # a ModelOutput gives its logits
            theirs = torch.from_numpy(sess.run(None, feed)[0]).float()
            d = (ours - theirs).abs()
            max_diff = max(max_diff, float(d.max()))
            sum_diff += float(d.sum())
            n_el += d.numel()
            agree += int((ours.argmax(-1) == theirs.argmax(-1)).sum())
            n += ours.argmax(-1).numel()
    if n == 0:
        raise SlimtorchError("compare_with_onnx got no batches")
    return {"max_abs_diff": max_diff, "mean_abs_diff": sum_diff / n_el, "top1_agreement": agree / n,
            "samples": n}
