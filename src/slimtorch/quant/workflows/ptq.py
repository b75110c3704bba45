"""Post-training int8 quantization: static (calibrated activations) and dynamic (per-token scales).

Static PTQ in three phases, each public (DESIGN.md, API style 4)::

    report = prepare_(model, Int8Static(observer="percentile"))   # fold BN, wrap layers, observers
    calibrate(model, loader)                                      # run batches, observers record ranges
    convert_(model)                                               # freeze scales: fake-quant simulation

or all at once with ``quantize_(model, Int8Static(...), calib_data=loader)``.

What is quantized (Jacob et al. 2018; Krishnamoorthi 2018; Nagel et al. 2021, "A White Paper on
Neural Network Quantization", §3): every selected ``Conv2d``/``Linear`` gets int8 weights (symmetric,
per output channel by default; BatchNorm folded first) and a uint8 asymmetric quantizer on its input.
When the model traces with ``torch.fx``, each layer's *output* is quantized too (after the ReLU that
follows it, if any) and the next layer's input quantizer is tied to it when only grid-preserving ops
(ReLU, max-pooling, flatten, reshape, dropout) lie between them. That is the form integer runtimes
execute: ONNX Runtime turns ``DQ -> Conv -> Q`` into ``QLinearConv`` only if the output is quantized.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from slimtorch.core.config import Config, check_choice, check_positive
from slimtorch.core.errors import SlimtorchError
from slimtorch.core.selection import Selector, display_name, set_submodule
from slimtorch.quant.algorithms.fold import find_conv_bn_pairs, fold_bn_
from slimtorch.quant.api import QuantReport, register_quantizer, register_scheme
from slimtorch.quant.calibration import iter_calibration_inputs, warn_degenerate_ranges
from slimtorch.quant.export.serialize import register_preparer
from slimtorch.quant.export.targets import DEFAULT_TARGET, check_target, get_target, mark_target
from slimtorch.quant.modules.embedding import QuantEmbedding, quantize_embeddings_
from slimtorch.quant.modules.fake_quant import QUANT_MODULES, FakeQuantize, QuantConv2d, QuantLinear
from slimtorch.quant.modules.hf_conv1d import conv1d_to_linear_
from slimtorch.quant.observers import OBSERVERS, check_observer_kwargs, create_observer
from slimtorch.quant.primitives import check_bits, dynamic_fake_quantize

_RELU_FUNCS = {F.relu, torch.relu, torch.relu_}
# Ops that map grid values to grid values with the same scale/zero point, so a quantizer after them
# can reuse the parameters of the one before (max commutes with a monotone rounding; reshapes move data).
_PASS_MODULES = (nn.Identity, nn.ReLU, nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, nn.Dropout,
                 nn.AdaptiveMaxPool2d)
_PASS_FUNCS = {F.relu, torch.relu, torch.flatten, F.max_pool2d, F.dropout, operator.getitem}
_PASS_METHODS = {"relu", "view", "reshape", "flatten", "contiguous"}
_MATMUL_FUNCS = {torch.matmul, torch.bmm, operator.matmul, F.scaled_dot_product_attention, torch.einsum}


@dataclass
class Int8Static(Config):
    """Static int8 post-training quantization.

    Args:
        observer: activation range estimator (a name in ``OBSERVERS``: minmax, moving_average,
            percentile, mse, kl).
        observer_kwargs: extra arguments for the activation observer (e.g. ``{"percentile": 99.9}``).
        weight_observer: weight range estimator (minmax, or mse when ``per_channel=False``).
        per_channel: one weight scale per output channel (else one per tensor).
        symmetric_weights: int8 symmetric weights (zero point 0), as integer kernels expect.
        symmetric_activations: int8 symmetric activations instead of uint8 asymmetric.
        weight_bits: weight bits (8 for ONNX Runtime; 2..8 in simulation). The deployment ``target`` may
            narrow it (``portable``: at most 7, see :mod:`slimtorch.quant.export.targets`).
        act_bits: activation bits (8 for ONNX Runtime; 2..8 in simulation).
        fold_bn: fold BatchNorm into the preceding conv before quantizing.
        quantize_outputs: also quantize layer outputs (needed for integer kernels on ONNX Runtime).
        num_batches: use at most this many calibration batches (None: all).
        include: fnmatch patterns of layer names to quantize (empty: all Conv2d/Linear).
        exclude: patterns of layer names to keep in float.
        filter_fn: extra predicate ``filter_fn(module, fqn) -> bool``.
        target: deployment target (``portable``, ``x86-avx2``, ``x86-vnni``): the integer scheme that is
            exact on the CPUs the model will run on (:mod:`slimtorch.quant.export.targets`).
        quantize_embeddings: store the selected ``nn.Embedding`` tables as int8 rows with per-row scales
            (8-bit on every target: :mod:`slimtorch.quant.modules.embedding`).
        float_islands: keep a traced ``Conv2d`` in float when it would be an int8 *island*: its input comes
            from a float op (HardSwish, an SE gate's Mul, ...) and its output goes to one, so no other
            quantized layer shares its input or output grid. Such a conv pays a QuantizeLinear, a
            DequantizeLinear and (ONNX Runtime runs int8 convs in NHWC, float ops in NCHW) two layout
            Transposes for one integer conv. Opt-in: on a MobileNetV3-like CNN it removed 3 Q and 3 DQ at
            run time but did not make int8 faster (0.65x fp32 with it, 0.66x without; docs/quantization.md).
    """

    observer: str = "minmax"
    observer_kwargs: dict[str, Any] = field(default_factory=dict)
    weight_observer: str = "minmax"
    per_channel: bool = True
    symmetric_weights: bool = True
    symmetric_activations: bool = False
    weight_bits: int = 8
    act_bits: int = 8
    fold_bn: bool = True
    quantize_outputs: bool = True
    num_batches: int | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    filter_fn: Callable[[nn.Module, str], bool] | None = field(default=None, repr=False)
    target: str = DEFAULT_TARGET
    quantize_embeddings: bool = True
    float_islands: bool = False

    def __post_init__(self) -> None:
        check_target(self.target)
        check_choice("observer", self.observer, OBSERVERS.names())
        check_choice("weight_observer", self.weight_observer, ["minmax", "mse"])
        if self.weight_observer == "mse" and self.per_channel:
            raise ValueError("weight_observer 'mse' is per-tensor; set per_channel=False or use 'minmax'")
        check_bits(self.weight_bits, "weight_bits")
        check_bits(self.act_bits, "act_bits")
        sym = self.symmetric_activations
        check_observer_kwargs(self.observer, self.observer_kwargs, bits=self.act_bits, symmetric=sym, signed=sym)
        if self.num_batches is not None:
            check_positive("num_batches", self.num_batches)
        self.include, self.exclude = tuple(self.include), tuple(self.exclude)


@dataclass
class Int8Dynamic(Config):
    """Dynamic int8 quantization of Linear layers: int8 weights, activation scales computed per call.

    Args:
        granularity: ``"token"`` (one scale per row of the input, i.e. per token) or ``"tensor"``
            (one per call, what ONNX Runtime's ``DynamicQuantizeLinear`` does).
        per_channel: per-output-channel weight scales.
        include: patterns of layer names to quantize.
        exclude: patterns to keep in float.
        filter_fn: extra predicate.
        target: deployment target (:mod:`slimtorch.quant.export.targets`); ``portable`` uses 7-bit weights.
        quantize_embeddings: int8 ``nn.Embedding`` tables with per-row scales (as in :class:`Int8Static`).
    """

    granularity: str = "token"
    per_channel: bool = True
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    filter_fn: Callable[[nn.Module, str], bool] | None = field(default=None, repr=False)
    target: str = DEFAULT_TARGET
    quantize_embeddings: bool = True

    def __post_init__(self) -> None:
        check_target(self.target)
        check_choice("granularity", self.granularity, ["token", "tensor"])
        self.include, self.exclude = tuple(self.include), tuple(self.exclude)


def trace_graph(model: nn.Module) -> tuple[fx.Graph | None, str]:
    """The model's dataflow graph from ``torch.fx`` (None and the reason when it cannot be traced)."""
    try:
        return fx.symbolic_trace(model).graph, ""
    except Exception as e:  # tracing fails on data-dependent control flow; we then work per layer
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"


def _is_relu(node: fx.Node, mods: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(mods.get(str(node.target)), nn.ReLU)
    if node.op == "call_function":
        return node.target in _RELU_FUNCS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _is_passthrough(node: fx.Node, mods: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(mods.get(str(node.target)), _PASS_MODULES)
    if node.op == "call_function":
        return node.target in _PASS_FUNCS
    return node.op == "call_method" and node.target in _PASS_METHODS


def _single_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


@dataclass
class _LayerPlan:
    output_relu: bool = False
    quantize_output: bool = False
    tied_to: str | None = None  # fqn of the layer whose output quantizer this layer's input reuses


def plan_layers(model: nn.Module, graph: fx.Graph | None, names: list[str], quantize_outputs: bool
                ) -> dict[str, _LayerPlan]:
    """Decide from the dataflow graph which outputs to quantize, which ReLUs to fuse, which inputs to tie."""
    plans = {n: _LayerPlan() for n in names}
    if graph is None or not quantize_outputs:
        return plans
    mods = dict(model.named_modules())
    node_of = {str(n.target): n for n in graph.nodes if n.op == "call_module" and str(n.target) in plans}
    for name, node in node_of.items():
        plan = plans[name]
        cur = node
        nxt = _single_user(cur)
        while (nxt is not None and nxt.op == "call_module"
               and isinstance(mods.get(str(nxt.target)), nn.Identity)):
            cur, nxt = nxt, _single_user(nxt)  # folded BatchNorms are Identity now
        if nxt is not None and _is_relu(nxt, mods):
            plan.output_relu = True
        plan.quantize_output = True
        # follow grid-preserving ops to the next quantized layer
        while nxt is not None and _is_passthrough(nxt, mods):
            cur, nxt = nxt, _single_user(nxt)
        if (nxt is not None and nxt.op == "call_module" and str(nxt.target) in plans
                and nxt.args[:1] == (cur,)):
            plans[str(nxt.target)].tied_to = name
        elif isinstance(mods[name], nn.Linear):
            # a Linear whose output feeds no quantized layer (e.g. the logits) stays float: ONNX Runtime
            # runs DQ -> Gemm/MatMul as an integer matmul with float output without it
            plan.quantize_output = False
    return plans


def conv_islands(model: nn.Module, plans: dict[str, _LayerPlan]) -> list[str]:
    """Convolutions that would be int8 islands: no quantized layer feeds their input or reads their output.

    With the plan of :func:`plan_layers`, a layer's input is shared with an upstream quantized output when
    ``tied_to`` is set, and its output is shared when another layer is tied to it. A conv with neither
    needs its own QuantizeLinear before and DequantizeLinear after (plus NCHW/NHWC transposes on ONNX
    Runtime), which can cost more than one integer conv saves (see :class:`Int8Static` ``float_islands``).
    """
    fed = {p.tied_to for p in plans.values() if p.tied_to is not None}
    return [n for n, p in plans.items()
            if p.tied_to is None and n not in fed and isinstance(model.get_submodule(n), nn.Conv2d)]


_ADD_FUNCS = {operator.add, torch.add, operator.iadd}


class _ShallowTracer(fx.Tracer):
    """Traces one module's own forward: every submodule is a leaf."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def _ends_in_add(module: nn.Module) -> bool:
    """Whether ``module.forward`` returns ``a + b`` or ``relu(a + b)`` (a residual block)."""
    try:
        graph = _ShallowTracer().trace(module)
    except Exception:  # untraceable blocks keep float outputs
        return False
    mods = dict(module.named_modules())
    out = next(n for n in graph.nodes if n.op == "output").args[0]
    if isinstance(out, fx.Node) and _is_relu(out, mods):
        out = out.args[0]
    if not isinstance(out, fx.Node):
        return False
    return (out.op == "call_function" and out.target in _ADD_FUNCS) or (
        out.op == "call_method" and out.target == "add")


def residual_modules(model: nn.Module, quantized: list[str]) -> list[str]:
    """Modules (not quantized layers) whose output is a residual sum, e.g. ResNet ``BasicBlock``s.

    Quantizing these outputs lets integer runtimes run the addition itself in int8 (``QLinearAdd``)
    and feed the next block without leaving the integer domain.
    """
    out = []
    for name, m in model.named_modules():
        if name and name not in quantized and any(True for _ in m.children()) and _ends_in_add(m):
            out.append(name)
    return out


def _output_quant_hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
    # looks the quantizer up at call time so deep copies use their own
    return module.output_quant(output)


def attach_output_quant(module: nn.Module, quantizer: FakeQuantize) -> None:
    """Fake-quantize ``module``'s output with ``quantizer`` (a forward hook; ``module.output_quant``)."""
    module.output_quant = quantizer
    module.register_forward_hook(_output_quant_hook)


def _float_leftovers(model: nn.Module, quantized: set[str], excluded: set[str], graph: fx.Graph | None
                     ) -> dict[str, str]:
    """Layers with parameters (or functional matmuls) that stay in float, with the reason."""
    out: dict[str, str] = {}
    for name, m in model.named_modules():
        if name in quantized or (name and any(name.startswith(q + ".") for q in quantized)):
            continue
        if not name and any(True for _ in m.children()):
            continue  # a multi-layer model's root is a container, not a layer
        if isinstance(m, (FakeQuantize, nn.Identity, QuantEmbedding)) or not any(
                True for _ in m.parameters(recurse=False)):
            if isinstance(m, nn.MultiheadAttention):
                out[name] = "nn.MultiheadAttention has no quantized form (its attention matmuls stay float)"
            continue
        if name in excluded:
            out[name] = "excluded by include/exclude/filter_fn"
        else:
            out[name] = f"{type(m).__name__} has no quantized form"
    if graph is not None:
        for node in graph.nodes:
            if node.op == "call_function" and node.target in _MATMUL_FUNCS:
                out[f"<{node.name}>"] = "activation x activation matmul (e.g. attention) stays float"
    return out


def prepare_(model: nn.Module, config: Int8Static) -> QuantReport:
    """Phase 1: fold BatchNorms, wrap the selected layers, quantize weights, insert activation observers.

    Returns:
        A report (``quantized``, ``folded``, ``skipped``); ``details["traced"]`` says whether the
        dataflow graph was available.
    """
    if not isinstance(config, Int8Static):
        raise ValueError(f"prepare_ expects an Int8Static config, got {type(config).__name__}")
    model.eval()
    conv1d = conv1d_to_linear_(model)  # HF Conv1D (GPT-2) is a Linear with a transposed weight
    graph, why = trace_graph(model)
    folded = fold_bn_(model, find_conv_bn_pairs(model, graph)) if config.fold_bn else []
    selector = Selector(tuple(QUANT_MODULES), config.include, config.exclude, config.filter_fn)
    candidates = [n for n, m in Selector(tuple(QUANT_MODULES)).select(model) if type(m) in QUANT_MODULES]
    names = [n for n, m in selector.select(model) if type(m) in QUANT_MODULES]
    if not names:
        raise SlimtorchError(f"no Conv2d/Linear layer of {type(model).__name__} is selected for quantization "
                             f"(include={list(config.include)}, exclude={list(config.exclude)}, filter_fn="
                             f"{'set' if config.filter_fn else 'none'}); candidates: "
                             f"{[display_name(n) for n in candidates][:10]}")
    plans = plan_layers(model, graph, names, config.quantize_outputs)
    islands = conv_islands(model, plans) if config.float_islands and graph is not None else []
    names = [n for n in names if n not in islands]
    target = get_target(config.target)
    weight_bits = target.weight_bits(config.weight_bits)

    def act_quant() -> FakeQuantize:
        sym = config.symmetric_activations
        obs = create_observer(config.observer, bits=config.act_bits, symmetric=sym, signed=sym,
                              **config.observer_kwargs)
        return FakeQuantize(obs)

    for name in names:
        layer = model.get_submodule(name)
        plan = plans[name]
        sym = config.symmetric_activations
        if plan.tied_to is not None:
            inp = FakeQuantize(None, bits=config.act_bits, signed=sym)
        else:
            inp = act_quant()
        w_obs = create_observer(config.weight_observer, bits=weight_bits,
                                symmetric=config.symmetric_weights,
                                signed=True, axis=0 if config.per_channel else None)
        out = act_quant() if plan.quantize_output else None
        wrap = QUANT_MODULES.get(type(layer)).from_float
        wrapper = wrap(layer, inp, FakeQuantize(w_obs), out, plan.output_relu)
        wrapper.input_source = plan.tied_to
        wrapper.calibrate_weight()
        set_submodule(model, name, wrapper)
    residual = []
    if graph is not None and config.quantize_outputs:
        for name in residual_modules(model, names):
            attach_output_quant(model.get_submodule(name), act_quant())
            residual.append(name)
    embeddings = _quantize_embeddings(model, config)
    excluded = set(candidates) - set(names)
    skipped = _float_leftovers(model, set(names), excluded, graph)
    for name in islands:
        skipped[name] = ("int8 island (float op before and after): Q/DQ and layout transposes can cost more "
                         "than the integer conv saves; kept float (float_islands)")
    details: dict[str, Any] = {"traced": graph is not None, "config": config.to_dict(), "float_islands": islands,
                               "residual_outputs": residual, "target": target.name, "weight_bits": weight_bits,
                               "embeddings": embeddings, "conv1d_as_linear": conv1d}
    mark_target(model, target)
    details["config"].pop("filter_fn", None)
    if graph is None:
        details["trace_error"] = why
        details["untraced"] = _UNTRACED_NOTE
    return QuantReport("int8_static", quantized=names, skipped=skipped, folded=folded, details=details)


#: What Int8Static does when ``torch.fx`` cannot trace the model (Hugging Face models, data-dependent code).
_UNTRACED_NOTE = ("torch.fx could not trace the model, so its dataflow is unknown: every selected layer gets "
                  "an int8 weight and a calibrated uint8 input quantizer, and its output stays float (no "
                  "ReLU fusion, no tied inputs, no int8 residual adds). ONNX Runtime runs each layer as an "
                  "integer matmul/conv with float output (QDQ -> MatMulIntegerToFloat / QGemm / QLinearConv "
                  "with a dequantized output); the ops between layers (softmax, layer norm, GELU, attention "
                  "matmuls) run in float.")


def _quantize_embeddings(model: nn.Module, config: Int8Static | Int8Dynamic) -> list[str]:
    """Int8 per-row embedding tables for the selected ``nn.Embedding``s (see ``modules.embedding``)."""
    if not config.quantize_embeddings:
        return []
    selector = Selector((nn.Embedding,), config.include, config.exclude, config.filter_fn)
    names = [n for n, m in selector.select(model) if type(m) is nn.Embedding and n]
    return quantize_embeddings_(model, names)


def quant_layers(model: nn.Module) -> list[tuple[str, QuantConv2d | QuantLinear]]:
    """``(fqn, layer)`` of every fake-quant Conv/Linear in ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))]


@torch.no_grad()
def calibrate(model: nn.Module, calib_data: Iterable[Any], num_batches: int | None = None
              ) -> dict[str, float]:
    """Phase 2: run calibration batches through a prepared model so the observers record ranges.

    Returns:
        ``{"batches", "samples", "seconds", "samples_per_s"}``.

    Raises:
        SlimtorchError: empty data, a batch of the wrong shape or with NaN/inf (naming the batch).
    """
    if not quant_layers(model):
        raise ValueError("the model has no quantized layers; call prepare_(model, config) first")
    model.eval()
    batches = samples = 0
    t0 = time.perf_counter()
    for i, inputs in enumerate(iter_calibration_inputs(calib_data, model, num_batches)):
        try:
            inputs(model)  # every positional and named input (input_ids, attention_mask, ...) reaches the model
        except (RuntimeError, TypeError, ValueError) as e:
            shapes = {name: tuple(t.shape) for name, t in inputs.tensors()}
            raise SlimtorchError(f"calibration batch {i} with inputs {shapes} failed in the model: "
                                 f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        batches += 1
        samples += inputs.batch_size
    dt = time.perf_counter() - t0
    return {"batches": batches, "samples": samples, "seconds": dt, "samples_per_s": samples / max(dt, 1e-9)}


def convert_(model: nn.Module) -> None:
    """Phase 3: freeze every observer's range into scale/zero point; tie inputs to upstream outputs.

    Raises:
        ValueError: if a quantizer saw no data (the layer was never reached during calibration).
    """
    layers = dict(quant_layers(model))
    ranges = {}
    for name, q in model.named_modules():
        if isinstance(q, FakeQuantize) and q.observing and q.observer is not None:
            layer, _, role = name.rpartition(".")
            if not q.observer.has_data:
                raise ValueError(f"the {role.replace('_quant', '')} quantizer of layer {display_name(layer)!r} saw no "
                                 "calibration data; is the layer used in forward()?")
            if role != "weight_quant":  # a constant weight is legitimate (e.g. a pruned layer); activations not
                ranges[f"{role.replace('_quant', '')} of layer {display_name(layer)!r}"] = (
                    q.observer.min_val, q.observer.max_val)
            q.freeze()
    warn_degenerate_ranges(ranges)
    for name, layer in layers.items():
        src = getattr(layer, "input_source", None)
        if src is not None and layer.input_quant is not None:
            up = layers[src].output_quant
            if up is None or not up.quantizing:
                raise ValueError(f"layer {name!r} is tied to the output of {src!r}, which is not quantized")
            layer.input_quant.set_qparams(up.scale, up.zero_point)


@register_quantizer(Int8Static)
def _int8_static(model: nn.Module, config: Int8Static, calib_data: Iterable[Any] | None) -> QuantReport:
    if calib_data is None:
        raise SlimtorchError("Int8Static needs calibration data: "
                             "quantize_(model, Int8Static(), calib_data=...)")
    report = prepare_(model, config)
    report.details["calibration"] = calibrate(model, calib_data, config.num_batches)
    convert_(model)
    return report


class _DynamicQDQ(torch.autograd.Function):
    """Export form of per-tensor dynamic quantization: ``DynamicQuantizeLinear -> DequantizeLinear``."""

    @staticmethod
    def forward(ctx, x):  # noqa: ANN001
        return dynamic_fake_quantize(x, "tensor")

    @staticmethod
    def symbolic(g, x):  # noqa: ANN001
        y, s, z = g.op("DynamicQuantizeLinear", x, outputs=3)
        return g.op("DequantizeLinear", y, s, z)


class DynamicFakeQuantize(FakeQuantize):
    """Activation quantizer whose scale/zero point are computed from each input (asymmetric uint8).

    ``granularity="token"``: one range per row (all but the last dimension index a token);
    ``"tensor"``: one range per call.
    """

    dynamic = True

    def __init__(self, granularity: str = "token", bits: int = 8) -> None:
        super().__init__(None, bits=bits, signed=False)
        check_choice("granularity", granularity, ["token", "tensor"])
        self.granularity = granularity
        self.quantizing = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            if self.granularity != "tensor" or self.bits != 8:
                raise ValueError("ONNX export of dynamic quantization needs "
                                 "Int8Dynamic(granularity='tensor') (ONNX DynamicQuantizeLinear "
                                 "computes one scale per tensor)")
            return _DynamicQDQ.apply(x)
        return dynamic_fake_quantize(x, self.granularity, self.bits)

    def extra_repr(self) -> str:
        return f"dynamic, granularity={self.granularity}, bits={self.bits}"


@register_quantizer(Int8Dynamic)
def _int8_dynamic(model: nn.Module, config: Int8Dynamic, calib_data: Iterable[Any] | None) -> QuantReport:
    model.eval()
    conv1d = conv1d_to_linear_(model)  # HF Conv1D (GPT-2) is a Linear with a transposed weight
    graph, _ = trace_graph(model)
    selector = Selector((nn.Linear,), config.include, config.exclude, config.filter_fn)
    candidates = [n for n, m in Selector((nn.Linear,)).select(model) if type(m) is nn.Linear]
    names = [n for n, m in selector.select(model) if type(m) is nn.Linear]
    target = get_target(config.target)
    for name in names:
        layer = model.get_submodule(name)
        w_obs = create_observer("minmax", bits=target.weight_bits(8), symmetric=True, signed=True,
                                axis=0 if config.per_channel else None)
        wrapper = QuantLinear.from_float(layer, DynamicFakeQuantize(config.granularity), FakeQuantize(w_obs),
                                         None, False, quantize_bias=False)
        wrapper.input_source = None
        wrapper.calibrate_weight()
        set_submodule(model, name, wrapper)
    embeddings = _quantize_embeddings(model, config)
    skipped = _float_leftovers(model, set(names), set(candidates) - set(names), graph)
    mark_target(model, target)
    return QuantReport("int8_dynamic", quantized=names, skipped=skipped,
                       details={"granularity": config.granularity, "target": target.name,
                                "weight_bits": target.weight_bits(8), "embeddings": embeddings,
                                "conv1d_as_linear": conv1d})


register_scheme("int8", Int8Static, data="calib",
                help="static int8 (Int8Static): --observer, --percentile, --per-tensor, --exclude, --set KEY=VALUE")
register_scheme("int8-dynamic", Int8Dynamic, data="none", defaults={"granularity": "tensor"},
                help="dynamic int8 Linear layers (Int8Dynamic), per-tensor scales")


# save_quantized / load_quantized rebuild these structures without calibration data
register_preparer(Int8Static)(prepare_)
register_preparer(Int8Dynamic)(lambda model, config: _int8_dynamic(model, config, None))


__all__ = ["DynamicFakeQuantize", "Int8Dynamic", "Int8Static", "calibrate", "convert_",
           "plan_layers", "prepare_", "quant_layers", "trace_graph"]
